"""Bad input and faults: each case handled as documented, or stopped with a clear message."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from test_workflow import (
    DEMO_ROW,
    EVERYTHING_FOREGROUND,
    HEADER,
    SNAKEFILE,
    TINY_CONFIG,
    make_project,
    own_stack,
    planned_jobs,
    row,
    snakemake,
)

from vem3d.mesh import mesh_volumes
from vem3d.preprocess import preprocess_stack, read_preprocessed
from vem3d.slices import read_slice


def test_mixed_bit_depths_are_each_normalised_to_the_same_range(tmp_path):
    ramp = np.tile(np.arange(64), (16, 1))
    slices = tmp_path / "slices"
    slices.mkdir()
    iio.imwrite(slices / "a.png", (ramp * 4).astype(np.uint8))
    iio.imwrite(slices / "b.png", (ramp * 1000).astype(np.uint16))
    preprocess_stack(slices, ["a", "b"], tmp_path / "out", reference_name="a")
    (_, eight_bit, _), (_, sixteen_bit, _) = read_preprocessed(tmp_path / "out")
    np.testing.assert_allclose(eight_bit, sixteen_bit, atol=1e-3)


def test_rgba_slice_is_read_as_grey(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = 7  # alpha is ignored
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert np.all(read_slice(tmp_path / "rgba.png") == 100)


def test_all_black_and_all_white_slices_pass_through(tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    iio.imwrite(slices / "black.png", np.zeros((8, 8), np.uint8))
    iio.imwrite(slices / "white.png", np.full((8, 8), 255, np.uint8))
    preprocess_stack(slices, ["black", "white"], tmp_path / "out")
    for _, image, _ in read_preprocessed(tmp_path / "out"):
        np.testing.assert_allclose(image, 0.5, atol=1e-4)


def test_outputs_are_never_written_into_an_input_folder(tmp_path, capsys):
    from vem3d.cli import main
    from vem3d.volume import write_volumes

    raw = tmp_path / "raw"
    raw.mkdir()
    for index in range(2):
        iio.imwrite(raw / f"s{index}.tif", np.full((16, 16), 40 * index, np.uint8))
    before = {path.name: path.read_bytes() for path in raw.iterdir()}
    for out_dir in (raw, raw / "preprocessed"):
        assert main(["preprocess", str(raw), str(out_dir)]) == 2
        error = capsys.readouterr().err
        assert f"vem3d preprocess: {out_dir}: lies in the input folder {raw}" in error
        assert "Traceback" not in error  # the message alone, not buried in one
    with pytest.raises(ValueError, match="lies in the input folder"):
        write_volumes({"mito": [raw]}, raw / "volume.zarr", (10.0, 10.0, 10.0))
    assert {path.name: path.read_bytes() for path in raw.iterdir()} == before


def test_empty_segmentation_gives_zero_objects_and_no_stl(tmp_path, volume_of):
    masks = tmp_path / "masks" / "chunk0000"
    masks.mkdir(parents=True)
    for z in range(3):
        iio.imwrite(masks / f"s{z}.png", np.zeros((16, 16), np.uint8))
    volume = volume_of({"mito": [masks]}, (10, 5, 5))
    summary = mesh_volumes(volume, tmp_path / "meshes", tmp_path / "summary.tsv").iloc[0]
    assert summary["objects"] == 0 and summary["faces"] == 0
    assert list((tmp_path / "meshes").iterdir()) == []
    assert (tmp_path / "summary.tsv").read_text().splitlines()[1].startswith("mito\t0\t0")


@pytest.mark.parametrize(
    "config_override, message",
    [
        ({"chunk_sise": 4}, "chunk_sise"),
        ({"train": {"epochs": 0}}, "epochs"),
        ({"segment": {"tile_size": "big"}}, "tile_size"),
        ({"segment": {"tile_size": 30}}, "segment.tile_size is 30, but model.depth 2 needs a multiple of 4"),
        ({"mesh": {"z_smoothing_sigma": 1.0, "block_size": 64}}, "mesh.z_smoothing_sigma needs the whole volume"),
        ({"segment": {"tile_size": 32, "overlap": 32}}, "segment.overlap (32) must be below segment.tile_size (32)"),
        (
            {"preprocess": {"low_percentile": 99.0, "high_percentile": 1.0}},
            "preprocess.low_percentile (99.0) must be below preprocess.high_percentile (1.0)",
        ),
    ],
    ids=[
        "misspelt-key", "out-of-range", "wrong-type", "tile-not-a-multiple", "z-smoothing-in-blocks",
        "overlap-not-below-tile", "percentiles-swapped",
    ],
)
def test_bad_configuration_stops_before_any_work(tmp_path, config_override, message):
    project = make_project(tmp_path, **config_override)
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (project / "results").exists()


def test_missing_voxel_size_is_refused_naming_the_sample(tmp_path):
    stack = own_stack(tmp_path)
    project = make_project(tmp_path, rows=(DEMO_ROW, row("s1", stack, voxel="\t10\t10")))
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert "sample 's1', column 'voxel_size_z_nm': '' is not a number" in result.stdout + result.stderr


def test_a_project_inside_a_slice_folder_is_refused_before_any_work(tmp_path):
    stack = own_stack(tmp_path)
    project = make_project(stack / "project", rows=(DEMO_ROW, row("s1", stack)))
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert f"sample 's1', column 'slices': results: lies in the input folder {stack}" in result.stdout + result.stderr


def test_sample_sheet_with_a_misspelt_column_is_refused_and_hash_in_a_path_is_kept(tmp_path):
    stack = own_stack(tmp_path)
    hashed = stack.rename(tmp_path / "stack#2")
    project = make_project(tmp_path, rows=(DEMO_ROW, "# a comment line\n", row("s1", hashed)))
    result = snakemake(project, "-n", "results/s1/preprocessed/chunk0000")
    assert result.returncode == 0, result.stderr[-2000:]
    sheet = project / "config" / "samples.tsv"
    sheet.write_text(sheet.read_text().replace("ground_truth", "ground_truh"))
    result = snakemake(project, "-n")
    assert result.returncode != 0 and "unknown column(s) ['ground_truh']" in result.stdout + result.stderr


def test_missing_weights_are_refused_when_not_training(tmp_path):
    project = make_project(tmp_path, train={"enabled": False}, model={"weights": "nowhere.weights.h5"})
    result = snakemake(project, "-n")
    assert result.returncode != 0 and "nowhere.weights.h5" in result.stdout + result.stderr


def _outputs(project):
    masks = {
        path.relative_to(project): path.read_bytes()
        for path in sorted((project / "results").glob("*/masks/*/*/*.png"))  # sample/masks/class/chunk
    }
    assert len(masks) == TINY_CONFIG["demo"]["n_slices"]
    return masks, (project / "results/demo/mesh_summary.tsv").read_text()


@pytest.mark.slow
def test_repeated_runs_give_identical_results_and_a_finished_run_does_nothing(tmp_path):
    project = make_project(tmp_path)
    first = snakemake(project)
    assert first.returncode == 0, first.stderr[-3000:]
    masks, summary = _outputs(project)
    shutil.rmtree(project / "results")  # checkpoints too: the second run trains from scratch
    again = snakemake(project)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _outputs(project) == (masks, summary)
    third = snakemake(project)
    assert third.returncode == 0 and "Nothing to be done" in third.stdout + third.stderr


def test_weights_trained_for_another_network_are_refused_before_any_work(tmp_path):
    weights = tmp_path / "other.weights.h5"
    weights.write_bytes(b"not read: the record beside it already disagrees")
    (tmp_path / "other.weights.h5.json").write_text('{"settings": {"unet": {"depth": 4, "base_filters": 32}}}')
    project = make_project(tmp_path, train={"enabled": False}, model={**TINY_CONFIG["model"], "weights": str(weights)})
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert "depth: trained with 4, configured 2" in result.stdout + result.stderr
    assert not (project / "results").exists()


def test_weights_trained_for_the_classes_in_another_order_are_refused_before_any_work(tmp_path):
    weights = tmp_path / "two.weights.h5"
    weights.write_bytes(b"not read: the record beside it already disagrees")
    (tmp_path / "two.weights.h5.json").write_text(
        '{"classes": ["membrane", "mitochondrion"], "settings": {"unet": {"depth": 2}}}'
    )
    model = {**TINY_CONFIG["model"], "weights": str(weights), "classes": ["mitochondrion", "membrane"]}
    project = make_project(tmp_path, train={"enabled": False}, model=model)
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert "trained for the classes ['membrane', 'mitochondrion'], in that order" in result.stdout + result.stderr
    assert not (project / "results").exists()


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory):
    """Weights of TINY_CONFIG's network, untrained: for runs that segment without training."""
    from vem3d.train import save_weights
    from vem3d.unet import UNetConfig, build_unet

    path = tmp_path_factory.mktemp("weights") / "unet.weights.h5"
    save_weights(build_unet(UNetConfig(depth=2, base_filters=4)), path)
    return path


