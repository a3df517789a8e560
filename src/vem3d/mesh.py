"""Surface meshes of segmented volumes: marching cubes, STL output, mesh measurements.

:func:`volume_to_mesh` meshes a volume in memory at once (and single objects for
:mod:`vem3d.stats`); the mesh step marches every volume block by block
(:func:`mesh_blocks`), reading one larger than memory a block at a time, with the same
mesh: each block is meshed from its voxels plus a halo (the Gaussian kernel's radius and
one voxel), so the smoothed values it meshes are bit for bit those of the whole volume;
every marching cube belongs to exactly one block, and the vertices on the planes between
blocks are computed identically by both neighbours and welded by position, so the merged
mesh has no duplicate or missing faces at the seams. The STL is written block by block;
memory holds at most the simplified mesh.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import skimage.measure
import zarr
from scipy import ndimage
from stl import mesh as stl_mesh
from stl import stl as stl_format

from vem3d.atomic import link_or_copy, write_atomically, write_text_atomically
from vem3d.blockwise import DEFAULT_BLOCK_SIZE, block_shape, logged_blocks, read_whole_where_it_fits
from vem3d.cache import UNREADABLE, ArrayCache, mask_key
from vem3d.threads import finished, ordered_results, process_pool
from vem3d.volume import CleanedVolume, open_volumes

log = logging.getLogger(__name__)

NM3_PER_UM3 = 1e9
NM2_PER_UM2 = 1e6
SURFACE_LEVEL = 0.5  # iso-value on 0/1 masks: the surface halfway between foreground and background voxels
# Blocks (z, y, x) in which volumes are meshed unless told otherwise: thin along z, so
# that a changed slice reaches the blocks of one or two 16-slice slabs, not of all 256;
# from zarr, a chunk-deep column of them is read and smoothed at once (mesh_blocks).
# The mesh step alone, one process, on the 256 x 2048 x 2048 volume of
# benchmarks/pipeline.py --size 2048: 46.6 s, then 19.6 s after slice 128 changed,
# against 50.1 s and 33.2 s in blocks one chunk (64 slices) deep.
DEFAULT_MESH_BLOCK = (16, DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)

GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: kernel radius int(4 sigma + 0.5)


def marching_level(level: float) -> float:
    """The iso-value marching cubes runs at for ``level``: a millionth below it.

    At exactly 0.5 on raw 0/1 voxels (``smoothing_sigma`` 0), a cube face with two
    diagonal foreground corners has a saddle of exactly the level, and scikit-image's
    Lewiner cases split such faces differently in the two cubes that share them: 213
    of 3000 random volumes meshed with holes. Just below, diagonal voxels join, as
    26-connected objects do; vertices move by a millionth of a voxel.
    """
    return level - 1e-6


# Smoothed values closer than this to the marching level are moved out to it (on
# their side of the level): a value within about 1e-5 of the level put the vertices of
# all the edges from its grid point within float32 rounding of that point, so the STL
# (whose vertices are their float32 positions) got faces with two corners at one point
# and edges of four faces: 10 of the 2.7 M faces of the Lucchi++ mitochondria. Vertices
# now keep 0.01 voxel from grid points, apart in float32 in volumes under about 40 000
# voxels a side; they move along their edge by at most 0.02 voxel divided by the
# difference of the values at its ends.
LEVEL_CLEARANCE = 1e-2
CLEARANCE_SLAB_VALUES = 1 << 22  # values cleared at a time (clear_of_level)


def clear_of_level(field: np.ndarray, level: float) -> np.ndarray:
    """Move the values of ``field`` within :data:`LEVEL_CLEARANCE` of ``level`` out to that
    distance, on the side of ``level`` they are on (in place); returns ``field``.

    Every value stays on its side, so marching cubes at ``level`` sees the same corners
    inside and outside, and puts no vertex within float32 rounding of a grid point. Its
    faces are the same but where it splits a cube by the values at its corners (faces
    or cubes whose split is ambiguous): 727 948 faces against 727 952 on a random
    64 x 128 x 128 volume, closed either way. Sides are those of
    scikit-image's marching cubes: above ``level``, compared in float64, is inside (a
    float32 value has no float32 ``level`` to compare with: 0.499999 is 1.3e-8 below).
    """
    # A few million values at a time: masks of the whole field took 0.57 GiB more at the
    # peak of a whole-volume mesh of 0.27 G voxels (benchmarks/meshing.py).
    step = max(1, CLEARANCE_SLAB_VALUES // max(1, math.prod(field.shape[1:])))
    for start in range(0, len(field), step):
        slab = field[start : start + step]
        near = slab > level - LEVEL_CLEARANCE
        near &= slab < level + LEVEL_CLEARANCE
        if near.any():
            inside = slab[near].astype(np.float64) > level
            slab[near] = np.where(inside, level + LEVEL_CLEARANCE, level - LEVEL_CLEARANCE)
    return field


def marching_settings(level: float) -> tuple[float, float]:
    """What a marched mesh depends on besides its voxels and smoothing: the level marched at
    (:func:`marching_level`) and its clearance (:func:`clear_of_level`). Part of the cache
    keys of block meshes and object measures, so that results marched otherwise by an
    older version are not reused."""
    return marching_level(level), LEVEL_CLEARANCE


def _padding(smoothing_sigma: float) -> int:
    """Background voxels around a volume before smoothing, so that objects at its border close."""
    return 1 + int(np.ceil(3 * smoothing_sigma))


def volume_to_mesh(
    volume: np.ndarray,
    voxel_size_nm: tuple[float, float, float],
    level: float = SURFACE_LEVEL,
    smoothing_sigma: float = 0.75,
) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate the surface of a binary volume with marching cubes.

    The volume is padded with background so that objects touching its border still
    give closed surfaces. A light Gaussian smoothing first removes the voxel
    staircase, which otherwise inflates surface areas by about 9 % (a ball of radius
    15 voxels: +9 % unsmoothed, +0.3 % with sigma 0.75, volume within 1 %).

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero (bool or 0/1).
    voxel_size_nm : (float, float, float)
        Voxel size along z, y, x in nanometres (anisotropic spacing is honoured).
    level : float
        Iso-value on the 0/1 volume (marched a millionth below: :func:`marching_level`).
    smoothing_sigma : float
        Standard deviation of the Gaussian smoothing, in voxels along each axis;
        0 meshes the raw voxels.

    Returns
    -------
    vertices : ndarray of float32, shape (n_vertices, 3)
        Vertex coordinates (x, y, z) in nanometres, origin at the centre of voxel 0.
    faces : ndarray of int64, shape (n_faces, 3)
        Vertex indices of each triangle, counter-clockwise seen from outside
        (normals point out). Both arrays are empty when there is no foreground, or
        when smoothing leaves none of it above ``level`` (specks of a few voxels).
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if any(size <= 0 for size in voxel_size_nm):
        raise ValueError(f"voxel sizes must be > 0 nm, got {voxel_size_nm}")
    if not volume.any():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    padding = _padding(smoothing_sigma)
    padded = np.pad(volume.astype(np.float32), padding)
    level = marching_level(level)
    if smoothing_sigma > 0:
        padded = clear_of_level(ndimage.gaussian_filter(padded, smoothing_sigma, truncate=GAUSSIAN_TRUNCATE), level)
    if padded.max() <= level:
        # Objects of a voxel or two blur below the level: nothing to triangulate.
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    vertices_zyx, faces, _, _ = skimage.measure.marching_cubes(
        padded, level=level, spacing=tuple(float(size) for size in voxel_size_nm)
    )
    vertices_zyx -= padding * np.asarray(voxel_size_nm, dtype=vertices_zyx.dtype)
    # scikit-image winds faces clockwise seen from outside in (z, y, x); reversing the
    # axes to (x, y, z) mirrors the mesh, which makes them counter-clockwise (outward
    # normals, as STL expects).
    return vertices_zyx[:, ::-1].astype(np.float32), faces.astype(np.int64)


STL_HEADER = b"vem3d binary STL".ljust(stl_format.HEADER_SIZE)  # must not start with "solid", which marks ASCII STL


def stl_records(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Binary STL records of a triangle mesh: normal, corners, zero attribute.

    Normals as numpy-stl's ``update_normals`` computes them (edge cross products, not
    of unit length), without the areas and centroids it also computes.

    Returns
    -------
    ndarray of ``stl.mesh.Mesh.dtype``, shape (n_faces,)
    """
    records = np.empty(len(faces), dtype=stl_mesh.Mesh.dtype)
    corners, normals = _corners_and_normals(vertices, faces)
    for axis, normal in enumerate(normals):
        records["normals"][:, axis] = normal
    for corner, coordinates in enumerate(corners):
        records["vectors"][:, corner, :] = coordinates.T
    records["attr"] = 0
    return records


