"""Training and fine-tuning the U-Net from sparsely labelled slices.

Only the slices that have a label take part; a share of them is held out for
validation. Patches are sampled at random (with extra weight on foreground, which is
rare in EM), augmented, and fed to Keras. A checkpoint (full model with optimizer
state) is written every N epochs, so an interrupted run resumes where it stopped; the
weights that scored best on validation are the ones kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from vem3d.atomic import link_or_copy, refuse_to_write_into, write_atomically, write_text_atomically
from vem3d.augment import augment_pair
from vem3d.cache import code_version
from vem3d.labels import class_values, label_slices, one_hot, output_channels, read_class_labels, resize_labels
from vem3d.metrics import score_masks
from vem3d.preprocess import read_preprocessed
from vem3d.provenance import file_sha256
from vem3d.segment import tile_starts
from vem3d.threads import cpu_threads, map_ahead
from vem3d.unet import LOSSES, UNetConfig, build_unet, check_input_side, hard_dice, load_weights

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.keras"
BEST_WEIGHTS_NAME = "best.weights.h5"
CHECKPOINT_BEST_NAME = "checkpoint.best.weights.h5"
STATE_NAME = "state.json"


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of a training run.

    Attributes
    ----------
    epochs : int
        Number of epochs; the run's length is ``epochs * steps_per_epoch`` batches.
    steps_per_epoch : int
        Batches per epoch.
    batch_size : int
        Patches per batch.
    patch_size : int
        Side of the square training patches in pixels (a multiple of ``2**depth``).
    learning_rate : float
        Initial Adam learning rate, decayed along a cosine to 5 % of it by the
        last step.
    loss : str
        One of ``bce``, ``dice``, ``bce_dice``.
    validation_fraction : float
        Share of the labelled slices held out for validation (at least one when
        there are two or more labelled slices).
    foreground_fraction : float
        Share of patches centred on a foreground pixel, so rare structures are seen.
    checkpoint_every : int
        Epochs between checkpoints.
    patience : int
        Stop early when validation IoU (training Dice where no slice is held out) has
        not improved for this many epochs (0 never stops early).
    seed : int
        Seed for weights, splits, patch sampling and augmentation.
    """

    epochs: int = 20
    steps_per_epoch: int = 40
    batch_size: int = 8
    patch_size: int = 256
    learning_rate: float = 1e-3
    loss: str = "bce_dice"
    validation_fraction: float = 0.2
    foreground_fraction: float = 0.5
    checkpoint_every: int = 1
    patience: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def split_labelled(n_labelled: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split labelled slice indices into training and validation sets.

    Returns
    -------
    train, validation : list of int
        Disjoint indices into the labelled slices; validation is empty only when
        fewer than two slices are labelled or ``validation_fraction`` is 0.
    """
    if n_labelled == 0:
        raise ValueError("no labelled slices to train on")
    order = np.random.default_rng(seed).permutation(n_labelled)
    n_validation = 0
    if n_labelled >= 2 and validation_fraction > 0:
        n_validation = min(max(1, round(n_labelled * validation_fraction)), n_labelled - 1)
    return sorted(order[n_validation:].tolist()), sorted(order[:n_validation].tolist())


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad the first two axes up to ``size`` where they are smaller."""
    pad_rows, pad_columns = max(size - array.shape[0], 0), max(size - array.shape[1], 0)
    if not (pad_rows or pad_columns):
        return array
    padding = [(0, pad_rows), (0, pad_columns)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, padding, mode="reflect" if min(array.shape[:2]) > 1 else "edge")


class PatchSampler:
    """Random, augmented training patches from labelled slices.

    Each batch is drawn from a generator seeded by (seed, epoch, batch index), so a
    resumed run sees the same patches as an uninterrupted one.
    """

    def __init__(self, images, masks, config: TrainingConfig):
        self.images = [_pad_to(image, config.patch_size) for image in images]
        self.masks = [_pad_to(mask, config.patch_size) for mask in masks]
        self.config = config
        # Any class but background (channel 0 of one-hot masks) counts as foreground.
        self.foreground = [np.argwhere(mask if mask.ndim == 2 else mask[..., 1:].max(-1)) for mask in self.masks]

    def _patch(self, rng: np.random.Generator):
        size = self.config.patch_size
        index = int(rng.integers(len(self.images)))
        image, mask, foreground = self.images[index], self.masks[index], self.foreground[index]
        max_top, max_left = image.shape[0] - size, image.shape[1] - size
        if len(foreground) and rng.random() < self.config.foreground_fraction:
            # Centre near a random foreground pixel, jittered so it is not always central.
            centre_row, centre_column = foreground[int(rng.integers(len(foreground)))]
            jitter_row, jitter_column = rng.integers(-size // 4, size // 4 + 1, size=2)
            top = int(np.clip(centre_row - size // 2 + jitter_row, 0, max_top))
            left = int(np.clip(centre_column - size // 2 + jitter_column, 0, max_left))
        else:
            top, left = int(rng.integers(max_top + 1)), int(rng.integers(max_left + 1))
        window = (slice(top, top + size), slice(left, left + size))
        return augment_pair(image[window], mask[window], rng)

    def epoch_batches(self, epoch: int, workers: int):
        """Yield the batches of an epoch in order, prepared ahead by ``workers`` threads.

        Augmentation is NumPy/SciPy work that would otherwise leave the network (on
        a GPU especially) waiting; each batch has its own seed, so the order of
        preparation does not change the result.
        """
        yield from map_ahead(lambda index: self.batch(epoch, index), range(self.config.steps_per_epoch), workers)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``: images (n, size, size, 1) and masks (n, size, size, channels)."""
        rng = np.random.default_rng([self.config.seed, epoch, index])
        pairs = [self._patch(rng) for _ in range(self.config.batch_size)]
        images = np.stack([image for image, _ in pairs])[..., np.newaxis]
        masks = np.stack([mask for _, mask in pairs]).astype(np.float32)
        return images, masks[..., np.newaxis] if masks.ndim == 3 else masks


def validation_patches(images, masks, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut validation slices into patches covering each slice.

    Patches are side by side, except the last along each side, which ends flush with
    the slice's edge and so overlaps its neighbour where the side is not a multiple of
    ``patch_size``: those pixels count twice in the validation scores.

    Returns
    -------
    images : ndarray of float32, shape (n, patch_size, patch_size, 1)
    masks : ndarray of float32, shape (n, patch_size, patch_size, channels)
    """
    image_patches, mask_patches = [], []
    for image, mask in zip(images, masks):
        image, mask = _pad_to(image, patch_size), _pad_to(mask, patch_size)
        rows, columns = image.shape[:2]
        for top in tile_starts(rows, patch_size, patch_size):
            for left in tile_starts(columns, patch_size, patch_size):
                image_patches.append(image[top : top + patch_size, left : left + patch_size])
                mask_patches.append(mask[top : top + patch_size, left : left + patch_size])
    x = np.stack(image_patches)[..., np.newaxis].astype(np.float32)
    y = np.stack(mask_patches).astype(np.float32)
    return x, y[..., np.newaxis] if y.ndim == 3 else y


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Save a model's weights to a ``.weights.h5`` file, atomically."""
    write_atomically(path, model.save_weights)


def validate(model: keras.Model, images: np.ndarray, masks: np.ndarray, config: TrainingConfig) -> dict:
    """Loss, foreground Dice and IoU pooled over all validation patches.

    Binary: threshold 0.5. Several classes: the most probable class per pixel, Dice
    and IoU averaged over the classes (background excluded), so a rare class counts
    as much as a common one.

    Parameters
    ----------
    model : keras.Model
    images : ndarray of float32, shape (n, patch_size, patch_size, 1)
    masks : ndarray of float32, shape (n, patch_size, patch_size, channels)
        Targets, as :func:`validation_patches` makes them.
    config : TrainingConfig
        Its ``batch_size`` sets the patches per forward pass.

    Returns
    -------
    dict
        ``val_loss``, ``val_dice``, ``val_iou``.
    """
    predictions = np.concatenate(
        [model.predict_on_batch(images[first : first + config.batch_size]) for first in range(0, len(images), config.batch_size)]
    )
    # Both as backend tensors: mixing NumPy and device tensors fails on GPU backends.
    loss_value = LOSSES[config.loss](keras.ops.convert_to_tensor(masks), keras.ops.convert_to_tensor(predictions))
    loss = float(keras.ops.convert_to_numpy(loss_value))
    if predictions.shape[-1] == 1:
        scores = [score_masks(predictions[..., 0] > 0.5, masks[..., 0] > 0.5)]
    else:
        predicted, truth = predictions.argmax(-1), masks.argmax(-1)
        scores = [score_masks(predicted == index, truth == index) for index in range(1, predictions.shape[-1])]
    return {
        "val_loss": loss,
        "val_dice": float(np.mean([score["dice"] for score in scores])),
        "val_iou": float(np.mean([score["iou"] for score in scores])),
    }


def _finish_epoch(model: keras.Model, state: dict, row: dict, directory: Path, config: TrainingConfig) -> None:
    """Record an epoch: history, log line, best weights, early stop, and a checkpoint when due."""
    state["history"].append(row)
    score = row.get("val_iou", row["dice"])
    if score > state["best_score"]:
        state["best_score"], state["best_epoch"] = score, row["epoch"]
        save_weights(model, directory / BEST_WEIGHTS_NAME)
    log.info(
        "epoch %d/%d  %s  (%.1f s)",
        row["epoch"],
        config.epochs,
        "  ".join(f"{key} {value:.4f}" for key, value in row.items() if key not in ("epoch", "seconds")),
        row["seconds"],
    )
    if config.patience and row["epoch"] - state["best_epoch"] >= config.patience:
        state["stopped_early"] = True
        measure = "validation IoU" if "val_iou" in row else "training Dice"
        log.info("stopping early: %s has not improved for %d epochs", measure, config.patience)
    if row["epoch"] % config.checkpoint_every == 0 or row["epoch"] == config.epochs or state["stopped_early"]:
        write_atomically(directory / CHECKPOINT_NAME, model.save)
        if (directory / BEST_WEIGHTS_NAME).is_file():  # kept apart from later improvements, as the state names them
            link_or_copy(directory / BEST_WEIGHTS_NAME, directory / CHECKPOINT_BEST_NAME)
        state["epoch"] = row["epoch"]
        write_text_atomically(directory / STATE_NAME, json.dumps(state, indent=1))


def _compile(model: keras.Model, config: TrainingConfig) -> None:
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {sorted(LOSSES)}")
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(
                config.learning_rate, decay_steps=config.epochs * config.steps_per_epoch, alpha=0.05
            )
        ),
        loss=LOSSES[config.loss],
        metrics=[keras.metrics.MeanMetricWrapper(hard_dice, name="dice")],
    )


def train_unet(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    unet_config: UNetConfig,
    config: TrainingConfig,
    checkpoint_dir: str | os.PathLike,
    initial_weights: str | os.PathLike | None = None,
) -> tuple[keras.Model, dict]:
    """Train a U-Net on labelled slices, resuming from a checkpoint if one is there.

    Parameters
    ----------
    images : list of ndarray of float32, shape (rows, columns)
        Preprocessed labelled slices, intensities in [0, 1]; sizes may differ.
    masks : list of ndarray
        Matching labels: (rows, columns) with 0/1 for one class, or
        (rows, columns, n_classes) one-hot for several.
    unet_config : UNetConfig
        Architecture of the network.
    config : TrainingConfig
        Training settings.
    checkpoint_dir : path
        Folder for resumable checkpoints: each run keeps its checkpoint, best
        weights and state in a subfolder named by a hash of its settings (the
        starting weights' SHA-256 among them), data and vem3d's source, and a run
        finding its subfolder there continues from it.
    initial_weights : path, optional
        Weights to start from (fine-tuning); ignored when resuming.

    Returns
    -------
    model : keras.Model
        The network holding the weights that scored best on validation IoU (or,
        with no validation slices, training Dice).
    state : dict
        ``history`` (one dict per epoch: epoch, loss, dice, and with validation slices
        val_loss, val_dice, val_iou; seconds),
        ``best_epoch``, ``best_score``, ``n_train``, ``n_validation`` and the settings.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    check_input_side(config.patch_size, unet_config, "patch_size")
    keras.utils.set_random_seed(config.seed)
    train_index, validation_index = split_labelled(len(images), config.validation_fraction, config.seed)
    checkpoint_dir = Path(checkpoint_dir)
    settings = {
        "unet": unet_config.to_dict(),
        "training": config.to_dict(),
        "n_labelled": len(images),
        "initial_weights_sha256": file_sha256(initial_weights) if initial_weights is not None else None,
    }
    state = {
        "settings": settings,
        "epoch": 0,
        "history": [],
        "best_score": -1.0,
        "best_epoch": 0,
        "stopped_early": False,
        "n_train": len(train_index),
        "n_validation": len(validation_index),
    }
    # One checkpoint folder per (settings, starting weights, data, code): a run resumes
    # only what the same settings on the same labelled data started from the same
    # weights; anything else starts afresh.
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(code_version().encode())
    for array in (*images, *masks):
        digest.update(np.ascontiguousarray(array).tobytes())
    checkpoint_dir = checkpoint_dir / digest.hexdigest()[:16]
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_path, checkpoint_path = checkpoint_dir / STATE_NAME, checkpoint_dir / CHECKPOINT_NAME
    if state_path.is_file() and checkpoint_path.is_file():
        state = json.loads(state_path.read_text())
        model = keras.saving.load_model(checkpoint_path, safe_mode=True)
        if (checkpoint_dir / CHECKPOINT_BEST_NAME).is_file():
            # The best weights as of the checkpoint: a later improvement is lost with its epoch.
            link_or_copy(checkpoint_dir / CHECKPOINT_BEST_NAME, checkpoint_dir / BEST_WEIGHTS_NAME)
        log.info("resuming from %s after epoch %d", checkpoint_path, state["epoch"])
    else:
        model = build_unet(unet_config)
        if initial_weights is not None:
            load_weights(model, initial_weights)
            log.info("fine-tuning from %s", initial_weights)
        _compile(model, config)

    sampler = PatchSampler([images[i] for i in train_index], [masks[i] for i in train_index], config)
    validation_data = None
    if validation_index:
        validation_data = validation_patches(
            [images[i] for i in validation_index], [masks[i] for i in validation_index], config.patch_size
        )
    log.info(
        "training on %d labelled slices, validating on %d; %d epochs x %d batches of %d patches (%d px)",
        len(train_index),
        len(validation_index),
        config.epochs,
        config.steps_per_epoch,
        config.batch_size,
        config.patch_size,
    )
    # A plain loop over train_on_batch rather than fit(): it runs the same on every
    # backend and avoids the tf.data generator wrapper, which doubled step times on CPU.
    for epoch in range(state["epoch"], config.epochs):
        if state["stopped_early"]:
            break
        started = time.monotonic()
        step_logs = []
        for images_batch, masks_batch in sampler.epoch_batches(epoch, workers=max(1, min(8, cpu_threads() - 1))):
            model.reset_metrics()
            step_logs.append(model.train_on_batch(images_batch, masks_batch, return_dict=True))
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean([logs["loss"] for logs in step_logs])),
            "dice": float(np.mean([logs["dice"] for logs in step_logs])),
        }
        if validation_data is not None:
            row.update(validate(model, *validation_data, config))
        row["seconds"] = round(time.monotonic() - started, 2)
        _finish_epoch(model, state, row, checkpoint_dir, config)
    best_weights = checkpoint_dir / BEST_WEIGHTS_NAME
    if best_weights.is_file():
        model.load_weights(best_weights)
    return model, state


def labelled_pairs(
    preprocessed_dirs, label_dirs, classes=("foreground",), label_values=None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Collect preprocessed slices that have a label, with their labels.

    Parameters
    ----------
    preprocessed_dirs : list of path
        Preprocessed chunk folders (each with ``shapes.tsv``).
    label_dirs : list of path
        Label folders (label maps, or one mask folder per class: see
        :mod:`vem3d.labels`); a label is matched to a slice by name (stem). Parallel
        to ``preprocessed_dirs`` (one sample's label folder repeated per chunk).
    classes : sequence of str
        Class names, background excluded.
    label_values : mapping, optional
        Label-map pixel values per class (:func:`vem3d.labels.class_values`).

    Returns
    -------
    names, images, masks : lists
        ``{label folder}/{slice}`` names, float32 images in [0, 1] and training targets at
        the preprocessed size (:func:`vem3d.labels.one_hot`).
    """
    values = class_values(classes, label_values)
    names, images, masks = [], [], []
    for preprocessed_dir, label_dir in zip(preprocessed_dirs, label_dirs, strict=True):
        labels = label_slices(label_dir, classes)
        for name, image, raw_shape in read_preprocessed(preprocessed_dir):
            if name in labels:
                names.append(f"{label_dir}/{name}")  # the folder in full: samples' label folders may share a name
                images.append(image)
                slice_labels = read_class_labels(labels[name], values, raw_shape)
                if slice_labels.shape != image.shape:  # the slice was resampled: so are its labels
                    slice_labels = resize_labels(slice_labels, image.shape)
                masks.append(one_hot(slice_labels, len(classes)))
    return names, images, masks


def plot_history(history: list[dict], path: str | os.PathLike) -> None:
    """Plot loss and Dice per epoch (training and validation) to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    for key, axis in (("loss", loss_axis), ("dice", dice_axis)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + key) for row in history]
            if all(value is not None for value in values):
                axis.plot(epochs, values, style, marker="o", markersize=3, label=f"{'validation' if prefix else 'training'}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    dice_axis.set_ylim(0, 1)
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    plt.close(figure)


def train_from_folders(
    preprocessed_dirs,
    label_dirs,
    weights_path: str | os.PathLike,
    history_path: str | os.PathLike,
    curves_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    unet_config: UNetConfig,
    config: TrainingConfig,
    initial_weights: str | os.PathLike | None = None,
    classes=("foreground",),
    label_values=None,
) -> dict:
    """Train on the labelled slices among preprocessed folders; save weights, history and curves.

    See :func:`labelled_pairs` for how slices and labels are matched and
    :func:`train_unet` for the training itself.

    Parameters
    ----------
    preprocessed_dirs, label_dirs : sequence of path
        Parallel: the preprocessed folders and the label folder of each (as for
        :func:`labelled_pairs`). Outputs may not lie inside any of them.
    weights_path : path
        The best epoch's weights (``.weights.h5``), with ``{weights_path}.json`` beside
        them: classes, labelled slices, settings, best epoch and its score.
    history_path : path
        One row per epoch (TSV).
    curves_path : path
        Loss and Dice per epoch (PNG).
    checkpoint_dir : path
        Checkpoints; a run that finds one there resumes from it.
    unet_config : UNetConfig
        The network; ``n_classes`` must fit ``classes`` (:func:`vem3d.labels.output_channels`).
    config : TrainingConfig
    initial_weights : path, optional
        Weights to start from (fine-tuning) instead of random ones.
    classes, label_values
        As for :func:`labelled_pairs`.

    Returns
    -------
    dict
        What ``{weights_path}.json`` records.
    """
    refuse_to_write_into([*preprocessed_dirs, *label_dirs], weights_path, history_path, curves_path, checkpoint_dir)
    if unet_config.n_classes != output_channels(classes):
        raise ValueError(
            f"{len(classes)} class(es) {list(classes)} need a network of {output_channels(classes)} output "
            f"channel(s) (UNetConfig.n_classes), not {unet_config.n_classes}"
        )
    names, images, masks = labelled_pairs(preprocessed_dirs, label_dirs, classes, label_values)
    if not names:
        raise ValueError(
            f"no preprocessed slice has a label in {sorted(set(map(str, label_dirs)))}: "
            "label files must have the same name (stem) as the slices they label"
        )
    model, state = train_unet(images, masks, unet_config, config, checkpoint_dir, initial_weights)
    save_weights(model, weights_path)
    write_text_atomically(history_path, pd.DataFrame(state["history"]).to_csv(sep="\t", index=False))
    plot_history(state["history"], curves_path)
    provenance = {
        "classes": list(classes),
        "labelled_slices": names,
        "initial_weights": str(initial_weights) if initial_weights else None,
        "initial_weights_sha256": state["settings"]["initial_weights_sha256"],
        **{key: state[key] for key in ("settings", "best_epoch", "best_score", "n_train", "n_validation")},
    }
    write_text_atomically(f"{weights_path}.json", json.dumps(provenance, indent=1))
    metric = "validation IoU" if state["n_validation"] else "training Dice"
    log.info("saved weights of epoch %d (%s %.4f) to %s", state["best_epoch"], metric, state["best_score"], weights_path)
    return provenance