def segmenting_with(weights, segment=None):
    """Config overrides for a project that segments with given weights and trains nothing."""
    return {
        "train": {"enabled": False},
        "model": {**TINY_CONFIG["model"], "weights": str(weights)},
        "segment": {**EVERYTHING_FOREGROUND["segment"], **(segment or {})},
    }


@pytest.mark.slow
def test_a_failing_sample_leaves_the_others_to_finish_with_keep_going(tmp_path, untrained_weights):
    rows = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        rows[name] = row(name, own_stack(tmp_path / name))
    (tmp_path / "b" / "stack" / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    project = make_project(tmp_path, rows=rows.values(), **segmenting_with(untrained_weights))
    # The study table and the meshes, not the pictures: fewer jobs, the same dependencies.
    targets = ["results/study_objects.tsv", *(f"results/{name}/mesh_summary.tsv" for name in rows)]
    result = snakemake(project, "--keep-going", *targets)
    assert result.returncode != 0
    for sample in ("a", "c"):
        for name in ("meshes/mitochondrion.stl", "objects_summary.tsv"):
            assert (project / "results" / sample / name).is_file(), (sample, name)
    assert "img2.png: cannot be read" in (project / "logs/b/preprocess/chunk0000.log").read_text()
    assert not (project / "results/b/masks").exists()
    # The study table covers the whole sheet, so it waits; the message says how to get it now.
    assert not (project / "results/study_objects.tsv").exists()
    assert "no results yet for sample(s) b" in result.stderr
    (project / "config/samples.tsv").write_text(HEADER + rows["a"] + "#" + rows["b"] + rows["c"])
    targets = [target for target in targets if "/b/" not in target]
    dry_run = snakemake(project, *targets, "-n", "--quiet", "rules")
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", dry_run.stdout, flags=re.MULTILINE))
    assert planned == {"study_objects": "1", "total": "1"}
    assert snakemake(project, *targets).returncode == 0
    assert list(pd.read_csv(project / "results/study_objects.tsv", sep="\t")["sample"]) == ["a", "c"]


def _kill_while_segmenting(project):
    """Run the workflow's per-slice steps on one core and kill Snakemake and its jobs
    while a segment job, not the first, has written some of its masks. Returns the
    finished chunks and the one killed."""
    masks = project / "results/own/masks/mitochondrion"
    benchmarks = project / "results/benchmarks/own/segment"
    with open(project / "run.log", "w") as output:
        run = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(project),
             "--cores", "1", "--until", "segment"],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            finished = sorted(path.stem for path in benchmarks.glob("chunk*.tsv"))
            running = [
                folder.name for folder in masks.glob("chunk*")
                if folder.name not in finished and any(folder.glob("*.png"))
            ]
            if finished and running:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"no segment job was caught mid-way:\n{(project / 'run.log').read_text()[-3000:]}")
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    return finished, running[0]


