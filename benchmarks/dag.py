"""How long Snakemake takes to plan a study: ``snakemake -n`` over many samples of many slices.

Builds, in a temporary folder, a project of N samples of M slices each (every slice a
hard link to one tiny PNG: a dry run never reads a slice's pixels, only the folder
listings), the first sample with a label folder so that training is planned too, and
times a dry run of the whole workflow with the repository's default settings. Prints
the seconds and the number of jobs planned. Target: 20 samples x 2000 slices in at
most 60 s.

    python benchmarks/dag.py
    python benchmarks/dag.py --samples 5 --slices 500 --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from vem3d.slices import write_image

ROOT = Path(__file__).resolve().parents[1]
HEADER = "sample\tslices\tlabels\tground_truth\tvoxel_size_z_nm\tvoxel_size_y_nm\tvoxel_size_x_nm\n"
LABEL_EVERY = 8


def link_slices(template: Path, folder: Path, names: list[str]) -> None:
    """Fill ``folder`` with one hard link to ``template`` per slice name (copies where links fail)."""
    folder.mkdir(parents=True)
    for name in names:
        try:
            os.link(template, folder / f"{name}.png")
        except OSError:
            (folder / f"{name}.png").write_bytes(template.read_bytes())


def make_study(project: Path, n_samples: int, n_slices: int) -> None:
    """A project of ``n_samples`` samples of ``n_slices`` slices, the first one labelled."""
    template = project / "template.png"
    write_image(template, np.zeros((8, 8), np.uint8))
    names = [f"slice_{z:05d}" for z in range(n_slices)]
    rows = []
    for index in range(n_samples):
        sample = f"sample{index:02d}"
        link_slices(template, project / "data" / sample / "slices", names)
        labels = ""
        if index == 0:
            labels = f"data/{sample}/labels"
            link_slices(template, project / labels, names[LABEL_EVERY // 2 :: LABEL_EVERY])
        rows.append(f"{sample}\tdata/{sample}/slices\t{labels}\t\t20\t10\t10\n")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["samples"] = "config/samples.tsv"
    (project / "config").mkdir()
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (project / "config" / "samples.tsv").write_text(HEADER + "".join(rows))


def dry_run(project: Path, profile: bool) -> tuple[float, str]:
    """Seconds of ``snakemake -n`` on the project (process start included) and its output."""
    command = [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", str(project / "dry_run.prof")]
    command += ["-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory",
                str(project), "--cores", "1", "-n", "--quiet", "rules"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"dry run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="print the dry run's cProfile, slowest first")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vem3d-dag-") as folder:
        project = Path(folder)
        started = time.perf_counter()
        make_study(project, arguments.samples, arguments.slices)
        print(f"made {arguments.samples} samples x {arguments.slices} slices in {time.perf_counter() - started:.1f} s")
        seconds, output = dry_run(project, arguments.profile)
        if arguments.profile:
            statistics = pstats.Stats(str(project / "dry_run.prof"))
            statistics.sort_stats("cumulative").print_stats(40)
            statistics.sort_stats("tottime").print_stats(20)
    jobs = re.search(r"^total\s+(\d+)$", output, flags=re.MULTILINE)
    n_jobs = int(jobs.group(1)) if jobs else "?"
    print(f"snakemake -n: {seconds:.1f} s for {n_jobs} jobs "
          f"({arguments.samples} samples x {arguments.slices} slices; target <= 60 s for 20 x 2000)")


if __name__ == "__main__":
    main()
