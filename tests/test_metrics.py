import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

from vem3d.metrics import evaluate_volumes, object_scores, score_masks, score_slices


def test_scores_match_hand_computed_values():
    predicted = np.array([1, 1, 1, 0, 0, 0], bool)
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    # TP 2, FP 1, FN 1
    scores = score_masks(predicted, truth)
    assert scores["dice"] == pytest.approx(4 / 6)
    assert scores["iou"] == pytest.approx(2 / 4)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)


def test_empty_prediction_of_empty_truth_is_perfect_and_of_full_truth_is_zero():
    empty = np.zeros((3, 3), bool)
    assert score_masks(empty, empty)["dice"] == 1
    assert score_masks(empty, ~empty)["dice"] == 0


def test_volume_row_pools_all_slices():
    table = score_slices(
        [("a", np.array([1, 0], bool), np.array([1, 0], bool)), ("b", np.array([0, 0], bool), np.array([1, 1], bool))]
    )
    assert list(table["slice"]) == ["a", "b", "volume"]
    assert table.iloc[-1]["dice"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))


def test_object_f1_counts_objects_matched_at_iou_one_half():
    truth = np.zeros((4, 20, 20), bool)
    truth[:, 1:5, 1:5] = True  # found exactly
    truth[:, 10:14, 10:14] = True  # found as a third of its size: IoU < 0.5
    truth[:, 16:19, 1:4] = True  # missed
    predicted = np.zeros_like(truth)
    predicted[:, 1:5, 1:5] = True
    predicted[:, 10:14, 10:11] = True
    predicted[:, 1:3, 15:18] = True  # spurious
    scores = object_scores(predicted, truth)
    assert (scores["true_objects"], scores["predicted_objects"], scores["matched"]) == (3, 3, 1)
    assert scores["object_f1"] == pytest.approx(1 / 3)


def test_objects_are_scored_within_runs_of_consecutive_slices_with_ground_truth(tmp_path, volume_of):
    # A tube through 12 slices, its ground truth on slices 0-1 and 10-11: two pieces of
    # it, not one object joined across the 8 unlabelled slices between them.
    tube = np.zeros((12, 8, 8), bool)
    tube[:, 2:6, 2:6] = True
    folder = tmp_path / "masks" / "chunk0000"
    folder.mkdir(parents=True)
    (tmp_path / "truth").mkdir()
    for z, plane in enumerate(tube):
        iio.imwrite(folder / f"s{z:02d}.png", plane.astype(np.uint8) * 255)
        if z in (0, 1, 10, 11):
            iio.imwrite(tmp_path / "truth" / f"s{z:02d}.png", plane.astype(np.uint8))
    evaluate_volumes(
        volume_of({"tube": [folder]}), tmp_path / "truth", tmp_path / "scores.tsv", tmp_path / "objects.tsv"
    )
    objects = pd.read_csv(tmp_path / "objects.tsv", sep="\t").iloc[0]
    assert (objects["true_objects"], objects["predicted_objects"], objects["matched"]) == (2, 2, 2)
