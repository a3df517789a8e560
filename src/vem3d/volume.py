"""Assembling per-slice masks into a 3D volume and cleaning it up.

:func:`write_volumes` writes the cleaned volumes that the mesh, statistics and
evaluation steps read (``volume.zarr``, OME-Zarr; :func:`open_volumes` opens it). The
clean-up runs in memory (:func:`clean_objects`), or block by block
(:func:`clean_blockwise`) for volumes larger than memory and for the workflow's re-runs:
the masks are assembled slice by slice into a chunked on-disk volume (zarr; kept between
runs by :class:`MaskStore`, the cleaned blocks by :class:`CleanupCache`), and connected
components are labelled per block (:func:`label_block`) and merged across block borders
with a union-find over the block-local labels (:class:`BlockComponents`, which
:mod:`vem3d.stats` uses too), so that object sizes, small-object removal and the
enclosed cavities are those of the whole volume. Memory then holds a few blocks, the
outer voxel layers of two layers of blocks and a few numbers per object piece.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import zarr
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from vem3d.atomic import link_or_copy, refuse_to_write_into, write_atomically, write_directory_atomically
from vem3d.blockwise import (
    DEFAULT_BLOCK_SIZE,
    block_shape,
    block_source,
    blocks,
    goes_blockwise,
    in_raster_order,
)
from vem3d.cache import UNREADABLE, ArrayCache, content_key
from vem3d.provenance import file_sha256
from vem3d.slices import list_slices, read_slice
from vem3d.threads import finished, map_ahead, ordered_results, process_pool

log = logging.getLogger(__name__)

# Each class of a volume.zarr is an OME-Zarr image (NGFF 0.5) of one resolution level,
# so that viewers that read OME-Zarr show it at its voxel size.
OME_ZARR_VERSION = "0.5"
IMAGE_LEVEL = "0"  # path of the full-resolution array inside a class's image group
AXES = ("z", "y", "x")  # the order of every volume's axes, and their names in zarr and tables
CHUNK_EDGE = 64  # voxels per zarr chunk side: small enough that a block's halo decompresses little

# Blocks (z, y, x) of the clean-up that keeps its blocks between runs (CleanupCache):
# one chunk deep, so that a changed slice reaches the blocks of one 64-slice slab.
DEFAULT_CLEAN_BLOCK = (CHUNK_EDGE, DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)

# Memory per voxel of a volume cleaned in memory. The clean-up holds the masks (a
# copy while reading stacks them) and, in one process, the whole volume's labels and
# their scratch; 16 leaves room (11-12 bytes were measured over the mask in an older
# version whose step also smoothed and meshed the volume whole: an upper bound now).
IN_MEMORY_BYTES_PER_VOXEL = 16
# Block side for cleaning a volume in memory in worker processes: 2 processes cleaned
# the 256 x 1024 x 1024 masks of benchmarks/pipeline.py --size 1024 in 6.6 s in blocks
# of 128 and 9.1 s in blocks of 256 (one process, whole: 8.0 s).
IN_MEMORY_CLEAN_BLOCK = 128


def ome_image_metadata(name: str, voxel_size_nm: Sequence[float]) -> dict:
    """The ``ome`` attribute of a one-level OME-Zarr 0.5 image of a (z, y, x) volume.

    Parameters
    ----------
    name : str
        The image's name (a class).
    voxel_size_nm : (float, float, float)
        Voxel size z, y, x in nm: the scale of the level :data:`IMAGE_LEVEL`.

    Returns
    -------
    dict
        ``version`` and ``multiscales`` (spatial axes z, y, x in nanometres).
    """
    return {
        "version": OME_ZARR_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": axis, "type": "space", "unit": "nanometer"} for axis in AXES],
                "datasets": [
                    {
                        "path": IMAGE_LEVEL,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(size) for size in voxel_size_nm]}
                        ],
                    }
                ],
            }
        ],
    }


def assemble_volume(masks: Iterable[tuple[str, np.ndarray]]) -> np.ndarray:
    """Stack 2D masks, in the order given, into a 3D volume.

    Parameters
    ----------
    masks : iterable of (name, mask)
        Slice name (for error messages) and 2D mask, in z order.

    Returns
    -------
    ndarray, shape (slices, rows, columns)
        The masks' dtype is kept.

    Raises
    ------
    ValueError
        If there are no masks or their shapes differ (naming the first odd slice).
    """
    planes, shape = [], None
    for name, mask in masks:
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise ValueError(f"mask {name} has shape {mask.shape}, but earlier slices have {shape}")
        planes.append(mask)
    if not planes:
        raise ValueError("no masks to assemble")
    return np.stack(planes)


def connected_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Number the connected components of a binary image or volume.

    With connected-components-3d, which labelled a 256 x 1024 x 1024 EM mask volume
    4 to 6 times faster than ``scipy.ndimage.label`` (0.55 s against 2 to 3.3 s),
    with the same numbering.

    Parameters
    ----------
    mask : ndarray, shape (slices, rows, columns) or (rows, columns)
        Foreground where non-zero.
    connectivity : {26, 6}
        26: voxels sharing a face, edge or corner belong together (8 in 2D); 6: only
        voxels sharing a face (4 in 2D), as ``scipy.ndimage.label``'s default.

    Returns
    -------
    labels : ndarray of uint32, shape as ``mask``
        0 outside, 1 to ``count`` for the components, in raster order of their first
        voxel.
    count : int
    """
    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity}")
    if mask.ndim == 2:
        connectivity = 8 if connectivity == 26 else 4
    # As uint8: connected-components-3d 4.1 labels 2D boolean images wrongly with
    # 8-connectivity (a lone pixel in the last row of an 18 x 5 image also labels
    # another); from uint8 it numbers as scipy does. A view, not a copy.
    labels, count = cc3d.connected_components(
        mask.astype(bool, copy=False).view(np.uint8), connectivity=connectivity, return_N=True, out_dtype=np.uint32
    )
    return labels, int(count)


