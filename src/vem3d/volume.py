"""Assembling per-slice masks into a 3D volume and cleaning it up."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import zarr
from scipy import ndimage

from vem3d.atomic import refuse_to_write_into, write_directory_atomically
from vem3d.slices import list_slices, read_slice
from vem3d.threads import map_ahead

log = logging.getLogger(__name__)

# Each class of a volume.zarr is an OME-Zarr image (NGFF 0.5) of one resolution level,
# so that viewers that read OME-Zarr show it at its voxel size.
OME_ZARR_VERSION = "0.5"
IMAGE_LEVEL = "0"  # path of the full-resolution array inside a class's image group
AXES = ("z", "y", "x")  # the order of every volume's axes, and their names in zarr and tables


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
        if probability_dirs is None:
            raise ValueError("z-smoothing needs the probability folders")
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
class SampleVolumes:
    """The cleaned volumes of a sample's classes, as :func:`write_volumes` wrote them.

    Attributes
    ----------
    classes : dict of str to vem3d.blockwise.CleanedVolume
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
    are assembled and cleaned block by block (:func:`vem3d.blockwise.clean_blockwise`),
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
        Processes that clean blocks (:func:`vem3d.blockwise.clean_blockwise`); with
        more than one, a volume in memory is cleaned block by block in them too. As
        many threads read the masks.
    cache_dir : path, optional
        Where a run keeps each class's assembled masks and cleaned blocks for the next
        (:class:`vem3d.blockwise.MaskStore`, :class:`vem3d.blockwise.CleanupCache`),
        a folder per class. A re-run then decodes only the masks whose files changed
        and reads and writes only the blocks they reach, with the same result. With a
        cache, volumes of any size go block by block, in blocks of
        :data:`vem3d.blockwise.DEFAULT_CLEAN_BLOCK` unless ``block_size`` is set;
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
    from vem3d import blockwise  # builds on this module

    inputs = [folder for folders in (*mask_dirs.values(), *(probability_dirs or {}).values()) for folder in folders]
    refuse_to_write_into(inputs, path, cache_dir)
    started = time.monotonic()
    first_class = next(iter(mask_dirs.values()))
    slice_names = [slice_path.stem for folder in first_class for slice_path in list_slices(folder)]
    shape = blockwise.mask_volume_shape(first_class)
    incremental = cache_dir is not None and not z_smoothing_sigma
    by_block = incremental or blockwise.goes_blockwise(shape, block_size, memory_gib)
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
                masks, slice_keys = blockwise.MaskStore(class_cache).update(folders, threads=workers)
                cleaned = blockwise.clean_blockwise(
                    masks, Path(temporary) / class_name / IMAGE_LEVEL, min_object_voxels, fill_cavities,
                    block_size or blockwise.DEFAULT_CLEAN_BLOCK, workers, blockwise.CleanupCache(class_cache, slice_keys),
                )
                rows.append((class_name, cleaned.objects, cleaned.foreground_voxels))
        elif by_block:
            # The assembled masks are scratch beside the group, not part of it.
            with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=f".{Path(path).name}-") as scratch:
                for class_name, folders in mask_dirs.items():
                    masks = blockwise.assemble_mask_zarr(folders, Path(scratch) / class_name, threads=workers)
                    cleaned = blockwise.clean_blockwise(
                        masks, Path(temporary) / class_name / IMAGE_LEVEL, min_object_voxels, fill_cavities,
                        block_size or blockwise.DEFAULT_BLOCK_SIZE, workers,
                    )
                    rows.append((class_name, cleaned.objects, cleaned.foreground_voxels))
        else:
            for class_name, mask in class_masks(mask_dirs, probability_dirs, z_smoothing_sigma, threshold, workers):
                if workers > 1:
                    # Blocks of the volume in memory, cleaned in the worker processes and
                    # written from there (one process alone cleans faster whole).
                    cleaned = blockwise.clean_blockwise(
                        mask, Path(temporary) / class_name / IMAGE_LEVEL, min_object_voxels, fill_cavities,
                        blockwise.IN_MEMORY_CLEAN_BLOCK, workers,
                    )
                    rows.append((class_name, cleaned.objects, cleaned.foreground_voxels))
                    continue
                labels, n_objects = clean_objects(mask, min_object_voxels, fill_cavities)
                del mask
                volume = labels != 0
                del labels
                array = images[class_name].create_array(
                    IMAGE_LEVEL, shape=volume.shape, chunks=(blockwise.CHUNK_EDGE,) * 3, dtype=bool,
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
    from vem3d import blockwise  # builds on this module

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
        classes[class_name] = blockwise.CleanedVolume(
            image[IMAGE_LEVEL], int(image.attrs["objects"]), int(image.attrs["foreground_voxels"])
        )
    return SampleVolumes(classes, tuple(group.attrs["voxel_size_nm"]), list(group.attrs["slice_names"]))
