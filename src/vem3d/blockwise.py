"""Cleaning and meshing volumes larger than memory, block by block.

The masks are assembled slice by slice into a chunked on-disk volume (zarr); the 3D
clean-up of :func:`vem3d.volume.clean_volume` and the marching cubes of
:func:`vem3d.mesh.volume_to_mesh` then run on one block (a cube of ``block_size``
voxels) at a time, giving the same results as the in-memory functions:

- connected components are labelled per block and merged across block borders with
  a union-find over the block-local labels, so object sizes, small-object removal and
  the enclosed cavities are those of the whole volume;
- each block is meshed from its voxels plus a halo (the Gaussian kernel's radius and
  one voxel), so the smoothed values it meshes are bit for bit those of the whole
  volume; every marching cube belongs to exactly one block, and the vertices on the
  planes between blocks are computed identically by both neighbours and welded by
  position, so the merged mesh has no duplicate or missing faces at the seams.

Memory holds a few blocks, the outer voxel layers of two layers of blocks, a few
numbers per object piece, and the mesh only when it is simplified; the STL is
written block by block.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import shutil
import struct
import tempfile
import time
import zipfile
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import skimage.measure
import zarr
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from stl import mesh as stl_mesh

from vem3d.atomic import link_or_copy, write_atomically, write_directory_atomically
from vem3d.cache import ArrayCache, TableCache, content_key, mask_key
from vem3d.mesh import (
    NM2_PER_UM2,
    NM3_PER_UM3,
    STL_FACES_OFFSET,
    STL_HEADER,
    SURFACE_LEVEL,
    area_and_volume,
    marching_level,
    read_stl_simplified,
    stl_face_count,
    stl_records,
    write_stl,
)
from vem3d.provenance import file_sha256
from vem3d.slices import list_slices, read_slice
from vem3d.stats import OBJECT_COLUMNS, mesh_measures, sphericity
from vem3d.threads import finished, map_ahead, ordered_results, process_pool
from vem3d.volume import AXES, connected_components

log = logging.getLogger(__name__)

CHUNK_EDGE = 64  # voxels per zarr chunk side: small enough that a block's halo decompresses little
DEFAULT_BLOCK_SIZE = 256  # voxels per block side: ~17 M voxels, a few hundred MB of work arrays
# Blocks (z, y, x) in which volumes are meshed unless told otherwise: thin along z, so
# that a changed slice reaches the blocks of one or two 16-slice slabs, not of all 256;
# from zarr, a chunk-deep column of them is read and smoothed at once (mesh_blocks).
# The mesh step alone, one process, on the 256 x 2048 x 2048 volume of
# benchmarks/pipeline.py --size 2048: 46.6 s, then 19.6 s after slice 128 changed,
# against 50.1 s and 33.2 s in blocks one chunk (64 slices) deep.
DEFAULT_MESH_BLOCK = (16, DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)
# Blocks (z, y, x) of the clean-up that keeps its blocks between runs (CleanupCache):
# one chunk deep, so that a changed slice reaches the blocks of one 64-slice slab.
DEFAULT_CLEAN_BLOCK = (CHUNK_EDGE, DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)
# Block side for cleaning a volume in memory in worker processes: 2 processes cleaned
# the 256 x 1024 x 1024 masks of benchmarks/pipeline.py --size 1024 in 6.6 s in blocks
# of 128 and 9.1 s in blocks of 256 (one process, whole: 8.0 s).
IN_MEMORY_CLEAN_BLOCK = 128
# Memory per voxel of a volume worked on in memory. The clean-up holds the masks (a
# copy while reading stacks them) and, in one process, the whole volume's labels and
# their scratch; 16 leaves room (11-12 bytes were measured over the mask in an older
# version whose step also smoothed and meshed the volume whole: an upper bound now).
IN_MEMORY_BYTES_PER_VOXEL = 16
# Mesh and statistics read the cleaned volume whole (1 byte a voxel) where it fits and
# work on it block by block: their peak measured 1.24 and 1.42 GB on the 1.07 G voxels
# of benchmarks/pipeline.py --size 2048.
READ_WHOLE_BYTES_PER_VOXEL = 2
GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: kernel radius int(4 sigma + 0.5)


def _mask_files(mask_dirs) -> list[Path]:
    """The mask files of the folders, in z order."""
    files = [path for folder in mask_dirs for path in list_slices(folder)]
    if not files:
        raise ValueError("no masks to assemble")
    return files


def mask_volume_shape(mask_dirs) -> tuple[int, int, int]:
    """Shape (slices, rows, columns) of the volume the masks of ``mask_dirs`` make (reads one slice)."""
    files = _mask_files(mask_dirs)
    return (len(files), *read_slice(files[0]).shape)


def fits_in_memory(
    shape: Sequence[int], memory_gib: float, bytes_per_voxel: float = IN_MEMORY_BYTES_PER_VOXEL
) -> bool:
    """Whether work on a volume of ``shape`` in memory, ``bytes_per_voxel`` of it, stays within ``memory_gib``."""
    return math.prod(shape) * bytes_per_voxel <= memory_gib * 2**30


def goes_blockwise(
    shape: Sequence[int], block_size: int, memory_gib: float, bytes_per_voxel: float = IN_MEMORY_BYTES_PER_VOXEL
) -> bool:
    """Whether a volume of ``shape`` (slices, rows, columns) is read block by block, not whole.

    Parameters
    ----------
    shape : (int, int, int)
    block_size : int
        Non-zero: always block by block.
    memory_gib : float
        Otherwise block by block only when the volume does not fit (:func:`fits_in_memory`).
    bytes_per_voxel : float
        What the step needs in memory per voxel of the volume: :data:`IN_MEMORY_BYTES_PER_VOXEL`
        for the clean-up, :data:`READ_WHOLE_BYTES_PER_VOXEL` for mesh and statistics.
    """
    return bool(block_size) or not fits_in_memory(shape, memory_gib, bytes_per_voxel)


def read_whole_where_it_fits(volume: zarr.Array, block_size: int, memory_gib: float):
    """A cleaned volume as mesh and statistics work on it: read whole into memory where no
    ``block_size`` is set and :data:`READ_WHOLE_BYTES_PER_VOXEL` fit ``memory_gib``
    (:func:`goes_blockwise`), else the zarr array itself, read a block at a time."""
    if goes_blockwise(volume.shape, block_size, memory_gib, READ_WHOLE_BYTES_PER_VOXEL):
        return volume
    return volume[:]


def assemble_mask_zarr(
    mask_dirs, path: str | os.PathLike, chunk_edge: int = CHUNK_EDGE, threads: int = 1
) -> zarr.Array:
    """Assemble mask PNGs into a chunked on-disk bool volume, slice by slice.

    Memory holds ``chunk_edge`` slices at a time. The store is written into a
    temporary folder beside ``path`` and renamed when complete.

    Parameters
    ----------
    mask_dirs : list of path
        Mask folders in z order, slices in natural order within each (non-zero =
        foreground), as for :func:`vem3d.volume.read_slice_volume`.
    path : path
        The zarr store (a folder) to create or replace.
    chunk_edge : int
        Chunk side in voxels.
    threads : int
        Threads that read (decode) masks at once.

    Returns
    -------
    zarr.Array of bool, shape (slices, rows, columns)
        Opened read-only.

    Raises
    ------
    ValueError
        If there are no masks or a mask's shape differs from the first one's (naming it).
    """
    files = _mask_files(mask_dirs)
    shape = (len(files), *read_slice(files[0]).shape)

    def save(temporary: str) -> None:
        volume = zarr.create_array(
            temporary, shape=shape, chunks=(chunk_edge,) * 3, dtype=bool, fill_value=False, overwrite=True
        )
        _write_masks(volume, files, range(len(files)), threads)

    write_directory_atomically(path, save)
    log.info("assembled %d masks into %s, shape %s", shape[0], path, shape)
    return zarr.open_array(path, mode="r")


def _write_masks(volume: zarr.Array, files: Sequence[Path], slices: Sequence[int], threads: int) -> None:
    """Decode the masks ``files[z]`` of the ``slices`` z (ascending) into ``volume``.

    A chunk-deep slab at a time, its other slices read back from ``volume``; a slab is
    compressed and written in a thread while the next is decoded (memory holds two).
    Raises ValueError naming a mask whose shape is not the volume's slices'.
    """
    depth = volume.chunks[0]
    decoded_per_slab = Counter(z // depth for z in slices)
    slab_start, slab = None, None
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = finished(None)
        for z, mask in zip(slices, map_ahead(lambda z: read_slice(files[z]) > 0, slices, threads)):
            if mask.shape != volume.shape[1:]:
                raise ValueError(f"mask {files[z]} has shape {mask.shape}, but earlier slices have {volume.shape[1:]}")
            start = z - z % depth
            if start != slab_start:
                if slab is not None:
                    written.result()
                    written = writer.submit(volume.__setitem__, slice(slab_start, slab_start + len(slab)), slab)
                slab_start = start
                slab_depth = min(depth, volume.shape[0] - start)
                if decoded_per_slab[start // depth] == slab_depth:
                    slab = np.empty((slab_depth, *volume.shape[1:]), bool)  # every slice decoded
                else:
                    slab = np.asarray(volume[start : start + depth])
            slab[z - start] = mask
        written.result()
        if slab is not None:
            volume[slab_start : slab_start + len(slab)] = slab


class MaskStore:
    """A class's masks assembled into a chunked zarr volume (as :func:`assemble_mask_zarr`
    does), kept between runs and brought up to date by content.

    Each slice's key is a hash of its mask file's bytes. An update decodes only the
    masks whose key changed (or that are new) and rewrites only the chunk-deep slabs
    that hold them; slices appended or removed at the end resize the volume. The
    keys also tell the clean-up which blocks changed (:class:`CleanupCache`) without
    decoding any mask.

    Parameters
    ----------
    folder : path
        Holds ``masks.zarr`` and ``slices.npz`` (the keys it holds); created if missing.
    chunk_edge : int
        Chunk side of a new volume, in voxels.

    Notes
    -----
    The keys are removed before the volume is changed and written after, so a run
    killed in between leaves no keys, and the next update assembles the masks afresh.
    """

    def __init__(self, folder: str | os.PathLike, chunk_edge: int = CHUNK_EDGE):
        self.folder = Path(folder)
        self.chunk_edge = chunk_edge
        self._volume_path = self.folder / "masks.zarr"
        self._keys_path = self.folder / "slices.npz"

    def _kept(self) -> tuple[list[str], zarr.Array | None]:
        """The keys and volume of the last update, or ([], None)."""
        try:
            with np.load(self._keys_path) as table:
                keys, shape = table["keys"].tolist(), tuple(table["shape"].tolist())
            volume = zarr.open_array(self._volume_path, mode="r+")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, zarr.errors.BaseZarrError):
            return [], None
        return (keys, volume) if volume.shape == shape and len(keys) == shape[0] else ([], None)

    def update(self, mask_dirs, threads: int = 1) -> tuple[zarr.Array, list[str]]:
        """Bring the volume up to date with the masks of ``mask_dirs`` (as for :func:`assemble_mask_zarr`).

        Returns
        -------
        volume : zarr.Array of bool, shape (slices, rows, columns)
            Opened read-only.
        keys : list of str
            Each slice's key.

        Raises
        ------
        ValueError
            If there are no masks or a changed mask's shape differs from the others' (naming it).
        """
        files = _mask_files(mask_dirs)
        keys = list(map_ahead(file_sha256, files, threads))
        kept_keys, volume = self._kept()
        changed = [z for z, key in enumerate(keys) if z >= len(kept_keys) or kept_keys[z] != key]
        if volume is not None and changed and read_slice(files[changed[0]]).shape != volume.shape[1:]:
            volume = None  # slices of another size: assemble afresh
        if volume is None or changed or volume.shape[0] != len(files):
            self._keys_path.unlink(missing_ok=True)
            if volume is None:
                shape = (len(files), *read_slice(files[0]).shape)
                volume = zarr.create_array(
                    self._volume_path, shape=shape, chunks=(self.chunk_edge,) * 3, dtype=bool, fill_value=False,
                    overwrite=True,
                )
                changed = list(range(len(files)))
            elif volume.shape[0] != len(files):
                volume.resize((len(files), *volume.shape[1:]))
            _write_masks(volume, files, changed, threads)

            def save(temporary: str) -> None:
                with open(temporary, "wb") as table:
                    np.savez(table, keys=np.array(keys, dtype=str), shape=np.array(volume.shape))

            write_atomically(self._keys_path, save)
        log.info("masks: %d of %d slices new or changed since the last run, decoded", len(changed), len(files))
        return zarr.open_array(self._volume_path, mode="r"), keys


def _empty_volume_like(path: str | os.PathLike, like, block_size, dtype=bool) -> zarr.Array:
    """An all-zero zarr volume (z, y, x) of ``dtype`` (bool: background) shaped as ``like``,
    chunked as ``like`` or else as the blocks."""
    chunks = like.chunks if isinstance(like, zarr.Array) else tuple(min(side, CHUNK_EDGE) for side in _block_shape(block_size))
    return zarr.create_array(
        path, shape=like.shape, chunks=chunks, dtype=dtype, fill_value=np.zeros((), dtype)[()], dimension_names=AXES,
        overwrite=True,
    )


def _block_shape(block_size) -> tuple[int, int, int]:
    """A block's sides (z, y, x) from one side for all axes or three."""
    sides = (int(block_size),) * 3 if np.ndim(block_size) == 0 else tuple(int(side) for side in block_size)
    if len(sides) != 3 or min(sides) < 1:
        raise ValueError(f"block size must be one side or three (z, y, x), each >= 1 voxel; got {block_size}")
    return sides


