"""Block-wise clean-up and meshing give the in-memory results, with seams that match."""

import errno
import os

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr_models.v05 import image as ome_zarr_image
from scipy import ndimage
from scipy.spatial import cKDTree
from stl import mesh as stl_mesh

from vem3d import blockwise
from vem3d import mesh as mesh_module
from vem3d import stats as stats_module
from vem3d import volume as volume_module
from vem3d.mesh import (
    STL_FACES_OFFSET,
    KeptRecords,
    is_watertight,
    mesh_blocks,
    mesh_blockwise,
    mesh_volumes,
    read_stl,
    stl_face_count,
    volume_to_mesh,
    weld_block_meshes,
    write_stl_blocks,
)
from vem3d.slices import write_image
from vem3d.stats import object_statistics, object_statistics_blockwise, statistics_from_volumes
from vem3d.volume import (
    CleanupCache,
    MaskStore,
    assemble_mask_zarr,
    clean_blockwise,
    clean_volume,
    label_objects,
    open_volumes,
    read_slice_volume,
)

VOXEL_NM = (30.0, 5.0, 4.0)


def blobs(shape, seed, smoothness=1.5):
    """A random binary volume of rounded blobs."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), smoothness) > 0.5


def ball(shape, centre, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((grid - c) ** 2 for grid, c in zip(grids, centre)) <= radius**2


def canonical_faces(faces):
    """Faces rotated to start at their smallest index (orientation kept), sorted."""
    start = np.argmin(faces, axis=1)
    rotated = np.stack([faces[np.arange(len(faces)), (start + k) % 3] for k in range(3)], axis=1)
    return rotated[np.lexsort(rotated.T[::-1])]


def assert_same_mesh(mesh, expected, tolerance_nm=1e-3):
    """Same vertices (to float32 rounding) and the same oriented faces, in any order."""
    vertices, faces = mesh
    expected_vertices, expected_faces = expected
    assert len(faces) == len(expected_faces)
    assert len(vertices) == len(expected_vertices)
    if len(faces) == 0:
        return
    distance, match = cKDTree(expected_vertices).query(vertices)
    assert distance.max() < tolerance_nm
    assert len(np.unique(match)) == len(match)  # one to one
    np.testing.assert_array_equal(canonical_faces(match[faces]), canonical_faces(expected_faces))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_size", [4, 7, 16])
def test_block_wise_clean_up_equals_clean_volume(tmp_path, seed, block_size):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 20, size=3))
    # Odd seeds: speckle (many tiny objects, diagonal contacts); even: blobs with cavities.
    volume = rng.random(shape) > 0.65 if seed % 2 else blobs(shape, seed, 1.0) ^ (rng.random(shape) > 0.97)
    for min_voxels, fill in [(0, True), (6, True), (6, False), (0, False)]:
        cleaned = clean_blockwise(volume, tmp_path / f"{min_voxels}{fill}.zarr", min_voxels, fill, block_size)
        expected = clean_volume(volume, min_voxels, fill)
        np.testing.assert_array_equal(cleaned.volume[:], expected)
        assert cleaned.objects == label_objects(expected)[1]
        assert cleaned.foreground_voxels == np.count_nonzero(expected)


def test_objects_touching_only_at_block_corners_are_one_object(tmp_path):
    volume = np.zeros((8, 8, 8), bool)
    volume[3, 3, 3] = volume[4, 4, 4] = True  # corner contact across eight blocks of 4
    volume[3, 3, 1] = volume[4, 4, 1] = True  # edge contact across four blocks
    cleaned = clean_blockwise(volume, tmp_path / "c.zarr", min_object_voxels=2, fill_cavities=False, block_size=4)
    assert cleaned.objects == 2
    np.testing.assert_array_equal(cleaned.volume[:], volume)


def test_cavity_spanning_blocks_is_filled_and_open_tunnel_is_not(tmp_path):
    volume = np.ones((12, 12, 12), bool)
    volume[3:9, 3:9, 3:9] = False  # a cavity spanning 8 blocks of 6
    volume[5, 5, 0:2] = False  # a dent open to the border
    cleaned = clean_blockwise(volume, tmp_path / "c.zarr", block_size=6)
    assert cleaned.volume[3:9, 3:9, 3:9].all() and not cleaned.volume[5, 5, 0]
    np.testing.assert_array_equal(cleaned.volume[:], clean_volume(volume))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("block_size", [4, 9, 64])
@pytest.mark.parametrize("sigma", [0.75, 0.0, 2.5])
def test_block_wise_mesh_equals_whole_volume_mesh(seed, block_size, sigma):
    rng = np.random.default_rng(seed)
    volume = blobs(tuple(rng.integers(5, 30, size=3)), seed)
    expected = volume_to_mesh(volume, VOXEL_NM, smoothing_sigma=sigma)
    assert_same_mesh(mesh_blockwise(volume, VOXEL_NM, block_size, sigma), expected)


def test_sphere_across_many_blocks_is_closed_and_equals_the_whole_volume_mesh():
    volume = ball((52, 50, 54), (25.3, 24.6, 26.1), 21)
    vertices, faces = mesh_blockwise(volume, (1.0, 1.0, 1.0), block_size=8)  # 7 x 7 x 7 blocks
    assert is_watertight(faces)
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)  # no duplicate faces
    assert len(np.unique(vertices, axis=0)) == len(vertices)  # shared vertices welded
    assert_same_mesh((vertices, faces), volume_to_mesh(volume, (1.0, 1.0, 1.0)))


def test_object_touching_the_volume_border_is_closed():
    vertices, faces = mesh_blockwise(np.ones((9, 10, 11), bool), (1.0, 1.0, 1.0), block_size=4)
    assert is_watertight(faces)
    assert_same_mesh((vertices, faces), volume_to_mesh(np.ones((9, 10, 11), bool), (1.0, 1.0, 1.0)))


MARCH_BLOCKS, MESH_MEASURES = mesh_module._march_blocks, stats_module._mesh_measures
CLEAN_UP_PASSES = {name: getattr(volume_module, name) for name in ("_objects_in_block", "_keep_in_block", "_fill_block")}


def _record_process():
    # The worker processes write their process id into a file, as their memory is their own.
    with open(os.environ["VEM3D_TEST_WORKED_IN"], "a") as record:
        record.write(f"{os.getpid()}\n")


# At module level, so that the worker processes find them by name.
def _march_blocks_recording(*arguments):
    _record_process()
    return MARCH_BLOCKS(*arguments)


def _mesh_measures_recording(*arguments):
    _record_process()
    return MESH_MEASURES(*arguments)


def _objects_in_block_recording(*arguments):
    _record_process()
    return CLEAN_UP_PASSES["_objects_in_block"](*arguments)


def _keep_in_block_recording(*arguments):
    _record_process()
    return CLEAN_UP_PASSES["_keep_in_block"](*arguments)


def _fill_block_recording(*arguments):
    _record_process()
    return CLEAN_UP_PASSES["_fill_block"](*arguments)


@pytest.mark.parametrize("source", ["array", "zarr"])
def test_worker_processes_clean_up_as_one_process_does(tmp_path, monkeypatch, source):
    record = tmp_path / "pids"
    monkeypatch.setenv("VEM3D_TEST_WORKED_IN", str(record))
    for name in CLEAN_UP_PASSES:
        monkeypatch.setattr(volume_module, name, globals()[f"{name}_recording"])
    rng = np.random.default_rng(5)
    # Blobs with cavities, and speckle: small objects to remove, in every block.
    volume = blobs((30, 26, 34), 5, 1.0) ^ (rng.random((30, 26, 34)) > 0.97)
    if source == "zarr":
        volume_zarr = zarr.create_array(tmp_path / "v.zarr", shape=volume.shape, chunks=(8, 8, 8), dtype=bool)
        volume_zarr[:] = volume
    cleaned = {
        workers: clean_blockwise(volume_zarr if source == "zarr" else volume, tmp_path / f"c{workers}.zarr", 6, True,
                                 block_size=8, workers=workers)
        for workers in (1, 3)
    }
    expected = clean_volume(volume, 6, True)
    assert expected.sum() > 1000 and not np.array_equal(expected, volume != 0)
    cavities = expected & ~clean_volume(volume, 6, False)
    with_cavities = sum(bool(cavities[region].any()) for _, region in blockwise.blocks(volume.shape, 8))
    assert 0 < with_cavities < 4 * 4 * 5
    worked_in = record.read_text().split()
    # The one-process run: 2 passes over the 80 blocks, the third over some of those
    # holding cavities (those reached by cavities across blocks).
    assert 0 < worked_in.count(str(os.getpid())) - 2 * 4 * 4 * 5 <= with_cavities
    assert len(set(worked_in)) > 2  # and workers of the other
    for result in cleaned.values():
        np.testing.assert_array_equal(result.volume[:], expected)
        assert (result.objects, result.foreground_voxels) == (label_objects(expected)[1], np.count_nonzero(expected))


def test_worker_processes_give_the_mesh_of_one_process(tmp_path, monkeypatch):
    record = tmp_path / "pids"
    monkeypatch.setenv("VEM3D_TEST_WORKED_IN", str(record))
    monkeypatch.setattr(mesh_module, "_march_blocks", _march_blocks_recording)
    volume = blobs((40, 37, 45), 4)
    serial = list(mesh_blocks(volume, VOXEL_NM, block_size=8))
    assert set(record.read_text().split()) == {str(os.getpid())}
    record.unlink()
    parallel = list(mesh_blocks(volume, VOXEL_NM, block_size=8, workers=3))
    marched_in = set(record.read_text().split())
    assert str(os.getpid()) not in marched_in and len(marched_in) > 1
    assert len(parallel) == len(serial) > 20
    for got, expected in zip(parallel, serial):  # in the same order, bit for bit
        np.testing.assert_array_equal(got.vertices, expected.vertices)
        np.testing.assert_array_equal(got.faces, expected.faces)
        np.testing.assert_array_equal(got.shared, expected.shared)


def test_uniform_blocks_are_not_smoothed(monkeypatch):
    smoothed = []
    original = ndimage.gaussian_filter

    def counting(data, *args, **kwargs):
        smoothed.append(data.shape)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(mesh_module.ndimage, "gaussian_filter", counting)
    volume = np.zeros((64, 64, 64), bool)
    volume[16:48, 16:48, 16:48] = True
    meshes = list(mesh_blocks(volume, (1.0, 1.0, 1.0), block_size=8))
    # Of 8 x 8 x 8 blocks, with their halo of 4 voxels, 6 x 6 x 6 see foreground and
    # 2 x 2 x 2 of those only foreground.
    assert len(smoothed) == 6**3 - 2**3
    assert is_watertight(weld_block_meshes(meshes)[1])


def test_blocks_thinner_than_the_chunks_are_read_and_smoothed_a_column_at_a_time(tmp_path, monkeypatch):
    # Thin blocks keep what a changed slice makes to mesh again small; read from a zarr
    # volume, a chunk-deep column of them is decompressed and smoothed once, to the same mesh.
    volume = blobs((40, 37, 45), 4)
    stored = zarr.create_array(tmp_path / "blobs.zarr", shape=volume.shape, chunks=(16, 16, 16), dtype=bool)
    stored[:] = volume
    smoothed = []
    original = ndimage.gaussian_filter
    monkeypatch.setattr(
        mesh_module.ndimage, "gaussian_filter", lambda data, *args, **kwargs: smoothed.append(1) or original(data, *args, **kwargs)
    )
    block = (4, 16, 16)
    from_zarr = weld_block_meshes(mesh_blocks(stored, VOXEL_NM, block_size=block))
    columns = 3 * 3 * 3  # 16-slice columns of 16 x 16 blocks
    assert 0 < len(smoothed) <= columns
    smoothed.clear()
    block_by_block = weld_block_meshes(mesh_blocks(volume, VOXEL_NM, block_size=block))
    assert len(smoothed) > 2 * columns
    assert len(from_zarr[1]) > 1000
    assert_same_mesh(from_zarr, block_by_block)
    assert_same_mesh(from_zarr, volume_to_mesh(volume, VOXEL_NM))


def test_masks_assemble_into_a_zarr_volume(tmp_path):
    volume = blobs((11, 20, 17), 3)
    folders = [tmp_path / "chunk0", tmp_path / "chunk1"]
    for z, mask in enumerate(volume):
        write_image(folders[z // 6] / f"{z}.png", mask.astype(np.uint8) * 255)
    stored = assemble_mask_zarr(folders, tmp_path / "volume.zarr", chunk_edge=4, threads=3)
    np.testing.assert_array_equal(stored[:], volume)
    np.testing.assert_array_equal(read_slice_volume(folders, binary=True, threads=3), volume)  # in z order
    assert stored.chunks == (4, 4, 4)
    # Assembling again replaces the store whole.
    stored = assemble_mask_zarr(folders[:1], tmp_path / "volume.zarr")
    np.testing.assert_array_equal(stored[:], read_slice_volume(folders[:1], binary=True))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chunk0", "chunk1", "volume.zarr"]


def test_a_mask_of_another_shape_is_named_and_no_volume_is_left(tmp_path):
    write_image(tmp_path / "masks/0.png", np.zeros((5, 5), np.uint8))
    write_image(tmp_path / "masks/1.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"1\.png has shape \(5, 6\)"):
        assemble_mask_zarr([tmp_path / "masks"], tmp_path / "volume.zarr")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["masks"]


def write_masks(folder, volume, first_z=0):
    """One mask PNG per slice of ``volume`` (0/255) in ``folder``, named by z from
    ``first_z``, in place of the masks there."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.png"):
        path.unlink()
    for z, mask in enumerate(volume, start=first_z):
        write_image(folder / f"{z:03d}.png", mask.astype(np.uint8) * 255)


