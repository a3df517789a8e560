"""Accuracy on real expert-labelled EM, through the whole workflow.

For each dataset in ../shared/data, a throw-away project is made whose sample sheet
points at the data in place: the first slices' labels (linked into a labels folder)
train the network, the last slices' labels (linked into a ground-truth folder) score
it, and training never sees them. Snakemake then runs the workflow as a user would
(preprocess, train, segment every slice, 3D clean-up, mesh, statistics, evaluation);
the script prints, per class, IoU, Dice, precision, recall and 3D object F1 on the
held-out slices, training time, inference seconds per slice, and optionally how far
tiled inference is from whole-slice inference on one held-out slice.

    python benchmarks/accuracy.py lucchi --preset cpu     # Lucchi++ mitochondria, 2 CPU cores
    python benchmarks/accuracy.py vnc --preset cpu        # VNC membranes + mitochondria (anisotropic)
    python benchmarks/accuracy.py isbi --preset cpu       # ISBI 2012 membranes
    KERAS_BACKEND=jax python benchmarks/accuracy.py lucchi --preset gpu

``--precisions mixed_bfloat16 ...`` then segments the same stack again with the same
weights in each of those compute precisions (``segment.precision``) and prints how far
each one's scores are from the first run's (the check: at most 0.005 IoU);
``--epochs N`` shortens the preset's training for such checks.

The data's licences forbid redistribution: it is read in place (the project only
links to it) and the project lives outside the repository.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    folder: str
    test_slices: int  # the last slices: scored, never trained on
    voxel_size_nm: tuple[float, float, float]  # z, y, x
    classes: list[str]
    label_values: dict = field(default_factory=dict)
    description: str = ""


DATASETS = {
    "lucchi": Dataset(
        "lucchi_pp_train", 30, (5, 5, 5), ["mitochondrion"], {}, "Lucchi++ FIB-SEM mitochondria, 165 x 768 x 1024"
    ),
    "vnc": Dataset(
        "vnc_drosophila",
        6,
        (50, 4.6, 4.6),
        ["membrane", "mitochondrion"],
        # Membranes by orientation (0-96) and junctions (128); glia, synapses and cell interior are background.
        {"membrane": [0, 32, 64, 96, 128], "mitochondrion": [191]},
        "Drosophila VNC ssTEM, 20 x 1024 x 1024, anisotropic ~11:1",
    ),
    "isbi": Dataset(
        "isbi2012", 10, (50, 4, 4), ["membrane"], {"membrane": [0]}, "ISBI 2012 ssTEM membranes, 30 x 512 x 512"
    ),
}

# Settings per dataset and machine: overrides of config/config.yaml. The "cpu" ones are
# the documented settings for a 2-core laptop, "gpu" for one GPU, "smoke" checks the
# benchmark runs in a minute or two.
PRESETS = {
    "lucchi": {
        "cpu": {
            # Half resolution (10 nm pixels): mitochondria stay 20-100 px wide (resampling
            # alone costs 0.4 % IoU), and each patch holds 4 times the area for the same work.
            "chunk_size": 33,
            "preprocess": {"scale": 0.5},
            "model": {"depth": 4, "base_filters": 16},
            "train": {"epochs": 72, "steps_per_epoch": 40, "batch_size": 4, "patch_size": 256,
                      "learning_rate": 0.002, "validation_fraction": 0.1},
            "segment": {"tile_size": 512, "overlap": 64, "batch_size": 2},
            "mesh": {"min_object_voxels": 500, "z_smoothing_sigma": 1.0},
        },
        "gpu": {
            "chunk_size": 55,
            "model": {"depth": 4, "base_filters": 32},
            "train": {"epochs": 60, "steps_per_epoch": 100, "batch_size": 16, "patch_size": 256,
                      "learning_rate": 0.002, "validation_fraction": 0.1, "patience": 15},
            "segment": {"tile_size": 512, "overlap": 64, "batch_size": 8, "test_time_augmentation": True},
            "mesh": {"min_object_voxels": 500, "z_smoothing_sigma": 1.0},
        },
    },
    "vnc": {
        "cpu": {
            # Half resolution (9.2 nm pixels) keeps mitochondria tens of pixels wide and quarters the work.
            "preprocess": {"scale": 0.5},
            "model": {"depth": 4, "base_filters": 16},
            "train": {"epochs": 20, "steps_per_epoch": 40, "batch_size": 4, "patch_size": 256,
                      "learning_rate": 0.002, "validation_fraction": 0.15},
            "segment": {"tile_size": 512, "overlap": 64, "batch_size": 2},
            "mesh": {"min_object_voxels": 200},
        },
        "gpu": {
            "model": {"depth": 4, "base_filters": 32},
            "train": {"epochs": 60, "steps_per_epoch": 100, "batch_size": 16, "patch_size": 256,
                      "learning_rate": 0.002, "validation_fraction": 0.15, "patience": 15},
            "segment": {"tile_size": 512, "overlap": 64, "batch_size": 8, "test_time_augmentation": True},
            "mesh": {"min_object_voxels": 200},
        },
    },
    "isbi": {
        "cpu": {
            # Membranes are a few pixels thin: native resolution.
            "model": {"depth": 4, "base_filters": 16},
            "train": {"epochs": 20, "steps_per_epoch": 40, "batch_size": 4, "patch_size": 256,
                      "learning_rate": 0.002, "validation_fraction": 0.15, "foreground_fraction": 0.2},
            "segment": {"tile_size": 512, "overlap": 64, "batch_size": 2},
            "mesh": {"min_object_voxels": 0, "fill_cavities": False},
        },
        "gpu": {
            "model": {"depth": 4, "base_filters": 32},
            "train": {"epochs": 60, "steps_per_epoch": 100, "batch_size": 16, "patch_size": 256,
                      "learning_rate": 0.002, "validation_fraction": 0.15, "foreground_fraction": 0.2,
                      "patience": 15},
            "segment": {"tile_size": 512, "overlap": 64, "batch_size": 8, "test_time_augmentation": True},
            "mesh": {"min_object_voxels": 0, "fill_cavities": False},
        },
    },
}
SMOKE = {
    "model": {"depth": 2, "base_filters": 4},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch_size": 64},
    "segment": {"tile_size": 256, "overlap": 32},
}


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied, nested sections merged key by key."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        result[key] = merged(result.get(key, {}), value) if isinstance(value, dict) and value else value
    return result


def link_slices(paths: list[Path], folder: Path) -> None:
    """Symbolic links to ``paths`` in a new ``folder`` (the data is never copied)."""
    folder.mkdir(parents=True)
    for path in paths:
        (folder / path.name).symlink_to(path.resolve())


def make_project(dataset: Dataset, settings: dict, project: Path) -> list[str]:
    """Config, sample sheet and label/ground-truth links of a benchmark project; returns the test slice names."""
    from vem3d.slices import list_slices

    source = DATA / dataset.folder
    labels = list_slices(source / "labels")
    train, test = labels[: -dataset.test_slices], labels[-dataset.test_slices :]
    link_slices(train, project / "labels")
    link_slices(test, project / "ground_truth")
    config = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), settings)
    config["samples"] = "config/samples.tsv"
    config["model"] = {**config["model"], "classes": dataset.classes, "label_values": dataset.label_values}
    (project / "config").mkdir()
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    z, y, x = dataset.voxel_size_nm
    (project / "config" / "samples.tsv").write_text(
        "sample\tslices\tlabels\tground_truth\tvoxel_size_z_nm\tvoxel_size_y_nm\tvoxel_size_x_nm\n"
        f"{dataset.folder}\t{(source / 'images').resolve()}\t{project / 'labels'}\t{project / 'ground_truth'}"
        f"\t{z}\t{y}\t{x}\n"
    )
    return [path.stem for path in test]


def compare_tiling(project: Path, sample: str, slice_name: str, config: dict) -> dict:
    """Tiled against whole-slice inference of one preprocessed slice: mask IoU and probability differences."""
    from vem3d.labels import output_channels
    from vem3d.metrics import score_masks
    from vem3d.preprocess import read_preprocessed
    from vem3d.segment import load_model, predict_tiled, probabilities_to_mask
    from vem3d.unet import UNetConfig

    model_settings = {key: config["model"][key] for key in ("depth", "base_filters", "batch_norm", "dropout")}
    unet = UNetConfig(**model_settings, n_classes=output_channels(config["model"]["classes"]))
    model = load_model(project / "results/model/unet.weights.h5", unet)
    image = next(
        image
        for folder in sorted((project / "results" / sample / "preprocessed").iterdir())
        for name, image, _ in read_preprocessed(folder)
        if name == slice_name
    )
    segment = config["segment"]
    tiled = predict_tiled(
        model.predict_on_batch, image, segment["tile_size"], segment["overlap"], segment["batch_size"], 2**unet.depth
    )
    # The whole slice gets the same reflected border as the tiles, so that only the tiling differs.
    margin, multiple = segment["overlap"] // 2, 2**unet.depth
    padded = np.pad(image, margin, mode="reflect")
    padded = np.pad(padded, [(0, -size % multiple) for size in padded.shape], mode="reflect")
    whole = np.asarray(model.predict_on_batch(padded[np.newaxis, ..., np.newaxis]))[0]
    whole = whole[margin : margin + image.shape[0], margin : margin + image.shape[1]]
    tiled_mask, whole_mask = probabilities_to_mask(tiled), probabilities_to_mask(whole)
    difference = np.abs(tiled - whole).max(-1)
    return {
        "shape": image.shape,
        "iou": score_masks(tiled_mask > 0, whole_mask > 0)["iou"],
        "pixels_differing": float(np.mean(tiled_mask != whole_mask)),
        "max_probability_difference": float(difference.max()),
        "mean_probability_difference": float(difference.mean()),
    }


def volume_scores(project: Path, dataset: Dataset) -> pd.DataFrame:
    """The held-out slices' scores over the whole volume, one row per class."""
    scores = pd.read_csv(project / "results" / dataset.folder / "evaluation/scores.tsv", sep="\t")
    return scores[scores["slice"] == "volume"].set_index("class")


