"""Per-object statistics of a segmented volume: size, shape and position of each 3D object.

Objects are the 26-connected components of the foreground (:func:`vem3d.volume.label_objects`),
of the cleaned volume that :func:`vem3d.volume.write_volumes` writes. Coordinates are in the frame of the STL
meshes (:func:`vem3d.mesh.volume_to_mesh`): nanometres, origin at the centre of voxel
(0, 0, 0), but listed in array order (z, y, x).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from vem3d.atomic import write_text_atomically
from vem3d.cache import TableCache, mask_key
from vem3d.mesh import NM2_PER_UM2, NM3_PER_UM3, SURFACE_LEVEL, area_and_volume, marching_level, volume_to_mesh
from vem3d.threads import finished, ordered_results, run_now
from vem3d.volume import AXES, label_objects, open_volumes

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
            # With the level the meshes are marched at: measures an older version marched
            # at another are not reused.
            key = (
                mask_key(
                    cache.context, inside, tuple(map(float, voxel_size_nm)), smoothing_sigma,
                    marching_level(SURFACE_LEVEL),
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

    The objects are numbered by :func:`label_objects` and measured by
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
        by :func:`label_objects`), ``voxels``, ``volume_um3`` (voxel count times voxel
        volume), ``mesh_volume_um3`` (enclosed by the smoothed mesh),
        ``surface_area_um2`` (of the mesh), ``sphericity`` (from the mesh volume and
        area), ``centroid_{z,y,x}_nm`` (mean voxel centre) and
        ``bbox_{z,y,x}_{min,max}_nm`` (outer faces of the extreme voxels). Empty,
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
            voxels = int(np.count_nonzero(inside))
            voxel_rows.append(
                (
                    voxels,
                    voxels * spacing.prod() / NM3_PER_UM3,
                    (np.argwhere(inside).mean(axis=0) + offset) * spacing,
                    (offset - 0.5) * spacing,
                    (np.array([axis.stop for axis in window]) - 0.5) * spacing,
                )
            )
            yield inside

    rows = []
    started = time.monotonic()
    measured = mesh_measures(insides(), voxel_size_nm, smoothing_sigma, cache)
    for index, (mesh_volume_nm3, area_nm2) in enumerate(measured, start=1):
        voxels, volume_um3, centroid, first, last = voxel_rows[index - 1]
        area_um2 = area_nm2 / NM2_PER_UM2
        mesh_volume_um3 = mesh_volume_nm3 / NM3_PER_UM3
        rows.append(
            [index, voxels, volume_um3, mesh_volume_um3, area_um2, sphericity(mesh_volume_um3, area_um2),
             *centroid, *first, *last]
        )
        if index % PROGRESS_EVERY == 0:
            elapsed = time.monotonic() - started
            log.info("measured %d of %d objects in %.1f s (%.1f objects/s)", index, n_objects, elapsed, index / elapsed)
    log.info("measured %d objects", n_objects)
    return pd.DataFrame(rows, columns=OBJECT_COLUMNS).astype({"object": np.int64, "voxels": np.int64})


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
        ``total_surface_area_um2`` and ``median_sphericity`` (NaN without objects).
    """
    return {
        "objects": len(objects),
        "total_volume_um3": float(objects["volume_um3"].sum()),
        "median_volume_um3": float(objects["volume_um3"].median()),
        "volume_fraction": float(objects["voxels"].sum() / n_voxels),
        "total_surface_area_um2": float(objects["surface_area_um2"].sum()),
        "median_sphericity": float(objects["sphericity"].median()),
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
    (:func:`vem3d.blockwise.object_statistics_blockwise`), with the result of
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
    from vem3d import blockwise  # builds on this module

    volumes = open_volumes(volume_path)
    voxel_size_nm = volumes.voxel_size_nm
    tables = {}
    for class_name, cleaned in volumes.classes.items():
        cache = None
        if cache_dir is not None:
            cache = TableCache(Path(cache_dir) / f"{class_name}.npz", columns=2, context="object mesh measures")
        # Block by block either way: labels for a block at a time, not 4 bytes per voxel
        # of the volume (see the docstring).
        tables[class_name] = blockwise.object_statistics_blockwise(
            blockwise.read_whole_where_it_fits(cleaned.volume, block_size, memory_gib), voxel_size_nm,
            Path(objects_path).parent, smoothing_sigma, block_size or blockwise.DEFAULT_BLOCK_SIZE, cache, workers,
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