def counting_decodes(monkeypatch):
    """A list that gets the name of each mask file blockwise decodes."""
    decoded = []
    read_slice = volume_module.read_slice
    monkeypatch.setattr(volume_module, "read_slice", lambda path: decoded.append(path.name) or read_slice(path))
    return decoded


def test_mask_store_decodes_only_the_masks_whose_files_changed(tmp_path, monkeypatch):
    decoded = counting_decodes(monkeypatch)
    store = MaskStore(tmp_path / "store", chunk_edge=4)
    volume = blobs((10, 12, 9), 1)
    write_masks(tmp_path / "masks", volume)
    stored, keys = store.update([tmp_path / "masks"])
    np.testing.assert_array_equal(stored[:], volume)
    assert len(keys) == 10 and stored.chunks == (4, 4, 4)

    decoded.clear()
    os.utime(tmp_path / "masks" / "003.png", (0, 0))  # touched: same bytes
    volume[6] = ~volume[6]
    write_image(tmp_path / "masks" / "006.png", volume[6].astype(np.uint8) * 255)
    appended = blobs((3, 12, 9), 2)
    for z, mask in enumerate(appended, start=10):
        write_image(tmp_path / "masks" / f"{z:03d}.png", mask.astype(np.uint8) * 255)
    stored, new_keys = store.update([tmp_path / "masks"], threads=2)
    assert sorted(set(decoded)) == ["006.png", "010.png", "011.png", "012.png"]
    np.testing.assert_array_equal(stored[:], np.concatenate([volume, appended]))
    assert new_keys[:6] == keys[:6] and new_keys[6] != keys[6]

    for z in (11, 12):  # slices removed at the end
        (tmp_path / "masks" / f"{z:03d}.png").unlink()
    decoded.clear()
    stored, _ = store.update([tmp_path / "masks"])
    assert decoded == []
    np.testing.assert_array_equal(stored[:], np.concatenate([volume, appended[:1]]))

    write_masks(tmp_path / "masks", blobs((5, 7, 8), 3))  # slices of another size: assembled afresh
    stored, _ = store.update([tmp_path / "masks"])
    np.testing.assert_array_equal(stored[:], blobs((5, 7, 8), 3))