def label_objects(volume: np.ndarray) -> tuple[np.ndarray, int]:
    """Number the 26-connected foreground objects of a volume.

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero.

    Returns
    -------
    labels : ndarray of uint32, shape as ``volume``
        0 for background, 1 to ``n_objects`` for the objects, in raster (z, y, x) order
        of their first voxel.
    n_objects : int
    """
    return connected_components(volume, 26)


def clean_objects(volume: np.ndarray, min_object_voxels: int = 0, fill_cavities: bool = True) -> tuple[np.ndarray, int]:
    """The 3D clean-up before meshing and measuring, and the objects it leaves.

    Objects (26-connected) smaller than ``min_object_voxels`` are removed, then
    cavities are filled: background regions (6-connected, as
    ``scipy.ndimage.binary_fill_holes`` has them) that do not reach the border.

    The volume is labelled once. A cavity lies inside the bounding box of one
    object, which walls it in on its own: two 26-separate objects cannot wall in a
    region together, as a 6-connected layer of background runs between them. So the
    cavities are found object by object, in its bounding box, with every voxel not
    of the object counting as background there; an object inside another's cavity
    joins it. On the 256 x 1024 x 1024 masks of ``benchmarks/pipeline.py --size
    1024`` this took 4.5 to 4.8 s, where removing and filling on the whole volume
    and labelling the result took 6.7 s (three labellings of the whole volume, one
    of them of its background).

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero.
    min_object_voxels : int
        Objects with fewer voxels are removed; 0 or 1 keeps everything.
    fill_cavities : bool
        Fill enclosed cavities after removing the small objects.

    Returns
    -------
    labels : ndarray of uint32, shape as ``volume``
        The cleaned volume's objects, numbered as :func:`label_objects` numbers them
        (0 for background).
    n_objects : int
    """
    labels, n_objects = label_objects(volume)
    if min_object_voxels > 1 and n_objects:
        # Counted over the foreground voxels only: a few percent of an EM volume,
        # where a bincount over all voxels took longer than the labelling.
        foreground = labels != 0
        object_labels = labels[foreground]
        kept = np.bincount(object_labels, minlength=n_objects + 1) >= min_object_voxels
        kept[0] = False
        if not kept[1:].all():
            labels, n_objects = _keep_objects(labels, n_objects, kept, foreground, object_labels)
    if fill_cavities and n_objects:
        labels, n_objects = _fill_cavities(labels, n_objects)
    return labels, n_objects


