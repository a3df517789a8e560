"""Surface meshes of segmented volumes: marching cubes, STL output, mesh measurements."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import skimage.measure
from scipy import ndimage
from stl import mesh as stl_mesh
from stl import stl as stl_format

from vem3d.atomic import write_atomically, write_text_atomically
from vem3d.volume import open_volumes

log = logging.getLogger(__name__)

NM3_PER_UM3 = 1e9
NM2_PER_UM2 = 1e6


SURFACE_LEVEL = 0.5  # iso-value on 0/1 masks: the surface halfway between foreground and background voxels


def marching_level(level: float) -> float:
    """The iso-value marching cubes runs at for ``level``: a millionth below it.

    At exactly 0.5 on raw 0/1 voxels (``smoothing_sigma`` 0), a cube face with two
    diagonal foreground corners has a saddle of exactly the level, and scikit-image's
    Lewiner cases split such faces differently in the two cubes that share them: 213
    of 3000 random volumes meshed with holes. Just below, diagonal voxels join, as
    26-connected objects do; vertices move by a millionth of a voxel.
    """
    return level - 1e-6


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
    padding = 1 + int(np.ceil(3 * smoothing_sigma))
    padded = np.pad(volume.astype(np.float32), padding)
    if smoothing_sigma > 0:
        padded = ndimage.gaussian_filter(padded, smoothing_sigma)
    if padded.max() <= marching_level(level):
        # Objects of a voxel or two blur below the level: nothing to triangulate.
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    vertices_zyx, faces, _, _ = skimage.measure.marching_cubes(
        padded, level=marching_level(level), spacing=tuple(float(size) for size in voxel_size_nm)
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
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed, counts = np.unique(edges, axis=0, return_counts=True)
    if (counts != 1).any():
        return False
    reversed_edges = {tuple(edge) for edge in directed[:, ::-1]}
    return all(tuple(edge) in reversed_edges for edge in directed)


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
    whole first, a larger one a block at a time (:mod:`vem3d.blockwise`), with the
    same mesh.

    Parameters
    ----------
    volume_path : path
        The cleaned volumes of :func:`vem3d.volume.write_volumes` (with the voxel size).
    mesh_dir : path
        Folder for one ``{class}.stl`` per class (none for a class with no voxels left).
    summary_path : path
        TSV with one row per class: class and the measurements of
        :func:`vem3d.blockwise.write_mesh_blockwise`.
    smoothing_sigma : float
        As for :func:`volume_to_mesh`.
    block_size : int
        Read and mesh block by block, in blocks of this many voxels a side; 0 meshes
        in blocks of :data:`vem3d.blockwise.DEFAULT_MESH_BLOCK` (16 x 256 x 256), and
        reads block by block only when reading the whole volume first would need more
        than ``memory_gib`` (:func:`vem3d.blockwise.read_whole_where_it_fits`).
    memory_gib : float
        Memory the whole volume read first may take, GiB.
    max_faces : int
        Simplify each STL to at most this many faces (:func:`simplify_triangles`); 0
        keeps the full mesh. The summary always measures the full mesh.
    cache_dir : path, optional
        Keep each class's block meshes here (:class:`vem3d.blockwise.BlockMeshCache`),
        so that a run after some slices changed meshes again only the blocks they reach.
    workers : int
        Processes that smooth and march blocks (:func:`vem3d.blockwise.mesh_blocks`).

    Returns
    -------
    pandas.DataFrame
        The summary rows.
    """
    from vem3d import blockwise  # builds on this module

    volumes = open_volumes(volume_path)
    Path(mesh_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for class_name, cleaned in volumes.classes.items():
        cleaned = blockwise.CleanedVolume(
            blockwise.read_whole_where_it_fits(cleaned.volume, block_size, memory_gib),
            cleaned.objects,
            cleaned.foreground_voxels,
        )
        row = blockwise.write_mesh_blockwise(
            cleaned,
            volumes.voxel_size_nm,
            Path(mesh_dir) / f"{class_name}.stl",
            block_size or blockwise.DEFAULT_MESH_BLOCK,
            smoothing_sigma,
            max_faces,
            None if cache_dir is None else blockwise.BlockMeshCache(Path(cache_dir) / class_name, volumes.voxel_size_nm),
            workers,
        )
        if not row["faces"]:
            log.warning("no %s voxels left after clean-up: no STL written", class_name)
        log.info("meshed %s: %s", class_name, row)
        rows.append({"class": class_name, **row})
    summary = pd.DataFrame(rows)
    write_text_atomically(summary_path, summary.to_csv(sep="\t", index=False))
    return summary
