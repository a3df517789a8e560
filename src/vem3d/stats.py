"""Per-object statistics of a segmented volume: size, shape and position of each 3D object.

Objects are the 26-connected components of the foreground (:func:`vem3d.volume.label_objects`),
of the cleaned volume that :func:`vem3d.volume.write_volumes` writes. Coordinates are in the frame of the STL
meshes (:func:`vem3d.mesh.volume_to_mesh`): nanometres, origin at the centre of voxel
(0, 0, 0), but listed in array order (z, y, x). The statistics step measures every
volume block by block (:func:`object_statistics_blockwise`, reading one larger than
memory a block at a time), with the table of :func:`object_statistics`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage

from vem3d.atomic import write_text_atomically
from vem3d.blockwise import DEFAULT_BLOCK_SIZE, block_source, blocks, in_raster_order, read_whole_where_it_fits
from vem3d.cache import TableCache, mask_key
from vem3d.mesh import (
    NM2_PER_UM2,
    NM3_PER_UM3,
    SURFACE_LEVEL,
    MeshMeasurements,
    area_and_volume,
    marching_settings,
    mesh_blocks,
    volume_to_mesh,
)
from vem3d.threads import finished, ordered_results, process_pool, run_now
from vem3d.volume import AXES, BlockComponents, empty_volume_like, label_block, label_objects, open_volumes, outer_layers

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100  # objects between progress lines in the log
# Objects handed to the meshing processes ahead of the one awaited: each is a few
# milliseconds of work, so a worker should never wait for the next.
OBJECTS_AHEAD = 256
OBJECT_COLUMNS = [
    "object",
    "voxels",
    "volume_um3",
    "mesh_volume_um3",
    "surface_area_um2",
    "sphericity",
    *(f"centroid_{axis}_nm" for axis in AXES),
    *(f"bbox_{axis}_min_nm" for axis in AXES),
    *(f"bbox_{axis}_max_nm" for axis in AXES),
    # Cut by a face of the stack: its volume, area and shape are those of the part imaged.
    "touches_border",
]


def sphericity(volume: float, area: float) -> float:
    """Sphericity ``pi^(1/3) (6 V)^(2/3) / A``: 1 for a ball, less for any other shape.

    ``volume`` and ``area`` in consistent units (e.g. um^3 and um^2); NaN when the
    area is 0.
    """
    if area <= 0:
        return float("nan")
    return float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area)


def mesh_measures(
    insides: Iterable[np.ndarray],
    voxel_size_nm: tuple[float, float, float],
    smoothing_sigma: float,
    cache: TableCache | None = None,
    submit: Callable[..., Future] = run_now,
) -> Iterator[tuple[float, float]]:
    """Enclosed volume (nm^3) and area (nm^2) of each object's own mesh, in order.

    Each object is meshed as :func:`vem3d.mesh.volume_to_mesh` meshes it (with
    ``voxel_size_nm`` and ``smoothing_sigma``). Those not in ``cache`` (measures of
    objects seen before, by their voxels wherever they lie, and the settings) are
    computed through ``submit`` (a :func:`vem3d.threads.process_pool`'s; by default
    in this process) and stored in it.

    Parameters
    ----------
    insides : iterable of ndarray of bool, shape (slices, rows, columns)
        Each object over (at least) its bounding box. Taken up to a few hundred ahead
        of the one whose measures are yielded, so that the workers always have some.
    voxel_size_nm : (float, float, float)
        Voxel size along z, y, x in nanometres.
    smoothing_sigma : float
        Gaussian smoothing before marching cubes, in voxels.
    cache : vem3d.cache.TableCache, optional
    submit : callable
        Runs ``function(*arguments)`` and returns a Future of its result.

    Yields
    ------
    (float, float)
        Per object: mesh volume (nm^3) and area (nm^2).
    """
    keys = deque()  # per object submitted: its cache key where it is computed, else None

    def submitted() -> Iterator[Future]:
        for inside in insides:
            key = (
                mask_key(
                    cache.context, inside, tuple(map(float, voxel_size_nm)), smoothing_sigma,
                    *marching_settings(SURFACE_LEVEL),
                )
                if cache
                else None
            )
            stored = cache.get(key) if cache else None
            keys.append(None if stored is not None else key)
            if stored is not None:
                yield finished((float(stored[0]), float(stored[1])))
            else:
                yield submit(_mesh_measures, inside, voxel_size_nm, smoothing_sigma)

    for measures in ordered_results(submitted(), ahead=OBJECTS_AHEAD):
        key = keys.popleft()
        if key is not None:
            cache.put(key, measures)
        yield measures


def _mesh_measures(
    inside: np.ndarray, voxel_size_nm: tuple[float, float, float], smoothing_sigma: float
) -> tuple[float, float]:
    vertices, faces = volume_to_mesh(inside, voxel_size_nm, smoothing_sigma=smoothing_sigma)
    area_nm2, volume_nm3 = area_and_volume(vertices, faces)
    return volume_nm3, area_nm2


def object_statistics(
    volume: np.ndarray,
    voxel_size_nm: tuple[float, float, float],
    smoothing_sigma: float = 0.75,
    cache: TableCache | None = None,
) -> pd.DataFrame:
    """Measure every 26-connected object of a binary volume.

    The objects are numbered by :func:`vem3d.volume.label_objects` and measured by
    :func:`measure_objects`. Each object is meshed on its own (marching cubes after
    Gaussian smoothing, as :func:`vem3d.mesh.volume_to_mesh`), so touching
    neighbours do not share surface.

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero.
    voxel_size_nm : (float, float, float)
        Voxel size along z, y, x in nanometres.
    smoothing_sigma : float
        Gaussian smoothing before marching cubes, in voxels.
    cache : vem3d.cache.TableCache, optional
        Reuse the mesh measures of unchanged objects (:func:`mesh_measures`).

    Returns
    -------
    pandas.DataFrame
        One row per object, columns :data:`OBJECT_COLUMNS`: ``object`` (id, as numbered
        by :func:`vem3d.volume.label_objects`), ``voxels``, ``volume_um3`` (voxel count times voxel
        volume), ``mesh_volume_um3`` (enclosed by the smoothed mesh),
        ``surface_area_um2`` (of the mesh), ``sphericity`` (from the mesh volume and
        area), ``centroid_{z,y,x}_nm`` (mean voxel centre) and
        ``bbox_{z,y,x}_{min,max}_nm`` (outer faces of the extreme voxels) and
        ``touches_border`` (whether the object reaches a face of the volume, so that
        the stack cuts it: leave these out of size and shape distributions). Empty,
        with these columns, when there is no foreground.
    """
    return measure_objects(*label_objects(volume), voxel_size_nm, smoothing_sigma, cache)


def measure_objects(
    labels: np.ndarray,
    n_objects: int,
    voxel_size_nm: tuple[float, float, float],
    smoothing_sigma: float = 0.75,
    cache: TableCache | None = None,
) -> pd.DataFrame:
    """Measure numbered objects: the table of :func:`object_statistics`.

    Parameters
    ----------
    labels : ndarray of int, shape (slices, rows, columns)
        0 for background, 1 to ``n_objects`` for the objects (as
        :func:`vem3d.volume.label_objects` or :func:`vem3d.volume.clean_objects` number them).
    n_objects : int
    voxel_size_nm, smoothing_sigma, cache
        As for :func:`object_statistics`.

    Returns
    -------
    pandas.DataFrame
        As :func:`object_statistics` returns it, one row per object in the order of their numbers.
    """
    spacing = np.asarray(voxel_size_nm, dtype=np.float64)
    voxel_rows = []  # per object: voxels, voxel volume, centroid and box, measured as it is handed out

    def insides() -> Iterator[np.ndarray]:
        for index, window in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[window] == index
            offset = np.array([axis.start for axis in window])
            stop = np.array([axis.stop for axis in window])
            voxels = int(np.count_nonzero(inside))
            voxel_rows.append(
                (
                    voxels,
                    voxels * spacing.prod() / NM3_PER_UM3,
                    (np.argwhere(inside).mean(axis=0) + offset) * spacing,
                    (offset - 0.5) * spacing,
                    (stop - 0.5) * spacing,
                    bool((offset == 0).any() or (stop == labels.shape).any()),
                )
            )
            yield inside

    rows = []
    started = time.monotonic()
    measured = mesh_measures(insides(), voxel_size_nm, smoothing_sigma, cache)
    for index, (mesh_volume_nm3, area_nm2) in enumerate(measured, start=1):
        voxels, volume_um3, centroid, first, last, touches_border = voxel_rows[index - 1]
        area_um2 = area_nm2 / NM2_PER_UM2
        mesh_volume_um3 = mesh_volume_nm3 / NM3_PER_UM3
        rows.append(
            [index, voxels, volume_um3, mesh_volume_um3, area_um2, sphericity(mesh_volume_um3, area_um2),
             *centroid, *first, *last, touches_border]
        )
        if index % PROGRESS_EVERY == 0:
            elapsed = time.monotonic() - started
            log.info("measured %d of %d objects in %.1f s (%.1f objects/s)", index, n_objects, elapsed, index / elapsed)
    log.info("measured %d objects", n_objects)
    return pd.DataFrame(rows, columns=OBJECT_COLUMNS).astype(
        {"object": np.int64, "voxels": np.int64, "touches_border": bool}
    )


def summarise_objects(objects: pd.DataFrame, n_voxels: int) -> dict[str, float | int]:
    """Summary of an object table.

    Parameters
    ----------
    objects : pandas.DataFrame
        As returned by :func:`object_statistics`.
    n_voxels : int
        Number of voxels of the whole volume (for the volume fraction).

    Returns
    -------
    dict
        ``objects`` (count), ``total_volume_um3``, ``median_volume_um3`` (NaN without
        objects), ``volume_fraction`` (foreground voxels / all voxels),
        ``total_surface_area_um2``, ``median_sphericity`` (NaN without objects),
        ``objects_touching_border`` (count of those the stack cuts) and
        ``median_volume_uncut_um3`` (over the others, whose volume is whole; NaN
        without any).
    """
    return {
        "objects": len(objects),
        "total_volume_um3": float(objects["volume_um3"].sum()),
        "median_volume_um3": float(objects["volume_um3"].median()),
        "volume_fraction": float(objects["voxels"].sum() / n_voxels),
        "total_surface_area_um2": float(objects["surface_area_um2"].sum()),
        "median_sphericity": float(objects["sphericity"].median()),
        "objects_touching_border": int(objects["touches_border"].sum()),
        "median_volume_uncut_um3": float(objects.loc[~objects["touches_border"], "volume_um3"].median()),
    }


def _write_tsv(path: str | os.PathLike, table: pd.DataFrame) -> None:
    write_text_atomically(path, table.to_csv(sep="\t", index=False, na_rep="NA", float_format="%.6g"))


def statistics_from_volumes(
    volume_path: str | os.PathLike,
    objects_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    smoothing_sigma: float = 0.75,
    block_size: int = 0,
    memory_gib: float = 4.0,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Measure the objects of each class's cleaned volume; write the object table and summary rows.

    The volumes are those the meshes are made from (:func:`vem3d.volume.write_volumes`).
    Objects are labelled and measured block by block
    (:func:`object_statistics_blockwise`), with the result of
    :func:`object_statistics`; like :func:`vem3d.mesh.mesh_volumes`, a volume that
    fits in memory is read whole first, a larger one a block at a time. Labelling the
    whole 256 x 1024 x 1024 volume of ``benchmarks/pipeline.py --size 1024`` at once
    took 1.44 GB and 9.9-10.4 s in a new process (4.3-4.9 s after one slice changed,
    the other objects' mesh measures reused), block by block 0.63 GB and 7.4-8.3 s
    (2.4 s after the change).

    Parameters
    ----------
    volume_path : path
        The cleaned volumes of :func:`vem3d.volume.write_volumes` (with the voxel size).
    objects_path : path
        TSV with a ``class`` column and the columns of :func:`object_statistics`.
    summary_path : path
        TSV with one row per class: ``class``, the voxel size, and :func:`summarise_objects`.
    smoothing_sigma : float
        As for :func:`object_statistics`.
    block_size : int
        Block side in voxels; 0 takes :data:`vem3d.blockwise.DEFAULT_BLOCK_SIZE`.
    memory_gib : float
        Read the whole volume first where that needs at most this much memory, as
        :func:`vem3d.mesh.mesh_volumes` does.
    cache_dir : path, optional
        Keep each class's objects' mesh measures here (:func:`mesh_measures`),
        so that a run after some slices changed meshes again only the objects they reach.
    workers : int
        Processes that mesh the objects (:func:`mesh_measures`) and, block by block,
        label and measure the blocks.

    Returns
    -------
    pandas.DataFrame
        The summary rows.
    """
    volumes = open_volumes(volume_path)
    voxel_size_nm = volumes.voxel_size_nm
    tables = {}
    for class_name, cleaned in volumes.classes.items():
        cache = None
        if cache_dir is not None:
            cache = TableCache(Path(cache_dir) / f"{class_name}.npz", columns=2, context="object mesh measures")
        # Block by block either way: labels for a block at a time, not 4 bytes per voxel
        # of the volume (see the docstring).
        tables[class_name] = object_statistics_blockwise(
            read_whole_where_it_fits(cleaned.volume, block_size, memory_gib), voxel_size_nm,
            Path(objects_path).parent, smoothing_sigma, block_size or DEFAULT_BLOCK_SIZE, cache, workers,
        )
        if cache is not None:
            log.info("%s: mesh measures of %d objects reused, %d computed", class_name, cache.hits, cache.misses)
            cache.save()
    rows = []
    for class_name, objects in tables.items():
        objects.insert(0, "class", class_name)
        rows.append(
            {
                "class": class_name,
                **{f"voxel_size_{axis}_nm": float(size) for axis, size in zip(AXES, voxel_size_nm)},
                **summarise_objects(objects, math.prod(volumes.shape)),
            }
        )
        log.info("%s objects: %s", class_name, rows[-1])
    _write_tsv(objects_path, pd.concat(tables.values(), ignore_index=True))
    summary = pd.DataFrame(rows)
    _write_tsv(summary_path, summary)
    return summary