@pytest.mark.slow
def test_a_segment_chunk_killed_mid_way_is_redone_and_finished_chunks_are_not(tmp_path, untrained_weights):
    # Two chunks of two slices of 256 x 256, in tiles of 32, one tile per forward pass:
    # a slice takes long enough for a chunk to be caught with some of its masks written.
    stack = own_stack(tmp_path, n_slices=4, shape=(256, 256))
    project = make_project(
        tmp_path, rows=(row("own", stack),), chunk_size=2, **segmenting_with(untrained_weights, {"batch_size": 1})
    )
    finished, killed = _kill_while_segmenting(project)
    logs = {chunk: project / f"logs/own/segment/{chunk}.log" for chunk in finished}
    before = {chunk: (log.stat().st_mtime_ns, log.read_text()) for chunk, log in logs.items()}
    # Snakemake itself was killed (a power cut, a killed login session): the partial
    # outputs stay, marked incomplete, and its lock on the folder stays until --unlock.
    assert (project / "results/own/masks/mitochondrion" / killed).is_dir()
    locked = snakemake(project, "--until", "segment")
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    assert snakemake(project, "--unlock").returncode == 0
    dry_run = snakemake(project, "-n", "--until", "segment")
    planned = re.findall(r"rule segment:.*?wildcards: sample=own, chunk=(chunk\d{4})", dry_run.stdout, re.DOTALL)
    assert planned == [killed]
    again = snakemake(project, "--until", "segment")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {chunk: (log.stat().st_mtime_ns, log.read_text()) for chunk, log in logs.items()} == before
    # The killed chunk is redone; slices it had finished before the kill are reused (SliceCache).
    redone = (project / f"logs/own/segment/{killed}.log").read_text()
    reused = int(re.search(r"(\d+) of 2 slices unchanged", redone).group(1))
    segmented = re.search(r"segmented (\d+) slices in", redone)
    assert reused + (int(segmented.group(1)) if segmented else 0) == 2
    masks = sorted(path.stem for path in (project / "results/own/masks/mitochondrion").glob("chunk*/*.png"))
    assert masks == [f"img{z}" for z in range(4)]


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_weights_and_again_when_they_change(tmp_path, untrained_weights):
    start = tmp_path / "start.weights.h5"
    shutil.copyfile(untrained_weights, start)
    project = make_project(tmp_path, train={**TINY_CONFIG["train"], "initial_weights": str(start)})
    model = "results/model/unet.weights.h5"
    first = snakemake(project, model)
    assert first.returncode == 0, first.stderr[-3000:]
    made_by = json.loads((project / f"{model}.json").read_text())
    assert made_by["initial_weights"] == str(start)
    assert made_by["initial_weights_sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    # Other weights under the same name: training runs again, from them, not resumed
    # from the run that started from the first ones.
    shutil.copyfile(project / model, start)
    assert planned_jobs(project)["train"] == 1
    again = snakemake(project, model)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (project / "logs/train.log").read_text()
    assert "fine-tuning from" in log and "resuming" not in log
    assert len(list((project / "results/model/checkpoints").iterdir())) == 2
