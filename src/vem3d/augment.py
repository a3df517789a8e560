"""Data augmentation applied to an image and its mask together (NumPy, backend-free).

Geometric changes (flips, 90-degree rotations, elastic deformation) act on image and
mask alike so they stay aligned; intensity changes (gain, offset, gamma, blur, noise)
and simulated section defects act on the image only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dihedral(array: np.ndarray, index: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """One of the 8 symmetries of the square (rotations by 90 degrees, with or without a flip).

    Parameters
    ----------
    array : ndarray
        Acts on ``axes`` (rows, columns): by default the first two.
    index : int
        0-7; 0 is the identity; :func:`undo_dihedral` maps back.
    axes : (int, int)
    """
    rotated = np.rot90(array, k=index % 4, axes=axes)
    return np.flip(rotated, axis=axes[1]) if index >= 4 else rotated


def undo_dihedral(array: np.ndarray, index: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """The inverse of :func:`dihedral` with the same ``index`` and ``axes``."""
    if index >= 4:
        array = np.flip(array, axis=axes[1])
    return np.rot90(array, k=-(index % 4), axes=axes)


def elastic_deform(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, alpha: float = 8.0, sigma: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp image and mask with the same smooth random displacement field.

    Parameters
    ----------
    image : ndarray of float, shape (rows, columns)
    mask : ndarray, shape (rows, columns) or (rows, columns, channels)
    rng : numpy.random.Generator
    alpha : float
        Largest typical displacement, in pixels.
    sigma : float
        Smoothness of the field: spacing of its random control points, pixels.

    Returns
    -------
    image, mask : ndarray
        Image interpolated linearly, mask by nearest neighbour (labels stay labels).
    """
    shape = image.shape[:2]
    # Smooth noise on a grid `sigma` times coarser, upsampled: the same smooth field
    # as full-resolution Gaussian filtering at a fraction of the cost.
    coarse_shape = tuple(max(2, int(np.ceil(side / sigma)) + 1) for side in shape)
    displacement = [
        ndimage.zoom(rng.uniform(-1, 1, coarse_shape), [s / c for s, c in zip(shape, coarse_shape)], order=3)[
            : shape[0], : shape[1]
        ]
        for _ in range(2)
    ]
    scale = alpha / max(max(np.abs(field).max() for field in displacement), 1e-9)
    rows, columns = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    coordinates = [rows + displacement[0] * scale, columns + displacement[1] * scale]
    warped_image = ndimage.map_coordinates(image, coordinates, order=1, mode="reflect")
    if mask.ndim == 2:
        warped_mask = ndimage.map_coordinates(mask, coordinates, order=0, mode="reflect")
    else:
        warped_mask = np.stack(
            [ndimage.map_coordinates(mask[..., c], coordinates, order=0, mode="reflect") for c in range(mask.shape[-1])],
            axis=-1,
        )
    return warped_image.astype(image.dtype), warped_mask.astype(mask.dtype)


def section_defect(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a fold-like dark stripe across the image, as serial sections often show."""
    rows, columns = np.mgrid[: image.shape[0], : image.shape[1]]
    angle = rng.uniform(0, np.pi)
    along = rows * np.cos(angle) + columns * np.sin(angle)
    offset = rng.uniform(along.min(), along.max())  # the stripe's line crosses the image
    distance = np.abs(along - offset)
    stripe = distance < rng.uniform(1, 4)
    damaged = image.copy()
    damaged[stripe] *= rng.uniform(0.1, 0.5)
    return damaged


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    intensity: float = 0.1,
    gamma_range: tuple[float, float] = (0.8, 1.25),
    noise: float = 0.03,
    elastic_probability: float = 0.5,
    blur_probability: float = 0.2,
    defect_probability: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform an image patch and its mask together.

    Parameters
    ----------
    image : ndarray of float32, shape (rows, columns)
        Intensities in [0, 1].
    mask : ndarray, shape (rows, columns) or (rows, columns, channels)
        Labels aligned with ``image``.
    rng : numpy.random.Generator
        Source of randomness (seed it for repeatable training).
    intensity : float
        Largest relative change of contrast and brightness.
    gamma_range : (float, float)
        Range of the random gamma correction.
    noise : float
        Largest standard deviation of additive Gaussian noise.
    elastic_probability, blur_probability, defect_probability : float
        Chances of an elastic deformation, a Gaussian blur (sigma up to 1.5 px)
        and a fold-like stripe (:func:`section_defect`).

    Returns
    -------
    image, mask : ndarray
        Transformed copies with the input shapes and dtypes.
    """
    # A non-square patch keeps its shape only under the symmetries without a quarter turn.
    symmetry = int(rng.integers(8)) if image.shape[0] == image.shape[1] else int(rng.choice([0, 2, 4, 6]))
    image = dihedral(image, symmetry)
    mask = dihedral(mask, symmetry)
    if rng.random() < elastic_probability:
        image, mask = elastic_deform(image, mask, rng)
    gain = 1 + rng.uniform(-intensity, intensity)
    offset = rng.uniform(-intensity, intensity) / 2
    gamma = np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1])))
    image = np.clip(image * gain + offset, 0, 1) ** gamma
    if rng.random() < blur_probability:
        image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.5))
    if rng.random() < defect_probability:
        image = section_defect(image, rng)
    image = image + rng.normal(scale=rng.uniform(0, noise), size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), np.ascontiguousarray(mask)