def study_table(summary_paths, sample_names, out_path: str | os.PathLike) -> pd.DataFrame:
    """Gather per-sample summaries into one table, a row per sample and class.

    Parameters
    ----------
    summary_paths : list of path
        Summary TSVs written by :func:`statistics_from_volumes`.
    sample_names : list of str
        The sample each summary belongs to, in the same order.
    out_path : path
        TSV written with a leading ``sample`` column.
    """
    if len(summary_paths) != len(sample_names):
        raise ValueError(f"{len(summary_paths)} summaries but {len(sample_names)} sample names")
    table = pd.concat(
        [pd.read_csv(path, sep="\t").assign(sample=name) for path, name in zip(summary_paths, sample_names)],
        ignore_index=True,
    )
    table = table[["sample", *(column for column in table if column != "sample")]]
    _write_tsv(out_path, table)
    return table


# Block by block: the statistics step's path for every volume (one larger than memory
# is read a block at a time).


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
    labels, count = label_block(np.asarray(array[region]) != 0, 26)
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
    labels, _ = label_block(np.asarray(array[tuple(slice(lo, hi) for lo, hi in box)]) != 0, 26)
    return labels == labels[tuple(int(v) - lo for v, (lo, _) in zip(first_voxel, box))]


def _label_pieces(array, region, pieces: np.ndarray) -> np.ndarray:
    """One block's local labels (as the statistics pass numbered them) of the ``pieces``
    marked (bool per local label), 0 elsewhere, as uint32."""
    labels, _ = label_block(np.asarray(array[region]) != 0, 26)
    return np.where(pieces[labels], labels, 0).astype(np.uint32)


