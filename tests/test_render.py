import re

import imageio.v3 as iio
import numpy as np
import pytest

import vem3d.mesh as mesh_module
from vem3d.mesh import (
    area_and_volume,
    decimate_mesh,
    read_stl,
    read_stl_simplified,
    simplify_triangles,
    volume_to_mesh,
    write_stl,
)
from vem3d.render import (
    choose_montage_slices,
    mesh_pictures_from_stl,
    montage_from_folders,
    write_mesh_viewer,
)
from vem3d.synth import write_demo_stack


@pytest.fixture(scope="module")
def ball_mesh():
    grids = np.meshgrid(*[np.arange(48)] * 3, indexing="ij")
    ball = sum((grid - 24) ** 2 for grid in grids) <= 18**2
    return volume_to_mesh(ball, (10.0, 10.0, 10.0))


def test_stl_reads_back_as_the_indexed_mesh_written(tmp_path, ball_mesh):
    vertices, faces = ball_mesh
    write_stl(tmp_path / "ball.stl", vertices, faces)
    read_vertices, read_faces = read_stl(tmp_path / "ball.stl")
    assert len(read_faces) == len(faces) and len(read_vertices) == len(vertices)
    assert area_and_volume(read_vertices, read_faces) == pytest.approx(area_and_volume(vertices, faces), rel=1e-6)


def test_decimation_meets_the_face_budget_and_keeps_the_shape(ball_mesh):
    vertices, faces = ball_mesh
    assert decimate_mesh(vertices, faces, len(faces))[1] is faces  # within budget: unchanged
    small_vertices, small_faces = decimate_mesh(vertices, faces, len(faces) // 10)
    assert len(faces) // 20 < len(small_faces) <= len(faces) // 10
    assert small_faces.max() < len(small_vertices)
    # Orientation kept: the enclosed volume stays positive and close, as does the area.
    assert area_and_volume(small_vertices, small_faces) == pytest.approx(area_and_volume(vertices, faces), rel=0.03)
    with pytest.raises(ValueError, match="max_faces"):
        decimate_mesh(vertices, faces, 0)


def test_mesh_pictures_draw_the_mesh_from_three_angles_and_in_3d(tmp_path, ball_mesh):
    write_stl(tmp_path / "ball.stl", *ball_mesh)
    drawn, shown = mesh_pictures_from_stl(
        tmp_path / "ball.stl", tmp_path / "preview.png", tmp_path / "viewer.html", 2000, 3000
    )
    assert 0 < drawn <= 2000 and drawn < shown <= 3000
    picture = iio.imread(tmp_path / "preview.png")
    assert picture.shape[1] > 2 * picture.shape[0]  # three panels side by side
    # The mesh colour (orange-brown: red well above blue) covers part of the picture.
    rgb = picture[..., :3].astype(int)
    assert ((rgb[..., 0] - rgb[..., 2]) > 60).mean() > 0.01
    assert "plotly" in (tmp_path / "viewer.html").read_text()


def test_missing_mesh_gives_a_picture_and_a_page_that_say_so(tmp_path):
    drawn_and_shown = mesh_pictures_from_stl(tmp_path / "none.stl", tmp_path / "preview.png", tmp_path / "viewer.html")
    assert drawn_and_shown == (0, 0)
    assert iio.imread(tmp_path / "preview.png").ndim == 3
    assert "nothing was segmented" in (tmp_path / "viewer.html").read_text()


def test_viewer_page_is_self_contained_and_within_its_face_budget(tmp_path, ball_mesh):
    shown = write_mesh_viewer(*ball_mesh, tmp_path / "viewer.html", max_faces=3000, title="ball")
    assert 0 < shown <= 3000
    page = (tmp_path / "viewer.html").read_text()
    assert "Mesh3d".lower() in page.lower() and f"ball: {shown} faces" in page
    # plotly.js is inline: no script is fetched from anywhere.
    assert re.findall(r"<script[^>]*>", page) and not re.findall(r"<script[^>]*\bsrc=", page)
    assert len(page) > 3_000_000  # the embedded library


def test_montage_shows_labelled_slices_with_outlines(tmp_path):
    folders = write_demo_stack(tmp_path / "demo", n_slices=8, size=64, seed=1, label_every=2)
    shown = montage_from_folders(
        folders["slices"], [folders["ground_truth"]], tmp_path / "montage.png", folders["labels"], "label", n_panels=3
    )
    assert shown == ["slice_0001", "slice_0005", "slice_0007"]  # spread over the labelled slices
    picture = iio.imread(tmp_path / "montage.png")[..., :3].astype(int)
    assert ((picture[..., 0] > 200) & (picture[..., 1] > 200) & (picture[..., 2] < 80)).any()  # yellow outline
    unlabelled = montage_from_folders(folders["slices"], [folders["ground_truth"]], tmp_path / "all.png", n_panels=20)
    assert len(unlabelled) == 8


def test_montage_slices_spread_from_first_to_last():
    assert choose_montage_slices(64, 4) == [0, 21, 42, 63]
    assert choose_montage_slices(2, 6) == [0, 1]


def test_simplifying_a_chunk_at_a_time_equals_simplifying_whole(tmp_path, ball_mesh, monkeypatch):
    vertices, faces = ball_mesh
    triangles = vertices[faces]
    whole = simplify_triangles(lambda: [triangles], len(faces), len(faces) // 10, 10.0)
    step = len(faces) // 7  # 8 chunks, the last one short
    chunked = simplify_triangles(
        lambda: (triangles[start : start + step] for start in range(0, len(faces), step)), len(faces), len(faces) // 10, 10.0
    )
    np.testing.assert_array_equal(chunked[1], whole[1])
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    assert len(whole[1]) <= len(faces) // 10

    # From an STL file, read a chunk at a time, as from the mesh in memory.
    write_stl(tmp_path / "ball.stl", vertices, faces)
    monkeypatch.setattr(mesh_module, "TRIANGLES_PER_CHUNK", step)
    from_file = read_stl_simplified(tmp_path / "ball.stl", len(faces) // 10)
    in_memory = decimate_mesh(*read_stl(tmp_path / "ball.stl"), len(faces) // 10)
    np.testing.assert_array_equal(from_file[1], in_memory[1])
    np.testing.assert_allclose(from_file[0], in_memory[0], rtol=1e-6)
    # Within the budget the file is read as it is.
    assert len(read_stl_simplified(tmp_path / "ball.stl", len(faces))[1]) == len(faces)


def test_a_truncated_stl_is_refused_naming_the_file(tmp_path, ball_mesh):
    write_stl(tmp_path / "ball.stl", *ball_mesh)
    data = (tmp_path / "ball.stl").read_bytes()
    (tmp_path / "ball.stl").write_bytes(data[: len(data) - 25])
    with pytest.raises(ValueError, match="ball.stl: not a binary STL"):
        read_stl_simplified(tmp_path / "ball.stl", 10)


def test_coordinates_beyond_the_cell_grid_are_refused(ball_mesh):
    vertices, faces = ball_mesh
    far = vertices[faces] + np.float32(1e12)  # 10^11 cells of 10 from the origin: no key holds the index
    with pytest.raises(ValueError, match="too far out"):
        simplify_triangles(lambda: [far], len(faces), len(faces) // 10, 10.0)
