import numpy as np
import pandas as pd
import pytest

from vem3d.slices import write_image
from vem3d.stats import OBJECT_COLUMNS, object_statistics, sphericity, statistics_from_volumes, study_table
from vem3d.volume import label_objects

# (centre (z, y, x) nm, radius nm) of balls far enough apart to be separate objects.
BALLS = [((200, 200, 200), 150), ((200, 400, 700), 120), ((200, 600, 1000), 100)]


def balls_volume(shape, voxel_size_nm, balls=BALLS):
    axes = [np.arange(n) * size for n, size in zip(shape, voxel_size_nm)]
    grids = np.meshgrid(*axes, indexing="ij")
    volume = np.zeros(shape, bool)
    for centre, radius in balls:
        volume |= sum((grid - c) ** 2 for grid, c in zip(grids, centre)) <= radius**2
    return volume


@pytest.mark.parametrize("voxel_size_nm, shape", [((10, 10, 10), (40, 80, 120)), ((20, 10, 10), (20, 80, 120))])
def test_balls_have_their_analytic_volume_area_and_position(voxel_size_nm, shape):
    objects = object_statistics(balls_volume(shape, voxel_size_nm), voxel_size_nm)
    assert list(objects.columns) == OBJECT_COLUMNS
    assert list(objects["object"]) == [1, 2, 3]
    for (centre, radius), row in zip(BALLS, objects.itertuples()):
        assert row.volume_um3 == pytest.approx(4 / 3 * np.pi * radius**3 / 1e9, rel=0.03)
        assert row.mesh_volume_um3 == pytest.approx(4 / 3 * np.pi * radius**3 / 1e9, rel=0.07)
        assert row.surface_area_um2 == pytest.approx(4 * np.pi * radius**2 / 1e6, rel=0.03)
        assert 0.97 < row.sphericity <= 1.0
        assert (row.centroid_z_nm, row.centroid_y_nm, row.centroid_x_nm) == pytest.approx(centre, abs=1e-6)
        # Outer faces of the extreme voxels whose centres lie within the radius.
        for axis, c, size in zip("zyx", centre, voxel_size_nm):
            first, last = np.ceil((c - radius) / size) * size, np.floor((c + radius) / size) * size
            assert getattr(row, f"bbox_{axis}_min_nm") == pytest.approx(first - size / 2)
            assert getattr(row, f"bbox_{axis}_max_nm") == pytest.approx(last + size / 2)


def test_objects_are_26_connected():
    volume = np.zeros((4, 4, 4), bool)
    volume[0, 0, 0] = volume[1, 1, 1] = True  # corner to corner: one object
    volume[3, 3, 3] = True
    _, n_objects = label_objects(volume)
    assert n_objects == 2


def test_a_box_has_the_sphericity_of_a_cube():
    volume = np.zeros((40, 40, 40), bool)
    volume[5:35, 5:35, 5:35] = True
    (row,) = object_statistics(volume, (1, 1, 1)).itertuples()
    assert row.voxels == 30**3
    assert row.sphericity == pytest.approx((np.pi / 6) ** (1 / 3), rel=0.05)  # 0.806; rounded edges raise it


def test_empty_volume_gives_an_empty_table_and_a_zero_summary(tmp_path, volume_of):
    objects = object_statistics(np.zeros((3, 4, 5), bool), (20, 10, 10))
    assert objects.empty and list(objects.columns) == OBJECT_COLUMNS
    masks = tmp_path / "masks" / "chunk0000"
    for z in range(3):
        write_image(masks / f"s{z}.png", np.zeros((8, 8), np.uint8))
    volume = volume_of({"foreground": [masks]}, (20, 10, 10))
    summary = statistics_from_volumes(volume, tmp_path / "objects.tsv", tmp_path / "summary.tsv").iloc[0]
    assert summary["objects"] == 0 and summary["total_volume_um3"] == 0 and summary["volume_fraction"] == 0
    assert np.isnan(summary["median_volume_um3"]) and np.isnan(summary["median_volume_uncut_um3"])
    assert pd.read_csv(tmp_path / "objects.tsv", sep="\t").empty
    assert (tmp_path / "summary.tsv").read_text().splitlines()[1].split("\t")[6] == "NA"