def _keep_objects(labels, n_objects, kept, foreground=None, object_labels=None) -> tuple[np.ndarray, int]:
    """Labels with only the objects ``kept`` (bool per label), numbered again from 1 in their order."""
    if foreground is None:
        foreground = labels != 0
        object_labels = labels[foreground]
    new_label = np.zeros(n_objects + 1, dtype=np.uint32)
    new_label[kept] = np.arange(1, np.count_nonzero(kept) + 1, dtype=np.uint32)
    labels[foreground] = new_label[object_labels]
    return labels, int(np.count_nonzero(kept))


def _fill_cavities(labels: np.ndarray, n_objects: int) -> tuple[np.ndarray, int]:
    """Fill each object's cavities with its label, in place (see :func:`clean_objects`)."""
    swallowed = set()
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or min(side.stop - side.start for side in box) < 3:
            continue  # too thin to wall anything in
        window = labels[box]  # a view: filling it fills ``labels``
        outside, n_regions = connected_components(window != label, 6)
        reaches_border = np.zeros(n_regions + 1, dtype=bool)
        for axis in range(window.ndim):
            reaches_border[np.take(outside, [0, -1], axis=axis)] = True
        reaches_border[0] = True  # label 0 is the object itself
        if reaches_border.all():
            continue
        cavity = ~reaches_border[outside]
        swallowed.update(int(inner) for inner in np.unique(window[cavity]) if inner not in (0, label))
        window[cavity] = label
    if not swallowed:
        return labels, n_objects
    # An object in another's cavity was found after it (its first voxel lies deeper),
    # so dropping its number keeps the others in raster order of their first voxel.
    kept = np.ones(n_objects + 1, dtype=bool)
    kept[[0, *swallowed]] = False
    return _keep_objects(labels, n_objects, kept)


def remove_small_objects(volume: np.ndarray, min_voxels: int) -> np.ndarray:
    """Remove 3D connected objects (26-connectivity) smaller than ``min_voxels``.

    Parameters
    ----------
    volume : ndarray of bool or int, shape (slices, rows, columns)
        Foreground where non-zero.
    min_voxels : int
        Objects with fewer voxels are removed; 0 or 1 keeps everything.

    Returns
    -------
    ndarray of bool, shape as ``volume``
    """
    return clean_objects(volume, min_voxels, fill_cavities=False)[0] != 0


def fill_holes(volume: np.ndarray) -> np.ndarray:
    """Fill cavities of a binary volume: background regions not connected to its border.

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero.

    Returns
    -------
    ndarray of bool, shape as ``volume``
        As ``scipy.ndimage.binary_fill_holes`` (background 6-connected), which
        grows the outside in one voxel layer per pass over the whole volume: a
        stack of hundreds of slices took it tens of seconds.
    """
    return clean_objects(volume, 0, fill_cavities=True)[0] != 0


def clean_volume(volume: np.ndarray, min_object_voxels: int = 0, fill_cavities: bool = True) -> np.ndarray:
    """The cleaned volume of :func:`clean_objects`, as bool (shape as ``volume``)."""
    return clean_objects(volume, min_object_voxels, fill_cavities)[0] != 0


def read_slice_volume(folders: Sequence, binary: bool = False, threads: int = 1) -> np.ndarray:
    """Read the PNG slices of chunk folders (in the order given, slices in natural order) as a volume.

    ``threads`` threads decode slices at once (PNG decoding releases Python's lock: 256
    masks of 1024 x 1024 took 0.8 s in 2 threads against 1.9 s in one).

    Returns
    -------
    ndarray, shape (slices, rows, columns)
        The slices' dtype, or with ``binary`` bool: True where non-zero (masks).
    """

    def read(path: Path) -> tuple[str, np.ndarray]:
        plane = read_slice(path)
        return path.name, plane > 0 if binary else plane

    paths = [path for folder in folders for path in list_slices(folder)]
    return assemble_volume(map_ahead(read, paths, threads))