def summarise(project: Path, dataset: Dataset, preset: str, wall_seconds: float) -> None:
    """Print the scores on the held-out slices and the times of a finished benchmark project."""
    sample = dataset.folder
    results = project / "results"
    scores = volume_scores(project, dataset)
    objects = pd.read_csv(results / sample / "evaluation/object_scores.tsv", sep="\t").set_index("class")
    training = pd.read_csv(results / "benchmarks/train.tsv", sep="\t")["s"].sum()
    segment_seconds = sum(
        pd.read_csv(path, sep="\t")["s"].sum() for path in (results / "benchmarks" / sample / "segment").glob("*.tsv")
    )
    history = pd.read_csv(results / "model/training_history.tsv", sep="\t")
    n_slices = len(list((DATA / dataset.folder / "images").iterdir()))

    print(f"\n{dataset.description}: trained on the first {n_slices - dataset.test_slices} slices' labels, "
          f"scored on the last {dataset.test_slices}; preset {preset}")
    print(f"workflow: {wall_seconds / 60:.1f} min wall; training {training / 60:.1f} min ({len(history)} epochs, "
          f"best validation IoU {history['val_iou'].max():.4f} at epoch {int(history.loc[history['val_iou'].idxmax(), 'epoch'])})")
    print(f"segmentation: {segment_seconds / n_slices:.2f} s per slice (job time, network loading included)")
    for class_name, row in scores.iterrows():
        print(f"{class_name:14s} IoU {row['iou']:.4f}  Dice {row['dice']:.4f}  precision {row['precision']:.4f}  "
              f"recall {row['recall']:.4f}  object F1 {objects.loc[class_name, 'object_f1']:.4f}")


