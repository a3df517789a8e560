"""Property-based tests: the slice reader, connected components, the clean-up (whole and block by block)
and volume-to-mesh on random inputs."""

import imageio.v3 as iio
import numpy as np
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from stl import mesh as stl_mesh

from vem3d.mesh import is_watertight, volume_to_mesh, write_stl
from vem3d.slices import read_slice
from vem3d.volume import clean_blockwise, clean_objects, connected_components, fill_holes

shapes_2d = st.tuples(st.integers(1, 40), st.integers(1, 40))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    image=st.one_of(
        arrays(np.uint8, shapes_2d),
        arrays(np.uint16, shapes_2d),
    ),
    suffix=st.sampled_from([".png", ".tif"]),
)
def test_reader_gives_back_what_was_written(tmp_path, image, suffix):
    path = tmp_path / f"slice{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image, photometric="minisblack")
    else:
        iio.imwrite(path, image)
    np.testing.assert_array_equal(read_slice(path), image)


LONE_PIXEL_IN_THE_LAST_ROW = np.zeros((18, 5), bool)
LONE_PIXEL_IN_THE_LAST_ROW[17, 2] = True


@settings(max_examples=60, deadline=None)
@given(
    mask=st.one_of(arrays(bool, shapes_2d), arrays(bool, st.tuples(*[st.integers(1, 12)] * 3))),
    connectivity=st.sampled_from([6, 26]),
)
# connected-components-3d 4.1 gave this boolean image a second, phantom component.
@example(mask=LONE_PIXEL_IN_THE_LAST_ROW, connectivity=26)
def test_components_are_numbered_as_scipy_numbers_them(mask, connectivity):
    # Objects are numbered in raster order of their first voxel; statistics and scores rely on it.
    full = connectivity == 26
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim if full else 1)
    expected, expected_count = ndimage.label(mask, structure=structure)
    labels, count = connected_components(mask, connectivity)
    assert count == expected_count
    np.testing.assert_array_equal(labels, expected)


@settings(max_examples=40, deadline=None)
@given(volume=arrays(bool, st.tuples(*[st.integers(1, 12)] * 3)))
def test_filling_cavities_equals_scipy_fill_holes(volume):
    np.testing.assert_array_equal(fill_holes(volume), ndimage.binary_fill_holes(volume))


def hollow_cube_around_a_speck(side: int = 9) -> np.ndarray:
    """A cube's shell, and one voxel floating in its cavity."""
    volume = np.zeros((side,) * 3, bool)
    volume[1:-1, 1:-1, 1:-1] = True
    volume[2:-2, 2:-2, 2:-2] = False
    volume[side // 2, side // 2, side // 2] = True
    return volume


@settings(max_examples=60, deadline=None)
@given(
    volume=arrays(bool, st.tuples(*[st.integers(1, 12)] * 3)),
    min_voxels=st.integers(0, 6),
    fill_cavities=st.booleans(),
)
@example(volume=hollow_cube_around_a_speck(), min_voxels=0, fill_cavities=True)
@example(volume=hollow_cube_around_a_speck(), min_voxels=2, fill_cavities=True)
def test_clean_up_objects_are_those_of_the_cleaned_volume(volume, min_voxels, fill_cavities):
    # Small objects out (26-connected), then cavities filled as scipy fills them, then
    # numbered as scipy numbers them: what meshes and statistics are made of.
    structure = np.ones((3, 3, 3), bool)
    components, _ = ndimage.label(volume, structure)
    expected = volume & (np.bincount(components.ravel())[components] >= max(min_voxels, 1))
    if fill_cavities:
        expected = ndimage.binary_fill_holes(expected)
    expected_labels, expected_count = ndimage.label(expected, structure)
    labels, count = clean_objects(volume, min_voxels, fill_cavities)
    assert count == expected_count
    np.testing.assert_array_equal(labels, expected_labels)


def objects_in_nested_shells() -> np.ndarray:
    """Two cube shells, one inside the other's cavity, a speck inside the inner one's,
    and a speck in the outer cavity too: four objects, which filled are one."""
    volume = np.zeros((16, 16, 16), bool)
    for lo in (1, 5):
        volume[lo : 16 - lo, lo : 16 - lo, lo : 16 - lo] = True
        volume[lo + 1 : 15 - lo, lo + 1 : 15 - lo, lo + 1 : 15 - lo] = False
    volume[8, 8, 8] = True
    volume[3, 3, 8] = True
    return volume


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    volume=arrays(bool, st.tuples(*[st.integers(1, 14)] * 3)),
    min_voxels=st.integers(0, 6),
    fill_cavities=st.booleans(),
    block_size=st.integers(2, 9),
)
@example(volume=hollow_cube_around_a_speck(), min_voxels=0, fill_cavities=True, block_size=4)
@example(volume=objects_in_nested_shells(), min_voxels=0, fill_cavities=True, block_size=5)
@example(volume=objects_in_nested_shells(), min_voxels=0, fill_cavities=True, block_size=3)
def test_block_wise_clean_up_counts_the_objects_of_the_whole_one(tmp_path, volume, min_voxels, fill_cavities, block_size):
    # Objects inside filled cavities join the cavity's wall; the count is made without
    # labelling the filled volume again.
    labels, count = clean_objects(volume, min_voxels, fill_cavities)
    cleaned = clean_blockwise(volume, tmp_path / "cleaned.zarr", min_voxels, fill_cavities, block_size)
    np.testing.assert_array_equal(cleaned.volume[:], labels != 0)
    assert (cleaned.objects, cleaned.foreground_voxels) == (count, np.count_nonzero(labels))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    volume=arrays(bool, st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8))),
    voxel_size=st.tuples(*[st.floats(0.5, 60) for _ in range(3)]),
    smoothing=st.sampled_from([0.0, 0.75]),
)
def test_any_volume_meshes_to_a_valid_closed_stl(tmp_path, volume, voxel_size, smoothing):
    vertices, faces = volume_to_mesh(volume, voxel_size, smoothing_sigma=smoothing)
    if len(faces) == 0:
        # Only an empty volume, or one whose few voxels smoothing thins below the
        # iso-level, has no surface.
        assert not volume.any() or smoothing > 0
        return
    assert faces.min() >= 0 and faces.max() < len(vertices)
    assert np.isfinite(vertices).all()
    if smoothing == 0:
        # Raw voxels: every surface is closed (smoothing can pinch thin necks into
        # touching sheets, which marching cubes may leave non-manifold).
        assert is_watertight(faces)
    write_stl(tmp_path / "random.stl", vertices, faces)
    loaded = stl_mesh.Mesh.from_file(tmp_path / "random.stl")
    np.testing.assert_allclose(loaded.vectors, vertices[faces], rtol=1e-6)