def test_a_mask_store_update_cut_short_is_assembled_afresh(tmp_path, monkeypatch):
    volume = blobs((9, 10, 11), 4)
    write_masks(tmp_path / "masks", volume)
    store = MaskStore(tmp_path / "store", chunk_edge=4)
    store.update([tmp_path / "masks"])
    volume[1:3] = ~volume[1:3]
    write_masks(tmp_path / "masks", volume)
    write_image(tmp_path / "masks" / "002.png", np.zeros((10, 12), np.uint8))  # of another shape
    with pytest.raises(ValueError, match=r"002\.png has shape \(10, 12\)"):
        store.update([tmp_path / "masks"])
    # Slice 1 was written into the volume before slice 2 failed; the keys no longer vouch for it.
    write_image(tmp_path / "masks" / "002.png", volume[2].astype(np.uint8) * 255)
    decoded = counting_decodes(monkeypatch)
    stored, _ = store.update([tmp_path / "masks"])
    assert len(set(decoded)) == 9
    np.testing.assert_array_equal(stored[:], volume)


def test_clean_up_settings_changed_between_runs_give_their_own_clean_up(tmp_path):
    rng = np.random.default_rng(3)
    volume = blobs((20, 18, 17), 3, 1.0) ^ (rng.random((20, 18, 17)) > 0.97)
    volume |= shell((20, 18, 17), (10, 9, 8), 7, 4)
    write_masks(tmp_path / "masks", volume)
    store = MaskStore(tmp_path / "cache", chunk_edge=4)
    for run, (min_voxels, fill_cavities) in enumerate([(6, True), (30, True), (6, False), (0, True), (6, True)]):
        masks, keys = store.update([tmp_path / "masks"])
        cleaned = clean_blockwise(masks, tmp_path / f"cleaned{run}.zarr", min_voxels, fill_cavities, (4, 8, 8), 1,
                                  CleanupCache(tmp_path / "cache", keys))
        expected = clean_volume(volume, min_voxels, fill_cavities)
        np.testing.assert_array_equal(cleaned.volume[:], expected)
        assert (cleaned.objects, cleaned.foreground_voxels) == (label_objects(expected)[1], np.count_nonzero(expected))