def _measure_large_objects(
    volume, pieces, object_of, order, large, boxes, scratch_dir, voxel_size_nm, smoothing_sigma, block_size, workers
) -> np.ndarray:
    """Mesh measures (volume nm³, area nm²) of the objects ``large`` (numbers), whose boxes
    exceed a block, each meshed block by block (:func:`vem3d.mesh.mesh_blocks`).

    The blocks holding their pieces are labelled again into a label volume (zarr under
    ``scratch_dir``, each block's local labels) that the objects are read from; the other
    arguments as :func:`object_statistics_blockwise` has them.
    """
    large_components = order[np.asarray(large) - 1]
    components = set(large_components.tolist())
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".objects-") as scratch:
        labels = empty_volume_like(Path(scratch) / "labels.zarr", volume, block_size, np.uint32)
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
    """:func:`object_statistics`, block by block: the same table.

    Objects inside one block are measured from it at once. Pieces that touch a border
    with another block are joined across blocks; each such object is meshed from its
    bounding box: in memory when that is at most a block (the box read from the
    volume and labelled again), otherwise block by block (:func:`vem3d.mesh.mesh_blocks`, from a
    label volume of the blocks that hold it).

    Parameters
    ----------
    volume : zarr.Array or ndarray, shape (slices, rows, columns)
        Foreground where non-zero.
    voxel_size_nm, smoothing_sigma
        As for :func:`object_statistics`.
    scratch_dir : path
        Folder for the label volume of objects larger than a block (removed afterwards).
    block_size : int
        Block side in voxels.
    cache : vem3d.cache.TableCache, optional
        As for :func:`object_statistics`.
    workers : int
        Processes that label and measure the blocks, and mesh the objects
        (:func:`mesh_measures`): those inside one block, those across
        blocks, and the blocks of objects larger than a block.

    Returns
    -------
    pandas.DataFrame
        As :func:`object_statistics`, objects numbered in raster order of
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
            for index, region, (count, layers, block_rows, whole, insides) in in_raster_order(
                shape,
                block_size,
                "objects measured",
                lambda index, region: submit(_pieces_of_block, *block_source(volume, region), region, shape),
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
    columns["touches_border"] = (lows[1:] == 0).any(axis=1) | (highs[1:] == np.array(shape)).any(axis=1)
    return pd.DataFrame(columns)[OBJECT_COLUMNS]
