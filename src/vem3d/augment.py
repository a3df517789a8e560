"""Data augmentation applied to an image and its mask together (NumPy, backend-free).

Geometric changes (flips, 90-degree rotations) act on image and mask alike so they
stay aligned; intensity changes (gain, offset, gamma, noise) act on the image only.
"""

from __future__ import annotations

import numpy as np


def dihedral(array: np.ndarray, index: int) -> np.ndarray:
    """One of the 8 symmetries of the square (rotations by 90 degrees, with or without a flip).

    Parameters
    ----------
    array : ndarray, shape (rows, columns, ...)
        Acts on the first two axes.
    index : int
        0-7; 0 is the identity.
    """
    rotated = np.rot90(array, k=index % 4, axes=(0, 1))
    return rotated[:, ::-1] if index >= 4 else rotated


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    intensity: float = 0.1,
    gamma_range: tuple[float, float] = (0.8, 1.25),
    noise: float = 0.03,
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

    Returns
    -------
    image, mask : ndarray
        Transformed copies with the input shapes and dtypes.
    """
    # A non-square patch keeps its shape only under the symmetries without a quarter turn.
    symmetry = int(rng.integers(8)) if image.shape[0] == image.shape[1] else int(rng.choice([0, 2, 4, 6]))
    image = dihedral(image, symmetry)
    mask = dihedral(mask, symmetry)
    gain = 1 + rng.uniform(-intensity, intensity)
    offset = rng.uniform(-intensity, intensity) / 2
    gamma = np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1])))
    image = np.clip(image * gain + offset, 0, 1) ** gamma
    image = image + rng.normal(scale=rng.uniform(0, noise), size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), np.ascontiguousarray(mask)