def test_a_clean_up_killed_while_keeping_its_blocks_leaves_none_to_link(tmp_path, monkeypatch):
    volume = blobs((16, 16, 16), 8)
    write_masks(tmp_path / "masks", volume)
    store = MaskStore(tmp_path / "cache", chunk_edge=4)
    masks, keys = store.update([tmp_path / "masks"])
    clean_blockwise(masks, tmp_path / "first.zarr", 6, True, 8, 1, CleanupCache(tmp_path / "cache", keys))
    volume[5] = ~volume[5]
    write_masks(tmp_path / "masks", volume)
    masks, keys = store.update([tmp_path / "masks"])
    write_atomically = volume_module.write_atomically

    def killed(path, save):  # after the chunks were replaced, before their table
        if path.name == "cleaned.npz":
            raise KeyboardInterrupt
        write_atomically(path, save)

    monkeypatch.setattr(volume_module, "write_atomically", killed)
    with pytest.raises(KeyboardInterrupt):
        clean_blockwise(masks, tmp_path / "killed.zarr", 6, True, 8, 1, CleanupCache(tmp_path / "cache", keys))
    monkeypatch.setattr(volume_module, "write_atomically", write_atomically)
    written = []
    keep = volume_module._keep_in_block
    monkeypatch.setattr(volume_module, "_keep_in_block", lambda *arguments: written.append(1) or keep(*arguments))
    volume[5] = ~volume[5]  # back as the chunks kept from the first run had it
    write_masks(tmp_path / "masks", volume)
    masks, keys = store.update([tmp_path / "masks"])
    cleaned = clean_blockwise(masks, tmp_path / "again.zarr", 6, True, 8, 1, CleanupCache(tmp_path / "cache", keys))
    np.testing.assert_array_equal(cleaned.volume[:], clean_volume(volume, 6, True))
    assert len(written) == 8  # every block written: the kept chunks are the killed run's, with no table
    assert not (tmp_path / "killed.zarr").exists()
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [
        "blocks", "cleaned", "cleaned.npz", "masks.zarr", "slices.npz"
    ]


def shell(shape, centre, outer, inner):
    return ball(shape, centre, outer) & ~ball(shape, centre, inner)


@pytest.mark.parametrize("workers", [1, 2])
def test_clean_up_that_keeps_its_blocks_gives_the_clean_up_of_the_masks_run_by_run(tmp_path, monkeypatch, workers):
    labelled, written, filled = [], [], []
    if workers == 1:  # the passes run in this process, where they can be counted
        label, keep, fill = volume_module._objects_in_block, volume_module._keep_in_block, volume_module._fill_block
        monkeypatch.setattr(volume_module, "_objects_in_block", lambda *arguments: labelled.append(1) or label(*arguments))
        monkeypatch.setattr(volume_module, "_keep_in_block", lambda *arguments: written.append(1) or keep(*arguments))
        monkeypatch.setattr(volume_module, "_fill_block", lambda *arguments: filled.append(1) or fill(*arguments))
    rng = np.random.default_rng(7)
    shape = (24, 20, 22)
    # Blobs, speckle (small objects), and a shell round a cavity across blocks.
    volume = blobs(shape, 7, 1.0) ^ (rng.random(shape) > 0.97)
    volume |= shell(shape, (12, 10, 11), 7, 4)
    edits = [
        lambda v: v,  # every block kept
        lambda v: v.__setitem__((slice(13, 14), slice(None), slice(None)), False),  # a cut through the shell opens it
        lambda v: v.__setitem__((slice(13, 14), slice(None), slice(None)), shell(shape, (12, 10, 11), 7, 4)[13]),
        lambda v: v.__setitem__((2, slice(3, 6), slice(3, 6)), ~v[2, 3:6, 3:6]),
    ]
    store = MaskStore(tmp_path / "cache", chunk_edge=4)
    reruns = []
    for run, edit in enumerate([None, *edits]):
        if edit is not None:
            edit(volume)
        write_masks(tmp_path / "masks", volume)
        masks, keys = store.update([tmp_path / "masks"])
        labelled.clear()
        written.clear()
        filled.clear()
        cleaned = clean_blockwise(masks, tmp_path / f"cleaned{run}.zarr", 6, True, (4, 8, 8), workers,
                                  CleanupCache(tmp_path / "cache", keys))
        expected = clean_volume(volume, 6, True)
        np.testing.assert_array_equal(cleaned.volume[:], expected)
        assert (cleaned.objects, cleaned.foreground_voxels) == (label_objects(expected)[1], np.count_nonzero(expected))
        reruns.append((len(labelled), len(written), len(filled)))
    if workers == 1:
        # All 6 x 3 x 3 blocks labelled in the first run, none when nothing changed,
        # then only those of the slab the changed slice is in.
        assert [labelled for labelled, _, _ in reruns] == [54, 0, 9, 9, 9]
        # Written again: none when nothing changed (pass 3 filled cavities across blocks
        # in some, but what pass 2 had written there was kept), then those of the slab
        # and where what to keep changed.
        assert reruns[0][2] > 0 and reruns[1][1] == 0
        assert all(9 <= written < 54 / 2 for _, written, _ in reruns[2:])


