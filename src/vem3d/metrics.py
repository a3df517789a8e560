"""Segmentation scores against ground truth: Dice, IoU, precision, recall."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from vem3d.atomic import write_text_atomically
from vem3d.labels import class_values, label_slices, read_class_labels
from vem3d.volume import label_objects, open_volumes

log = logging.getLogger(__name__)


def confusion_counts(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of two same-shaped boolean masks."""
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction shape {predicted.shape} differs from truth shape {truth.shape}")
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    true_positive = int(np.count_nonzero(predicted & truth))
    return (
        true_positive,
        int(np.count_nonzero(predicted)) - true_positive,
        int(np.count_nonzero(truth)) - true_positive,
    )


def scores_from_counts(true_positive: int, false_positive: int, false_negative: int) -> dict[str, float]:
    """Dice, IoU, precision and recall; each is 1 when both masks are empty."""

    def ratio(numerator, denominator):
        return numerator / denominator if denominator else 1.0

    return {
        "dice": ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "iou": ratio(true_positive, true_positive + false_positive + false_negative),
        "precision": ratio(true_positive, true_positive + false_positive),
        "recall": ratio(true_positive, true_positive + false_negative),
    }


def score_masks(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision and recall of a predicted mask against the truth (any shape)."""
    return scores_from_counts(*confusion_counts(predicted, truth))


def score_slices(pairs) -> pd.DataFrame:
    """Score each slice and the whole volume.

    Parameters
    ----------
    pairs : iterable of (name, predicted, truth)
        Per-slice boolean masks of equal shape.

    Returns
    -------
    pandas.DataFrame
        One row per slice (``slice``, ``dice``, ``iou``, ``precision``, ``recall``)
        and a last row ``slice == "volume"`` scored over all slices pooled.
    """
    rows, totals = [], np.zeros(3, dtype=np.int64)
    for name, predicted, truth in pairs:
        counts = confusion_counts(predicted, truth)
        totals += counts
        rows.append({"slice": name, **scores_from_counts(*counts)})
    if not rows:
        raise ValueError("no slices to score")
    rows.append({"slice": "volume", **scores_from_counts(*totals.tolist())})
    return pd.DataFrame(rows)


def evaluate_volumes(
    volume_path: str | os.PathLike,
    truth_dir: str | os.PathLike,
    scores_path: str | os.PathLike,
    objects_path: str | os.PathLike,
    label_values=None,
) -> pd.DataFrame:
    """Score each class's cleaned volume against ground truth, on the slices that have it.

    The volumes scored are the ones the meshes are made from
    (:func:`vem3d.volume.write_volumes`); only the scored slices are read.

    Parameters
    ----------
    volume_path : path
        The cleaned volumes of :func:`vem3d.volume.write_volumes`.
    truth_dir : path
        Ground truth: label maps or one mask folder per class (:mod:`vem3d.labels`),
        matched to the volume's slices by name; only slices present there are scored.
    scores_path : path
        TSV with, per class, the rows of :func:`score_slices` (a ``class`` column first).
    objects_path : path
        TSV with one row per class: the 3D object scores of :func:`object_scores`,
        objects counted within each run of consecutive scored slices (ground truth
        on slices 0-9 and 20-29: two runs, whose objects are not joined).
    label_values : mapping, optional
        Label-map pixel values per class (:func:`vem3d.labels.class_values`).

    Returns
    -------
    pandas.DataFrame
        The scores written to ``scores_path``.
    """
    volumes = open_volumes(volume_path)
    classes = list(volumes.classes)
    truth_files = label_slices(truth_dir, classes)
    names = volumes.slice_names
    scored = [index for index, name in enumerate(names) if name in truth_files]
    if not scored:
        raise ValueError(f"{truth_dir}: no ground-truth slice matches a segmented slice by name")
    values = class_values(classes, label_values)
    truth = np.stack([read_class_labels(truth_files[names[index]], values, volumes.shape[1:]) for index in scored])
    runs = [slice(run[0], run[-1] + 1) for run in np.split(np.arange(len(scored)), np.flatnonzero(np.diff(scored) != 1) + 1)]
    score_tables, object_rows = [], []
    for class_index, (class_name, cleaned) in enumerate(volumes.classes.items(), 1):
        # One read of the chunks the scored slices lie in, not one per slice.
        predicted = cleaned.volume.oindex[scored]
        true = truth == class_index
        scores = score_slices(zip((names[index] for index in scored), predicted, true))
        score_tables.append(scores.assign(**{"class": class_name})[["class", *scores.columns]])
        # Objects within each run of consecutive scored slices: slices between runs,
        # without ground truth, would otherwise be skipped over and join objects apart.
        objects = object_scores_from_counts(
            *np.sum([object_matches(predicted[run], true[run]) for run in runs], axis=0).tolist()
        )
        object_rows.append({"class": class_name, **objects})
        overall = scores.iloc[-1]
        log.info(
            "%s: %d slices scored: Dice %.4f, IoU %.4f, precision %.4f, recall %.4f, object F1 %.4f (%d of %d objects matched)",
            class_name,
            len(scored),
            overall["dice"],
            overall["iou"],
            overall["precision"],
            overall["recall"],
            objects["object_f1"],
            objects["matched"],
            objects["true_objects"],
        )
    scores = pd.concat(score_tables, ignore_index=True)
    write_text_atomically(scores_path, scores.to_csv(sep="\t", index=False, float_format="%.4f"))
    write_text_atomically(objects_path, pd.DataFrame(object_rows).to_csv(sep="\t", index=False, float_format="%.4f"))
    return scores


def object_matches(predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """Objects of two masks of 3D objects, and those matched.

    Objects are 26-connected components. A predicted object matches a true one when
    their IoU is at least ``iou_threshold``; with a threshold >= 0.5 a match is
    necessarily one-to-one. Only overlapping pairs are counted (memory for the
    voxels in both, not for every pair of objects).

    Parameters
    ----------
    predicted, truth : ndarray of bool, shape (slices, rows, columns)
    iou_threshold : float

    Returns
    -------
    true_objects, predicted_objects, matched : int
    """
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction shape {predicted.shape} differs from truth shape {truth.shape}")
    predicted_labels, n_predicted = label_objects(predicted)
    true_labels, n_true = label_objects(truth)
    predicted_sizes = np.bincount(predicted_labels.ravel(), minlength=n_predicted + 1)
    true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    both = (predicted_labels != 0) & (true_labels != 0)
    pairs, intersection = np.unique(
        predicted_labels[both].astype(np.int64) * (n_true + 1) + true_labels[both], return_counts=True
    )
    predicted_of, true_of = np.divmod(pairs, n_true + 1)
    union = predicted_sizes[predicted_of] + true_sizes[true_of] - intersection
    return n_true, n_predicted, int(np.count_nonzero(intersection / union >= iou_threshold))


def object_scores(predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object-level detection scores of two masks of 3D objects.

    Objects and matches as :func:`object_matches` counts them, from the same parameters.

    Returns
    -------
    dict
        ``true_objects``, ``predicted_objects``, ``matched``, ``object_precision``,
        ``object_recall``, ``object_f1``.
    """
    return object_scores_from_counts(*object_matches(predicted, truth, iou_threshold))


def object_scores_from_counts(n_true: int, n_predicted: int, matched: int) -> dict[str, float]:
    """Object precision, recall and F1 from counts of objects (each 1 when there are none)."""
    precision = matched / n_predicted if n_predicted else 1.0
    recall = matched / n_true if n_true else 1.0
    return {
        "true_objects": n_true,
        "predicted_objects": n_predicted,
        "matched": matched,
        "object_precision": precision,
        "object_recall": recall,
        "object_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