def compare_precisions(project: Path, dataset: Dataset, precisions: list[str], command: list[str]) -> None:
    """Segment the stack again in each precision (same weights; the workflow redoes segmentation
    and what follows, not training) and print each one's IoU beside the first run's."""
    config_path = project / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    reference_precision = config["segment"]["precision"]
    reference = volume_scores(project, dataset)
    for precision in precisions:
        config["segment"]["precision"] = precision
        config_path.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        if subprocess.run(command).returncode:
            sys.exit(f"the workflow failed in {precision}: see {project}/logs")
        scores = volume_scores(project, dataset)
        for class_name, row in scores.iterrows():
            change = row["iou"] - reference.loc[class_name, "iou"]
            print(f"{class_name:14s} IoU {row['iou']:.4f} in {precision} against {reference.loc[class_name, 'iou']:.4f} "
                  f"in {reference_precision}: {change:+.4f} (check: at most 0.005 either way: "
                  f"{'passed' if abs(change) <= 0.005 else 'FAILED'}); re-run {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--preset", choices=["cpu", "gpu", "smoke"], default="cpu")
    parser.add_argument("--project", type=Path, help="project folder to create (default: /tmp/vem3d-accuracy/DATASET-PRESET)")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--compare-tiling", action="store_true", help="also compare tiled with whole-slice inference")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the preset's")
    parser.add_argument(
        "--precisions", nargs="+", default=[], choices=["float32", "mixed_float16", "mixed_bfloat16"],
        help="then segment again in each of these precisions and compare the scores",
    )
    arguments = parser.parse_args()
    dataset = DATASETS[arguments.dataset]
    settings = SMOKE if arguments.preset == "smoke" else PRESETS[arguments.dataset][arguments.preset]
    if arguments.epochs:
        settings = merged(settings, {"train": {"epochs": arguments.epochs}})
    project = arguments.project or Path("/tmp/vem3d-accuracy") / f"{arguments.dataset}-{arguments.preset}"
    if project.exists():
        sys.exit(f"{project} exists: remove it or give --project (a rerun in it only redoes what changed)")
    test_names = make_project(dataset, settings, project)
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())

    started = time.monotonic()
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(project), "--cores", arguments.cores]
    if subprocess.run(command).returncode:
        sys.exit(f"the workflow failed: see {project}/logs")
    wall_seconds = time.monotonic() - started

    summarise(project, dataset, arguments.preset, wall_seconds)
    if arguments.compare_tiling:
        comparison = compare_tiling(project, dataset.folder, test_names[len(test_names) // 2], config)
        print(f"tiled vs whole-slice inference on {test_names[len(test_names) // 2]} ({comparison['shape']}): "
              f"mask IoU {comparison['iou']:.5f}, {100 * comparison['pixels_differing']:.4f} % of pixels differ, "
              f"probability difference max {comparison['max_probability_difference']:.4f}, "
              f"mean {comparison['mean_probability_difference']:.6f}")
    if arguments.precisions:
        compare_precisions(project, dataset, arguments.precisions, command)


if __name__ == "__main__":
    main()