def test_masks_give_object_table_summary_and_study_table(tmp_path, volume_of):
    voxel_size_nm = (20, 10, 10)
    volume = balls_volume((20, 80, 120), voxel_size_nm)
    volume[0, 0, 0] = True  # a one-voxel speck, removed by min_object_voxels
    masks = tmp_path / "masks"
    for z, plane in enumerate(volume):
        write_image(masks / f"chunk{z // 8:04d}" / f"slice{z}.png", plane.astype(np.uint8) * 255)
    chunks = sorted(masks.iterdir())
    cleaned = volume_of({"ball": chunks}, voxel_size_nm, min_object_voxels=2)
    summary = statistics_from_volumes(cleaned, tmp_path / "objects.tsv", tmp_path / "summary.tsv").iloc[0]
    objects = pd.read_csv(tmp_path / "objects.tsv", sep="\t")
    assert list(objects.columns) == ["class", *OBJECT_COLUMNS]
    assert len(objects) == 3 and set(objects["class"]) == {"ball"}
    assert summary["objects"] == 3
    assert summary["total_volume_um3"] == pytest.approx(objects["volume_um3"].sum(), rel=1e-5)
    assert summary["median_volume_um3"] == pytest.approx(4 / 3 * np.pi * 120**3 / 1e9, rel=0.03)
    assert summary["volume_fraction"] == pytest.approx((volume.sum() - 1) / volume.size)

    study = study_table([tmp_path / "summary.tsv"] * 2, ["a", "b"], tmp_path / "study.tsv")
    assert list(study["sample"]) == ["a", "b"] and list(study.columns[:2]) == ["sample", "class"]
    assert (study["objects"] == 3).all()
    with pytest.raises(ValueError, match="2 summaries but 1 sample"):
        study_table([tmp_path / "summary.tsv"] * 2, ["a"], tmp_path / "study.tsv")


def test_objects_the_stack_cuts_are_flagged_and_counted(tmp_path, volume_of):
    voxel_size_nm = (10, 10, 10)
    volume = balls_volume((40, 80, 120), voxel_size_nm)
    volume[10:20, 40:50, 110:120] = True  # a box on the stack's last x face
    volume[39, 70:75, 5:10] = True  # a plate on its last slice
    objects = object_statistics(volume, voxel_size_nm)
    assert len(objects) == 5
    cut = objects[objects["touches_border"]]
    assert sorted(cut["voxels"]) == [25, 1000]
    assert not objects.loc[~objects["touches_border"], "voxels"].isin([25, 1000]).any()  # the balls
    masks = tmp_path / "masks"
    for z, plane in enumerate(volume):
        write_image(masks / f"slice{z}.png", plane.astype(np.uint8) * 255)
    summary = statistics_from_volumes(
        volume_of({"ball": [masks]}, voxel_size_nm), tmp_path / "objects.tsv", tmp_path / "summary.tsv", block_size=16
    ).iloc[0]
    assert summary["objects"] == 5 and summary["objects_touching_border"] == 2
    assert summary["median_volume_uncut_um3"] == pytest.approx(4 / 3 * np.pi * 120**3 / 1e9, rel=0.03)  # the balls
    assert pd.read_csv(tmp_path / "objects.tsv", sep="\t")["touches_border"].sum() == 2


def test_sphericity_of_a_ball_is_one():
    radius = 2.0
    assert sphericity(4 / 3 * np.pi * radius**3, 4 * np.pi * radius**2) == pytest.approx(1.0)
    assert np.isnan(sphericity(0.0, 0.0))


def test_a_speck_without_a_surface_is_still_counted():
    volume = np.zeros((5, 5, 5), bool)
    volume[2, 2, 2] = True
    (row,) = object_statistics(volume, (20, 10, 10)).itertuples()
    assert row.voxels == 1 and row.volume_um3 == pytest.approx(2000 / 1e9)
    assert row.surface_area_um2 == 0 and np.isnan(row.sphericity)
