"""Segmentation of slices with a trained U-Net: tiled, blended, batched.

Slices of any size are cut into overlapping square tiles; each tile's prediction is
weighted by a window that falls off towards the tile's edges, where a convolutional
network sees least context, and the weighted predictions are summed and normalised.
The result has no seams and does not depend on where the tile borders fall.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import keras
import numpy as np

from vem3d.preprocess import read_preprocessed, resize
from vem3d.slices import write_image
from vem3d.train import load_weights
from vem3d.unet import UNetConfig, build_unet

log = logging.getLogger(__name__)


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``length`` pixels, the last one flush with the end."""
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, stride))
    return starts + [length - tile_size]


def blending_window(tile_size: int, overlap: int) -> np.ndarray:
    """A 2D weight window: 1 in the centre, falling to near 0 towards the edges.

    Along each side the outer quarter of the overlap gets a weight of 1e-3 (a
    network's predictions are worst there) and the rest of the overlap a
    raised-cosine ramp up to 1.

    Returns
    -------
    ndarray of float32, shape (tile_size, tile_size)
    """
    ramp = np.ones(tile_size, dtype=np.float32)
    if overlap > 0:
        dead = overlap // 4
        positions = (np.arange(overlap - dead, dtype=np.float32) + 0.5) / (overlap - dead)
        edge = np.concatenate([np.full(dead, 1e-3, np.float32), 0.5 - 0.5 * np.cos(np.pi * positions)])
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp)


def predict_tiled(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
) -> np.ndarray:
    """Predict a slice of any size tile by tile and blend the tiles.

    Parameters
    ----------
    predict_batch : callable
        Maps a float32 batch (n, tile_size, tile_size, 1) to probabilities
        (n, tile_size, tile_size, channels), e.g. ``model.predict_on_batch``.
    image : ndarray of float32, shape (rows, columns)
        Preprocessed slice, intensities in [0, 1].
    tile_size : int
        Tile side in pixels; must suit the network (a multiple of ``2**depth``).
    overlap : int
        Pixels shared by neighbouring tiles (< tile_size / 2 recommended).
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    ndarray of float32, shape (rows, columns, channels)
        Blended probabilities.
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile {tile_size}")
    rows, columns = image.shape
    # Reflect-pad so that the slice border lies inside a tile, not on its weak edge,
    # and so that slices smaller than a tile still fill one.
    margin = overlap // 2
    pad_rows = max(tile_size - (rows + 2 * margin), 0)
    pad_columns = max(tile_size - (columns + 2 * margin), 0)
    padded = np.pad(
        image.astype(np.float32, copy=False),
        ((margin, margin + pad_rows), (margin, margin + pad_columns)),
        mode="reflect" if min(rows, columns) > margin else "edge",
    )
    stride = tile_size - overlap
    window = blending_window(tile_size, overlap)[..., np.newaxis]
    positions = [
        (top, left)
        for top in tile_starts(padded.shape[0], tile_size, stride)
        for left in tile_starts(padded.shape[1], tile_size, stride)
    ]
    summed = None
    weights = np.zeros(padded.shape + (1,), dtype=np.float32)
    for first in range(0, len(positions), batch_size):
        batch_positions = positions[first : first + batch_size]
        batch = np.stack(
            [padded[top : top + tile_size, left : left + tile_size] for top, left in batch_positions]
        )[..., np.newaxis]
        probabilities = np.asarray(predict_batch(batch), dtype=np.float32)
        if summed is None:
            summed = np.zeros(padded.shape + (probabilities.shape[-1],), dtype=np.float32)
        for (top, left), tile in zip(batch_positions, probabilities):
            summed[top : top + tile_size, left : left + tile_size] += tile * window
            weights[top : top + tile_size, left : left + tile_size] += window
    blended = summed / np.maximum(weights, 1e-12)
    return blended[margin : margin + rows, margin : margin + columns]


def with_test_time_augmentation(predict_batch: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """Wrap a batch predictor to average its predictions over the 8 symmetries of the square.

    Each tile is rotated/flipped, predicted, and mapped back before averaging, which
    evens out orientation-dependent errors at 8 times the cost.
    """

    def predict_averaged(batch: np.ndarray) -> np.ndarray:
        total = None
        for index in range(8):
            turns, flip = index % 4, index >= 4
            transformed = np.rot90(batch, k=turns, axes=(1, 2))
            if flip:
                transformed = transformed[:, :, ::-1]
            predicted = np.asarray(predict_batch(np.ascontiguousarray(transformed)), dtype=np.float32)
            if flip:
                predicted = predicted[:, :, ::-1]
            predicted = np.rot90(predicted, k=-turns, axes=(1, 2))
            total = predicted if total is None else total + predicted
        return total / 8

    return predict_averaged


def probabilities_to_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Turn probabilities (rows, columns, channels) into a label image.

    One channel: foreground where the probability exceeds ``threshold`` (uint8 0/1).
    Several: the most probable class per pixel (uint8 class index, 0 = background).
    """
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > threshold).astype(np.uint8)
    return np.argmax(probabilities, axis=-1).astype(np.uint8)


