"""Synthetic EM-like demo stacks with known ground truth.

The project cannot ship real EM data (licences forbid redistribution), so the demo
generates its own: a 3D tissue of Voronoi cells with dark membranes, granular
cytoplasm, light vesicles as distractors and dark elongated mitochondria with cristae,
blurred and noisy like a FIB-SEM stack. The mitochondria are the ground truth. The
same seed gives the same stack, bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vem3d.slices import write_image


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid body, rotated in the slice plane, in voxel units."""

    centre_z: float
    centre_y: float
    centre_x: float
    semi_axis_z: float
    semi_axis_major: float
    semi_axis_minor: float
    angle: float

    def slice_field(self, z: int, rows: np.ndarray, columns: np.ndarray):
        """Quadratic form (<= 1 inside) and coordinate along the major axis on slice z."""
        dz = (z - self.centre_z) / self.semi_axis_z
        dy = rows - self.centre_y
        dx = columns - self.centre_x
        along = dx * np.cos(self.angle) + dy * np.sin(self.angle)
        across = -dx * np.sin(self.angle) + dy * np.cos(self.angle)
        form = (along / self.semi_axis_major) ** 2 + (across / self.semi_axis_minor) ** 2 + dz**2
        return form, along


def _random_ellipsoids(rng, count, n_slices, size, major, minor, depth) -> list[Ellipsoid]:
    return [
        Ellipsoid(
            centre_z=rng.uniform(-6, n_slices + 5),
            centre_y=rng.uniform(0, size - 1),
            centre_x=rng.uniform(0, size - 1),
            semi_axis_z=rng.uniform(*depth),
            semi_axis_major=rng.uniform(*major),
            semi_axis_minor=rng.uniform(*minor),
            angle=rng.uniform(0, np.pi),
        )
        for _ in range(count)
    ]


def _paint(z, body: Ellipsoid, canvas_shape):
    """Bounding-box window and field of one ellipsoid on slice z, or None if it misses."""
    if abs(z - body.centre_z) >= body.semi_axis_z:
        return None
    reach = body.semi_axis_major + 1
    top, bottom = int(max(body.centre_y - reach, 0)), int(min(body.centre_y + reach + 1, canvas_shape[0]))
    left, right = int(max(body.centre_x - reach, 0)), int(min(body.centre_x + reach + 1, canvas_shape[1]))
    if top >= bottom or left >= right:
        return None
    rows, columns = np.mgrid[top:bottom, left:right].astype(np.float32)
    form, along = body.slice_field(z, rows, columns)
    return (slice(top, bottom), slice(left, right)), form, along


