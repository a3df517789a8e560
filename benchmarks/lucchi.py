"""Accuracy benchmark on Lucchi++ mitochondria (FIB-SEM, 5 nm isotropic).

Trains the U-Net on the first slices of ../shared/data/lucchi_pp_train, segments the
last slices (which training never sees) with tiled inference, cleans the 3D result up
and prints foreground IoU and Dice, 3D object F1, training time and inference seconds
per slice. Runs on any Keras backend (KERAS_BACKEND=tensorflow|jax|torch).

    python benchmarks/lucchi.py --preset cpu          # documented CPU settings
    KERAS_BACKEND=jax python benchmarks/lucchi.py --preset gpu
    # score weights trained before, in bfloat16 (the preset gives the model's shape):
    python benchmarks/lucchi.py --preset cpu --weights best.weights.h5 --precision mixed_bfloat16

The data's licence forbids redistribution: it is read in place, never copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from vem3d.metrics import object_scores, score_masks
from vem3d.preprocess import normalise_percentile
from vem3d.segment import load_model, predict_tiled, with_test_time_augmentation
from vem3d.slices import list_slices, read_slice
from vem3d.train import TrainingConfig, save_weights, train_unet
from vem3d.unet import PRECISIONS, UNetConfig
from vem3d.volume import fill_holes, remove_small_objects

PRESETS = {
    # About 35 minutes of training on 2 CPU cores.
    "cpu": {
        "unet": UNetConfig(depth=4, base_filters=16),
        "training": TrainingConfig(
            epochs=30, steps_per_epoch=40, batch_size=4, patch_size=256, learning_rate=2e-3, validation_fraction=0.1
        ),
    },
    # A few minutes on one H100.
    "gpu": {
        "unet": UNetConfig(depth=4, base_filters=32),
        "training": TrainingConfig(
            epochs=60, steps_per_epoch=100, batch_size=16, patch_size=256, learning_rate=2e-3, validation_fraction=0.1
        ),
    },
    # Seconds: checks that the benchmark runs.
    "smoke": {
        "unet": UNetConfig(depth=2, base_filters=4),
        "training": TrainingConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64),
    },
}


def load(folder: Path, names: list[str]) -> list[np.ndarray]:
    return [read_slice(folder / f"{name}.png") for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lucchi_pp_train"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--test-slices", type=int, default=30, help="last slices scored, never trained on")
    parser.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="compute precision of inference")
    parser.add_argument("--weights", type=Path, help="score these weights (of the preset's model) instead of training")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (8 orientations)")
    parser.add_argument("--min-object-voxels", type=int, default=500)
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/vem3d-lucchi-checkpoints"))
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    names = [path.stem for path in list_slices(arguments.data / "images")]
    train_names, test_names = names[: -arguments.test_slices], names[-arguments.test_slices :]
    images = [normalise_percentile(image) for image in load(arguments.data / "images", names)]
    labels = [(label > 0).astype(np.uint8) for label in load(arguments.data / "labels", names)]
    preset = PRESETS[arguments.preset]
    training = preset["training"]
    if arguments.epochs:
        training = dataclasses.replace(training, epochs=arguments.epochs)

    weights = arguments.weights
    if not weights:
        started = time.monotonic()
        trained, state = train_unet(
            images[: len(train_names)],
            labels[: len(train_names)],
            preset["unet"],
            training,
            arguments.checkpoints / arguments.preset,
        )
        training_seconds = time.monotonic() - started
        weights = arguments.checkpoints / arguments.preset / "trained.weights.h5"
        save_weights(trained, weights)
    # Segmented as the workflow does: the model for inference, in the chosen precision.
    model = load_model(weights, preset["unet"], arguments.precision)

    predict_batch = model.predict_on_batch
    if arguments.tta:
        predict_batch = with_test_time_augmentation(predict_batch)
    predict_tiled(predict_batch, images[-1][:256, :256], 256, 32)  # warm-up (compilation)
    started = time.monotonic()
    probabilities = np.stack(
        [
            predict_tiled(predict_batch, image, arguments.tile_size, arguments.tile_size // 8, arguments.batch_size)[..., 0]
            for image in images[len(train_names) :]
        ]
    )
    inference_seconds = (time.monotonic() - started) / len(test_names)
    truth = np.stack(labels[len(train_names) :]).astype(bool)
    raw = probabilities > 0.5
    cleaned = fill_holes(remove_small_objects(raw, arguments.min_object_voxels))

    print(f"\nLucchi++ ({len(train_names)} training slices, last {len(test_names)} scored), preset {arguments.preset}")
    if arguments.weights:
        print(f"weights: {arguments.weights}")
    else:
        print(f"training: {training_seconds:.0f} s, {len(state['history'])} epochs, best epoch {state['best_epoch']}")
    print(
        f"inference ({arguments.precision}): {inference_seconds:.3f} s per {images[-1].shape[0]} x {images[-1].shape[1]} slice"
    )
    for label, mask in (("raw masks", raw), ("3D clean-up", cleaned)):
        scores, objects = score_masks(mask, truth), object_scores(mask, truth)
        print(
            f"{label:12s} IoU {scores['iou']:.4f}  Dice {scores['dice']:.4f}  "
            f"precision {scores['precision']:.4f}  recall {scores['recall']:.4f}  object F1 {objects['object_f1']:.4f}"
        )


if __name__ == "__main__":
    main()