def load_model(weights_path, unet_config: UNetConfig) -> keras.Model:
    """Build the configured U-Net and load trained weights into it."""
    model = build_unet(unet_config)
    load_weights(model, weights_path)
    return model


def segment_slices(
    model: keras.Model,
    slices: Iterable[tuple[str, np.ndarray, tuple[int, int]]],
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    threshold: float = 0.5,
    test_time_augmentation: bool = False,
):
    """Segment preprocessed slices one after another, logging progress.

    Parameters
    ----------
    model : keras.Model
        A U-Net as built by :func:`vem3d.unet.build_unet`, weights loaded.
    slices : iterable of (name, image, original_shape)
        Each preprocessed slice (float32 (rows, columns) in [0, 1]) with the shape
        of the raw slice it came from; predictions are resized back to that shape.
    tile_size, overlap, batch_size : int
        As for :func:`predict_tiled`.
    threshold : float
        Probability above which a pixel is foreground (binary models).
    test_time_augmentation : bool
        Average predictions over flips and rotations (8 times slower).

    Yields
    ------
    name : str
    probabilities : ndarray of float32, shape (*original_shape, channels)
    mask : ndarray of uint8, shape original_shape
        0/1 (binary) or class indices.
    """
    network_seconds = 0.0

    def predict_timed(batch: np.ndarray) -> np.ndarray:
        # The time inside the network, apart from tiling, blending and writing, tells
        # how much of a run the network is (benchmarks/pipeline.py reads it from the log).
        nonlocal network_seconds
        started = time.perf_counter()
        probabilities = model.predict_on_batch(batch)
        network_seconds += time.perf_counter() - started
        return probabilities

    predict_batch = with_test_time_augmentation(predict_timed) if test_time_augmentation else predict_timed
    started = time.perf_counter()
    count = 0
    for count, (name, image, original_shape) in enumerate(slices, start=1):
        probabilities = predict_tiled(predict_batch, image, tile_size, overlap, batch_size)
        if probabilities.shape[:2] != tuple(original_shape):
            probabilities = resize(probabilities, tuple(original_shape) + probabilities.shape[2:])
        yield name, probabilities, probabilities_to_mask(probabilities, threshold)
        elapsed = time.perf_counter() - started
        log.info("segmented %s: %d slices in %.1f s (%.2f slices/s)", name, count, elapsed, count / elapsed)
    log.info(
        "segmented %d slices in %.2f s, %.2f s of it in the network's forward passes",
        count,
        time.perf_counter() - started,
        network_seconds,
    )


def segment_folder(
    preprocessed_dir: str | os.PathLike,
    weights_path: str | os.PathLike,
    probabilities_dirs,
    masks_dirs,
    unet_config: UNetConfig,
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    threshold: float = 0.5,
    test_time_augmentation: bool = False,
) -> None:
    """Segment every slice of a preprocessed folder; write probability and mask PNGs per class.

    Parameters
    ----------
    probabilities_dirs, masks_dirs : list of path
        One folder per class (background excluded), in class order. Each gets
        ``{slice}.png`` at the raw slice's size: the class's probability scaled to
        0-255 (8-bit), and its mask (0/255).
    unet_config : UNetConfig
        The network the weights belong to; ``n_classes`` is 1 for a binary model,
        else the number of classes plus background.

    Other parameters are those of :func:`segment_slices`.
    """
    n_channels = unet_config.n_classes
    if len(masks_dirs) != max(n_channels - 1, 1) or len(probabilities_dirs) != len(masks_dirs):
        raise ValueError(f"{len(masks_dirs)} mask folders for a network of {n_channels} output channel(s)")
    model = load_model(weights_path, unet_config)
    for name, probabilities, mask in segment_slices(
        model, read_preprocessed(preprocessed_dir), tile_size, overlap, batch_size, threshold, test_time_augmentation
    ):
        for index, (probabilities_dir, masks_dir) in enumerate(zip(probabilities_dirs, masks_dirs), 1):
            channel = probabilities[..., 0 if n_channels == 1 else index]
            write_image(Path(probabilities_dir) / f"{name}.png", np.round(channel * 255).astype(np.uint8))
            write_image(Path(masks_dir) / f"{name}.png", (mask == index).astype(np.uint8) * 255)