def blocks(
    shape: Sequence[int], block_size, task: str = ""
) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """The blocks of a volume in raster order: (block index, voxel slices), the last ones cut short.

    ``block_size`` is one side for all axes or three (z, y, x). With a ``task`` name,
    progress is logged every tenth of the blocks (long runs).
    """
    sides = _block_shape(block_size)
    counts = [math.ceil(n / side) for n, side in zip(shape, sides)]
    indices = list(itertools.product(*(range(count) for count in counts)))
    return _logged(
        (
            (index, tuple(slice(i * side, min((i + 1) * side, n)) for i, side, n in zip(index, sides, shape)))
            for index in indices
        ),
        len(indices),
        task,
    )


def _logged(items, total: int, task: str):
    """Pass ``items`` through, logging every tenth of ``total`` (nothing without a ``task``)."""
    started = time.monotonic()
    step = max(total // 10, 1)
    for done, item in enumerate(items, start=1):
        yield item
        if task and (done % step == 0 or done == total):
            log.info("%s: %d of %d blocks in %.0f s", task, done, total, time.monotonic() - started)


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` (int32 labels, 0 outside), without the work for uniform blocks."""
    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    if mask.all():
        return np.ones(mask.shape, np.int32), 1
    labels, count = connected_components(mask, connectivity)
    return labels.astype(np.int32), count


@dataclass
class BlockLayers:
    """A block's outer voxel layers of labels, all that :class:`BlockComponents` needs of
    it: ``first`` and ``last`` hold, per axis, the block's first and last layer along
    that axis (the axis kept, of length 1). Small enough to come back from a worker
    process in place of the block's labels."""

    first: list[np.ndarray]
    last: list[np.ndarray]


def outer_layers(labels: np.ndarray) -> BlockLayers:
    """The :class:`BlockLayers` of a block's labels."""
    return BlockLayers(
        [labels.take([0], axis=axis) for axis in range(labels.ndim)],
        [labels.take([-1], axis=axis) for axis in range(labels.ndim)],
    )


class BlockComponents:
    """Connected components of a volume labelled block by block, merged across block borders.

    Blocks are added in raster order (:func:`blocks`), each by the outer layers of its
    local labels (:class:`BlockLayers`); each local label gets a global label
    ``offset + local``. Labels that touch across the
    border with an earlier neighbour (the 13 of the 26 neighbouring blocks that come
    before it) are recorded as pairs, and :meth:`components` joins them (union-find
    by sparse-graph components). Only the last voxel layers of the blocks of the
    last two block layers along z are kept.

    Parameters
    ----------
    connectivity : {26, 6}
        26 joins voxels that share a face, edge or corner (foreground objects); 6 only
        face neighbours (background, as :func:`scipy.ndimage.binary_fill_holes`).
    """

    def __init__(self, connectivity: int):
        if connectivity not in (6, 26):
            raise ValueError(f"connectivity must be 6 or 26, got {connectivity}")
        self.connectivity = connectivity
        # Neighbours before a block in raster order: offsets lexicographically below (0, 0, 0).
        self._directions = [
            step
            for step in itertools.product((-1, 0, 1), repeat=3)
            if step < (0, 0, 0) and (connectivity == 26 or sum(map(abs, step)) == 1)
        ]
        self._shift_range = (-1, 0, 1) if connectivity == 26 else (0,)
        self.offsets: dict[tuple[int, ...], int] = {}
        self.counts: dict[tuple[int, ...], int] = {}
        self.n_labels = 0
        self._layers: dict[tuple[int, ...], dict[int, np.ndarray]] = {}
        self._pairs: list[np.ndarray] = []

    def add(self, index: tuple[int, ...], layers: BlockLayers, count: int) -> int:
        """Record a block's local labels (1..count), given by its outer layers; returns
        its offset to global labels."""
        offset = self.offsets[index] = self.n_labels
        self.counts[index] = count
        self.n_labels += count
        for step in self._directions:
            neighbour = tuple(i + s for i, s in zip(index, step))
            if neighbour in self._layers and count and self._layers[neighbour]:
                self._pair(layers.first, count, offset, step, neighbour)
        # Later blocks lie above along their first differing axis, so they touch only
        # this block's last layer along each axis.
        self._layers[index] = {} if count == 0 else dict(enumerate(layers.last))
        for old in [key for key in self._layers if key[0] < index[0] - 1]:
            del self._layers[old]
        return offset

    def _pair(self, first: Sequence[np.ndarray], count: int, offset: int, step: tuple[int, ...], neighbour) -> None:
        # The layers facing each other: the block's side towards the neighbour (in its
        # first layer along the first axis the step moves on), and back.
        axis = next(axis for axis, s in enumerate(step) if s)
        own = first[axis][tuple(slice(None) if s == 0 else (0 if s < 0 else -1) for s in step)]
        layer = self._layers[neighbour][axis]
        theirs = layer[tuple(slice(None) if s == 0 else (-1 if s < 0 else 0) for s in step)]
        if not (own.any() and theirs.any()):
            return
        keys = []
        # Along the axes the two blocks share, voxels touch with offsets -1..1 (26) or 0 (6).
        for shift in itertools.product(self._shift_range, repeat=own.ndim):
            own_part = own[tuple(slice(max(0, d), n + min(0, d)) for d, n in zip(shift, own.shape))]
            their_part = theirs[tuple(slice(max(0, -d), n + min(0, -d)) for d, n in zip(shift, theirs.shape))]
            touching = (own_part > 0) & (their_part > 0)
            keys.append(their_part[touching].astype(np.int64) * (count + 1) + own_part[touching])
        keys = np.unique(np.concatenate(keys))
        if len(keys):
            their_offset = self.offsets[neighbour]
            self._pairs.append(np.stack([keys // (count + 1) + their_offset, keys % (count + 1) + offset]))

    def components(self) -> tuple[np.ndarray, int]:
        """The component of every global label.

        Returns
        -------
        component : ndarray of int32, shape (n_labels + 1,)
            Component number of each global label; label 0 (none) is alone in its own.
        n_components : int
            Components among the labels 1..n_labels.
        """
        pairs = np.concatenate(self._pairs, axis=1) if self._pairs else np.zeros((2, 0), np.int64)
        size = self.n_labels + 1
        graph = sparse.coo_matrix((np.ones(pairs.shape[1], np.int32), (pairs[0], pairs[1])), shape=(size, size))
        n_components, component = csgraph.connected_components(graph, directed=False)
        return component.astype(np.int32, copy=False), int(n_components) - 1


def _label_lookup(values: np.ndarray, offset: int, count: int, background) -> np.ndarray:
    """``values`` of the global labels offset+1..offset+count, with ``background`` for local label 0."""
    return np.concatenate([[background], values[offset + 1 : offset + count + 1]]).astype(values.dtype)


def _touches_border(labels: np.ndarray, region: tuple[slice, ...], shape: Sequence[int]) -> np.ndarray:
    """Local labels present on the faces of the whole volume that the block ``region`` lies on."""
    found = [np.zeros(0, labels.dtype)]
    for axis, (part, n) in enumerate(zip(region, shape)):
        for side, on_border in ((0, part.start == 0), (-1, part.stop == n)):
            if on_border:
                found.append(np.unique(labels.take(side, axis=axis)))
    return np.unique(np.concatenate(found))


@dataclass
class CleanedVolume:
    """A cleaned volume (on disk, or in memory when it fits) and what the clean-up counted.

    Attributes
    ----------
    volume : zarr.Array or ndarray of bool, shape (slices, rows, columns)
    objects : int
        26-connected objects of the cleaned volume.
    foreground_voxels : int
    """

    volume: zarr.Array
    objects: int
    foreground_voxels: int


def _block_source(source, region: tuple[slice, ...]) -> tuple[object, tuple[slice, ...]]:
    """(array, region) for a worker to read a block from: a zarr volume itself (it
    pickles in a kilobyte; the worker decompresses), or an in-memory volume's block alone."""
    if isinstance(source, zarr.Array):
        return source, region
    return np.asarray(source[region]), (slice(None),) * len(region)


def _first_voxels(labels: np.ndarray, count: int) -> np.ndarray:
    """Flat index (C order) of the first voxel of each label 1..count of a block.

    connected-components-3d numbers labels in raster order of their first voxel, so
    they first appear where the running maximum of the labels grows; any other
    numbering is handled too, by a sort.
    """
    flat = labels.ravel()
    if count == 0:
        return np.zeros(0, np.int64)
    running = np.maximum.accumulate(flat)
    grows = np.flatnonzero(running[1:] > running[:-1]) + 1
    starts = np.concatenate([[0], grows]) if flat[0] else grows
    if len(starts) == count and np.array_equal(flat[starts], np.arange(1, count + 1)):
        return starts.astype(np.int64)
    values, first = np.unique(flat, return_index=True)
    return first[values > 0].astype(np.int64)


def _objects_in_block(array, read, region, shape) -> tuple[int, BlockLayers, np.ndarray, np.ndarray]:
    """Clean-up pass 1 for one block (``array[read]``, the ``region`` of the volume of
    ``shape``): its 26-connected pieces (count, outer layers, voxels of each, and the
    raster index in the volume of each one's first voxel)."""
    labels, count = _label(np.asarray(array[read]) != 0, 26)
    local = np.unravel_index(_first_voxels(labels, count), labels.shape)
    first = np.ravel_multi_index(tuple(part.start + k for part, k in zip(region, local)), shape)
    return count, outer_layers(labels), np.bincount(labels.ravel(), minlength=count + 1)[1:], first


def _keep_in_block(array, region, kept_pieces, target, block, shape, fill_cavities, probes):
    """Clean-up pass 2 for one block (``block`` of the volume, of ``shape``): write the
    pieces that ``kept_pieces`` keeps (bool per local label) into ``target``.

    With ``fill_cavities``, the background pieces (6-connected) that reach none of the
    block's faces are cavities already, and are filled before writing; returns the
    other background pieces (count, outer layers, which of them touch the volume's
    border, and the piece at each of the flat indices ``probes`` in the block, -1 where
    it was filled here) and the voxels filled; else (0, None, None, None, 0).
    """
    mask = np.asarray(array[region]) != 0
    if kept_pieces[1:].all():  # nothing removed here: no need to label again
        kept = mask
    else:
        kept = kept_pieces[_label(mask, 26)[0]]
    if not fill_cavities:
        if kept.any():
            target[block] = kept
        return 0, None, None, None, 0
    labels, count = _label(~kept, 6)
    layers = outer_layers(labels)
    reaches_faces = np.zeros(count + 1, bool)
    reaches_faces[0] = True  # the kept foreground, not a piece
    reaches_faces[np.concatenate([layer.ravel() for layer in (*layers.first, *layers.last)])] = True
    touching = np.zeros(count + 1, bool)
    touching[_touches_border(labels, block, shape)] = True
    probe_pieces = labels.ravel()[probes].astype(np.int64)
    filled = 0
    if not reaches_faces.all():
        # Most cavities in EM masks are a few voxels inside one block; those spanning
        # blocks are found across them and filled in the third pass.
        enclosed = ~reaches_faces[labels]
        filled = int(np.count_nonzero(enclosed))
        kept = kept | enclosed
        # The pieces left, numbered as labelling the filled block (the third pass) numbers
        # them: in raster order of their first voxels.
        renumber = np.where(reaches_faces, np.cumsum(reaches_faces) - 1, -1)
        layers = BlockLayers([renumber[layer] for layer in layers.first], [renumber[layer] for layer in layers.last])
        touching = touching[reaches_faces]
        probe_pieces = renumber[probe_pieces]
        count = len(touching) - 1
    if kept.any():
        target[block] = kept
    return count, layers, touching[1:], probe_pieces, filled


def _fill_block(target, block, cavity_pieces) -> int:
    """Clean-up pass 3 for one block: fill the background pieces that ``cavity_pieces``
    marks (bool per local label); the voxels filled."""
    kept = np.asarray(target[block])
    cavities = cavity_pieces[_label(~kept, 6)[0]]
    target[block] = kept | cavities
    return int(np.count_nonzero(cavities))


def _whole_chunks(array: zarr.Array, block_size) -> bool:
    """Whether blocks of ``block_size`` cover whole chunks of ``array``, so that worker
    processes can write blocks at once (two must not write one chunk)."""
    return all(block % side == 0 for block, side in zip(_block_shape(block_size), array.chunks))


def _in_raster_order(shape, block_size, task: str, work, ahead: int):
    """(block index, region, result) for every block in raster order, where ``work(index,
    region)`` gives the block's Future (submitted, or a result at hand); at most ``ahead``
    blocks ahead."""
    placed = deque()

    def submitted():
        for index, region in blocks(shape, block_size, task):
            placed.append((index, region))
            yield work(index, region)

    for value in ordered_results(submitted(), ahead):
        yield *placed.popleft(), value


def _probes_by_block(object_of, keep, first_voxel, shape, block_size) -> dict[tuple[int, ...], np.ndarray]:
    """Per block, the flat indices in it of the voxel just before each kept object's first
    voxel (raster order), for objects whose first voxel is not on the volume's x = 0 face.

    That voxel is background, and in the background region around the object: the
    region lies inside the object's bounding box only where the object walls it in, and
    a voxel before the object's first cannot be walled in by it. So the object lies in
    a cavity exactly where that voxel does. ``object_of``, ``keep`` and ``first_voxel``
    are per global piece (the volume's raster index of its first voxel).
    """
    object_first = np.full(object_of.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(object_first, object_of[keep], first_voxel[keep])
    firsts = object_first[np.unique(object_of[keep])]
    voxels = np.unravel_index(firsts[firsts % shape[-1] != 0] - 1, shape)
    block_sides = _block_shape(block_size)
    index = np.stack([axis // side for axis, side in zip(voxels, block_sides)], axis=1)
    local = np.stack([axis % side for axis, side in zip(voxels, block_sides)], axis=1)
    probes = {}
    for block in {tuple(row) for row in index.tolist()}:
        here = (index == block).all(axis=1)
        sides = [min(side, n - k * side) for k, side, n in zip(block, block_sides, shape)]
        probes[block] = np.ravel_multi_index(tuple(local[here].T), sides)
    return probes


class CleanupCache:
    """What the block-by-block clean-up keeps of a run for the next, found by the keys of
    each block's slices (:class:`MaskStore`), so that unchanged blocks are not even read.

    - Pass 1 of a block (its pieces: count, outer layers, sizes, first voxels): an
      :class:`vem3d.cache.ArrayCache` entry keyed by the block.
    - Pass 2 of a block: an entry keyed by the block and what pass 2 is told of it (the
      pieces it keeps, its probes), and the voxels it wrote, kept as the chunk files of
      the last cleaned volume, hard-linked into ``cleaned/`` (no extra disk while that
      volume exists), beside a table of the entries kept. Where pass 3 fills cavities
      across blocks, the chunks pass 2 wrote are linked aside before
      (:meth:`keep_before_filling`) and kept instead. zarr writes a chunk as a new
      file that replaces the old, so writing a linked chunk leaves the kept one as it was.

    Parameters
    ----------
    folder : path
        The cache (created): ``blocks/`` (entries), ``cleaned/`` and ``cleaned.npz``.
    slice_keys : list of str
        Each slice's key (:meth:`MaskStore.update`).
    """

    def __init__(self, folder: str | os.PathLike, slice_keys: Sequence[str]):
        self.folder = Path(folder)
        self.slice_keys = list(slice_keys)
        self.entries = ArrayCache(self.folder / "blocks", context="clean-up")
        self._cleaned = self.folder / "cleaned"
        self._table = self.folder / "cleaned.npz"
        self._kept: set[str] = set()
        self._written: set[str] = set()
        self._before_filling: Path | None = None  # chunks of blocks as pass 2 wrote them, where pass 3 changes them
        self._before_filling_chunks: set[str] = set()
        for leftover in [*self.folder.glob(".cleaned-*"), *self.folder.glob(".before-filling-*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # of a run killed while keeping its chunks
        try:
            with np.load(self._table) as table:
                # The table belongs to this very folder (a run killed while replacing it leaves them apart).
                if str(table["token"]) == (self._cleaned / "token").read_text():
                    self._kept = set(table["keys"].tolist())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # nothing kept yet: every block is written afresh

    def block_key(self, region: tuple[slice, ...], shape: Sequence[int]) -> str:
        """A block's key: its slices' keys, and where it lies in the volume of ``shape``."""
        return content_key(
            self.entries.context, self.slice_keys[region[0]], [(part.start, part.stop) for part in region],
            tuple(shape[1:]), region[0].stop == shape[0],
        )

    def restore_written(self, key: str, target: zarr.Array, region: tuple[slice, ...]):
        """Pass 2's result for the block ``region`` of ``target`` under ``key``, its chunks
        linked into ``target``; None where not kept."""
        stored = self.entries.get(key) if key in self._kept else None
        if stored is None:
            return None
        folder = _array_folder(target)
        for chunk in _chunks_of(target, region):
            _link_where_present(self._cleaned / chunk, folder / chunk)
        self._written.add(key)
        return _unpack_written(stored)

    def store_written(self, key: str, written: tuple) -> None:
        """Keep pass 2's result for a block under ``key`` (its chunks are kept by :meth:`keep`)."""
        self.entries.put(key, **_pack_written(written))
        self._written.add(key)

    def keep_before_filling(self, target: zarr.Array, region: tuple[slice, ...]) -> None:
        """Link aside the chunks pass 2 wrote for the block ``region`` of ``target``, which
        pass 3 is about to change, to keep them instead of the filled ones."""
        if self._before_filling is None:
            self._before_filling = Path(tempfile.mkdtemp(dir=self.folder, prefix=".before-filling-"))
        folder = _array_folder(target)
        for chunk in _chunks_of(target, region):
            self._before_filling_chunks.add(chunk)
            _link_where_present(folder / chunk, self._before_filling / chunk)

    def keep(self, target: zarr.Array) -> None:
        """Keep the chunks of ``target``, the cleaned volume just written, as pass 2 wrote
        them, and its blocks' pass-2 results, for the next run."""
        self._table.unlink(missing_ok=True)
        replacement = Path(tempfile.mkdtemp(dir=self.folder, prefix=".cleaned-"))
        folder = _array_folder(target)
        for path in folder.rglob("*"):
            chunk = path.relative_to(folder).as_posix()
            if path.is_file() and path.name != "zarr.json" and chunk not in self._before_filling_chunks:
                _link_where_present(path, replacement / chunk)
        for chunk in self._before_filling_chunks:
            _link_where_present(self._before_filling / chunk, replacement / chunk)
        token = os.urandom(16).hex()
        (replacement / "token").write_text(token)
        if self._cleaned.exists():
            shutil.rmtree(self._cleaned)
        os.replace(replacement, self._cleaned)
        if self._before_filling is not None:
            shutil.rmtree(self._before_filling)

        def save(temporary: str) -> None:
            with open(temporary, "wb") as table:
                np.savez(table, token=np.array(token), keys=np.array(sorted(self._written), dtype=str))

        write_atomically(self._table, save)
        self.entries.prune()


def _link_where_present(source: Path, target: Path) -> None:
    """Hard-link (or copy) the file ``source``, where it exists, to ``target``, making its folder."""
    if source.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, target)


def _array_folder(array: zarr.Array) -> Path:
    """The folder of a zarr array in a local store."""
    return Path(str(array.store_path.store.root)) / array.store_path.path


def _chunks_of(array: zarr.Array, region: tuple[slice, ...]) -> Iterator[str]:
    """The keys (relative paths) of the chunks of ``array`` that the block ``region`` covers."""
    ranges = [range(part.start // side, -(-part.stop // side)) for part, side in zip(region, array.chunks)]
    for coordinates in itertools.product(*ranges):
        yield array.metadata.encode_chunk_key(coordinates)


def _pack_layers(layers: BlockLayers) -> dict[str, np.ndarray]:
    return {f"{end}{axis}": layer for end, ends in (("first", layers.first), ("last", layers.last))
            for axis, layer in enumerate(ends)}


def _unpack_layers(stored: dict[str, np.ndarray]) -> BlockLayers:
    return BlockLayers([stored[f"first{axis}"] for axis in range(3)], [stored[f"last{axis}"] for axis in range(3)])


def _pack_pieces(pieces: tuple) -> dict[str, np.ndarray]:
    """A pass-1 result (:func:`_objects_in_block`) as arrays to cache."""
    count, layers, sizes, firsts = pieces
    return {"count": np.array(count), "sizes": sizes, "firsts": firsts, **_pack_layers(layers)}


def _unpack_pieces(stored: dict[str, np.ndarray]) -> tuple:
    return int(stored["count"]), _unpack_layers(stored), stored["sizes"], stored["firsts"]


def _pack_written(written: tuple) -> dict[str, np.ndarray]:
    """A pass-2 result (:func:`_keep_in_block`) as arrays to cache."""
    count, layers, touching, probe_pieces, filled = written
    arrays = {"count": np.array(count), "filled": np.array(filled)}
    if layers is not None:  # filling cavities
        arrays.update(touching=touching, probe_pieces=probe_pieces, **_pack_layers(layers))
    return arrays


def _unpack_written(stored: dict[str, np.ndarray]) -> tuple:
    if "touching" not in stored:
        return int(stored["count"]), None, None, None, int(stored["filled"])
    return (int(stored["count"]), _unpack_layers(stored), stored["touching"], stored["probe_pieces"],
            int(stored["filled"]))


def clean_blockwise(
    source,
    path: str | os.PathLike,
    min_object_voxels: int = 0,
    fill_cavities: bool = True,
    block_size=DEFAULT_BLOCK_SIZE,
    workers: int = 1,
    cache: CleanupCache | None = None,
) -> CleanedVolume:
    """The clean-up of :func:`vem3d.volume.clean_volume`, block by block, into a new zarr volume.

    Objects (26-connected) with fewer than ``min_object_voxels`` voxels are removed;
    then background regions (6-connected) not connected to the volume's border are
    filled. The result equals ``clean_volume`` on the whole volume.

    In each of the three passes over the blocks, worker processes read, label and
    write the blocks; this one joins their pieces across block borders from the
    blocks' outer layers (:class:`BlockComponents`). Cavities within a block are
    filled as the second pass writes it; the third fills those that span blocks,
    reading only the blocks they reach. The objects left are counted without
    labelling the filled volume again (:func:`_probes_by_block`).

    Parameters
    ----------
    source : zarr.Array or ndarray, shape (slices, rows, columns)
        Foreground where non-zero; read one block at a time.
    path : path
        Zarr store written (atomically) with the cleaned bool volume.
    min_object_voxels : int
        As for :func:`vem3d.volume.remove_small_objects` (0 or 1 keeps everything).
    fill_cavities : bool
        As for :func:`vem3d.volume.clean_volume`.
    block_size : int or (int, int, int)
        Block side in voxels, or sides (z, y, x); multiples of the zarr chunk side read least.
    workers : int
        Processes that work on blocks; 1 works in this one. Blocks that do not cover
        whole chunks of the output (a block side not a multiple of the chunk side)
        are worked on here, as two processes must not write one chunk.
    cache : CleanupCache, optional
        The last run's blocks, for a ``source`` kept by a :class:`MaskStore` (whose
        slice keys the cache holds): blocks whose slices are unchanged are not read in
        pass 1, and in pass 2 neither read nor written where what they keep is
        unchanged too (their chunks are linked from the last cleaned volume, where
        blocks cover whole chunks). The result is the same as without.

    Returns
    -------
    CleanedVolume
    """
    started = time.monotonic()
    shape = source.shape
    result = {}

    def save(temporary: str) -> None:
        target = _empty_volume_like(temporary, source, block_size)
        whole_chunks = _whole_chunks(target, block_size)
        processes = workers if whole_chunks else 1
        ahead = 2 * processes
        # Where pass 2's blocks can be linked from the last run's chunks.
        reuse_written = cache is not None and whole_chunks
        block_keys, written_keys, computed, relinked = {}, {}, set(), set()
        with process_pool(processes) as submit:
            # Pass 1: objects, their sizes and first voxels.
            def objects_work(index, region) -> Future:
                if cache is not None:
                    block_keys[index] = cache.block_key(region, shape)
                    stored = cache.entries.get(block_keys[index])
                    if stored is not None:
                        return finished(_unpack_pieces(stored))
                    computed.add(index)
                return submit(_objects_in_block, *_block_source(source, region), region, shape)

            objects = BlockComponents(26)
            piece_sizes, piece_firsts = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
            for index, _, pieces in _in_raster_order(shape, block_size, "clean-up, objects", objects_work, ahead):
                count, layers, sizes, firsts = pieces
                if index in computed:
                    cache.entries.put(block_keys[index], **_pack_pieces(pieces))
                objects.add(index, layers, count)
                piece_sizes.append(sizes)
                piece_firsts.append(firsts)
            object_of, n_objects = objects.components()
            piece_sizes = np.concatenate(piece_sizes)
            object_sizes = np.bincount(object_of, weights=piece_sizes)
            keep = object_sizes[object_of] >= max(min_object_voxels, 1)
            keep[0] = False
            n_kept = len(np.unique(object_of[keep]))
            log.info("%d objects, %d with fewer than %d voxels removed", n_objects, n_objects - n_kept, min_object_voxels)
            result["objects"] = n_kept
            result["foreground_voxels"] = int(piece_sizes[keep].sum())
            probes = {}
            if fill_cavities:
                probes = _probes_by_block(object_of, keep, np.concatenate(piece_firsts), shape, block_size)

            # Pass 2: write the kept objects; label the background they leave.
            def keep_work(index, region) -> Future:
                kept_pieces = _label_lookup(keep, objects.offsets[index], objects.counts[index], False)
                block_probes = probes.get(index, np.zeros(0, np.int64))
                if reuse_written:
                    written_keys[index] = content_key(
                        block_keys[index], kept_pieces, block_probes, fill_cavities, target.chunks
                    )
                    restored = cache.restore_written(written_keys[index], target, region)
                    if restored is not None:
                        relinked.add(index)
                        return finished(restored)
                return submit(_keep_in_block, *_block_source(source, region), kept_pieces, target, region, shape,
                              fill_cavities, block_probes)

            background = BlockComponents(6)
            on_border, probed = [np.zeros(1, bool)], [np.zeros(0, np.int64)]
            for index, _, written in _in_raster_order(
                shape, block_size, "clean-up, small objects removed", keep_work, ahead
            ):
                count, layers, touching, probe_pieces, filled = written
                if reuse_written and index not in relinked:
                    cache.store_written(written_keys[index], written)
                if fill_cavities:
                    offset = background.add(index, layers, count)
                    on_border.append(touching)
                    probed.append(np.where(probe_pieces < 0, 0, probe_pieces + offset))
                    result["foreground_voxels"] += filled
            if fill_cavities:
                region_of, _ = background.components()
                open_regions = np.zeros(region_of.max() + 1, bool)
                open_regions[region_of[np.concatenate(on_border)]] = True
                cavity = ~open_regions[region_of]
                cavity[0] = True  # stands for the cavities filled in pass 2
                # Filling a cavity joins its wall and the objects inside it: an object is inside
                # one where the background voxel just before its first voxel lies in one.
                result["objects"] -= int(np.count_nonzero(cavity[np.concatenate(probed)]))
                cavity[0] = False

                # Pass 3: fill the cavities that span blocks, in the blocks that hold some.
                def cavity_blocks(submit) -> Iterator[Future]:
                    for index, region in blocks(shape, block_size, "clean-up, cavities filled"):
                        cavity_pieces = _label_lookup(
                            cavity, background.offsets[index], background.counts[index], False
                        )
                        if cavity_pieces.any():
                            if reuse_written:
                                cache.keep_before_filling(target, region)
                            yield submit(_fill_block, target, region, cavity_pieces)

                result["foreground_voxels"] += sum(ordered_results(cavity_blocks(submit), ahead))
        if cache is not None:
            log.info(
                "clean-up: %d of %d blocks' pieces and %d blocks' voxels kept from the last run",
                len(block_keys) - len(computed), len(block_keys), len(relinked),
            )
            cache.keep(target)

    write_directory_atomically(path, save)
    log.info(
        "cleaned %d voxels in blocks of %s in %.1f s: %d objects, %d foreground voxels",
        math.prod(shape),
        " x ".join(map(str, _block_shape(block_size))),
        time.monotonic() - started,
        result["objects"],
        result["foreground_voxels"],
    )
    return CleanedVolume(zarr.open_array(path, mode="r"), result["objects"], result["foreground_voxels"])


@dataclass
class KeptRecords:
    """Faces ``first`` to ``first + count`` of a binary STL file: a block's records as a
    run before wrote them, appended to a new STL by :meth:`append_to`."""

    path: Path
    first: int
    count: int

    def append_to(self, target) -> None:
        """Append the records to ``target``, a binary file opened unbuffered.

        Copied within the kernel (``os.copy_file_range``) where it can, then dropped
        from the page cache: the old STL is read once, on its way to being replaced,
        and writing an 870 MB STL into memory the cache did not hold took this virtual
        machine up to 2.3 s per GiB.
        """
        record_bytes = stl_mesh.Mesh.dtype.itemsize
        start, length = STL_FACES_OFFSET + self.first * record_bytes, self.count * record_bytes
        with open(self.path, "rb", buffering=0) as source:
            copied = _copy_file_range(source.fileno(), target.fileno(), start, length)
            if copied < length:  # no kernel copy here: through memory
                source.seek(start + copied)
                target.write(source.read(length - copied))
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(source.fileno(), start, length, os.POSIX_FADV_DONTNEED)


def _copy_file_range(source: int, target: int, start: int, length: int) -> int:
    """Copy ``length`` bytes from ``start`` of the file ``source`` to the position of
    ``target`` (file descriptors) in the kernel; the bytes copied, 0 where it cannot."""
    copied = 0
    try:
        while copied < length:
            step = os.copy_file_range(source, target, length - copied, start + copied)
            if step == 0:
                raise ValueError(f"file {source} ends before byte {start + length}")
            copied += step
    except (AttributeError, OSError) as error:  # not Linux, or a file system without it
        if copied or (isinstance(error, OSError) and error.errno not in _NO_COPY_FILE_RANGE):
            raise
    return copied


_NO_COPY_FILE_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


@dataclass
class BlockMesh:
    """The part of a mesh that one block's marching cubes make.

    Attributes
    ----------
    vertices : ndarray of float32, shape (n_vertices, 3)
        x, y, z in nanometres, origin at the centre of voxel 0, as
        :func:`vem3d.mesh.volume_to_mesh`.
    faces : ndarray of int64, shape (n_faces, 3)
        Indices into ``vertices``, counter-clockwise seen from outside.
    grid : ndarray of float64, shape (n_vertices, 3)
        Vertex positions in voxel units (z, y, x), exactly equal for the copies of a
        vertex that neighbouring blocks share.
    shared : ndarray of bool, shape (n_vertices,)
        Vertices on a plane between this block and a neighbour.
    owned : ndarray of bool, shape (n_vertices,)
        Vertices this block counts: all but those on a plane it shares with an earlier
        block, so each vertex of the merged mesh is owned by exactly one block.
    key : str, optional
        The block's key in a cache of block meshes (its voxels, halo, place and settings).
    stl_records : ndarray of numpy-stl's record dtype, shape (n_faces,), or KeptRecords, optional
        The block's binary STL records (:func:`vem3d.mesh.stl_records`) where already
        made, or where they lie in the last run's STL (:class:`BlockMeshCache`).
    area_nm2, volume_nm3 : float, optional
        Its surface area and share of the enclosed volume
        (:func:`vem3d.mesh.area_and_volume`), where already measured.
    """

    vertices: np.ndarray
    faces: np.ndarray
    grid: np.ndarray
    shared: np.ndarray
    owned: np.ndarray
    key: str | None = None
    stl_records: np.ndarray | KeptRecords | None = None
    area_nm2: float | None = None
    volume_nm3: float | None = None


def _cube_ranges(n: int, block_size: int) -> list[tuple[int, int]]:
    """Marching cubes per block along an axis of ``n`` voxels: (first, stop) of their lower corners.

    Cubes with a lower corner from -1 (one voxel into the padding) to n - 1 can hold
    surface: beyond, every corner lies in the padding, where the smoothed values
    stay below one half.
    """
    starts = list(range(0, n, block_size))
    return [(-1 if k == 0 else start, n if k == len(starts) - 1 else starts[k + 1]) for k, start in enumerate(starts)]


def _smoothing_input(
    voxels: np.ndarray, wanted: Sequence[tuple[int, int]], shape: Sequence[int], padding: int
) -> np.ndarray:
    """Voxels ``wanted`` ([start, stop) per axis) as float32, as the padded whole volume has them.

    ``voxels`` are the part of ``wanted`` inside the volume (of ``shape``). Outside it
    lies the zero padding of :func:`vem3d.mesh.volume_to_mesh`, and beyond the padding
    scipy's reflection of it (reached only for large sigma).
    """
    padded = [(max(lo, -padding), min(hi, n + padding)) for (lo, hi), n in zip(wanted, shape)]
    data = np.zeros([hi - lo for lo, hi in padded], np.float32)
    data[tuple(slice(max(-lo, 0), max(-lo, 0) + n) for (lo, _), n in zip(padded, voxels.shape))] = voxels
    beyond = [(plo - lo, hi - phi) for (lo, hi), (plo, phi) in zip(wanted, padded)]
    if any(before or after for before, after in beyond):
        data = np.pad(data, beyond, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    return data


def _smoothed_field(data: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``data`` without its outer ``radius`` layers, computed only near foreground.

    Away from foreground the smoothed value is exactly 0, so only the bounding box of
    the foreground grown by ``radius`` is filtered; within it scipy's reflection at the
    box's sides meets only zeros, so every value equals the whole array's.
    """
    field = np.zeros([n - 2 * radius for n in data.shape], np.float32)
    nonzero = [np.flatnonzero(data.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(len(found) == 0 for found in nonzero):
        return field
    box = [(max(found[0] - radius, 0), min(found[-1] + 1 + radius, n)) for found, n in zip(nonzero, data.shape)]
    window = data[tuple(slice(lo, hi) for lo, hi in box)]
    smoothed = ndimage.gaussian_filter(window, sigma, truncate=GAUSSIAN_TRUNCATE) if sigma > 0 else window
    kept = [(max(lo, radius), min(hi, n - radius)) for (lo, hi), n in zip(box, data.shape)]
    if all(hi > lo for lo, hi in kept):
        field[tuple(slice(lo - radius, hi - radius) for lo, hi in kept)] = smoothed[
            tuple(slice(klo - lo, khi - lo) for (klo, khi), (lo, _) in zip(kept, box))
        ]
    return field


def _march_blocks(
    voxels: np.ndarray,
    wanted: Sequence[tuple[int, int]],
    block_cubes: Sequence[tuple[int, int]],
    shape: Sequence[int],
    padding: int,
    radius: int,
    smoothing_sigma: float,
    level: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth the voxels of a column of blocks (with halo) once and run marching cubes in each block.

    ``block_cubes`` are the blocks' (first, stop) cubes along z, all within ``wanted``;
    along y and x the blocks are the column's. Returns (vertices in the block's voxel
    units, faces) per block, both empty where the smoothed values do not cross ``level``.
    """
    reaches_border = any(lo < 0 or hi > n for (lo, hi), n in zip(wanted, shape))
    data = _smoothing_input(voxels, wanted, shape, padding) if reaches_border else voxels.astype(np.float32)
    field = _smoothed_field(data, radius, smoothing_sigma)
    del data
    level = marching_level(level)
    grid_z = wanted[0][0] + radius  # the grid plane of field[0]
    marched = []
    for first, stop in block_cubes:
        block_field = field[first - grid_z : stop + 1 - grid_z]  # the cubes' corners
        if block_field.max() <= level or block_field.min() > level:
            marched.append((np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)))
        else:
            marched.append(tuple(skimage.measure.marching_cubes(block_field, level=level)[:2]))
    return marched


def mesh_blocks(
    volume,
    voxel_size_nm: tuple[float, float, float],
    block_size=DEFAULT_BLOCK_SIZE,
    smoothing_sigma: float = 0.75,
    level: float = SURFACE_LEVEL,
    task: str = "marching cubes",
    cache: ArrayCache | None = None,
    workers: int = 1,
) -> Iterator[BlockMesh]:
    """Marching cubes of :func:`vem3d.mesh.volume_to_mesh`, one block at a time.

    Each block reads its voxels plus a halo of the Gaussian kernel's radius and one
    voxel, smooths them (exactly as the whole padded volume would be) and meshes the
    cubes whose lower corner lies in the block (the first block also takes the cubes
    reaching one voxel into the padding). Blocks whose voxels and halo are all
    background, or all foreground away from the volume's border, are skipped without
    smoothing. Blocks thinner than the chunks of a zarr volume are read, and smoothed,
    a column of a chunk's depth at a time: thin blocks keep what a changed slice
    makes to mesh again small without decompressing and smoothing each halo again.

    Parameters
    ----------
    volume : zarr.Array or ndarray, shape (slices, rows, columns)
        Foreground where non-zero.
    voxel_size_nm, level, smoothing_sigma
        As for :func:`vem3d.mesh.volume_to_mesh`.
    block_size : int or (int, int, int)
        Block side in voxels, or sides along z, y, x.
    task : str
        Name under which progress is logged; "" logs nothing.
    cache : vem3d.cache.ArrayCache, optional
        Blocks whose voxels and halo are those of a block meshed before (same place,
        same settings) take its marching cubes from here instead of computing them;
        the others are stored. The caller prunes it.
    workers : int
        Processes that smooth and march columns of blocks, each holding one or two;
        1 does it in this process.

    Yields
    ------
    BlockMesh
        One per block that holds surface: slab by slab of the read depth (a chunk's,
        or the blocks'), in raster order of the columns, each column's blocks in z order.
    """
    if len(volume.shape) != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if any(size <= 0 for size in voxel_size_nm):
        raise ValueError(f"voxel sizes must be > 0 nm, got {voxel_size_nm}")
    shape = volume.shape
    spacing = np.asarray(voxel_size_nm, dtype=np.float64)
    radius = int(GAUSSIAN_TRUNCATE * smoothing_sigma + 0.5) if smoothing_sigma > 0 else 0
    padding = 1 + int(np.ceil(3 * smoothing_sigma))  # as volume_to_mesh pads
    sides = _block_shape(block_size)
    ranges = [_cube_ranges(n, side) for n, side in zip(shape, sides)]
    read_depth = max(sides[0], volume.chunks[0]) if isinstance(volume, zarr.Array) else sides[0]

    def column(index) -> tuple[int, ...]:
        """The blocks read together: one (y, x) column of a slab of ``read_depth`` slices."""
        return (max(ranges[0][index[0]][0], 0) // read_depth, *index[1:])

    indices = sorted(itertools.product(*(range(len(axis_ranges)) for axis_ranges in ranges)), key=column)
    placed = deque()  # per column submitted: (index, cubes, key, stored cubes or None) of its blocks with surface

    def submitted(submit) -> Iterator[Future]:
        for _, group in itertools.groupby(_logged(indices, len(indices), task), key=column):
            group = list(group)
            cubes = [[axis_ranges[k] for axis_ranges, k in zip(ranges, index)] for index in group]
            # Grid points first..stop (the cubes' corners) and the kernel's reach around them.
            wanted = [[(first - radius, stop + 1 + radius) for first, stop in block] for block in cubes]
            read = [(max(wanted[0][a][0], 0), min(wanted[-1][a][1], n)) for a, n in enumerate(shape)]
            window = np.asarray(volume[tuple(slice(lo, hi) for lo, hi in read)]) != 0
            column_blocks, missing = [], []
            for index, block_cubes, block_wanted in zip(group, cubes, wanted):
                voxels = window[
                    tuple(slice(max(lo, 0) - start, min(hi, n) - start) for (lo, hi), (start, _), n in
                          zip(block_wanted, read, shape))
                ]
                if not voxels.any():
                    continue
                if voxels.all() and not any(lo < 0 or hi > n for (lo, hi), n in zip(block_wanted, shape)):
                    continue
                key = (
                    mask_key(cache.context, voxels, block_wanted, shape, smoothing_sigma, marching_level(level))
                    if cache else None
                )
                stored = cache.get(key) if cache else None
                column_blocks.append((index, block_cubes, key, stored))
                if stored is None:
                    missing.append((block_cubes, block_wanted))
            placed.append(column_blocks)
            if not missing:
                yield finished([])
                continue
            # The slices the blocks to march reach, smoothed once for all of them.
            z_wanted = (missing[0][1][0][0], missing[-1][1][0][1])
            part = window[max(z_wanted[0], 0) - read[0][0] : min(z_wanted[1], shape[0]) - read[0][0]]
            yield submit(
                _march_blocks, part, [z_wanted, *missing[0][1][1:]], [block_cubes[0] for block_cubes, _ in missing],
                shape, padding, radius, smoothing_sigma, level,
            )

    with process_pool(workers) as submit:
        for marched in ordered_results(submitted(submit), ahead=2 * workers):
            marched = iter(marched)
            for index, cubes, key, stored in placed.popleft():
                if stored is None:
                    local, faces = next(marched)
                    if cache:
                        cache.put(key, vertices=local, faces=faces)
                else:
                    local, faces = stored["vertices"], stored["faces"]
                yield from _block_mesh(local, faces, cubes, index, ranges, spacing, key)
    if cache and task:
        log.info("%s: %d blocks' meshes reused, %d computed", task, cache.hits, cache.misses)


def _block_mesh(local, faces, cubes, index, ranges, spacing, key) -> Iterator[BlockMesh]:
    """A marched block's :class:`BlockMesh` (none when it has no faces): vertices in nm,
    and which of them lie on the planes shared with neighbouring blocks."""
    if not len(faces):
        return
    grid = local.astype(np.float64) + np.array([first for first, _ in cubes], dtype=np.float64)
    lower = np.zeros(len(grid), bool)
    upper = np.zeros(len(grid), bool)
    for axis, ((first, stop), k) in enumerate(zip(cubes, index)):
        if k > 0:
            lower |= grid[:, axis] == first
        if k < len(ranges[axis]) - 1:
            upper |= grid[:, axis] == stop
    yield BlockMesh(
        vertices=(grid * spacing)[:, ::-1].astype(np.float32),
        faces=faces.astype(np.int64),
        grid=grid,
        shared=lower | upper,
        owned=~lower,
        key=key,
    )


def weld_block_meshes(block_meshes) -> tuple[np.ndarray, np.ndarray]:
    """Merge block meshes into one mesh, joining the copies of the vertices on shared planes.

    Copies are joined by their exact voxel-unit position (:attr:`BlockMesh.grid`).
    Faces left with a repeated vertex (where two distinct vertices of a block round
    to the same float32 position) are dropped.

    Returns
    -------
    vertices : ndarray of float32, shape (n_vertices, 3)
    faces : ndarray of int64, shape (n_faces, 3)
        As :func:`vem3d.mesh.volume_to_mesh` returns them (in another order).
    """
    vertices, faces, shared_ids, shared_grid = [], [], [], []
    n_vertices = 0
    for block in block_meshes:
        vertices.append(block.vertices)
        faces.append(block.faces + n_vertices)
        shared_ids.append(np.flatnonzero(block.shared) + n_vertices)
        shared_grid.append(block.grid[block.shared])
        n_vertices += len(block.vertices)
    if not faces:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    vertices = np.concatenate(vertices)
    faces = np.concatenate(faces)
    shared_ids = np.concatenate(shared_ids)
    shared_grid = np.concatenate(shared_grid)
    target = np.arange(n_vertices)
    if len(shared_ids):
        _, position = np.unique(shared_grid, axis=0, return_inverse=True)
        first = np.full(position.max() + 1, n_vertices)
        np.minimum.at(first, position.ravel(), shared_ids)
        target[shared_ids] = first[position.ravel()]
    faces = target[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    used, faces = np.unique(faces, return_inverse=True)
    return vertices[used], faces.reshape(-1, 3).astype(np.int64)


def mesh_blockwise(
    volume,
    voxel_size_nm: tuple[float, float, float],
    block_size: int = DEFAULT_BLOCK_SIZE,
    smoothing_sigma: float = 0.75,
    level: float = SURFACE_LEVEL,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`vem3d.mesh.volume_to_mesh` block by block: the same mesh, up to vertex and face order.

    Holds the mesh, not the volume, in memory. Parameters as for :func:`mesh_blocks`;
    returns as :func:`weld_block_meshes`.
    """
    return weld_block_meshes(mesh_blocks(volume, voxel_size_nm, block_size, smoothing_sigma, level, workers=workers))


def write_stl_blocks(path: str | os.PathLike, block_meshes, on_block=None) -> int:
    """Write block meshes as one binary STL, a block at a time (atomically).

    STL stores each triangle's corner positions, so the copies of shared vertices,
    being equal, need no welding. Normals as :func:`vem3d.mesh.write_stl` computes them.

    Parameters
    ----------
    path : path
        Output ``.stl`` file; not written when there are no faces.
    block_meshes : iterable of BlockMesh
    on_block : callable, optional
        Called as ``on_block(block, first_face)`` for each block written, with the
        index in the STL of the block's first face.

    Returns
    -------
    int
        Faces written.
    """
    block_meshes = iter(block_meshes)
    first = next(block_meshes, None)
    if first is None:
        return 0
    written = 0

    def save(temporary: str) -> None:
        nonlocal written
        # Unbuffered: records are appended to the file's descriptor directly too (KeptRecords).
        with open(temporary, "wb", buffering=0) as stl_file:
            stl_file.write(STL_HEADER + struct.pack("<I", 0))
            for block in itertools.chain([first], block_meshes):
                records = stl_records(block.vertices, block.faces) if block.stl_records is None else block.stl_records
                if isinstance(records, KeptRecords):
                    records.append_to(stl_file)
                else:
                    records.tofile(stl_file)
                if on_block is not None:
                    on_block(block, written)
                written += len(block.faces)
            if written >= 2**32:
                raise ValueError(f"{path}: {written} faces do not fit a binary STL (at most 2^32 - 1)")
            stl_file.seek(len(STL_HEADER))
            stl_file.write(struct.pack("<I", written))

    write_atomically(path, save)
    return written


@dataclass
class MeshMeasurements:
    """Running totals over block meshes: the measurements of the whole mesh.

    Attributes
    ----------
    vertices, faces : int
        Of the welded mesh (each shared vertex counted once, by its owner block).
    volume_nm3 : float
        Enclosed volume (sum of the blocks' signed volumes, divergence theorem).
    area_nm2 : float
    """

    vertices: int = 0
    faces: int = 0
    volume_nm3: float = 0.0
    area_nm2: float = 0.0

    def measure(self, block_meshes) -> Iterator[BlockMesh]:
        """Pass block meshes through, adding each to the totals (measuring those not measured yet)."""
        for block in block_meshes:
            self.vertices += int(np.count_nonzero(block.owned))
            self.faces += len(block.faces)
            if block.area_nm2 is None:
                block.area_nm2, block.volume_nm3 = area_and_volume(block.vertices, block.faces)
            self.area_nm2 += block.area_nm2
            self.volume_nm3 += block.volume_nm3
            yield block


class BlockMeshCache:
    """What the mesh step keeps of a run for the next: each block's mesh, found by its content.

    - The marching cubes of each block, in voxel units (:attr:`cubes`, an
      :class:`vem3d.cache.ArrayCache`, one entry per block, for any voxel size).
    - Each block's STL records, area and volume at one voxel size. The records are not
      copied: the run's full STL is hard-linked into the folder (no extra disk while
      that STL exists; copied where a link cannot be made) beside a table of where
      each block's records start in it. A re-run writes an unchanged block's records
      as they are, without computing normals or measures again.

    Parameters
    ----------
    folder : path
        The cache (created): block entries ``block_meshes/*.npz``, ``last.stl`` and
        ``last_stl.table``. Another step's cache may share it (the volume step's
        entries are named apart).
    voxel_size_nm : (float, float, float)
        The STL records and measures kept and reused are those of this voxel size.
    """

    def __init__(self, folder: str | os.PathLike, voxel_size_nm: tuple[float, float, float]):
        self.folder = Path(folder)
        # Entries are in voxel units, so they hold for any voxel size.
        self.cubes = ArrayCache(self.folder / "block_meshes", context="mesh")
        self._stl_path = self.folder / "last.stl"
        self._table_path = self.folder / "last_stl.table"
        self._voxel_size_nm = np.asarray(voxel_size_nm, dtype=np.float64)
        self._last_faces = 0  # in the kept STL, where its table is valid
        self._last_rows: dict[str, tuple[int, int, float, float]] = {}
        self._rows: dict[str, tuple[int, int, float, float]] = {}
        try:
            with np.load(self._table_path) as table:
                stat = os.stat(self._stl_path)
                # The table belongs to this very file (a run killed between linking the
                # STL and writing the table leaves them apart) and this voxel size.
                if table["stl"].tolist() == [stat.st_ino, stat.st_size] and np.array_equal(
                    table["voxel_size_nm"], self._voxel_size_nm
                ):
                    self._last_faces = stl_face_count(self._stl_path)
                    rows = zip(table["first"].tolist(), table["count"].tolist(), table["area"].tolist(), table["volume"].tolist())
                    self._last_rows = dict(zip(table["keys"].tolist(), rows))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # no STL kept yet, or from an older layout: records are made afresh

    def with_kept_records(self, block_meshes) -> Iterator[BlockMesh]:
        """Pass block meshes through, giving those kept from the last run their STL records, area and volume."""
        for block in block_meshes:
            row = self._last_rows.get(block.key)
            if row is not None and row[1] == len(block.faces) and row[0] + row[1] <= self._last_faces:
                first, count, block.area_nm2, block.volume_nm3 = row
                block.stl_records = KeptRecords(self._stl_path, first, count)
            yield block

    def written(self, block: BlockMesh, first_face: int) -> None:
        """Note where a measured block's records start in the STL being written (for :func:`write_stl_blocks`)."""
        self._rows[block.key] = (first_face, len(block.faces), block.area_nm2, block.volume_nm3)

    def keep(self, stl_path: str | os.PathLike | None) -> None:
        """Keep the STL just written (the full mesh) for the next run; drop the last run's
        and the block entries this run did not use."""
        self._last_faces = 0
        self._table_path.unlink(missing_ok=True)
        if stl_path is None:
            self._stl_path.unlink(missing_ok=True)
        else:
            linked = self.folder / ".last.stl.part"
            linked.unlink(missing_ok=True)
            link_or_copy(stl_path, linked)
            os.replace(linked, self._stl_path)
            stat = os.stat(self._stl_path)
            keys = list(self._rows)
            columns = list(zip(*self._rows.values())) or [(), (), (), ()]

            def save(temporary: str) -> None:
                with open(temporary, "wb") as table:
                    np.savez(
                        table, stl=np.array([stat.st_ino, stat.st_size]), voxel_size_nm=self._voxel_size_nm,
                        keys=np.array(keys, dtype=str), first=np.array(columns[0], dtype=np.int64),
                        count=np.array(columns[1], dtype=np.int64), area=np.array(columns[2], dtype=np.float64),
                        volume=np.array(columns[3], dtype=np.float64),
                    )

            write_atomically(self._table_path, save)
        self.cubes.prune()


def write_mesh_blockwise(
    cleaned: CleanedVolume,
    voxel_size_nm: tuple[float, float, float],
    stl_path: str | os.PathLike,
    block_size=DEFAULT_BLOCK_SIZE,
    smoothing_sigma: float = 0.75,
    max_faces: int = 0,
    cache: BlockMeshCache | None = None,
    workers: int = 1,
) -> dict[str, float | int]:
    """Mesh a cleaned volume block by block into an STL; measure the mesh on the way.

    Parameters
    ----------
    cleaned : CleanedVolume
        From :func:`clean_blockwise`.
    voxel_size_nm, smoothing_sigma
        As for :func:`vem3d.mesh.volume_to_mesh`.
    stl_path : path
        STL written (not when the mesh is empty).
    block_size : int or (int, int, int)
        Block side in voxels, or sides along z, y, x.
    max_faces : int
        Simplify the STL to at most this many faces: the full mesh is written to a
        scratch STL beside ``stl_path`` and simplified from there a chunk of faces at a
        time (:func:`vem3d.mesh.read_stl_simplified`); 0 writes the full mesh block by block.
    cache : BlockMeshCache, optional
        Reuse the marching cubes (:func:`mesh_blocks`), STL records and measures of
        unchanged blocks; left holding this mesh's.
    workers : int
        Processes that march blocks (:func:`mesh_blocks`).

    Returns
    -------
    dict
        ``objects``, ``foreground_voxels``, ``voxel_volume_um3`` (voxel count times
        voxel volume), ``mesh_volume_um3``, ``surface_area_um2``, ``vertices`` and
        ``faces``, all of the full (not simplified) mesh.
    """
    started = time.monotonic()
    totals = MeshMeasurements()
    block_meshes = mesh_blocks(
        cleaned.volume, voxel_size_nm, block_size, smoothing_sigma, cache=cache and cache.cubes, workers=workers
    )
    if cache:
        block_meshes = cache.with_kept_records(block_meshes)
    block_meshes = totals.measure(block_meshes)
    on_block = cache.written if cache else None
    if max_faces:
        # The full mesh goes to a scratch STL block by block, then is simplified from
        # there a chunk of faces at a time: memory never holds the full mesh.
        handle, full_path = tempfile.mkstemp(dir=Path(stl_path).parent, prefix=".full-", suffix=".stl")
        os.close(handle)
        try:
            faces = np.zeros((0, 3), np.int64)
            written = write_stl_blocks(full_path, block_meshes, on_block)
            if written:
                vertices, faces = read_stl_simplified(full_path, max_faces)
                write_stl(stl_path, vertices, faces)
            if cache:
                cache.keep(full_path if written else None)
        finally:
            Path(full_path).unlink(missing_ok=True)
        log.info("simplified the mesh from %d to %d faces", totals.faces, len(faces))
    else:
        written = write_stl_blocks(stl_path, block_meshes, on_block)
        if cache:
            cache.keep(stl_path if written else None)
    log.info(
        "meshed %d voxels in blocks of %s in %.1f s: %d faces",
        math.prod(cleaned.volume.shape),
        block_size,
        time.monotonic() - started,
        totals.faces,
    )
    voxel_volume_nm3 = float(np.prod(voxel_size_nm))
    return {
        "objects": cleaned.objects,
        "foreground_voxels": cleaned.foreground_voxels,
        "voxel_volume_um3": cleaned.foreground_voxels * voxel_volume_nm3 / NM3_PER_UM3,
        "mesh_volume_um3": totals.volume_nm3 / NM3_PER_UM3,
        "surface_area_um2": totals.area_nm2 / NM2_PER_UM2,
        "vertices": totals.vertices,
        "faces": totals.faces,
    }


class _ObjectMask:
    """One object of a block-labelled volume, read lazily as a bool volume over its bounding box.

    The label volume holds each block's local labels; ``offsets`` (one per block, as an
    array over the block grid) turn them into the global labels that ``object_of`` maps.
    """

    def __init__(self, labels: zarr.Array, offsets: np.ndarray, block_size: int, object_of: np.ndarray,
                 component: int, box: Sequence[tuple[int, int]]):
        self._labels, self._offsets, self._block_size = labels, offsets, block_size
        self._object_of, self._component = object_of, component
        self._origin = [lo for lo, _ in box]
        self.shape = tuple(hi - lo for lo, hi in box)

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        shifted = tuple(slice(part.start + lo, part.stop + lo) for part, lo in zip(region, self._origin))
        local = np.asarray(self._labels[shifted]).astype(np.int64)
        block_of = np.ix_(*(np.arange(part.start, part.stop) // self._block_size for part in shifted))
        return self._object_of[np.where(local > 0, local + self._offsets[block_of], 0)] == self._component


def _measure_pieces(labels, region, shape, block_rows, crosses, whole) -> Iterator[np.ndarray]:
    """Measure each labelled piece of a block into ``block_rows`` (all but the mesh
    measures) and ``crosses`` (whether it touches a border with another block); yield
    the masks of the pieces that are whole objects, their numbers appended to ``whole``."""
    origin = np.array([part.start for part in region])
    inner_border = [(part.start > 0, part.stop < n) for part, n in zip(region, shape)]
    for k, window in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[window] == k
        coordinates = np.nonzero(inside)
        start = np.array([part.start for part in window]) + origin
        crosses[k] = any(
            (low and part.start == 0) or (high and part.stop == n)
            for part, n, (low, high) in zip(window, labels.shape, inner_border)
        )
        block_rows[k - 1, :11] = [
            len(coordinates[0]),
            *(c.sum() + len(c) * s for c, s in zip(coordinates, start)),
            *start,
            *(np.array([part.stop for part in window]) + origin),
            np.ravel_multi_index(tuple(np.array([c[0] for c in coordinates]) + start), shape),
        ]
        if not crosses[k]:
            whole.append(k)
            yield inside


def _pieces_of_block(array, region, block, shape):
    """Statistics pass for one block (``block`` of the volume, of ``shape``): label its
    pieces and measure them but for the mesh measures (:func:`_measure_pieces`).

    Returns (count, outer layers, the pieces' rows, numbers of the whole pieces, their masks).
    """
    labels, count = _label(np.asarray(array[region]) != 0, 26)
    crosses = np.zeros(count + 1, bool)
    block_rows = np.full((count, 13), np.nan)
    whole = []
    insides = list(_measure_pieces(labels, block, shape, block_rows, crosses, whole))
    return count, outer_layers(labels), block_rows, whole, insides


def _object_in_box(array, box: Sequence[tuple[int, int]], first_voxel: Sequence[int]) -> np.ndarray:
    """The mask of the object with ``first_voxel`` over its bounding ``box`` ([start, stop) per axis).

    All of an object lies in its box, so there it is the one 26-connected component
    that holds its first voxel; other objects' parts in the box are separate from it.
    """
    labels, _ = _label(np.asarray(array[tuple(slice(lo, hi) for lo, hi in box)]) != 0, 26)
    return labels == labels[tuple(int(v) - lo for v, (lo, _) in zip(first_voxel, box))]


def _label_pieces(array, region, pieces: np.ndarray) -> np.ndarray:
    """One block's local labels (as the statistics pass numbered them) of the ``pieces``
    marked (bool per local label), 0 elsewhere, as uint32."""
    labels, _ = _label(np.asarray(array[region]) != 0, 26)
    return np.where(pieces[labels], labels, 0).astype(np.uint32)


def _measure_large_objects(
    volume, pieces, object_of, order, large, boxes, scratch_dir, voxel_size_nm, smoothing_sigma, block_size, workers
) -> np.ndarray:
    """Mesh measures (volume nm³, area nm²) of the objects ``large`` (numbers), whose boxes
    exceed a block, each meshed block by block (:func:`mesh_blocks`).

    The blocks holding their pieces are labelled again into a label volume (zarr under
    ``scratch_dir``, each block's local labels) that the objects are read from; the other
    arguments as :func:`object_statistics_blockwise` has them.
    """
    large_components = order[np.asarray(large) - 1]
    components = set(large_components.tolist())
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".objects-") as scratch:
        labels = _empty_volume_like(Path(scratch) / "labels.zarr", volume, block_size, np.uint32)
        offsets = np.zeros([math.ceil(n / block_size) for n in volume.shape], np.int64)
        for index, region in blocks(volume.shape, block_size):
            offset, count = pieces.offsets[index], pieces.counts[index]
            offsets[index] = offset
            marked = np.zeros(count + 1, bool)
            marked[1:] = [component in components for component in object_of[offset + 1 : offset + count + 1].tolist()]
            if marked.any():
                labels[region] = _label_pieces(volume, region, marked)
        measured = []
        for object_number, component in zip(large, large_components):
            mask = _ObjectMask(labels, offsets, block_size, object_of, component, boxes[object_number])
            totals = MeshMeasurements()
            for _ in totals.measure(mesh_blocks(mask, voxel_size_nm, block_size, smoothing_sigma, task="", workers=workers)):
                pass
            measured.append((totals.volume_nm3, totals.area_nm2))
    return np.array(measured, np.float64)


def object_statistics_blockwise(
    volume,
    voxel_size_nm: tuple[float, float, float],
    scratch_dir: str | os.PathLike,
    smoothing_sigma: float = 0.75,
    block_size: int = DEFAULT_BLOCK_SIZE,
    cache: TableCache | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """:func:`vem3d.stats.object_statistics`, block by block: the same table.

    Objects inside one block are measured from it at once. Pieces that touch a border
    with another block are joined across blocks; each such object is meshed from its
    bounding box: in memory when that is at most a block (the box read from the
    volume and labelled again), otherwise block by block (:func:`mesh_blocks`, from a
    label volume of the blocks that hold it).

    Parameters
    ----------
    volume : zarr.Array or ndarray, shape (slices, rows, columns)
        Foreground where non-zero.
    voxel_size_nm, smoothing_sigma
        As for :func:`vem3d.stats.object_statistics`.
    scratch_dir : path
        Folder for the label volume of objects larger than a block (removed afterwards).
    block_size : int
        Block side in voxels.
    cache : vem3d.cache.TableCache, optional
        As for :func:`vem3d.stats.object_statistics`.
    workers : int
        Processes that label and measure the blocks, and mesh the objects
        (:func:`vem3d.stats.mesh_measures`): those inside one block, those across
        blocks, and the blocks of objects larger than a block.

    Returns
    -------
    pandas.DataFrame
        As :func:`vem3d.stats.object_statistics`, objects numbered in raster order of
        their first voxel.
    """
    started = time.monotonic()
    shape = volume.shape
    spacing = np.asarray(voxel_size_nm, dtype=np.float64)
    pieces = BlockComponents(26)
    # Per piece (one block's part of an object; row 0 stands for label 0): voxel count,
    # coordinate sums, box start and stop, raster index of its first voxel, and
    # (mesh volume, area) where the piece is known to be a whole object, else NaN.
    rows: list[np.ndarray] = [np.array([[0, 0, 0, 0, *([np.iinfo(np.int64).max] * 3), 0, 0, 0, -1, 0, 0]], np.float64)]
    with process_pool(workers) as submit:
        owners = deque()  # (block rows, piece number) of each whole piece handed to mesh_measures, in order

        def whole_pieces() -> Iterator[np.ndarray]:
            # Pulled by mesh_measures as it hands pieces to the workers, which label
            # the next blocks meanwhile; the pieces are joined here, in raster order.
            for index, region, (count, layers, block_rows, whole, insides) in _in_raster_order(
                shape,
                block_size,
                "objects measured",
                lambda index, region: submit(_pieces_of_block, *_block_source(volume, region), region, shape),
                2 * workers,
            ):
                pieces.add(index, layers, count)
                if count == 0:
                    continue
                rows.append(block_rows)
                for number, inside in zip(whole, insides):
                    owners.append((block_rows, number))
                    yield inside

        for measures in mesh_measures(whole_pieces(), voxel_size_nm, smoothing_sigma, cache, submit):
            block_rows, number = owners.popleft()
            block_rows[number - 1, 11:] = measures
        rows = np.concatenate(rows)
        object_of, n_objects = pieces.components()
        # Objects numbered in raster order of their first voxel, as label_objects numbers them.
        first = np.full(object_of.max() + 1, np.inf)
        np.minimum.at(first, object_of[1:], rows[1:, 10])
        order = np.argsort(first)[:n_objects]
        number = np.zeros(object_of.max() + 1, np.int64)
        number[order] = np.arange(1, n_objects + 1)
        of_piece = number[object_of]
        totals = np.stack([np.bincount(of_piece, weights=rows[:, c], minlength=n_objects + 1) for c in range(4)], 1)
        lows = np.full((n_objects + 1, 3), np.inf)
        highs = np.zeros((n_objects + 1, 3))
        np.minimum.at(lows, of_piece, rows[:, 4:7])
        np.maximum.at(highs, of_piece, rows[:, 7:10])
        measures = np.full((n_objects + 1, 2), np.nan)
        whole = ~np.isnan(rows[:, 11])
        measures[of_piece[whole]] = rows[whole, 11:13]
        # Objects across block borders: those within a block's size meshed whole in the
        # worker processes, each taken from its box of the volume; larger ones block by block.
        boxes = {
            object_number: [(int(lo), int(hi)) for lo, hi in zip(lows[object_number], highs[object_number])]
            for object_number in np.unique(of_piece[~whole])
        }
        small = [object_number for object_number, box in boxes.items() if math.prod(hi - lo for lo, hi in box) <= block_size**3]
        insides = (
            _object_in_box(volume, boxes[object_number], np.unravel_index(int(first[order[object_number - 1]]), shape))
            for object_number in small
        )
        for object_number, object_measures in zip(
            small, mesh_measures(insides, voxel_size_nm, smoothing_sigma, cache, submit)
        ):
            measures[object_number] = object_measures
        large = sorted(boxes.keys() - set(small))
        if large:
            measures[large] = _measure_large_objects(
                volume, pieces, object_of, order, large, boxes, scratch_dir, voxel_size_nm, smoothing_sigma, block_size,
                workers,
            )
    log.info("measured %d objects block by block in %.1f s", n_objects, time.monotonic() - started)
    object_voxels = totals[1:, 0]
    volume_um3, area_um2 = measures[1:, 0] / NM3_PER_UM3, measures[1:, 1] / NM2_PER_UM2
    columns = {
        "object": np.arange(1, n_objects + 1),
        "voxels": object_voxels.astype(np.int64),
        "volume_um3": object_voxels * spacing.prod() / NM3_PER_UM3,
        "mesh_volume_um3": volume_um3,
        "surface_area_um2": area_um2,
        "sphericity": [sphericity(v, a) for v, a in zip(volume_um3, area_um2)],
    }
    for a, axis in enumerate(AXES):
        columns[f"centroid_{axis}_nm"] = totals[1:, 1 + a] / object_voxels * spacing[a]
        columns[f"bbox_{axis}_min_nm"] = (lows[1:, a] - 0.5) * spacing[a]
        columns[f"bbox_{axis}_max_nm"] = (highs[1:, a] - 0.5) * spacing[a]
    return pd.DataFrame(columns)[OBJECT_COLUMNS]
