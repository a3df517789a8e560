"""Where the time of a workflow run goes: the network against everything else, full and incremental.

Writes a synthetic stack (vem3d.synth) into a temporary project, trains the configured
U-Net briefly on its labels (or takes ``--weights``; their quality hardly matters here,
only that the masks hold objects for the mesh and statistics steps, as real ones do),
then runs the real workflow with those weights (``train.enabled: false``) on the CPU
and prints

- the full run's wall time against the time the network's forward passes took of the
  machine: each segment job's seconds in them (from its log) times the CPU threads it
  computed with, over the cores (two one-thread jobs on 2 cores, as the workflow runs
  them there, each count half); target: what is not the network is at most 25 % of
  the total;
- the wall time of a re-run after one slice changed; target: at most 15 % of the full
  run;
- for both, the seconds of each step (from Snakemake's benchmark files), to show where
  the time goes;
- the seconds each segment job spends outside its slices (starting Python, importing
  the network's framework, building the model) and the share of the full run that
  this alone makes "not the network", all other steps being free: the floor that
  loading the network once per chunk sets.

The targets are for slices of 2048 x 2048, the default: real tumour samples have
slices of several thousand pixels a side, and 2048 is the smallest such size, where
the fixed costs weigh most. Those costs are per job and per run (a segment job
spends 3 to 5 s importing TensorFlow and building the model before its first slice;
the whole-volume steps start after the last slice), so on smaller slices they are a
larger share: about a third at 1024 x 1024 (benchmarks/RESULTS.md).

    python benchmarks/pipeline.py                        # 256 slices of 2048 x 2048, chunk_size 32 (about 11 min on 2 cores)
    python benchmarks/pipeline.py --slices 64 --size 256 # quicker
    python benchmarks/pipeline.py --weights /tmp/unet.weights.h5  # trains once, then reuses them
    python benchmarks/pipeline.py --stack-dir /tmp/vem3d-stacks  # writes the stack once, then copies it
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from vem3d.atomic import write_directory_atomically
from vem3d.preprocess import preprocess_stack
from vem3d.slices import list_slices, read_slice, write_image
from vem3d.synth import write_demo_stack
from vem3d.train import TrainingConfig, train_from_folders
from vem3d.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "synthetic"
STACK_SEED = 3
HEADER = "sample\tslices\tlabels\tground_truth\tvoxel_size_z_nm\tvoxel_size_y_nm\tvoxel_size_x_nm\n"
NETWORK_SECONDS = re.compile(r"([\d.]+) s of it in the network's forward passes")
CPU_THREADS = re.compile(r"(\d+) CPU threads")
SEGMENTING_SECONDS = re.compile(r"segmented \d+ slices in ([\d.]+) s,")
LOG_TIME = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")  # Snakemake's log: a job's start or end


def train_weights(weights: Path, folders: dict, config: dict) -> None:
    """Train the configured U-Net briefly on the stack's first labelled slices, into ``weights``."""
    names = [path.stem for path in list_slices(folders["labels"])][:8]
    training = weights.parent / "training"
    preprocess_stack(folders["slices"], names, training / "preprocessed", **config["preprocess"])
    unet = {key: config["model"][key] for key in ("depth", "base_filters", "batch_norm", "dropout")}
    train_from_folders(
        [training / "preprocessed"],
        [folders["labels"]],
        weights_path=weights,
        history_path=training / "history.tsv",
        curves_path=training / "curves.png",
        checkpoint_dir=training / "checkpoints",
        unet_config=UNetConfig(**unet),
        config=TrainingConfig(epochs=6, steps_per_epoch=20, batch_size=8, patch_size=128, validation_fraction=0.25),
    )


def write_project(project: Path, folders: dict, weights: Path, config: dict, chunk_size: int) -> None:
    config = {**config, "samples": "config/samples.tsv", "chunk_size": chunk_size}
    config["train"] = {**config["train"], "enabled": False}
    config["model"] = {**config["model"], "weights": str(weights)}
    (project / "config").mkdir(exist_ok=True)
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (project / "config" / "samples.tsv").write_text(HEADER + f"{SAMPLE}\t{folders['slices']}\t\t\t20\t10\t10\n")


