"""Bad input and faults: each case handled as documented, or stopped with a clear message."""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest

from test_workflow import DEMO_ROW, TINY_CONFIG, make_project, own_stack, row, snakemake
from vem3d.mesh import mesh_from_masks
from vem3d.preprocess import preprocess_stack, read_preprocessed
from vem3d.slices import read_slice


def test_mixed_bit_depths_are_each_normalised_to_the_same_range(tmp_path):
    ramp = np.tile(np.arange(64), (16, 1))
    iio.imwrite(tmp_path / "a.png", (ramp * 4).astype(np.uint8))
    iio.imwrite(tmp_path / "b.png", (ramp * 1000).astype(np.uint16))
    preprocess_stack(tmp_path, ["a", "b"], tmp_path / "out", reference_name="a")
    (_, eight_bit, _), (_, sixteen_bit, _) = read_preprocessed(tmp_path / "out")
    np.testing.assert_allclose(eight_bit, sixteen_bit, atol=1e-3)


def test_rgba_slice_is_read_as_grey(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = 7  # alpha is ignored
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert np.all(read_slice(tmp_path / "rgba.png") == 100)


def test_all_black_and_all_white_slices_pass_through(tmp_path):
    iio.imwrite(tmp_path / "black.png", np.zeros((8, 8), np.uint8))
    iio.imwrite(tmp_path / "white.png", np.full((8, 8), 255, np.uint8))
    preprocess_stack(tmp_path, ["black", "white"], tmp_path / "out")
    for _, image, _ in read_preprocessed(tmp_path / "out"):
        np.testing.assert_allclose(image, 0.5, atol=1e-4)


def test_empty_segmentation_gives_zero_objects_and_no_stl(tmp_path):
    masks = tmp_path / "masks" / "chunk0000"
    masks.mkdir(parents=True)
    for z in range(3):
        iio.imwrite(masks / f"s{z}.png", np.zeros((16, 16), np.uint8))
    summary = mesh_from_masks({"mito": [masks]}, (10, 5, 5), tmp_path / "meshes", tmp_path / "summary.tsv").iloc[0]
    assert summary["objects"] == 0 and summary["faces"] == 0
    assert list((tmp_path / "meshes").iterdir()) == []
    assert (tmp_path / "summary.tsv").read_text().splitlines()[1].startswith("mito\t0\t0")


@pytest.mark.parametrize(
    "config_override, message",
    [
        ({"chunk_sise": 4}, "chunk_sise"),
        ({"train": {"epochs": 0}}, "epochs"),
        ({"segment": {"tile_size": "big"}}, "tile_size"),
    ],
    ids=["misspelt-key", "out-of-range", "wrong-type"],
)
def test_bad_configuration_stops_before_any_work(tmp_path, config_override, message):
    project = make_project(tmp_path, **config_override)
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (project / "results").exists()


def test_missing_voxel_size_is_refused(tmp_path):
    stack = own_stack(tmp_path)
    project = make_project(tmp_path, rows=(DEMO_ROW, row("s1", stack, voxel="\t10\t10")))
    result = snakemake(project, "-n")
    assert result.returncode != 0 and "voxel_size_z_nm" in result.stdout + result.stderr


def test_missing_weights_are_refused_when_not_training(tmp_path):
    project = make_project(tmp_path, train={"enabled": False}, model={"weights": "nowhere.weights.h5"})
    result = snakemake(project, "-n")
    assert result.returncode != 0 and "nowhere.weights.h5" in result.stdout + result.stderr


def _outputs(project):
    masks = {path.relative_to(project): path.read_bytes() for path in sorted((project / "results").glob("*/masks/*/*.png"))}
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