def smooth_along_z(probabilities: np.ndarray, sigma_slices: float) -> np.ndarray:
    """Gaussian smoothing of a probability volume across neighbouring slices only.

    Evens out slice-to-slice flicker of a 2D network's predictions without blurring
    within the slices; the stack's ends are padded by repeating the end slices.

    Parameters
    ----------
    probabilities : ndarray, shape (slices, rows, columns)
    sigma_slices : float
        Standard deviation in slices; 0 returns the input as float32.

    Returns
    -------
    ndarray of float32, shape as ``probabilities``
    """
    probabilities = probabilities.astype(np.float32, copy=False)
    if sigma_slices <= 0:
        return probabilities
    return ndimage.gaussian_filter1d(probabilities, sigma_slices, axis=0, mode="nearest")


def class_masks(
    mask_dirs: Mapping[str, Sequence],
    probability_dirs: Mapping[str, Sequence] | None = None,
    z_smoothing_sigma: float = 0.0,
    threshold: float = 0.5,
    threads: int = 1,
) -> Iterator[tuple[str, np.ndarray]]:
    """Each class's 3D mask volume, before the clean-up, one class at a time.

    Parameters
    ----------
    mask_dirs : mapping of class name to list of path
        Each class's mask chunk folders in z order (non-zero = the class).
    probability_dirs : mapping of class name to list of path, optional
        Each class's probability chunk folders (8-bit, 255 = 1), needed when
        ``z_smoothing_sigma`` > 0.
    z_smoothing_sigma : float
        When > 0, the probabilities are smoothed across slices (:func:`smooth_along_z`)
        and the classes decided again: above ``threshold`` for one class; for
        several, the most probable of background (1 - the classes' sum) and classes.
    threshold : float
        Probability above which a pixel is foreground (one class).
    threads : int
        Threads that read slices (:func:`read_slice_volume`).

    Yields
    ------
    class_name : str
    mask : ndarray of bool, shape (slices, rows, columns)
    """
    if z_smoothing_sigma > 0:
        missing = [name for name in mask_dirs if name not in (probability_dirs or {})]
        if missing:
            raise ValueError(
                f"z-smoothing needs the probability folders of every class: none given for {missing} "
                f"(given for {list(probability_dirs or {})})"
            )
        smoothed = [
            smooth_along_z(read_slice_volume(probability_dirs[name], threads=threads), z_smoothing_sigma) / 255
            for name in mask_dirs
        ]
        if len(smoothed) == 1:
            yield next(iter(mask_dirs)), smoothed[0] > threshold
            return
        background = 1 - np.sum(smoothed, axis=0)
        most_probable = np.argmax(np.stack([background, *smoothed]), axis=0)
        for index, name in enumerate(mask_dirs, start=1):
            yield name, most_probable == index
    else:
        for name, folders in mask_dirs.items():
            yield name, read_slice_volume(folders, binary=True, threads=threads)


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

    volume: zarr.Array | np.ndarray
    objects: int
    foreground_voxels: int


@dataclass
class SampleVolumes:
    """The cleaned volumes of a sample's classes, as :func:`write_volumes` wrote them.

    Attributes
    ----------
    classes : dict of str to CleanedVolume
        Per class, in the order of the classes: its cleaned volume (a zarr bool array,
        read only where indexed, shape (slices, rows, columns)) and what the clean-up
        counted.
    voxel_size_nm : (float, float, float)
        Voxel size z, y, x in nm.
    slice_names : list of str
        The mask slice of each z index.
    """

    classes: dict
    voxel_size_nm: tuple[float, float, float]
    slice_names: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) of each class's volume."""
        return next(iter(self.classes.values())).volume.shape


