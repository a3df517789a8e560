"""Assembling per-slice masks into a 3D volume and cleaning it up."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import cc3d
import numpy as np
from scipy import ndimage

from vem3d.slices import list_slices, read_slice


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


def read_slice_volume(folders: Sequence, dtype=None) -> np.ndarray:
    """Read the PNG slices of chunk folders (in the order given, slices in natural order) as a volume.

    Returns
    -------
    ndarray, shape (slices, rows, columns)
        The slices' dtype, or ``dtype`` when given (a bool volume is foreground where non-zero).
    """

    def planes():
        for folder in folders:
            for path in list_slices(folder):
                plane = read_slice(path)
                yield path.name, plane > 0 if dtype is bool else plane

    return assemble_volume(planes())


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


def class_objects(
    mask_dirs: Mapping[str, Sequence],
    probability_dirs: Mapping[str, Sequence] | None = None,
    z_smoothing_sigma: float = 0.0,
    threshold: float = 0.5,
    min_object_voxels: int = 0,
    fill_cavities: bool = True,
) -> Iterator[tuple[str, np.ndarray, int]]:
    """Each class's cleaned 3D volume, the one meshes, statistics and scores describe, as its objects.

    One class at a time, so that memory holds one class's labels (4 bytes a voxel).

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
    min_object_voxels, fill_cavities
        As for :func:`clean_objects`, applied to each class.

    Yields
    ------
    class_name : str
    labels : ndarray of uint32, shape (slices, rows, columns)
    n_objects : int
        As :func:`clean_objects` returns them.
    """
    if z_smoothing_sigma > 0:
        if probability_dirs is None:
            raise ValueError("z-smoothing needs the probability folders")
        smoothed = [
            smooth_along_z(read_slice_volume(probability_dirs[name]), z_smoothing_sigma) / 255 for name in mask_dirs
        ]
        if len(smoothed) == 1:
            decided = [smoothed[0] > threshold]
        else:
            background = 1 - np.sum(smoothed, axis=0)
            most_probable = np.argmax(np.stack([background, *smoothed]), axis=0)
            decided = [most_probable == index for index in range(1, len(smoothed) + 1)]
        volumes = zip(mask_dirs, decided)
    else:
        volumes = ((name, read_slice_volume(folders, dtype=bool)) for name, folders in mask_dirs.items())
    for name, volume in volumes:
        yield name, *clean_objects(volume, min_object_voxels, fill_cavities)


def class_volumes(mask_dirs: Mapping[str, Sequence], *args, **kwargs) -> dict[str, np.ndarray]:
    """Each class's cleaned volume of :func:`class_objects` (same parameters), as bool."""
    return {name: labels != 0 for name, labels, _ in class_objects(mask_dirs, *args, **kwargs)}
