"""Segmentation of slices with a trained U-Net: tiled, blended, batched.

Slices of any size are cut into overlapping square tiles; each tile's prediction is
weighted by a window that falls off towards the tile's edges, where a convolutional
network sees least context, and the weighted predictions are summed and normalised.
The result has no seams and does not depend on where the tile borders fall.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import keras
import numpy as np

from vem3d.atomic import link_or_copy, refuse_to_write_into, write_directory_atomically
from vem3d.augment import dihedral, undo_dihedral
from vem3d.cache import code_version
from vem3d.devices import visible_gpus, xla_speeds_up_inference
from vem3d.preprocess import preprocessed_files, read_preprocessed, resize
from vem3d.slices import write_image
from vem3d.threads import cpu_threads, map_ahead
from vem3d.unet import UNetConfig, build_unet, check_input_side, load_weights

log = logging.getLogger(__name__)


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``length`` pixels, the last one flush with the end."""
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, stride))
    return starts + [length - tile_size]


def fitted_tile_size(rows: int, columns: int, tile_size: int, overlap: int, multiple: int) -> int:
    """Smallest square tile side, a multiple of ``multiple``, that covers a (rows, columns)
    area with no more tiles than ``tile_size`` does, neighbours sharing at least ``overlap`` pixels."""
    side = multiple
    for length in (rows, columns):
        n_tiles = len(tile_starts(length, tile_size, tile_size - overlap))
        # n tiles of side s sharing `overlap` cover n * s - (n - 1) * overlap pixels.
        needed = -(-(length + (n_tiles - 1) * overlap) // n_tiles)
        side = max(side, -(-needed // multiple) * multiple)
    return side


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


class Tiling:
    """A slice padded and cut into overlapping square tiles, and the blending of their predictions.

    Cutting (:meth:`batches`) and blending (:meth:`blend`) are separate so that the
    next slice can be cut while the network predicts the current one.

    Parameters
    ----------
    image : ndarray of float32, shape (rows, columns)
        Preprocessed slice, intensities in [0, 1].
    tile_size : int
        Largest tile side in pixels; must suit the network (a multiple of ``2**depth``).
    overlap : int
        Least number of pixels shared by neighbouring tiles (< tile_size / 2 recommended).
    multiple : int, optional
        Tiles may shrink, in steps of this many pixels (``2**depth`` for a U-Net), to
        the smallest side that covers the slice with as many tiles per axis: a 512 x
        512 slice takes 9 tiles of 208 rather than of 256 (overlap 32), 1.5 rather than
        2.25 times its pixels' work. None keeps every tile ``tile_size``.
    """

    def __init__(self, image: np.ndarray, tile_size: int = 256, overlap: int = 64, multiple: int | None = None):
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile {tile_size}")
        self.shape = image.shape
        self.overlap = overlap
        rows, columns = image.shape
        # Reflect-pad so that the slice border lies inside a tile, not on its weak edge,
        # and so that slices smaller than a tile still fill one.
        self.margin = overlap // 2
        if multiple:
            tile_size = min(tile_size, fitted_tile_size(rows + 2 * self.margin, columns + 2 * self.margin, tile_size,
                                                        overlap, multiple))
        self.tile_size = tile_size
        pad_rows = max(tile_size - (rows + 2 * self.margin), 0)
        pad_columns = max(tile_size - (columns + 2 * self.margin), 0)
        self.padded = np.pad(
            image.astype(np.float32, copy=False),
            ((self.margin, self.margin + pad_rows), (self.margin, self.margin + pad_columns)),
            mode="reflect" if min(rows, columns) > self.margin else "edge",
        )
        stride = tile_size - overlap
        self.positions = [
            (top, left)
            for top in tile_starts(self.padded.shape[0], tile_size, stride)
            for left in tile_starts(self.padded.shape[1], tile_size, stride)
        ]

    def batches(self, batch_size: int) -> list[np.ndarray]:
        """The tiles in batches of float32 (n <= batch_size, tile_size, tile_size, 1).

        The tiles are shared out evenly (9 tiles with at most 4 a batch: 3, 3, 3 rather
        than 4, 4, 1), so that a compiled network sees fewer batch shapes and no
        near-empty batch.
        """
        tiles = self.tiles()
        n_batches = -(-len(tiles) // batch_size)
        per_batch = -(-len(tiles) // n_batches)
        return [np.stack(tiles[first : first + per_batch])[..., np.newaxis] for first in range(0, len(tiles), per_batch)]

    def tiles(self) -> list[np.ndarray]:
        """The tiles, float32 (tile_size, tile_size) views of the padded slice, in blending order."""
        size = self.tile_size
        return [self.padded[top : top + size, left : left + size] for top, left in self.positions]

    def blend(self, predictions: Iterable[np.ndarray]) -> np.ndarray:
        """Blend tile predictions, given batch by batch in the order of :meth:`tiles`.

        Parameters
        ----------
        predictions : iterable of ndarray, each (n, tile_size, tile_size, channels)

        Returns
        -------
        ndarray of float32, shape (rows, columns, channels)
        """
        size = self.tile_size
        window = blending_window(size, self.overlap)[..., np.newaxis]
        summed = None
        weights = np.zeros(self.padded.shape + (1,), dtype=np.float32)
        positions = iter(self.positions)
        for batch in predictions:
            batch = np.asarray(batch, dtype=np.float32)
            if summed is None:
                summed = np.zeros(self.padded.shape + (batch.shape[-1],), dtype=np.float32)
            # The batch first: zip then stops at its end without taking a position too many.
            for tile, (top, left) in zip(batch, positions):
                summed[top : top + size, left : left + size] += tile * window
                weights[top : top + size, left : left + size] += window
        blended = summed / np.maximum(weights, 1e-12)
        rows, columns = self.shape
        return blended[self.margin : self.margin + rows, self.margin : self.margin + columns]


def predict_tiled(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    multiple: int | None = None,
) -> np.ndarray:
    """Predict a slice of any size tile by tile and blend the tiles.

    Parameters
    ----------
    predict_batch : callable
        Maps a float32 batch (n, tile_size, tile_size, 1) to probabilities
        (n, tile_size, tile_size, channels), e.g. ``model.predict_on_batch``.
    image : ndarray of float32, shape (rows, columns)
        Preprocessed slice, intensities in [0, 1].
    tile_size, overlap, multiple
        As for :class:`Tiling`.
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    ndarray of float32, shape (rows, columns, channels)
        Blended probabilities.
    """
    tiling = Tiling(image, tile_size, overlap, multiple)
    return tiling.blend(predict_batch(batch) for batch in tiling.batches(batch_size))


def with_test_time_augmentation(predict_batch: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """Wrap a batch predictor to average its predictions over the 8 symmetries of the square.

    Each tile is rotated/flipped, predicted, and mapped back before averaging, which
    evens out orientation-dependent errors at 8 times the cost.
    """

    def predict_averaged(batch: np.ndarray) -> np.ndarray:
        total = None
        for index in range(8):
            transformed = np.ascontiguousarray(dihedral(batch, index, axes=(1, 2)))
            predicted = undo_dihedral(np.asarray(predict_batch(transformed), dtype=np.float32), index, axes=(1, 2))
            total = predicted if total is None else total + predicted
        return total / 8

    return predict_averaged


def probabilities_to_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Turn a slice's probabilities into a label image.

    Parameters
    ----------
    probabilities : ndarray of float, shape (rows, columns, channels)
        The network's output: one sigmoid channel, or a softmax over background and
        the classes.
    threshold : float
        With one channel, the probability above which a pixel is foreground.

    Returns
    -------
    ndarray of uint8, shape (rows, columns)
        One channel: 0/1. Several: the most probable class per pixel (0 = background).
    """
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > threshold).astype(np.uint8)
    return np.argmax(probabilities, axis=-1).astype(np.uint8)


def load_model(weights_path, unet_config: UNetConfig, precision: str = "float32") -> keras.Model:
    """Build the configured U-Net in ``precision`` (see :func:`vem3d.unet.build_unet`) and load trained weights into it.

    The forward pass is compiled with XLA where that is faster on this machine
    (:func:`vem3d.devices.xla_speeds_up_inference`): on JAX, on GPUs, and on CPUs whose
    instructions TensorFlow's oneDNN kernels do not use to the full (AVX2, where Keras
    would leave XLA off). There XLA fuses batch normalisation with the activation, for
    a second or two of compilation per batch shape.

    Parameters
    ----------
    weights_path : path
        Trained weights (``.weights.h5``).
    unet_config : UNetConfig
        The network they belong to.
    precision : str
        Compute precision (:data:`vem3d.unet.PRECISIONS`); the weights stay float32.

    Returns
    -------
    keras.Model
        Taking float32 tiles of shape (batch, rows, columns, 1) in [0, 1], sides
        multiples of ``2**depth``; giving (batch, rows, columns, n_classes).
    """
    model = build_unet(unet_config, precision=precision)
    load_weights(model, weights_path)
    jit_compile = xla_speeds_up_inference()
    log.info("forward pass %s", "compiled with XLA" if jit_compile else f"with {keras.backend.backend()}'s own kernels")
    model.compile(jit_compile=jit_compile)
    return model


# The automatic batch size (segment.batch_size: null): enough pixels per forward pass to
# keep the device busy, as long as the activations fit in a memory budget. A GPU needs
# many tiles at once to use its thousands of cores; a CPU is fastest with about a
# quarter of a megapixel, whose activations stay closer to its caches (2 AVX2 cores:
# 10-20 % more GFLOP/s than with 1 or 4 megapixels, benchmarks/inference.py).
BATCH_PIXELS = {"cpu": 2**18, "gpu": 2**24}  # 0.26 and 16.8 megapixels
ACTIVATION_BUDGET_BYTES = {"cpu": 2**30, "gpu": 2**33}  # 1 and 8 GiB


def activation_bytes(unet_config: UNetConfig, tile_size: int) -> int:
    """Rough peak memory of the activations of one tile's forward pass, in bytes.

    At the end of the decoder about 8 full-resolution maps of ``base_filters``
    channels are alive at once (skip connection, up-sampled maps, their concatenation,
    convolution, normalisation, activation); the lower levels add about as much again.
    4 bytes a value whatever the precision, as batch normalisation computes in float32.
    """
    return 16 * unet_config.base_filters * tile_size**2 * 4


def automatic_batch_size(unet_config: UNetConfig, tile_size: int, on_gpu: bool | None = None) -> int:
    """Tiles per forward pass: ``BATCH_PIXELS`` worth of tiles, within ``ACTIVATION_BUDGET_BYTES``.

    For the default model (16 filters) that is 4 tiles of 256 x 256 or 1 of 512 x 512
    on a CPU, and 128 or 32 on a GPU; at least 1.

    Parameters
    ----------
    unet_config : UNetConfig
    tile_size : int
        Tile side in pixels.
    on_gpu : bool, optional
        Whether the network runs on a GPU; by default, whether the Keras backend sees one.
    """
    if on_gpu is None:
        on_gpu = bool(visible_gpus())
    device = "gpu" if on_gpu else "cpu"
    by_pixels = BATCH_PIXELS[device] // tile_size**2
    by_memory = ACTIVATION_BUDGET_BYTES[device] // activation_bytes(unet_config, tile_size)
    return max(1, min(by_pixels, by_memory))


def batch_tiles(tilings: Iterable[tuple[object, Tiling]], batch_size: int) -> Iterator[tuple[np.ndarray, list]]:
    """Group the tiles of consecutive slices into forward passes of ``batch_size`` tiles.

    A GPU needs tens of tiles at once to be busy, more than most slices hold (a
    Lucchi++ slice of 768 x 1024 is 6 tiles of 512, half-resolution 2), so a
    forward pass takes tiles from as many slices as fill it. Tiles of another size
    (slices of another shape) start a new batch. Once a full batch of a tile size
    has run, a last partial one of that size is padded with copies of its last tile,
    so that a compiled network sees one batch shape per tile size.

    Parameters
    ----------
    tilings : iterable of (owner, Tiling)
        Each slice's tiling, with any object that stands for the slice.
    batch_size : int
        Tiles per forward pass.

    Yields
    ------
    batch : ndarray of float32, shape (n <= batch_size, tile_size, tile_size, 1)
    owners : list
        The owner of each tile of the batch in order; padding tiles, at the end, have none.
    """
    tiles, owners = [], []
    filled_sizes = set()  # tile sizes of which a full batch has run

    def batch(pad: bool) -> tuple[np.ndarray, list]:
        padding = [tiles[-1]] * (batch_size - len(tiles)) if pad else []
        return np.stack(tiles + padding)[..., np.newaxis], owners

    for owner, tiling in tilings:
        if tiles and tiles[0].shape[0] != tiling.tile_size:
            yield batch(pad=tiles[0].shape[0] in filled_sizes)
            tiles, owners = [], []
        for tile in tiling.tiles():
            tiles.append(tile)
            owners.append(owner)
            if len(tiles) == batch_size:
                yield batch(pad=False)
                tiles, owners = [], []
                filled_sizes.add(tiling.tile_size)
    if tiles:
        yield batch(pad=tiles[0].shape[0] in filled_sizes)


@dataclasses.dataclass(eq=False)  # hashed by identity: one per slice
class _TiledSlice:
    name: str
    tiling: Tiling
    original_shape: tuple[int, int]
    predictions: list = dataclasses.field(default_factory=list)


# Threads writing a segment job's PNGs: enough to keep up with a GPU (a 768 x 1024 slice
# takes about 0.03 s to encode on one core), few enough to bound memory (two slices'
# results a thread).
MAX_WRITE_THREADS = 8

_ITEM, _ERROR, _END = range(3)


def compute_ahead(items: Iterable, depth: int) -> Iterator:
    """Iterate over ``items`` while a background thread computes the next ones.

    At most ``depth`` computed items wait (plus one in the making), which bounds memory.
    An exception raised while computing an item is raised here, in its place; when
    the caller stops early, the thread stops after the item it is making and closes
    ``items`` (so that a chain of these stops as a whole).

    Parameters
    ----------
    items : iterable
        Typically a generator doing slow work per item (reading, a forward pass).
    depth : int
        Items computed ahead (>= 1).
    """
    waiting = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def hand_over(entry) -> bool:
        while not stopped.is_set():
            try:
                waiting.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def compute() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not hand_over((_ITEM, item)):
                    return
            hand_over((_END, None))
        except BaseException as error:  # noqa: BLE001 -- the caller raises it
            hand_over((_ERROR, error))
        finally:
            if hasattr(iterator, "close"):
                iterator.close()

    thread = threading.Thread(target=compute, name="vem3d-compute-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = waiting.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stopped.set()
        thread.join()


def segment_slices(
    model: keras.Model,
    slices: Iterable[tuple[str, np.ndarray, tuple[int, int]]],
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    threshold: float = 0.5,
    test_time_augmentation: bool = False,
    prefetch: int = 2,
    multiple: int | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Segment preprocessed slices one after another, streamed, logging progress.

    Three stages run at once: a thread reads and tiles the next slices into batches
    (:func:`batch_tiles`: a forward pass takes the tiles of several slices where one
    holds fewer than ``batch_size``), another runs the network on the current batch,
    and the caller's thread blends each slice once its tiles are all predicted and
    handles (e.g. writes) the slices before. Each hands over at most ``prefetch``
    batches or slices, so memory stays bounded. The results are those of a plain loop
    (``prefetch=0``).

    Parameters
    ----------
    model : keras.Model
        A U-Net as built by :func:`vem3d.unet.build_unet`, weights loaded.
    slices : iterable of (name, image, original_shape)
        Each preprocessed slice (float32 (rows, columns) in [0, 1]) with the shape
        of the raw slice it came from; predictions are resized back to that shape.
        Iterated in a background thread when ``prefetch`` > 0.
    tile_size, overlap, multiple
        As for :class:`Tiling`.
    batch_size : int
        Tiles per forward pass.
    threshold : float
        Probability above which a pixel is foreground (binary models).
    test_time_augmentation : bool
        Average predictions over flips and rotations (8 times slower).
    prefetch : int
        Batches or slices each stage works ahead of the next; 0 runs everything in the
        caller's thread.

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

    def tilings():
        for name, image, original_shape in slices:
            tiling = Tiling(image, tile_size, overlap, multiple)
            yield _TiledSlice(name, tiling, original_shape), tiling

    def predicted(batches):
        # The network's stage hands slices over unblended: on a GPU, blending in its
        # thread held the step to about half the network's rate.
        for batch, owners in batches:
            predicted = np.asarray(predict_batch(batch), dtype=np.float32)
            for owner, tile in zip(owners, predicted):
                owner.predictions.append(tile)
            for owner in dict.fromkeys(owners):  # the batch's slices, in order
                if len(owner.predictions) == len(owner.tiling.positions):
                    yield owner  # else its last tiles come in the next batch

    batches = batch_tiles(tilings(), batch_size)
    if prefetch < 1:
        complete = predicted(batches)
    else:
        complete = compute_ahead(predicted(compute_ahead(batches, prefetch)), prefetch)
    started = time.perf_counter()
    count = 0
    with contextlib.closing(complete):  # a caller that stops early stops the threads too
        for owner in complete:
            probabilities = owner.tiling.blend([np.stack(owner.predictions)])
            if probabilities.shape[:2] != tuple(owner.original_shape):
                probabilities = resize(probabilities, tuple(owner.original_shape) + probabilities.shape[2:])
            yield owner.name, probabilities, probabilities_to_mask(probabilities, threshold)
            count += 1
            elapsed = time.perf_counter() - started
            log.info("segmented %s: %d slices in %.1f s (%.2f slices/s)", owner.name, count, elapsed, count / elapsed)
    log.info(
        "segmented %d slices in %.2f s, %.2f s of it in the network's forward passes",
        count,
        time.perf_counter() - started,
        network_seconds,
    )


class SliceCache:
    """Results of single slices kept for reuse: a chunk re-run after one of its slices
    changed sends only that slice through the network.

    Snakemake re-runs a whole chunk when any of its slices changes, and deletes the
    chunk's outputs first. The cache keeps a hard link to each slice's output files
    (no extra disk space while the outputs exist) under a key made of the preprocessed
    slice's bytes and everything else its result depends on (weights, network,
    segmentation settings, Keras backend, vem3d's source); a slice whose key is there
    gets its files linked back instead. Each slice keeps one entry, its newest.

    Parameters
    ----------
    folder : path
        The cache (created); ``{folder}/{slice}/{key}/`` holds a slice's files.
    settings : dict
        What a result depends on besides the slice and the weights (JSON-serialisable).
    weights_path : path
    """

    def __init__(self, folder: str | os.PathLike, settings: dict, weights_path: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(Path(weights_path).read_bytes())
        context = {**settings, "backend": keras.backend.backend(), "vem3d": code_version()}
        digest.update(json.dumps(context, sort_keys=True).encode())
        self._settings_digest = digest.digest()

    def key(self, preprocessed_file: Path, original_shape: tuple[int, int]) -> str:
        """The key of one preprocessed slice's result."""
        digest = hashlib.sha256(self._settings_digest)
        digest.update(repr(tuple(int(side) for side in original_shape)).encode())
        digest.update(Path(preprocessed_file).read_bytes())
        return digest.hexdigest()[:32]

    def restore(self, name: str, key: str, targets: list[Path]) -> bool:
        """Link a slice's cached files to ``targets`` (in the order stored); False if not cached."""
        entry = self.folder / name / key
        if not entry.is_dir():
            return False
        for index, target in enumerate(targets):
            link_or_copy(entry / str(index), target)
        return True

    def store(self, name: str, key: str, sources: list[Path]) -> None:
        """Keep a slice's files under ``key``, replacing the slice's older entries."""

        def save(temporary: str) -> None:
            for index, source in enumerate(sources):
                link_or_copy(source, Path(temporary) / str(index))

        write_directory_atomically(self.folder / name / key, save)
        for older in (self.folder / name).iterdir():
            if older.name != key:
                shutil.rmtree(older, ignore_errors=True)


def segment_folder(
    preprocessed_dir: str | os.PathLike,
    weights_path: str | os.PathLike,
    probabilities_dirs,
    masks_dirs,
    unet_config: UNetConfig,
    tile_size: int = 256,
    overlap: int = 64,
    batch_size: int | None = None,
    threshold: float = 0.5,
    test_time_augmentation: bool = False,
    precision: str = "float32",
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """Segment every slice of a preprocessed folder; write probability and mask PNGs per class.

    Reading, the network and writing overlap (:func:`segment_slices`).

    Parameters
    ----------
    preprocessed_dir : path
        A folder of :func:`vem3d.preprocess.preprocess_stack` (its ``shapes.tsv`` gives
        each raw slice's size).
    weights_path : path
        Trained weights (``.weights.h5``) of the network ``unet_config`` describes.
    probabilities_dirs, masks_dirs : list of path
        One folder per class (background excluded), in class order. Each gets
        ``{slice}.png`` at the raw slice's size: the class's probability scaled to
        0-255 (8-bit), and its mask (0/255). Not inside ``preprocessed_dir``.
    unet_config : UNetConfig
        The network the weights belong to; ``n_classes`` is 1 for a binary model,
        else the number of classes plus background.
    tile_size : int
        Largest tile side in pixels, a multiple of ``2**depth``; tiles shrink where the
        slice allows (:class:`Tiling`, in steps of ``2**depth``).
    overlap : int
        Least number of pixels neighbouring tiles share, blended across.
    batch_size : int, optional
        Tiles per forward pass; None chooses it from the device, the tile size and
        the model (:func:`automatic_batch_size`).
    threshold : float
        Probability above which a pixel is the class (one class only; several take
        the most probable).
    test_time_augmentation : bool
        Average over the 8 flips and rotations of each tile (8 times the work).
    precision : str
        Compute precision (:data:`vem3d.unet.PRECISIONS`).
    cache_dir : path, optional
        A :class:`SliceCache`: slices segmented before with the same weights and
        settings get their earlier files back instead of going through the network.
    """
    n_channels = unet_config.n_classes
    if len(masks_dirs) != max(n_channels - 1, 1) or len(probabilities_dirs) != len(masks_dirs):
        raise ValueError(
            f"{len(masks_dirs)} mask folders and {len(probabilities_dirs)} probability folders for a network "
            f"of {n_channels} output channel(s): one of each per class"
        )
    check_input_side(tile_size, unet_config, "tile_size")
    batch_size = batch_size or automatic_batch_size(unet_config, tile_size)

    def outputs(name: str) -> list[Path]:
        return [Path(folder) / f"{name}.png" for folder in (*probabilities_dirs, *masks_dirs)]

    refuse_to_write_into([preprocessed_dir], *probabilities_dirs, *masks_dirs, cache_dir)
    slices = preprocessed_files(preprocessed_dir)
    for folder in (*probabilities_dirs, *masks_dirs):
        Path(folder).mkdir(parents=True, exist_ok=True)
    keys = {}
    if cache_dir is not None:
        settings = {
            "unet": dataclasses.asdict(unet_config),
            "tile_size": tile_size,
            "overlap": overlap,
            "batch_size": batch_size,
            "threshold": threshold,
            "test_time_augmentation": test_time_augmentation,
            "precision": precision,
        }
        cache = SliceCache(cache_dir, settings, weights_path)
        keys = {name: cache.key(path, shape) for name, path, shape in slices}
        slices = [entry for entry in slices if not cache.restore(entry[0], keys[entry[0]], outputs(entry[0]))]
        log.info("%d of %d slices unchanged since segmented with these weights and settings: results reused",
                 len(keys) - len(slices), len(keys))
    if not slices:
        return
    log.info("segmenting in %s, %d tiles of %d x %d per forward pass", precision, batch_size, tile_size, tile_size)
    model = load_model(weights_path, unet_config, precision)

    def write(result: tuple[str, np.ndarray, np.ndarray]) -> None:
        name, probabilities, mask = result
        for index, (probabilities_dir, masks_dir) in enumerate(zip(probabilities_dirs, masks_dirs), 1):
            channel = probabilities[..., 0 if n_channels == 1 else index]
            write_image(Path(probabilities_dir) / f"{name}.png", np.round(channel * 255).astype(np.uint8))
            write_image(Path(masks_dir) / f"{name}.png", (mask == index).astype(np.uint8) * 255)
        if keys:
            cache.store(name, keys[name], outputs(name))

    segmented = segment_slices(
        model,
        read_preprocessed(preprocessed_dir, names={entry[0] for entry in slices}),
        tile_size,
        overlap,
        batch_size,
        threshold,
        test_time_augmentation,
        multiple=2**unet_config.depth,
    )
    # PNG encoding is most of a slice's work besides the network: on a GPU, one
    # thread writing held the step to a fifth of the network's rate.
    for _ in map_ahead(write, segmented, workers=min(cpu_threads(), MAX_WRITE_THREADS)):
        pass