def test_stl_written_block_by_block_reads_back_closed(tmp_path):
    volume = ball((30, 30, 30), (15, 14, 15.5), 11)
    faces_written = write_stl_blocks(tmp_path / "ball.stl", mesh_blocks(volume, VOXEL_NM, block_size=7))
    vertices, faces = read_stl(tmp_path / "ball.stl")
    expected = volume_to_mesh(volume, VOXEL_NM)
    assert faces_written == len(faces) == len(expected[1])
    assert is_watertight(faces)
    assert_same_mesh((vertices, faces), expected)
    assert write_stl_blocks(tmp_path / "none.stl", mesh_blocks(np.zeros((5, 5, 5)), VOXEL_NM, 2)) == 0
    assert not (tmp_path / "none.stl").exists()


@pytest.fixture
def mask_folders(tmp_path):
    """Mask PNGs of blobs with a hollow ball and specks, in two chunk folders."""
    volume = blobs((14, 30, 26), 5)
    volume[2:12, 5:15, 5:15] = ball((10, 10, 10), (4.5, 4.5, 4.5), 5) & ~ball((10, 10, 10), (4.5, 4.5, 4.5), 2)
    volume[0, 28, 0] = volume[13, 0, 25] = True  # specks
    folders = [tmp_path / "masks/chunk0", tmp_path / "masks/chunk1"]
    for z, mask in enumerate(volume):
        write_image(folders[z // 8] / f"{z}.png", mask.astype(np.uint8) * 255)
    return folders


def test_volumes_cleaned_and_meshed_block_by_block_match_the_in_memory_path(tmp_path, mask_folders, volume_of):
    masks = {"mito": mask_folders}
    in_memory_volume = volume_of(masks, VOXEL_NM, min_object_voxels=5)
    by_block_volume = volume_of(masks, VOXEL_NM, min_object_voxels=5, block_size=8)
    for cleaned, expected in zip(open_volumes(by_block_volume).classes.values(),
                                 open_volumes(in_memory_volume).classes.values()):
        np.testing.assert_array_equal(cleaned.volume[:], expected.volume[:])
        assert (cleaned.objects, cleaned.foreground_voxels) == (expected.objects, expected.foreground_voxels)
    in_memory = mesh_volumes(in_memory_volume, tmp_path / "a/meshes", tmp_path / "a/summary.tsv")
    by_block = mesh_volumes(by_block_volume, tmp_path / "b/meshes", tmp_path / "b/summary.tsv", block_size=8)
    assert by_block.iloc[0].drop("class").to_dict() == pytest.approx(
        in_memory.iloc[0].drop("class").to_dict(), rel=1e-6
    )
    assert pd.read_csv(tmp_path / "b/summary.tsv", sep="\t").iloc[0].to_dict() == pytest.approx(
        pd.read_csv(tmp_path / "a/summary.tsv", sep="\t").iloc[0].to_dict(), rel=1e-6
    )
    assert_same_mesh(read_stl(tmp_path / "b/meshes/mito.stl"), read_stl(tmp_path / "a/meshes/mito.stl"))
    assert sorted(path.name for path in (tmp_path / "b").rglob("*")) == ["meshes", "mito.stl", "summary.tsv"]


def test_a_volume_in_memory_cleaned_in_worker_processes_equals_its_whole_volume_clean_up(
    mask_folders, volume_of, monkeypatch
):
    monkeypatch.setattr(volume_module, "IN_MEMORY_CLEAN_BLOCK", 8)  # objects and cavities across blocks
    masks = {"mito": mask_folders}
    alone, in_workers = (
        open_volumes(volume_of(masks, min_object_voxels=5, workers=workers)).classes["mito"] for workers in (1, 3)
    )
    np.testing.assert_array_equal(in_workers.volume[:], alone.volume[:])
    assert (in_workers.objects, in_workers.foreground_voxels) == (alone.objects, alone.foreground_voxels)
    assert alone.objects > 3 and in_workers.volume.chunks == (8, 8, 8)


def test_volumes_cleaned_again_from_what_the_last_run_kept_equal_volumes_cleaned_afresh(
    tmp_path, mask_folders, volume_of, monkeypatch
):
    monkeypatch.setattr(volume_module, "DEFAULT_CLEAN_BLOCK", (4, 8, 8))  # objects and cavities across blocks
    masks = {"mito": mask_folders, "er": mask_folders[1:]}
    before = {name: sorted(path.name for path in folder.iterdir()) for name, folder in enumerate(mask_folders)}
    for run in range(3):
        if run == 2:  # a slice changed: an object appears in it
            changed = sorted(mask_folders[1].glob("*.png"))[2]
            mask = np.zeros((30, 26), np.uint8)
            mask[5:15, 5:15] = 255
            write_image(changed, mask)
        kept = open_volumes(volume_of(masks, min_object_voxels=5, workers=2, cache_dir=tmp_path / "cache"))
        afresh = open_volumes(volume_of(masks, min_object_voxels=5))
        for class_name, expected in afresh.classes.items():
            cleaned = kept.classes[class_name]
            np.testing.assert_array_equal(cleaned.volume[:], expected.volume[:])
            assert (cleaned.objects, cleaned.foreground_voxels) == (expected.objects, expected.foreground_voxels)
        assert kept.slice_names == afresh.slice_names
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["er", "mito"]
    # Nothing written into the mask folders.
    assert {name: sorted(path.name for path in folder.iterdir()) for name, folder in enumerate(mask_folders)} == before


@pytest.mark.parametrize(
    "clean_up", [{}, {"workers": 3}, {"block_size": 8}, {"cache_dir": "cache"}], ids=["whole", "workers", "blocks", "kept"]
)
def test_each_class_volume_is_an_ome_zarr_image_at_the_voxel_size(tmp_path, mask_folders, volume_of, clean_up):
    """Viewers that read OME-Zarr (0.5) find each class's volume and its scale in nm."""
    if "cache_dir" in clean_up:
        clean_up = {"cache_dir": tmp_path / clean_up["cache_dir"]}
    path = volume_of({"mito": mask_folders, "er": mask_folders}, (30.0, 5.0, 4.0), min_object_voxels=5, **clean_up)
    volumes = open_volumes(path)
    for class_name, cleaned in volumes.classes.items():
        image = ome_zarr_image.Image.from_zarr(zarr.open_group(path / class_name, mode="r"))  # validates
        (multiscale,) = image.ome_attributes.multiscales
        assert multiscale.name == class_name
        assert [(axis.name, axis.type, axis.unit) for axis in multiscale.axes] == [
            (axis, "space", "nanometer") for axis in "zyx"
        ]
        (level,) = multiscale.datasets
        assert level.coordinateTransformations[0].scale == [30.0, 5.0, 4.0]
        stored = zarr.open_array(path / class_name / level.path, mode="r")
        assert stored.metadata.dimension_names == ("z", "y", "x")
        np.testing.assert_array_equal(stored[:], cleaned.volume[:])
    assert list(volumes.classes) == ["mito", "er"] and volumes.shape == (14, 30, 26)


def test_mesh_and_statistics_refuse_a_folder_that_is_not_a_cleaned_volume(tmp_path, mask_folders):
    with pytest.raises(ValueError, match="missing.zarr: not a volume written by vem3d volume"):
        mesh_volumes(tmp_path / "missing.zarr", tmp_path / "meshes", tmp_path / "summary.tsv")
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["classes"] = ["mito"]
    with pytest.raises(ValueError, match=r"other.zarr: not a volume .*voxel_size_nm, slice_names"):
        statistics_from_volumes(tmp_path / "other.zarr", tmp_path / "objects.tsv", tmp_path / "summary.tsv")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["masks", "other.zarr"]


def test_a_volume_over_the_memory_budget_is_cleaned_and_meshed_block_by_block(
    tmp_path, mask_folders, monkeypatch, volume_of
):
    cleaned, meshed = [], []
    clean, mesh = volume_module.clean_blockwise, mesh_module.write_mesh_blockwise
    monkeypatch.setattr(volume_module, "clean_blockwise", lambda *args: cleaned.append(args[4]) or clean(*args))
    monkeypatch.setattr(
        mesh_module, "write_mesh_blockwise", lambda volume, *args: meshed.append((volume, args[2])) or mesh(volume, *args)
    )
    masks = {"mito": mask_folders}  # 14 x 30 x 26 voxels
    volume = volume_of(masks, memory_gib=1e-4)  # 107 kB: not 16 bytes a voxel
    assert cleaned == [blockwise.DEFAULT_BLOCK_SIZE]
    mesh_volumes(volume, tmp_path / "meshes", tmp_path / "summary.tsv", memory_gib=1e-5)  # nor 2 bytes a voxel
    assert isinstance(meshed[0][0].volume, zarr.Array) and meshed[0][1] == mesh_module.DEFAULT_MESH_BLOCK
    mesh_volumes(volume, tmp_path / "meshes", tmp_path / "summary.tsv", memory_gib=1e-4)  # read whole
    assert isinstance(meshed[1][0].volume, np.ndarray) and meshed[1][1] == mesh_module.DEFAULT_MESH_BLOCK
    volume_of(masks, memory_gib=1.0)
    assert len(cleaned) == 1


def test_max_faces_simplifies_the_stl_but_not_the_measurements(tmp_path, mask_folders, volume_of):
    volume = volume_of({"foreground": mask_folders})
    for name, block_size in (("memory", 0), ("blocks", 8)):
        full = mesh_volumes(volume, tmp_path / f"{name}0", tmp_path / f"{name}0.tsv", block_size=block_size)
        simplified = mesh_volumes(
            volume, tmp_path / name, tmp_path / f"{name}.tsv", block_size=block_size, max_faces=300
        )
        pd.testing.assert_frame_equal(simplified, full)
        assert 0 < len(read_stl(tmp_path / name / "foreground.stl")[1]) <= 300 < full.loc[0, "faces"]
        assert sorted(path.name for path in (tmp_path / name).iterdir()) == ["foreground.stl"]  # no scratch STL left


def test_statistics_read_block_by_block_match_those_read_whole(tmp_path, mask_folders, volume_of):
    paths = {name: (tmp_path / f"{name}_objects.tsv", tmp_path / f"{name}_summary.tsv") for name in ("a", "b")}
    volume = volume_of({"foreground": mask_folders}, min_object_voxels=5)
    in_memory = statistics_from_volumes(volume, *paths["a"]).iloc[0]
    by_block = statistics_from_volumes(volume, *paths["b"], block_size=8).iloc[0]
    assert by_block.drop("class").to_dict() == pytest.approx(in_memory.drop("class").to_dict(), rel=1e-6, nan_ok=True)
    expected = pd.read_csv(paths["a"][0], sep="\t")
    assert len(expected) > 3
    pd.testing.assert_frame_equal(pd.read_csv(paths["b"][0], sep="\t"), expected, rtol=1e-5)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "a_objects.tsv",
        "a_summary.tsv",
        "b_objects.tsv",
        "b_summary.tsv",
        "masks",
        "volumes",
    ]


@pytest.mark.parametrize("block_size", [0, 8])  # in memory, block by block
def test_worker_processes_give_the_statistics_of_one_process(
    tmp_path, monkeypatch, mask_folders, block_size, volume_of
):
    record = tmp_path / "pids"
    monkeypatch.setenv("VEM3D_TEST_WORKED_IN", str(record))
    monkeypatch.setattr(stats_module, "_mesh_measures", _mesh_measures_recording)
    volume = volume_of({"foreground": mask_folders}, min_object_voxels=5)
    tables = {}
    for workers in (1, 3):
        paths = (tmp_path / f"{workers}_objects.tsv", tmp_path / f"{workers}_summary.tsv")
        statistics_from_volumes(volume, *paths, block_size=block_size, workers=workers)
        tables[workers] = paths[0].read_bytes()
        worked_in = set(record.read_text().split())
        record.unlink()
        assert (worked_in == {str(os.getpid())}) == (workers == 1)
    assert tables[3] == tables[1] and len(tables[1].splitlines()) > 4


@pytest.mark.parametrize("block_size", [5, 64])
def test_object_statistics_block_by_block_equal_object_statistics(tmp_path, block_size):
    volume = blobs((20, 26, 23), 7, 1.2)
    volume[3:17, 2:20, 4:9] = True  # an object larger than a block of 5 (meshed block by block)
    expected = object_statistics(volume, VOXEL_NM)
    table = object_statistics_blockwise(volume, VOXEL_NM, tmp_path, block_size=block_size)
    pd.testing.assert_frame_equal(table, expected, rtol=1e-6)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kernel_copy", [True, False])  # os.copy_file_range, or a file system without it
def test_kept_records_append_the_faces_of_the_last_stl_as_they_are(tmp_path, monkeypatch, kernel_copy):
    if not kernel_copy:
        def unsupported(*arguments):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(mesh_module.os, "copy_file_range", unsupported, raising=False)
    last = tmp_path / "last.stl"
    n_faces = write_stl_blocks(last, mesh_blocks(blobs((20, 30, 30), 3), VOXEL_NM, block_size=8))
    records = np.fromfile(last, dtype=stl_mesh.Mesh.dtype, offset=STL_FACES_OFFSET)
    assert n_faces == len(records) > 100
    with open(tmp_path / "new.bin", "wb", buffering=0) as target:
        target.write(b"head")
        KeptRecords(last, 10, 40).append_to(target)
        target.write(b"tail")
        KeptRecords(last, 0, 5).append_to(target)
    expected = b"head" + records[10:50].tobytes() + b"tail" + records[:5].tobytes()
    assert (tmp_path / "new.bin").read_bytes() == expected


def write_chunked_masks(volume, folder, chunk_slices=8):
    """Mask PNGs of ``volume`` in chunk folders of ``chunk_slices``; the folders in z order."""
    folders = [folder / f"chunk{z // chunk_slices}" for z in range(0, len(volume), chunk_slices)]
    for k, chunk_folder in enumerate(folders):
        write_masks(chunk_folder, volume[k * chunk_slices : (k + 1) * chunk_slices], first_z=k * chunk_slices)
    return folders


def record_marched_blocks(monkeypatch, marched):
    """Have the marching cubes note in ``marched`` the slices each block they mesh reaches ([start, stop) along z)."""
    march = mesh_module._march_blocks

    def recording(voxels, wanted, block_cubes, *arguments):
        radius = block_cubes[0][0] - wanted[0][0]
        marched.extend((first - radius, stop + 1 + radius) for first, stop in block_cubes)
        return march(voxels, wanted, block_cubes, *arguments)

    monkeypatch.setattr(mesh_module, "_march_blocks", recording)


@pytest.mark.parametrize("block_size", [0, 8])  # in memory (blocks patched small), block by block
def test_a_rerun_meshes_again_only_the_blocks_a_changed_slice_reaches(tmp_path, monkeypatch, block_size, volume_of):
    monkeypatch.setattr(mesh_module, "DEFAULT_MESH_BLOCK", (8, 16, 16))
    marched, recorded = [], []
    make_records = mesh_module.stl_records
    record_marched_blocks(monkeypatch, marched)
    monkeypatch.setattr(mesh_module, "stl_records", lambda *args: recorded.append(1) or make_records(*args))
    volume = blobs((24, 30, 26), 7)
    folders = write_chunked_masks(volume, tmp_path / "masks")

    def mesh(name, cache="cache"):
        marched.clear()
        recorded.clear()
        summary = mesh_volumes(
            volume_of({"mito": folders}, min_object_voxels=5, block_size=block_size),
            tmp_path / name,
            tmp_path / f"{name}.tsv",
            block_size=block_size,
            cache_dir=tmp_path / cache if cache else None,
        )
        return summary, read_stl(tmp_path / name / "mito.stl"), len(marched)

    first, first_mesh, blocks_with_surface = mesh("first")
    again, again_mesh, n_marched = mesh("again")
    # Unchanged blocks' STL records come from the last run's STL (linked into the cache), as written.
    assert n_marched == 0 and not recorded and blocks_with_surface > 4
    pd.testing.assert_frame_equal(again, first)
    assert (tmp_path / "again/mito.stl").read_bytes() == (tmp_path / "first/mito.stl").read_bytes()
    assert len(list((tmp_path / "cache/mito/block_meshes").glob("*.npz"))) == blocks_with_surface

    volume[20, 5:20, 5:20] = ~volume[20, 5:20, 5:20]  # a re-acquired slice, in the last 8-slice block along z
    write_image(folders[2] / "020.png", volume[20].astype(np.uint8) * 255)
    changed, changed_mesh, n_marched = mesh("changed")
    reached = set(marched)
    assert 0 < n_marched < blocks_with_surface and all(lo <= 20 < hi for lo, hi in reached)
    assert len(recorded) <= n_marched
    expected, expected_mesh, blocks_with_surface = mesh("uncached", cache=None)
    pd.testing.assert_frame_equal(changed, expected)
    assert_same_mesh(changed_mesh, expected_mesh)
    assert changed.loc[0, "faces"] != first.loc[0, "faces"]
    # The cache keeps the latest run's entries only: one per block with surface.
    assert len(list((tmp_path / "cache/mito/block_meshes").glob("*.npz"))) == blocks_with_surface


def test_block_meshes_kept_at_one_voxel_size_give_the_mesh_of_another(tmp_path, monkeypatch, volume_of):
    # Entries keep the marching cubes in voxel units, and the STL records and measures
    # in nm beside the voxel size they were made at: at another, only the latter are redone.
    monkeypatch.setattr(mesh_module, "DEFAULT_MESH_BLOCK", (8, 16, 16))
    marched = []
    record_marched_blocks(monkeypatch, marched)
    folders = write_chunked_masks(blobs((24, 30, 26), 8), tmp_path / "masks")

    def mesh(name, voxel_size_nm, cache):
        summary = mesh_volumes(volume_of({"mito": folders}, voxel_size_nm), tmp_path / name, tmp_path / f"{name}.tsv",
                               cache_dir=tmp_path / "cache" if cache else None)
        return summary, (tmp_path / name / "mito.stl").read_bytes()

    mesh("first", VOXEL_NM, cache=True)
    marched.clear()
    other_size = (VOXEL_NM[0] / 3, VOXEL_NM[1] * 2, VOXEL_NM[2])
    reused, reused_stl = mesh("reused", other_size, cache=True)
    assert not marched
    expected, expected_stl = mesh("expected", other_size, cache=False)
    pd.testing.assert_frame_equal(reused, expected)
    assert reused_stl == expected_stl


@pytest.mark.parametrize("block_size", [0, 8])
def test_a_simplified_mesh_is_made_again_from_the_full_mesh_kept_in_the_cache(
    tmp_path, monkeypatch, block_size, volume_of
):
    # With max_faces the output is the simplified mesh: the cache keeps the full one, whose
    # records an unchanged re-run writes again (to the scratch STL it simplifies from),
    # marching no block again.
    monkeypatch.setattr(mesh_module, "DEFAULT_MESH_BLOCK", (8, 16, 16))
    recorded = []
    march = mesh_module._march_blocks
    monkeypatch.setattr(mesh_module, "_march_blocks", lambda *args: recorded.append(1) or march(*args))
    volume = volume_of({"mito": write_chunked_masks(blobs((24, 30, 26), 9), tmp_path / "masks")})

    def mesh(name):
        recorded.clear()
        summary = mesh_volumes(volume, tmp_path / name, tmp_path / f"{name}.tsv",
                               block_size=block_size, max_faces=300, cache_dir=tmp_path / "cache")
        return summary, (tmp_path / name / "mito.stl").read_bytes()

    first, first_stl = mesh("first")
    assert recorded and stl_face_count(tmp_path / "first/mito.stl") <= 300
    assert stl_face_count(tmp_path / "cache/mito/last.stl") == first.loc[0, "faces"] > 300
    again, again_stl = mesh("again")
    assert not recorded
    pd.testing.assert_frame_equal(again, first)
    assert again_stl == first_stl
    assert sorted(path.name for path in (tmp_path / "again").iterdir()) == ["mito.stl"]  # no scratch STL left


@pytest.mark.parametrize("block_size", [0, 8])
def test_a_rerun_meshes_again_only_the_objects_a_changed_slice_reaches(tmp_path, monkeypatch, block_size, volume_of):
    meshed = []
    to_mesh = volume_to_mesh
    monkeypatch.setattr(
        "vem3d.stats.volume_to_mesh",
        lambda inside, *args, **kwargs: meshed.append(inside.shape) or to_mesh(inside, *args, **kwargs),
    )
    shape = (24, 30, 26)
    volume = np.any([ball(shape, (z, y, x), 3) for z in (4, 12, 20) for y in (5, 15, 24) for x in (5, 19)], axis=0)
    folders = write_chunked_masks(volume, tmp_path / "masks")

    def measure(name, cache="cache"):
        meshed.clear()
        statistics_from_volumes(
            volume_of({"mito": folders}, min_object_voxels=5, block_size=block_size),
            tmp_path / f"{name}.tsv",
            tmp_path / f"{name}_summary.tsv",
            block_size=block_size,
            cache_dir=tmp_path / cache if cache else None,
        )
        return pd.read_csv(tmp_path / f"{name}.tsv", sep="\t"), len(meshed)

    first, n_objects = measure("first")
    again, n_meshed = measure("again")
    assert n_meshed == 0 and n_objects == len(first) > 5
    pd.testing.assert_frame_equal(again, first)

    volume[20, 10, 10:16] = True  # a re-acquired slice with a new small object, apart from the balls
    write_image(folders[2] / "020.png", volume[20].astype(np.uint8) * 255)
    changed, n_meshed = measure("changed")
    expected, _ = measure("uncached", cache=None)
    pd.testing.assert_frame_equal(changed, expected)
    measured = ["voxels", "centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]
    new_objects = len(changed.merge(first[measured], how="left", indicator=True).query("_merge == 'left_only'"))
    assert n_meshed == new_objects == 1 and len(changed) == n_objects + 1