def synthesise_stack(
    n_slices: int = 64,
    size: int = 512,
    seed: int = 0,
    n_cells: int | None = None,
    n_mitochondria: int | None = None,
    n_vesicles: int | None = None,
    noise: float = 0.06,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate an EM-like stack and its mitochondria ground truth.

    Parameters
    ----------
    n_slices : int
        Number of slices (z).
    size : int
        Rows and columns of each slice, in pixels.
    seed : int
        Random seed; the same seed gives the same stack.
    n_cells, n_mitochondria, n_vesicles : int, optional
        How many cells, mitochondria and vesicles the volume holds; by default 24,
        250 and 120 for 64 x 512 x 512 voxels, scaled so that their density stays
        the same in other volumes.
    noise : float
        Standard deviation of the additive Gaussian noise, in units of the [0, 1]
        intensity range.

    Returns
    -------
    images : ndarray of uint8, shape (n_slices, size, size)
        The EM-like slices (dark membranes and mitochondria on a light cytoplasm).
    mitochondria : ndarray of bool, shape (n_slices, size, size)
        Ground truth: True inside a mitochondrion.
    """
    # Bodies reach about 6 slices beyond their centre, so thin stacks still cut
    # through bodies centred just outside them.
    per_reference_volume = (size / 512) ** 2 * (n_slices + 12) / (64 + 12)
    if n_cells is None:
        n_cells = max(2, round(24 * per_reference_volume))
    if n_mitochondria is None:
        n_mitochondria = max(1, round(250 * per_reference_volume))
    if n_vesicles is None:
        n_vesicles = round(120 * per_reference_volume)
    # Imported here: the workflow imports this module at every start, for the demo's
    # slice names, and scipy's import took 0.3 s of it.
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    # Cells are the Voronoi regions of seeds spread through the volume; slices are
    # thinner than pixels are wide (anisotropy 2), as in FIB-SEM with z steps.
    cell_seeds = rng.uniform([0, 0, 0], [n_slices * 2.0, size, size], size=(n_cells, 3))
    tree = cKDTree(cell_seeds)
    mitochondria = _random_ellipsoids(rng, n_mitochondria, n_slices, size, (12, 30), (6, 11), (3, 9))
    vesicles = _random_ellipsoids(rng, n_vesicles, n_slices, size, (4, 9), (4, 9), (2, 4))
    cytoplasm_shading = ndimage.gaussian_filter(rng.normal(size=(size, size)), 40)
    cytoplasm_shading *= 0.05 / max(np.abs(cytoplasm_shading).max(), 1e-9)

    rows, columns = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n_slices, size, size), dtype=np.uint8)
    truth = np.zeros((n_slices, size, size), dtype=bool)
    for z in range(n_slices):
        points = np.column_stack([np.full(rows.size, z * 2.0), rows.ravel(), columns.ravel()])
        distances, _ = tree.query(points, k=2)
        membrane = (distances[:, 1] - distances[:, 0]).reshape(size, size) < 2.2

        granules = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.2) * 0.25
        slice_image = 0.66 + cytoplasm_shading + granules
        slice_image[membrane] = 0.28

        for body in vesicles:
            painted = _paint(z, body, (size, size))
            if painted is None:
                continue
            window, form, _ = painted
            slice_image[window][form <= 1] = 0.82
            slice_image[window][(form > 0.6) & (form <= 1)] = 0.38

        for body in mitochondria:
            painted = _paint(z, body, (size, size))
            if painted is None:
                continue
            window, form, along = painted
            inside = form <= 1
            cristae = 0.36 + 0.07 * np.cos(2 * np.pi * along / 6.0)
            slice_image[window][inside] = cristae[inside]
            slice_image[window][(form > 0.7) & inside] = 0.2
            truth[z][window] |= inside

        blurred = ndimage.gaussian_filter(slice_image, 0.9)
        blurred += rng.normal(scale=noise, size=blurred.shape)
        images[z] = np.round(np.clip(blurred, 0, 1) * 255).astype(np.uint8)
    return images, truth


def write_demo_stack(
    out_dir: str | os.PathLike,
    n_slices: int = 64,
    size: int = 512,
    seed: int = 0,
    label_every: int = 8,
) -> dict[str, Path]:
    """Write a synthetic demo stack as PNG slices with sparse labels.

    Parameters
    ----------
    out_dir : path
        Folder to create; gets ``slices/``, ``labels/`` (every ``label_every``-th
        slice only, as a user's sparse annotation would be) and ``ground_truth/``
        (every slice, kept aside for scoring). Masks are 0/255 PNG.
    n_slices, size, seed :
        As for :func:`synthesise_stack`.
    label_every : int
        Spacing of the labelled slices.

    Returns
    -------
    dict
        The three folders, keyed ``slices``, ``labels`` and ``ground_truth``.
    """
    images, truth = synthesise_stack(n_slices=n_slices, size=size, seed=seed)
    folders = {name: Path(out_dir) / name for name in ("slices", "labels", "ground_truth")}
    for z, stem in enumerate(demo_slice_names(n_slices)):
        name = f"{stem}.png"
        write_image(folders["slices"] / name, images[z])
        mask = truth[z].astype(np.uint8) * 255
        write_image(folders["ground_truth"] / name, mask)
        if z % label_every == label_every // 2:
            write_image(folders["labels"] / name, mask)
    return folders


def demo_slice_names(n_slices: int) -> list[str]:
    """Names of the slices :func:`write_demo_stack` writes, in z order."""
    return [f"slice_{z:04d}" for z in range(n_slices)]