def _corners_and_normals(
    vertices: np.ndarray, faces: np.ndarray, dtype=None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each face's corners and (not unit) normal, a contiguous row per coordinate.

    Corners: three arrays of shape (3, n_faces), x, y, z of the faces' first,
    second and third corner; normals: x, y, z of the cross product of the edges
    from the first corner, as ``np.cross`` computes it, in ``dtype`` (default: the
    vertices'). Worked out coordinate by coordinate, which took half the time of
    ``np.cross`` on (n_faces, 3) arrays.
    """
    columns = np.ascontiguousarray(vertices.T, dtype=dtype)
    corners = [columns[:, np.ascontiguousarray(faces[:, corner])] for corner in range(3)]
    first_edge = corners[1] - corners[0]
    second_edge = corners[2] - corners[0]
    normals = [
        first_edge[1] * second_edge[2] - first_edge[2] * second_edge[1],
        first_edge[2] * second_edge[0] - first_edge[0] * second_edge[2],
        first_edge[0] * second_edge[1] - first_edge[1] * second_edge[0],
    ]
    return corners, normals


def write_stl(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh as binary STL (vectorised, atomically).

    The header is the same for every file (no date, unlike numpy-stl's), so the same
    mesh gives the same bytes.

    Parameters
    ----------
    path : path
        Output ``.stl`` file.
    vertices : ndarray, shape (n_vertices, 3)
    faces : ndarray of int, shape (n_faces, 3)
        Must hold at least one face: an empty STL would look like a mesh and is not
        written; callers record empty segmentations in their statistics instead.
    """
    if len(faces) == 0:
        raise ValueError(f"{path}: refusing to write an STL without faces")
    records = stl_records(np.asarray(vertices, dtype=np.float32), faces)

    def save(temporary: str) -> None:
        with open(temporary, "wb") as stl_file:
            stl_file.write(STL_HEADER + struct.pack("<I", len(records)))
            records.tofile(stl_file)

    write_atomically(path, save)


def read_stl(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an STL file as an indexed mesh (shared corners merged into one vertex).

    Returns
    -------
    vertices : ndarray of float32, shape (n_vertices, 3)
        In the file's units (nm, x, y, z, for meshes of :func:`write_stl`).
    faces : ndarray of int64, shape (n_faces, 3)
    """
    triangles = stl_mesh.Mesh.from_file(str(path), calculate_normals=False).vectors
    vertices, _, corner_vertex = unique_rows(triangles.reshape(-1, 3))
    return vertices.astype(np.float32), corner_vertex.reshape(-1, 3)


# Odd 64-bit multipliers that spread the 32-bit words of a row over a 64-bit hash.
_WORD_MULTIPLIERS = np.random.default_rng(20261125).integers(1, 2**62, 32, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _row_hashes(array: np.ndarray) -> np.ndarray | None:
    """A 64-bit hash of each row of a C-contiguous 2D array, None where rows are not whole 32-bit words."""
    row_bytes = array.dtype.itemsize * array.shape[1]
    if row_bytes % 4 or row_bytes // 4 > len(_WORD_MULTIPLIERS):
        return None
    words = array.view(np.uint32).reshape(len(array), -1)
    hashes = np.zeros(len(array), dtype=np.uint64)
    for column, multiplier in enumerate(_WORD_MULTIPLIERS[: words.shape[1]]):
        hashes ^= words[:, column].astype(np.uint64) * multiplier
        hashes ^= hashes >> np.uint64(29)
    return hashes


def unique_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct rows of a 2D array, as ``np.unique(array, axis=0)`` finds them.

    Rows are grouped by a hash of their bytes (linear time), the grouping is checked
    row by row, and only the distinct rows are sorted: on the 14.6 million corners of
    a 4.9-million-face mesh this takes 2.7 s where sorting all rows takes 4.5 s, and
    ``np.unique(axis=0)`` (which compares rows as structured records) 15 times longer.
    Should two distinct rows share a hash, it sorts all rows instead.

    Parameters
    ----------
    array : ndarray, shape (n_rows, n_columns)

    Returns
    -------
    unique : ndarray, shape (n_unique, n_columns)
        The distinct rows in lexicographic order.
    first : ndarray of int64, shape (n_unique,)
        Index in ``array`` of each distinct row's first occurrence.
    inverse : ndarray of int64, shape (n_rows,)
        Index in ``unique`` of each row of ``array``.
    """
    if array.dtype.kind == "f":
        array = array + array.dtype.type(0)  # -0.0 becomes 0.0, which it equals, bit for bit too
    array = np.ascontiguousarray(array)
    hashes = _row_hashes(array) if len(array) else None
    if hashes is not None:
        codes, distinct = pd.factorize(hashes)
        first = np.empty(len(distinct), dtype=np.int64)
        first[codes[::-1]] = np.arange(len(array) - 1, -1, -1)  # the last write, the first occurrence, wins
        candidates = array[first]
        if np.array_equal(candidates[codes], array):
            order = np.lexsort(candidates.T[::-1])
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            return candidates[order], first[order], rank[codes]
    order = np.lexsort(array.T[::-1])  # stable: equal rows stay in their original order
    ordered = array[order]
    starts = np.ones(len(array), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inverse = np.empty(len(array), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], order[starts].astype(np.int64), inverse


# A binary STL file: a header, a uint32 face count, then one numpy-stl record a face.
STL_FACES_OFFSET = stl_format.HEADER_SIZE + stl_format.COUNT_SIZE
TRIANGLES_PER_CHUNK = 250_000  # clustering works on this many at a time, in about 100 MB


def _first_unique_faces(faces: np.ndarray) -> np.ndarray:
    """The faces, each set of three corners once (the first occurrence kept, in order)."""
    _, first, _ = unique_rows(np.sort(faces, axis=1))
    return faces[np.sort(first)]


CELL_INDEX_BITS = 21  # per axis: three signed cell indices in one int64 key


def _cluster_triangles(triangle_chunks: Callable[[], Iterable[np.ndarray]], cell: float) -> tuple[np.ndarray, np.ndarray]:
    """One round of vertex clustering over triangles read a chunk at a time (see :func:`simplify_triangles`).

    Cells are cubes of side ``cell`` on a grid anchored at the origin, so no pass over
    the triangles is needed to find their bounds first. Each chunk's corners are
    grouped by cell with a hash (``pandas.factorize``) and summed with ``np.bincount``;
    the chunks' per-cell sums are grouped the same way. On the 19.5-million-face mesh
    of ``benchmarks/pipeline.py --size 1024`` a round took about 20 % less time than
    with ``DataFrame.groupby(...).sum()``, same result.
    """
    reach = 1 << (CELL_INDEX_BITS - 1)  # cell indices from -reach to reach - 1
    chunk_cells, chunk_sums, kept = [], [], []
    for triangles in triangle_chunks():
        keys = np.zeros(triangles.shape[0] * 3, dtype=np.int64)  # cell z, y, x indices, each offset by reach
        columns = []
        for axis in (2, 1, 0):
            # One contiguous column per axis: numpy's element-wise work on (n, 3) arrays
            # runs an inner loop of 3 and was several times slower.
            column = np.ascontiguousarray(triangles[:, :, axis]).ravel()
            index = np.divide(column, cell, dtype=np.float64)
            np.floor(index, out=index)
            if len(index) and (index.min() < -reach or index.max() >= reach):
                raise ValueError(f"coordinates up to {np.abs(column).max():g} are too far out for cells of {cell:g}")
            keys <<= CELL_INDEX_BITS
            keys += index.astype(np.int64) + reach
            columns.append(column)
        corner_cell, cells = pd.factorize(keys)
        chunk_cells.append(cells)
        chunk_sums.append(
            [np.bincount(corner_cell, weights=column, minlength=len(cells)) for column in columns[::-1]]
            + [np.bincount(corner_cell, minlength=len(cells))]
        )
        faces = keys.reshape(-1, 3)
        faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
        kept.append(_first_unique_faces(faces))
    cell_of_sum, cells = pd.factorize(np.concatenate(chunk_cells))
    x, y, z, n = (
        np.bincount(cell_of_sum, weights=np.concatenate(sums), minlength=len(cells)) for sums in zip(*chunk_sums)
    )
    order = np.argsort(cells)  # vertices in the order of their cells' keys
    vertices = (np.stack([x, y, z], axis=1)[order] / n[order, None]).astype(np.float32)
    faces = _first_unique_faces(np.concatenate(kept)) if kept else np.zeros((0, 3), np.int64)
    return vertices, np.searchsorted(cells[order], faces).astype(np.int64)


def simplify_triangles(
    triangle_chunks: Callable[[], Iterable[np.ndarray]], n_faces: int, max_faces: int, mean_edge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Simplify triangles, read a chunk at a time, to at most ``max_faces`` faces by vertex clustering.

    Space is cut into cubic cells; the triangle corners in a cell merge into their
    mean, and faces that collapse or repeat are dropped. The cell grows (from the mean
    edge length scaled by the square root of the reduction asked for) until the mesh is
    small enough. Memory holds one chunk, a few numbers per cell and the kept faces,
    so meshes larger than memory simplify too. Good for looking at a mesh, not for
    measuring it: thin parts may close up or vanish.

    Parameters
    ----------
    triangle_chunks : callable
        Returns a fresh iterable of float arrays of shape (k, 3, 3) (triangle, corner,
        coordinate) that together hold all ``n_faces`` triangles; called once per round.
    n_faces : int
    max_faces : int
        Face budget (> 0).
    mean_edge : float
        Mean edge length (estimated from a sample of faces is enough).

    Returns
    -------
    vertices : ndarray of float32, shape (n_kept_vertices, 3)
    faces : ndarray of int64, shape (n_kept_faces, 3)
        Orientation of the kept faces is preserved.

    Raises
    ------
    ValueError
        For coordinates more than 2^20 cells from the origin.
    """
    if max_faces <= 0:
        raise ValueError(f"max_faces must be > 0, got {max_faces}")
    cell = max(float(mean_edge) * np.sqrt(n_faces / max_faces), 1e-12)
    while True:
        vertices, faces = _cluster_triangles(triangle_chunks, cell)
        if len(faces) <= max_faces:
            return vertices, faces
        cell *= 1.25


def _mean_edge(triangles: np.ndarray) -> float:
    triangles = triangles.astype(np.float64)
    return float(np.linalg.norm(triangles - np.roll(triangles, 1, axis=1), axis=-1).mean())


def decimate_mesh(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Simplify a mesh to at most ``max_faces`` faces by vertex clustering (:func:`simplify_triangles`).

    Parameters
    ----------
    vertices : ndarray, shape (n_vertices, 3)
    faces : ndarray of int, shape (n_faces, 3)
    max_faces : int
        Face budget (> 0); a mesh within it is returned unchanged.

    Returns
    -------
    vertices : ndarray of float32, shape (n_kept_vertices, 3)
    faces : ndarray of int64, shape (n_kept_faces, 3)
        Orientation of the kept faces is preserved.
    """
    if max_faces <= 0:
        raise ValueError(f"max_faces must be > 0, got {max_faces}")
    if len(faces) <= max_faces:
        return vertices, faces
    # The first chunk's edges estimate the mean edge length, as read_stl_simplified's do.
    sample = vertices[faces[:TRIANGLES_PER_CHUNK]]

    def chunks():
        for start in range(0, len(faces), TRIANGLES_PER_CHUNK):
            yield vertices[faces[start : start + TRIANGLES_PER_CHUNK]]

    return simplify_triangles(chunks, len(faces), max_faces, _mean_edge(sample))


def stl_face_count(path: str | os.PathLike) -> int:
    """Faces of a binary STL file, from its header."""
    with open(path, "rb") as stl_file:
        stl_file.seek(stl_format.HEADER_SIZE)
        count = int(np.frombuffer(stl_file.read(stl_format.COUNT_SIZE), "<u4")[0])
    expected = STL_FACES_OFFSET + count * stl_mesh.Mesh.dtype.itemsize
    if os.path.getsize(path) != expected:
        raise ValueError(f"{path}: not a binary STL of {count} faces ({expected} bytes): {os.path.getsize(path)} bytes")
    return count


def _stl_triangles(path: str | os.PathLike, n_faces: int) -> Iterator[np.ndarray]:
    """The triangles of a binary STL file, ``TRIANGLES_PER_CHUNK`` at a time: float32 (k, 3, 3)."""
    with open(path, "rb") as stl_file:
        stl_file.seek(STL_FACES_OFFSET)
        for start in range(0, n_faces, TRIANGLES_PER_CHUNK):
            count = min(TRIANGLES_PER_CHUNK, n_faces - start)
            # Contiguous: reductions over the records' strided field are several times slower.
            yield np.ascontiguousarray(np.fromfile(stl_file, dtype=stl_mesh.Mesh.dtype, count=count)["vectors"])


def read_stl_simplified(path: str | os.PathLike, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary STL file simplified to at most ``max_faces`` faces, a chunk of faces at a time.

    A file within the budget is read whole (:func:`read_stl`); a larger one is read
    ``TRIANGLES_PER_CHUNK`` faces at a time and simplified by :func:`simplify_triangles`,
    so that memory holds a chunk, not the mesh.

    Returns
    -------
    vertices : ndarray of float32, shape (n_vertices, 3)
    faces : ndarray of int64, shape (n_faces, 3)
    """
    n_faces = stl_face_count(path)
    if n_faces <= max_faces:
        return read_stl(path)
    mean_edge = _mean_edge(next(_stl_triangles(path, n_faces)))  # the first chunk's: estimate enough
    return simplify_triangles(lambda: _stl_triangles(path, n_faces), n_faces, max_faces, mean_edge)


def area_and_volume(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Surface area and enclosed volume of a triangle mesh.

    One cross product per face gives both: its length is twice the face's area, and
    its dot product with a corner six times the signed volume of the tetrahedron the
    face spans with the origin (divergence theorem).

    Parameters
    ----------
    vertices : ndarray, shape (n_vertices, 3)
    faces : ndarray of int, shape (n_faces, 3)

    Returns
    -------
    area : float
        In units^2.
    volume : float
        In units^3; the volume enclosed when the mesh is closed and oriented outward
        (for a piece of such a mesh, its share of that volume).
    """
    if len(faces) == 0:
        return 0.0, 0.0
    corners, (normal_x, normal_y, normal_z) = _corners_and_normals(vertices, faces, np.float64)
    area = np.sqrt(normal_x * normal_x + normal_y * normal_y + normal_z * normal_z).sum() / 2
    first_x, first_y, first_z = corners[0]
    volume = (first_x * normal_x + first_y * normal_y + first_z * normal_z).sum() / 6
    return float(area), float(volume)


def is_watertight(faces: np.ndarray) -> bool:
    """Whether every edge of the mesh is shared by exactly two faces, in opposite directions."""
    if len(faces) == 0:
        return False
    faces = np.asarray(faces, dtype=np.int64)
    n_vertices = int(faces.max()) + 1
    # Each directed edge as one number: present once, and its reverse present too.
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed = edges[:, 0] * n_vertices + edges[:, 1]
    directed.sort()
    if (directed[1:] == directed[:-1]).any():
        return False
    reverse = edges[:, 1] * n_vertices + edges[:, 0]
    found = np.searchsorted(directed, reverse)
    return bool((found < len(directed)).all() and (directed[np.minimum(found, len(directed) - 1)] == reverse).all())


def mesh_volumes(
    volume_path: str | os.PathLike,
    mesh_dir: str | os.PathLike,
    summary_path: str | os.PathLike,
    smoothing_sigma: float = 0.75,
    block_size: int = 0,
    memory_gib: float = 4.0,
    max_faces: int = 0,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Mesh each class's cleaned volume; write STLs and a summary TSV.

    The marching cubes run block by block and the STL is written a block at a time,
    so that a cache can keep each block's part; a volume that fits in memory is read
    whole first, a larger one a block at a time (:func:`mesh_blocks`, as
    :func:`vem3d.blockwise.read_whole_where_it_fits` decides), with the same mesh.

    Parameters
    ----------
    volume_path : path
        The cleaned volumes of :func:`vem3d.volume.write_volumes` (with the voxel size).
    mesh_dir : path
        Folder for one ``{class}.stl`` per class (none for a class with no voxels left).
    summary_path : path
        TSV with one row per class: class and the measurements of
        :func:`write_mesh_blockwise`.
    smoothing_sigma : float
        As for :func:`volume_to_mesh`.
    block_size : int
        Read and mesh block by block, in blocks of this many voxels a side; 0 meshes
        in blocks of :data:`DEFAULT_MESH_BLOCK` (16 x 256 x 256), and
        reads block by block only when reading the whole volume first would need more
        than ``memory_gib`` (:func:`vem3d.blockwise.read_whole_where_it_fits`).
    memory_gib : float
        Memory the whole volume read first may take, GiB.
    max_faces : int
        Simplify each STL to at most this many faces (:func:`simplify_triangles`); 0
        keeps the full mesh. The summary always measures the full mesh.
    cache_dir : path, optional
        Keep each class's block meshes here (:class:`BlockMeshCache`),
        so that a run after some slices changed meshes again only the blocks they reach.
    workers : int
        Processes that smooth and march blocks (:func:`mesh_blocks`).

    Returns
    -------
    pandas.DataFrame
        The summary rows.
    """
    volumes = open_volumes(volume_path)
    Path(mesh_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for class_name, cleaned in volumes.classes.items():
        cleaned = CleanedVolume(
            read_whole_where_it_fits(cleaned.volume, block_size, memory_gib),
            cleaned.objects,
            cleaned.foreground_voxels,
        )
        row = write_mesh_blockwise(
            cleaned,
            volumes.voxel_size_nm,
            Path(mesh_dir) / f"{class_name}.stl",
            block_size or DEFAULT_MESH_BLOCK,
            smoothing_sigma,
            max_faces,
            None if cache_dir is None else BlockMeshCache(Path(cache_dir) / class_name, volumes.voxel_size_nm),
            workers,
        )
        if not row["faces"]:
            log.warning("no %s voxels left after clean-up: no STL written", class_name)
        log.info("meshed %s: %s", class_name, row)
        rows.append({"class": class_name, **row})
    summary = pd.DataFrame(rows)
    write_text_atomically(summary_path, summary.to_csv(sep="\t", index=False))
    return summary


# Block by block: the mesh step's path for every volume (one larger than memory is read
# a block at a time).


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


# Errors of os.copy_file_range that mean "not here" (file system, kernel): copy through memory.
_NO_COPY_FILE_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


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


@dataclass
class BlockMesh:
    """The part of a mesh that one block's marching cubes make.

    Attributes
    ----------
    vertices : ndarray of float32, shape (n_vertices, 3)
        x, y, z in nanometres, origin at the centre of voxel 0, as
        :func:`volume_to_mesh`.
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
        The block's binary STL records (:func:`stl_records`) where already
        made, or where they lie in the last run's STL (:class:`BlockMeshCache`).
    area_nm2, volume_nm3 : float, optional
        Its surface area and share of the enclosed volume
        (:func:`area_and_volume`), where already measured.
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
    lies the zero padding of :func:`volume_to_mesh`, and beyond the padding
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
    level = marching_level(level)
    field = _smoothed_field(data, radius, smoothing_sigma)
    del data
    if smoothing_sigma > 0:  # raw 0/1 voxels are never near the level
        clear_of_level(field, level)
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
    """Marching cubes of :func:`volume_to_mesh`, one block at a time.

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
        As for :func:`volume_to_mesh`.
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
    padding = _padding(smoothing_sigma)  # as volume_to_mesh pads
    sides = block_shape(block_size)
    ranges = [_cube_ranges(n, side) for n, side in zip(shape, sides)]
    read_depth = max(sides[0], volume.chunks[0]) if isinstance(volume, zarr.Array) else sides[0]

    def column(index) -> tuple[int, ...]:
        """The blocks read together: one (y, x) column of a slab of ``read_depth`` slices."""
        return (max(ranges[0][index[0]][0], 0) // read_depth, *index[1:])

    indices = sorted(itertools.product(*(range(len(axis_ranges)) for axis_ranges in ranges)), key=column)
    placed = deque()  # per column submitted: (index, cubes, key, stored cubes or None) of its blocks with surface

    def submitted(submit) -> Iterator[Future]:
        for _, group in itertools.groupby(logged_blocks(indices, len(indices), task), key=column):
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
                    mask_key(
                        cache.context, voxels, block_wanted, shape, smoothing_sigma, *marching_settings(level),
                    )
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
        As :func:`volume_to_mesh` returns them (in another order).
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
    """:func:`volume_to_mesh` block by block: the same mesh, up to vertex and face order.

    Holds the mesh, not the volume, in memory. Parameters as for :func:`mesh_blocks`;
    returns as :func:`weld_block_meshes`.
    """
    return weld_block_meshes(mesh_blocks(volume, voxel_size_nm, block_size, smoothing_sigma, level, workers=workers))


def write_stl_blocks(path: str | os.PathLike, block_meshes, on_block=None) -> int:
    """Write block meshes as one binary STL, a block at a time (atomically).

    STL stores each triangle's corner positions, so the copies of shared vertices,
    being equal, need no welding. Normals as :func:`write_stl` computes them.

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

    - The marching cubes of each block, in voxel units (``cubes``, an
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
        except UNREADABLE:
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
        As :func:`vem3d.volume.open_volumes` gives it (its ``volume`` a zarr array, or an
        array read whole) or :func:`vem3d.volume.clean_blockwise` returns it.
    voxel_size_nm, smoothing_sigma
        As for :func:`volume_to_mesh`.
    stl_path : path
        STL written (not when the mesh is empty).
    block_size : int or (int, int, int)
        Block side in voxels, or sides along z, y, x.
    max_faces : int
        Simplify the STL to at most this many faces: the full mesh is written to a
        scratch STL beside ``stl_path`` and simplified from there a chunk of faces at a
        time (:func:`read_stl_simplified`); 0 writes the full mesh block by block.
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
        " x ".join(map(str, block_shape(block_size))),
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
