"""The vem3d command line: every subcommand on tiny data, in process and as a program."""

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import zarr

from vem3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("synth", "preprocess", "train", "segment", "volume", "mesh", "stats")
TINY_MODEL = ["--depth", "2", "--base-filters", "4"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    assert f"usage: vem3d {command}" in capsys.readouterr().out


def test_the_program_runs_and_lists_its_subcommands():
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "vem3d.cli", "--help"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


def test_missing_subcommand_or_voxel_size_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    with pytest.raises(SystemExit):
        main(["volume", str(tmp_path), "--out-dir", str(tmp_path)])
    assert "--voxel-size" in capsys.readouterr().err


def test_synth_to_stats_on_a_tiny_stack(tmp_path):
    assert main(["synth", str(tmp_path / "demo"), "--slices", "4", "--size", "64", "--seed", "0", "--label-every", "2"]) == 0
    assert len(list((tmp_path / "demo/slices").glob("*.png"))) == 4
    main(["preprocess", str(tmp_path / "demo/slices"), str(tmp_path / "pre")])
    assert (tmp_path / "pre/shapes.tsv").is_file()
    main(
        ["train", "--preprocessed", str(tmp_path / "pre"), "--labels", str(tmp_path / "demo/labels"),
         "--out-dir", str(tmp_path / "model"), *TINY_MODEL,
         "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "32"]
    )
    assert (tmp_path / "model/unet.weights.h5").is_file()
    assert len(pd.read_csv(tmp_path / "model/training_history.tsv", sep="\t")) == 1
    segment = ["segment", str(tmp_path / "pre"), "--weights", str(tmp_path / "model/unet.weights.h5"),
               "--out-dir", str(tmp_path / "sample"), *TINY_MODEL, "--tile-size", "32", "--overlap", "8",
               "--precision", "mixed_bfloat16", "--cache-dir", str(tmp_path / "cache")]
    main(segment)
    masks = sorted((tmp_path / "sample/masks/foreground").glob("*.png"))
    assert len(masks) == 4 and iio.imread(masks[0]).shape == (64, 64)
    assert len(list((tmp_path / "cache").iterdir())) == 4  # one entry per slice, for later runs
    # Again over its own outputs, as a run resumed after an interruption is: every slice
    # comes from the cache, onto the files already there.
    written = [mask.read_bytes() for mask in masks]
    main(segment)
    assert [mask.read_bytes() for mask in masks] == written
    assert not list((tmp_path / "sample").rglob(".partial-*"))

    # Mesh and measure the ground truth, which certainly holds objects.
    truth = str(tmp_path / "demo/ground_truth")
    sample = str(tmp_path / "sample")
    main(["volume", truth, "--voxel-size", "20", "10", "10", "--out-dir", sample, "--class-name", "mito"])
    kept = str(tmp_path / "kept")
    main(["volume", truth, "--voxel-size", "20", "10", "10", "--out-dir", kept, "--class-name", "mito",
          "--cache-dir", str(tmp_path / "volume_cache")])
    np.testing.assert_array_equal(zarr.open_array(f"{kept}/volume.zarr/mito/0")[:],
                                  zarr.open_array(f"{sample}/volume.zarr/mito/0")[:])
    assert (tmp_path / "volume_cache/mito/masks.zarr").is_dir()  # for the next run
    main(["mesh", f"{sample}/volume.zarr", "--out-dir", sample])
    assert (tmp_path / "sample/meshes/mito.stl").is_file()
    main(["stats", f"{sample}/volume.zarr", "--out-dir", sample])
    objects = pd.read_csv(tmp_path / "sample/objects.tsv", sep="\t")
    summary = pd.read_csv(tmp_path / "sample/objects_summary.tsv", sep="\t").iloc[0]
    mesh_summary = pd.read_csv(tmp_path / "sample/mesh_summary.tsv", sep="\t").iloc[0]
    assert len(objects) == summary["objects"] == mesh_summary["objects"] > 0
    assert objects["voxels"].sum() == mesh_summary["foreground_voxels"]
    assert mesh_summary["voxel_volume_um3"] == pytest.approx(mesh_summary["foreground_voxels"] * 20 * 10 * 10 / 1e9)


def test_train_needs_one_label_folder_or_one_per_preprocessed_folder(tmp_path):
    with pytest.raises(SystemExit, match="2 preprocessed folders but 3 label folders"):
        main(["train", "--preprocessed", "a", "b", "--labels", "x", "y", "z", "--out-dir", str(tmp_path)])


@pytest.mark.parametrize("batch_size", ["0", "-2", "many"])
def test_segment_batch_size_is_a_positive_number_or_auto(batch_size, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path), "--weights", "w.h5", "--out-dir", str(tmp_path), "--batch-size", batch_size])
    assert "expected a positive number of tiles or auto" in capsys.readouterr().err
