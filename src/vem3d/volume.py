"""Assembling per-slice masks into a 3D volume and cleaning it up."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


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


def label_objects(volume: np.ndarray) -> tuple[np.ndarray, int]:
    """Number the 26-connected foreground objects of a volume.

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero.

    Returns
    -------
    labels : ndarray of int32, shape as ``volume``
        0 for background, 1 to ``n_objects`` for the objects, in raster (z, y, x) order
        of their first voxel.
    n_objects : int
    """
    labels, n_objects = ndimage.label(volume.astype(bool), structure=np.ones((3,) * volume.ndim, dtype=bool))
    return labels, int(n_objects)


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
    foreground = volume.astype(bool)
    if min_voxels <= 1:
        return foreground
    labels, _ = label_objects(foreground)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


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
        stack of hundreds of slices took it tens of seconds. Labelling the background
        once takes one pass.
    """
    foreground = volume.astype(bool)
    background, n_regions = ndimage.label(~foreground)
    touches_border = np.zeros(n_regions + 1, dtype=bool)
    for axis in range(background.ndim):
        touches_border[np.take(background, [0, -1], axis=axis)] = True
    touches_border[0] = False  # label 0 is the foreground
    return ~touches_border[background]


def clean_volume(volume: np.ndarray, min_object_voxels: int = 0, fill_cavities: bool = True) -> np.ndarray:
    """The 3D clean-up before meshing and measuring: small objects out, cavities filled.

    Parameters
    ----------
    volume : ndarray, shape (slices, rows, columns)
        Foreground where non-zero.
    min_object_voxels : int
        See :func:`remove_small_objects`.
    fill_cavities : bool
        Fill enclosed cavities afterwards (:func:`fill_holes`).

    Returns
    -------
    ndarray of bool, shape as ``volume``
    """
    cleaned = remove_small_objects(volume, min_object_voxels)
    return fill_holes(cleaned) if fill_cavities else cleaned