def write_volumes(
    mask_dirs: Mapping[str, Sequence],
    path: str | os.PathLike,
    voxel_size_nm: tuple[float, float, float],
    probability_dirs: Mapping[str, Sequence] | None = None,
    z_smoothing_sigma: float = 0.0,
    threshold: float = 0.5,
    min_object_voxels: int = 0,
    fill_cavities: bool = True,
    block_size: int = 0,
    memory_gib: float = 4.0,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Assemble each class's masks into a 3D volume, clean it up, and write the cleaned volumes.

    The one clean-up that the meshes (:func:`vem3d.mesh.mesh_volumes`), the object
    statistics (:func:`vem3d.stats.statistics_from_volumes`) and the scores
    (:func:`vem3d.metrics.evaluate_volumes`) all read. Volumes too large for memory
    are assembled and cleaned block by block (:func:`clean_blockwise`),
    with the same result as in memory (:func:`clean_objects`).

    Parameters
    ----------
    mask_dirs : mapping of class name to list of path
        Each class's mask chunk folders in z order (non-zero = the class).
    path : path
        Zarr (v3) group written (atomically), with the attributes ``classes``,
        ``voxel_size_nm`` (z, y, x) and ``slice_names`` (the mask slice of each z),
        and per class a group named by it: an OME-Zarr 0.5 image
        (:func:`ome_image_metadata`, attributes ``objects`` and ``foreground_voxels``
        too) whose array ``0`` is the bool volume, foreground = the class after
        clean-up, in chunks of 64 voxels a side.
    voxel_size_nm : (float, float, float)
        Voxel size z, y, x in nm, kept for the steps that measure the volume.
    probability_dirs, z_smoothing_sigma, threshold
        As for :func:`class_masks`.
    min_object_voxels, fill_cavities
        As for :func:`clean_objects`, applied to each class.
    block_size : int
        Clean block by block, in blocks of this many voxels a side; 0 does so (with
        :data:`vem3d.blockwise.DEFAULT_BLOCK_SIZE`) only when the whole volume would
        need more than ``memory_gib`` (:func:`vem3d.blockwise.fits_in_memory`).
    memory_gib : float
        Memory the in-memory path may use, GiB.
    workers : int
        Processes that clean blocks (:func:`clean_blockwise`); with
        more than one, a volume in memory is cleaned block by block in them too. As
        many threads read the masks.
    cache_dir : path, optional
        Where a run keeps each class's assembled masks and cleaned blocks for the next
        (:class:`MaskStore`, :class:`CleanupCache`),
        a folder per class. A re-run then decodes only the masks whose files changed
        and reads and writes only the blocks they reach, with the same result. With a
        cache, volumes of any size go block by block, in blocks of
        :data:`DEFAULT_CLEAN_BLOCK` unless ``block_size`` is set;
        except with ``z_smoothing_sigma``, which needs whole volumes and keeps nothing.

    Returns
    -------
    pandas.DataFrame
        One row per class: ``class``, ``objects``, ``foreground_voxels``.

    Raises
    ------
    ValueError
        For z-smoothing of a volume that goes block by block (it needs whole
        probability volumes), or masks that do not make one volume (naming the file).
    """
    inputs = [folder for folders in (*mask_dirs.values(), *(probability_dirs or {}).values()) for folder in folders]
    refuse_to_write_into(inputs, path, cache_dir)
    started = time.monotonic()
    first_class = next(iter(mask_dirs.values()))
    slice_names = [slice_path.stem for folder in first_class for slice_path in list_slices(folder)]
    shape = mask_volume_shape(first_class)
    incremental = cache_dir is not None and not z_smoothing_sigma
    by_block = incremental or goes_blockwise(shape, block_size, memory_gib, IN_MEMORY_BYTES_PER_VOXEL)
    if by_block and z_smoothing_sigma:
        raise ValueError(
            "mesh.z_smoothing_sigma needs the whole volume in memory, but this one goes block by block "
            "(mesh.block_size, mesh.memory_gib): set z_smoothing_sigma to 0 or raise memory_gib"
        )
    rows = []

    def save(temporary: str) -> None:
        group = zarr.open_group(temporary, mode="w")
        group.attrs.update(
            classes=list(mask_dirs), voxel_size_nm=[float(size) for size in voxel_size_nm], slice_names=slice_names
        )
        images = {class_name: group.create_group(class_name) for class_name in mask_dirs}
        if incremental:
            for class_name, folders in mask_dirs.items():
                class_cache = Path(cache_dir) / class_name
                masks, slice_keys = MaskStore(class_cache).update(folders, threads=workers)
                cleaned = clean_blockwise(
                    masks, Path(temporary) / class_name / IMAGE_LEVEL, min_object_voxels, fill_cavities,
                    block_size or DEFAULT_CLEAN_BLOCK, workers, CleanupCache(class_cache, slice_keys),
                )
                rows.append((class_name, cleaned.objects, cleaned.foreground_voxels))
        elif by_block:
            # The assembled masks are scratch beside the group, not part of it.
            with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=f".{Path(path).name}-") as scratch:
                for class_name, folders in mask_dirs.items():
                    masks = assemble_mask_zarr(folders, Path(scratch) / class_name, threads=workers)
                    cleaned = clean_blockwise(
                        masks, Path(temporary) / class_name / IMAGE_LEVEL, min_object_voxels, fill_cavities,
                        block_size or DEFAULT_BLOCK_SIZE, workers,
                    )
                    rows.append((class_name, cleaned.objects, cleaned.foreground_voxels))
        else:
            for class_name, mask in class_masks(mask_dirs, probability_dirs, z_smoothing_sigma, threshold, workers):
                if workers > 1:
                    # Blocks of the volume in memory, cleaned in the worker processes and
                    # written from there (one process alone cleans faster whole).
                    cleaned = clean_blockwise(
                        mask, Path(temporary) / class_name / IMAGE_LEVEL, min_object_voxels, fill_cavities,
                        IN_MEMORY_CLEAN_BLOCK, workers,
                    )
                    rows.append((class_name, cleaned.objects, cleaned.foreground_voxels))
                    continue
                labels, n_objects = clean_objects(mask, min_object_voxels, fill_cavities)
                del mask
                volume = labels != 0
                del labels
                array = images[class_name].create_array(
                    IMAGE_LEVEL, shape=volume.shape, chunks=(CHUNK_EDGE,) * 3, dtype=bool,
                    fill_value=False, dimension_names=AXES,
                )
                array[:] = volume
                rows.append((class_name, n_objects, int(np.count_nonzero(volume))))
        for class_name, n_objects, foreground_voxels in rows:
            images[class_name].attrs.update(
                ome=ome_image_metadata(class_name, voxel_size_nm), objects=n_objects, foreground_voxels=foreground_voxels
            )

    write_directory_atomically(path, save)
    for class_name, n_objects, foreground_voxels in rows:
        log.info("%s: %d objects, %d foreground voxels after clean-up", class_name, n_objects, foreground_voxels)
    log.info(
        "cleaned volume(s) of shape %s written into %s in %.1f s%s",
        shape, path, time.monotonic() - started, " (block by block)" if by_block else "",
    )
    return pd.DataFrame(rows, columns=["class", "objects", "foreground_voxels"])


def open_volumes(path: str | os.PathLike) -> SampleVolumes:
    """Open the cleaned volumes that :func:`write_volumes` wrote (arrays read only where indexed).

    Raises
    ------
    ValueError
        If ``path`` is not such a zarr group (naming it and what is missing).
    """
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise ValueError(f"{path}: not a volume written by vem3d volume ({error})") from error
    missing = [key for key in ("classes", "voxel_size_nm", "slice_names") if key not in group.attrs]
    if missing:
        raise ValueError(f"{path}: not a volume written by vem3d volume (no attribute(s) {', '.join(missing)})")
    classes = {}
    for class_name in group.attrs["classes"]:
        image = group.get(class_name)
        if not isinstance(image, zarr.Group) or not isinstance(image.get(IMAGE_LEVEL), zarr.Array):
            raise ValueError(f"{path}: no volume for class {class_name!r} (an image group with array {IMAGE_LEVEL!r})")
        classes[class_name] = CleanedVolume(
            image[IMAGE_LEVEL], int(image.attrs["objects"]), int(image.attrs["foreground_voxels"])
        )
    return SampleVolumes(classes, tuple(group.attrs["voxel_size_nm"]), list(group.attrs["slice_names"]))


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


# Block by block: volumes larger than memory, the workflow's re-runs (whose cache keeps
# blocks), and volumes in memory cleaned in worker processes.


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
        foreground), as for :func:`read_slice_volume`.
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
        except (*UNREADABLE, zarr.errors.BaseZarrError):
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


def empty_volume_like(path: str | os.PathLike, like, block_size, dtype=bool) -> zarr.Array:
    """An all-zero zarr volume (z, y, x) of ``dtype`` (bool: background) shaped as ``like``,
    chunked as ``like`` or else as the blocks."""
    chunks = like.chunks if isinstance(like, zarr.Array) else tuple(min(side, CHUNK_EDGE) for side in block_shape(block_size))
    return zarr.create_array(
        path, shape=like.shape, chunks=chunks, dtype=dtype, fill_value=np.zeros((), dtype)[()], dimension_names=AXES,
        overwrite=True,
    )


def label_block(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
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

    Blocks are added in raster order (:func:`vem3d.blockwise.blocks`), each by the outer layers of its
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


def _objects_in_block(array, region, block, shape) -> tuple[int, BlockLayers, np.ndarray, np.ndarray]:
    """Clean-up pass 1 for one block (``array[region]``, the ``block`` of the volume of
    ``shape``): its 26-connected pieces (count, outer layers, voxels of each, and the
    raster index in the volume of each one's first voxel)."""
    labels, count = label_block(np.asarray(array[region]) != 0, 26)
    local = np.unravel_index(_first_voxels(labels, count), labels.shape)
    first = np.ravel_multi_index(tuple(part.start + k for part, k in zip(block, local)), shape)
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
        kept = kept_pieces[label_block(mask, 26)[0]]
    if not fill_cavities:
        if kept.any():
            target[block] = kept
        return 0, None, None, None, 0
    labels, count = label_block(~kept, 6)
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
    cavities = cavity_pieces[label_block(~kept, 6)[0]]
    target[block] = kept | cavities
    return int(np.count_nonzero(cavities))


def _whole_chunks(array: zarr.Array, block_size) -> bool:
    """Whether blocks of ``block_size`` cover whole chunks of ``array``, so that worker
    processes can write blocks at once (two must not write one chunk)."""
    return all(block % side == 0 for block, side in zip(block_shape(block_size), array.chunks))


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
    block_sides = block_shape(block_size)
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
        except UNREADABLE:
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
    """The clean-up of :func:`clean_volume`, block by block, into a new zarr volume.

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
        As for :func:`remove_small_objects` (0 or 1 keeps everything).
    fill_cavities : bool
        As for :func:`clean_volume`.
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
        target = empty_volume_like(temporary, source, block_size)
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
                return submit(_objects_in_block, *block_source(source, region), region, shape)

            objects = BlockComponents(26)
            piece_sizes, piece_firsts = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
            for index, _, pieces in in_raster_order(shape, block_size, "clean-up, objects", objects_work, ahead):
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
                return submit(_keep_in_block, *block_source(source, region), kept_pieces, target, region, shape,
                              fill_cavities, block_probes)

            background = BlockComponents(6)
            on_border, probed = [np.zeros(1, bool)], [np.zeros(0, np.int64)]
            for index, _, written in in_raster_order(
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
        " x ".join(map(str, block_shape(block_size))),
        time.monotonic() - started,
        result["objects"],
        result["foreground_voxels"],
    )
    return CleanedVolume(zarr.open_array(path, mode="r"), result["objects"], result["foreground_voxels"])
