"""The vem3d command line: every subcommand on tiny data, in process and as a program."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import zarr

import vem3d.segment
from vem3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("synth", "preprocess", "train", "segment", "volume", "mesh", "stats", "evaluate", "pictures", "montage", "study")
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


def test_synth_to_stats_on_a_tiny_stack(tmp_path, capsys):
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
    # The model's settings come from the weights' record: no --depth here.
    segment = ["segment", str(tmp_path / "pre"), "--weights", str(tmp_path / "model/unet.weights.h5"),
               "--out-dir", str(tmp_path / "sample"), "--tile-size", "32", "--overlap", "8",
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
    # One cache folder for volume and mesh: the mesh step keeps the volume step's entries.
    main(["mesh", f"{kept}/volume.zarr", "--out-dir", kept, "--cache-dir", str(tmp_path / "volume_cache")])
    assert (tmp_path / "volume_cache/mito/block_meshes").is_dir()
    assert (tmp_path / "volume_cache/mito/slices.npz").is_file() and (tmp_path / "volume_cache/mito/cleaned.npz").is_file()
    main(["mesh", f"{sample}/volume.zarr", "--out-dir", sample])
    assert (tmp_path / "sample/meshes/mito.stl").is_file()
    main(["stats", f"{sample}/volume.zarr", "--out-dir", sample])
    objects = pd.read_csv(tmp_path / "sample/objects.tsv", sep="\t")
    summary = pd.read_csv(tmp_path / "sample/objects_summary.tsv", sep="\t").iloc[0]
    mesh_summary = pd.read_csv(tmp_path / "sample/mesh_summary.tsv", sep="\t").iloc[0]
    assert len(objects) == summary["objects"] == mesh_summary["objects"] > 0
    assert objects["voxels"].sum() == mesh_summary["foreground_voxels"]
    assert mesh_summary["voxel_volume_um3"] == pytest.approx(mesh_summary["foreground_voxels"] * 20 * 10 * 10 / 1e9)

    # The steps after: the volume of the ground truth scores perfectly against it.
    assert main(["evaluate", f"{sample}/volume.zarr", "--ground-truth", truth, "--out-dir", sample]) == 0
    scores = pd.read_csv(tmp_path / "sample/evaluation/scores.tsv", sep="\t")
    assert scores["iou"].iloc[-1] == pytest.approx(1.0)
    assert (tmp_path / "sample/evaluation/object_scores.tsv").is_file()
    assert main(["pictures", f"{sample}/meshes/mitp.stl", "--out-dir", sample]) == 2  # a typo: no such file
    assert "mitp.stl: no such STL file" in capsys.readouterr().err
    assert not (tmp_path / "sample/mesh_preview").exists()
    main(["pictures", f"{sample}/meshes/mito.stl", "--out-dir", sample, "--preview-max-faces", "500"])
    assert iio.imread(tmp_path / "sample/mesh_preview/mito.png").ndim == 3
    assert "<html" in (tmp_path / "sample/mesh_viewer/mito.html").read_text()[:1000].lower()
    main(["montage", str(tmp_path / "demo/slices"), str(tmp_path / "sample/masks/foreground"), "--out-dir", sample,
          "--reference", truth, "--reference-name", "ground truth", "--panels", "2"])
    assert (tmp_path / "sample/montage/foreground.png").is_file()
    assert main(["study", sample, kept, "--out", str(tmp_path / "study.tsv")]) == 2  # kept/ has no statistics
    assert not (tmp_path / "study.tsv").exists()
    main(["study", sample, "--out", str(tmp_path / "study.tsv")])
    study = pd.read_csv(tmp_path / "study.tsv", sep="\t")
    assert study["sample"].tolist() == ["sample"] and study["objects"].iloc[0] == summary["objects"]


def test_volume_of_several_classes_in_one_call(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "demo"), "--slices", "8", "--size", "64", "--seed", "0"]) == 0
    truth = str(tmp_path / "demo/ground_truth")
    main(["volume", "--class-masks", "mito", truth, "--class-masks", "copy", truth,
          "--voxel-size", "20", "10", "10", "--out-dir", str(tmp_path)])
    group = zarr.open_group(tmp_path / "volume.zarr", mode="r")
    assert list(group.attrs["classes"]) == ["mito", "copy"]
    assert group["mito/0"][:].any()
    np.testing.assert_array_equal(group["mito/0"][:], group["copy/0"][:])
    # z-smoothing reads the probabilities (here the 0/255 truth itself).
    main(["volume", "--class-masks", "mito", truth, "--class-probabilities", "mito", truth, "--z-smoothing-sigma", "1",
          "--voxel-size", "20", "10", "10", "--out-dir", str(tmp_path / "smoothed")])
    smoothed = zarr.open_array(tmp_path / "smoothed/volume.zarr/mito/0", mode="r")[:]
    assert smoothed.shape == group["mito/0"].shape and smoothed.any()
    assert not np.array_equal(smoothed, group["mito/0"][:])  # smoothing across slices changed it
    arguments = ["volume", "--class-masks", "mito", truth, "--class-probabilities", "mitochondrion", truth,
                 "--z-smoothing-sigma", "1", "--voxel-size", "20", "10", "10", "--out-dir", str(tmp_path / "misnamed")]
    assert main(arguments) == 2
    assert "none given for ['mito'] (given for ['mitochondrion'])" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one class's folders, or --class-masks: not both
        main(["volume", truth, "--class-masks", "mito", truth, "--voxel-size", "20", "10", "10", "--out-dir", str(tmp_path)])


def test_train_needs_one_label_folder_or_one_per_preprocessed_folder(tmp_path, capsys):
    assert main(["train", "--preprocessed", "a", "b", "--labels", "x", "y", "z", "--out-dir", str(tmp_path)]) == 2
    assert "vem3d train: 2 preprocessed folders but 3 label folders" in capsys.readouterr().err


def test_segment_refuses_weights_trained_for_the_classes_in_another_order(tmp_path, capsys):
    weights = tmp_path / "unet.weights.h5"
    weights.write_bytes(b"not read: the record beside it already disagrees")
    Path(f"{weights}.json").write_text('{"classes": ["membrane", "mitochondrion"], "settings": {"unet": {}}}')
    arguments = ["segment", str(tmp_path), "--weights", str(weights), "--out-dir", str(tmp_path / "out")]
    assert main([*arguments, "--classes", "mitochondrion", "membrane"]) == 2
    assert "trained for the classes ['membrane', 'mitochondrion'], in that order" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_segment_takes_the_model_and_classes_not_given_from_the_weights_record(tmp_path, monkeypatch):
    weights = tmp_path / "unet.weights.h5"
    weights.write_bytes(b"not read: segment_folder is replaced")
    Path(f"{weights}.json").write_text(
        '{"classes": ["membrane", "mito"], "settings": {"unet": {"depth": 2, "batch_norm": false, "n_classes": 3}}}'
    )
    called = {}

    @functools.wraps(vem3d.segment.segment_folder)  # the parser reads its defaults from the signature
    def record_call(*args, **kwargs):
        called.update(args=args, **kwargs)

    monkeypatch.setattr(vem3d.segment, "segment_folder", record_call)
    arguments = ["segment", str(tmp_path), "--weights", str(weights), "--out-dir", str(tmp_path / "out")]
    assert main([*arguments, "--base-filters", "8"]) == 0
    unet = called["unet_config"]
    assert (unet.depth, unet.batch_norm, unet.base_filters, unet.n_classes) == (2, False, 8, 3)
    assert [folder.name for folder in called["args"][3]] == ["membrane", "mito"]  # the mask folders


def test_segment_options_given_are_checked_against_the_weights_record(tmp_path, capsys):
    weights = tmp_path / "unet.weights.h5"
    weights.write_bytes(b"not read: the record beside it already disagrees")
    Path(f"{weights}.json").write_text('{"classes": ["mito"], "settings": {"unet": {"depth": 2}}}')
    arguments = ["segment", str(tmp_path), "--weights", str(weights), "--out-dir", str(tmp_path / "out")]
    assert main([*arguments, "--depth", "3"]) == 2
    assert "depth: trained with 2, configured 3" in capsys.readouterr().err
    Path(f"{weights}.json").write_text("[2, 3]")
    assert main(arguments) == 2
    assert "unet.weights.h5.json: not a weights record: expected a JSON object, found list" in capsys.readouterr().err


@pytest.mark.parametrize("batch_size", ["0", "-2", "many"])
def test_segment_batch_size_is_a_positive_number_or_auto(batch_size, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path), "--weights", "w.h5", "--out-dir", str(tmp_path), "--batch-size", batch_size])
    assert "expected a positive number of tiles or auto" in capsys.readouterr().err
