"""Working on volumes block by block: the blocks, and when to read a volume whole.

The volume, mesh and statistics steps work on a volume one block (a box of voxels) at a
time, reading a chunked on-disk volume (zarr) a block at a time where it does not fit in
memory: :func:`vem3d.volume.clean_blockwise`, :func:`vem3d.mesh.write_mesh_blockwise`
and :func:`vem3d.stats.object_statistics_blockwise` give the results of the in-memory
:func:`vem3d.volume.clean_volume`, :func:`vem3d.mesh.volume_to_mesh` and
:func:`vem3d.stats.object_statistics`. This module holds what they share: the blocks of
a volume in raster order, progress while going through them, and the decision whether a
volume is read whole or block by block.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import zarr

from vem3d.threads import ordered_results

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 256  # voxels per block side: ~17 M voxels, a few hundred MB of work arrays
# Mesh and statistics read the cleaned volume whole (1 byte a voxel) where it fits and
# work on it block by block: their peak measured 1.24 and 1.42 GB on the 1.07 G voxels
# of benchmarks/pipeline.py --size 2048.
READ_WHOLE_BYTES_PER_VOXEL = 2


def fits_in_memory(shape: Sequence[int], memory_gib: float, bytes_per_voxel: float) -> bool:
    """Whether work on a volume of ``shape`` in memory, ``bytes_per_voxel`` of it, stays within ``memory_gib``."""
    return math.prod(shape) * bytes_per_voxel <= memory_gib * 2**30


def goes_blockwise(shape: Sequence[int], block_size: int, memory_gib: float, bytes_per_voxel: float) -> bool:
    """Whether a volume of ``shape`` (slices, rows, columns) is read block by block, not whole.

    Parameters
    ----------
    shape : (int, int, int)
    block_size : int
        Non-zero: always block by block.
    memory_gib : float
        Otherwise block by block only when the volume does not fit (:func:`fits_in_memory`).
    bytes_per_voxel : float
        What the step needs in memory per voxel of the volume:
        :data:`vem3d.volume.IN_MEMORY_BYTES_PER_VOXEL` for the clean-up,
        :data:`READ_WHOLE_BYTES_PER_VOXEL` for mesh and statistics.
    """
    return bool(block_size) or not fits_in_memory(shape, memory_gib, bytes_per_voxel)


def read_whole_where_it_fits(volume: zarr.Array, block_size: int, memory_gib: float):
    """A cleaned volume as mesh and statistics work on it: read whole into memory where no
    ``block_size`` is set and :data:`READ_WHOLE_BYTES_PER_VOXEL` fit ``memory_gib``
    (:func:`goes_blockwise`), else the zarr array itself, read a block at a time."""
    if goes_blockwise(volume.shape, block_size, memory_gib, READ_WHOLE_BYTES_PER_VOXEL):
        return volume
    return volume[:]


def block_shape(block_size) -> tuple[int, int, int]:
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
    sides = block_shape(block_size)
    counts = [math.ceil(n / side) for n, side in zip(shape, sides)]
    indices = list(itertools.product(*(range(count) for count in counts)))
    return logged_blocks(
        (
            (index, tuple(slice(i * side, min((i + 1) * side, n)) for i, side, n in zip(index, sides, shape)))
            for index in indices
        ),
        len(indices),
        task,
    )


def logged_blocks(items, total: int, task: str):
    """Pass ``items`` through, logging every tenth of ``total`` (nothing without a ``task``)."""
    started = time.monotonic()
    step = max(total // 10, 1)
    for done, item in enumerate(items, start=1):
        yield item
        if task and (done % step == 0 or done == total):
            log.info("%s: %d of %d blocks in %.0f s", task, done, total, time.monotonic() - started)


def block_source(source, region: tuple[slice, ...]) -> tuple[object, tuple[slice, ...]]:
    """(array, region) for a worker to read a block from: a zarr volume itself (it
    pickles in a kilobyte; the worker decompresses), or an in-memory volume's block alone."""
    if isinstance(source, zarr.Array):
        return source, region
    return np.asarray(source[region]), (slice(None),) * len(region)


def in_raster_order(shape, block_size, task: str, work, ahead: int):
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