def run_workflow(project: Path, cores: int) -> float:
    """Wall seconds of one Snakemake run of the project (process start included)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(project), "--cores", str(cores)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"workflow run failed:\n{result.stderr[-5000:]}")
    return seconds


def segment_jobs(project: Path, since: float, cores: int) -> pd.DataFrame:
    """Per segment job whose log was written since ``since``: its share of the machine
    (CPU threads over ``cores``), its wall seconds (Snakemake's benchmark file), its
    seconds segmenting its slices and, of those, in the network's forward passes (its log)."""
    rows = []
    for log in (project / "logs" / SAMPLE / "segment").glob("*.log"):
        if log.stat().st_mtime >= since:
            text = log.read_text()
            timing = pd.read_csv(project / "results" / "benchmarks" / SAMPLE / "segment" / f"{log.stem}.tsv", sep="\t")
            rows.append({
                "share": min(int(CPU_THREADS.search(text).group(1)), cores) / cores,
                "seconds": float(timing["s"].iloc[0]),
                "segmenting": sum(float(value) for value in SEGMENTING_SECONDS.findall(text)),
                "network": sum(float(value) for value in NETWORK_SECONDS.findall(text)),
            })
    return pd.DataFrame(rows, columns=["share", "seconds", "segmenting", "network"])


def step_seconds(project: Path, since: float) -> pd.DataFrame:
    """Jobs, summed wall seconds and summed CPU seconds per step, from the benchmark files
    written since ``since``."""
    rows = []
    for path in (project / "results" / "benchmarks").rglob("*.tsv"):
        if path.stat().st_mtime >= since:
            step = path.relative_to(project / "results" / "benchmarks" / SAMPLE).parts[0].removesuffix(".tsv")
            timing = pd.read_csv(path, sep="\t").iloc[0]
            rows.append({"step": step, "seconds": float(timing["s"]), "cpu_seconds": float(timing["cpu_time"])})
    table = pd.DataFrame(rows, columns=["step", "seconds", "cpu_seconds"])
    steps = table.groupby("step").agg(
        jobs=("seconds", "count"), seconds=("seconds", "sum"), cpu_seconds=("cpu_seconds", "sum")
    )
    return steps.sort_values("seconds", ascending=False)


def phases(project: Path, wall: float) -> str:
    """Where a run's wall time went, from its Snakemake log (whole seconds): before the
    first job, until the last segment job ended, and after it."""
    log = max((project / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda path: path.stat().st_mtime)
    stamp, first, last, segmented = None, None, None, None
    for line in log.read_text().splitlines():
        if match := LOG_TIME.match(line):
            stamp = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            first, last = first or stamp, stamp
        elif line.startswith("Finished jobid") and "(Rule: segment)" in line:
            segmented = stamp
    if first is None:
        return "no jobs ran"
    before = wall - (last - first).total_seconds()
    after = (last - segmented).total_seconds() if segmented else (last - first).total_seconds()
    return (f"{before:.0f} s before the first job (Snakemake starting, planning), "
            f"{wall - before - after:.0f} s until the last segment job ended, {after:.0f} s after it")


def report(title: str, wall: float, project: Path, since: float, cores: int) -> float:
    """Print a run's figures; return its seconds in the network's forward passes."""
    jobs = segment_jobs(project, since, cores)
    network = float((jobs["network"] * jobs["share"]).sum())
    steps = step_seconds(project, since)
    print(f"\n{title}: {wall:.1f} s wall, {network:.1f} s of the machine's in the network's forward passes, "
          f"{wall - network:.1f} s ({100 * (wall - network) / wall:.1f} %) not the network; "
          f"load average {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores (5 min, others' work included)")
    print(f"wall time: {phases(project, wall)}")
    print("per step, each job's own wall and CPU seconds (jobs may overlap on several cores):")
    print(steps.round(1).to_string())
    if len(jobs) and network > 0:
        outside = jobs["seconds"] - jobs["segmenting"]
        start = float((outside * jobs["share"]).sum())
        print(f"segment jobs outside their slices (Python, the network's framework, the model): "
              f"{outside.mean():.1f} s a job ({outside.min():.1f}-{outside.max():.1f}), {start:.1f} s of the machine's; "
              f"with every other step free, not the network would still be {100 * start / (start + network):.1f} %")
    return network


def synthetic_stack(data: Path, n_slices: int, size: int, stack_dir: Path | None) -> dict[str, Path]:
    """Write the synthetic stack into ``data``, or copy it there from ``stack_dir``, where
    the first run with these sizes keeps it (writing a 1024 x 1024 stack takes minutes)."""
    if stack_dir is None:
        return write_demo_stack(data, n_slices=n_slices, size=size, seed=STACK_SEED)
    kept = stack_dir / f"{n_slices}x{size}x{size}-seed{STACK_SEED}"
    if not kept.is_dir():
        write_directory_atomically(kept, lambda temporary: write_demo_stack(temporary, n_slices, size, STACK_SEED))
    shutil.copytree(kept, data, dirs_exist_ok=True)  # a copy: the re-run changes one of its slices
    return {name: data / name for name in ("slices", "labels", "ground_truth")}


def change_one_slice(folder: Path, index: int) -> Path:
    """Give one slice new content (a brighter square), as a re-acquired slice would."""
    path = list_slices(folder)[index]
    image = read_slice(path).copy()
    rows, columns = image.shape
    image[rows // 4 : rows // 2, columns // 4 : columns // 2] = 255
    write_image(path, image)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--size", type=int, default=2048, help="slice side in pixels (the targets are for 2048)")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: a temporary folder)")
    parser.add_argument(
        "--stack-dir", type=Path,
        help="keep the synthetic stack here and copy it into the project on later runs (default: write it each run)",
    )
    parser.add_argument(
        "--weights", type=Path,
        help="weights of the configured model to segment with; trained there first where the file is missing",
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vem3d-pipeline-") as temporary:
        project = arguments.workdir or Path(temporary)
        project.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        started = time.perf_counter()
        folders = synthetic_stack(project / "data", arguments.slices, arguments.size, arguments.stack_dir)
        print(f"synthetic stack of {arguments.slices} slices of {arguments.size} x {arguments.size}: "
              f"{time.perf_counter() - started:.1f} s")
        weights = arguments.weights or project / "weights" / "unet.weights.h5"
        if not weights.is_file():
            started = time.perf_counter()
            train_weights(weights, folders, config)
            print(f"brief training of the configured U-Net: {time.perf_counter() - started:.1f} s, into {weights}")
        write_project(project, folders, weights, config, arguments.chunk_size)

        since = time.time()
        full = run_workflow(project, arguments.cores)
        title = f"full run (chunk_size {arguments.chunk_size}, {arguments.cores} cores)"
        network = report(title, full, project, since, arguments.cores)
        mesh = pd.read_csv(project / "results" / SAMPLE / "mesh_summary.tsv", sep="\t").iloc[0]
        print(f"segmented: {mesh['objects']} objects, {mesh['foreground_voxels']} voxels, {mesh['faces']} mesh faces")

        changed = change_one_slice(folders["slices"], arguments.slices // 2)
        since = time.time()
        again = run_workflow(project, arguments.cores)
        report(f"re-run after changing {changed.name}", again, project, since, arguments.cores)

    print(f"\nnot the network: {100 * (full - network) / full:.1f} % of the full run (target <= 25 %)")
    print(f"re-run after 1 changed slice: {again:.1f} s = {100 * again / full:.1f} % of the full run's "
          f"{full:.1f} s (target <= 15 %)")


if __name__ == "__main__":
    main()
