import json

import numpy as np
import pytest

from vem3d import train as train_module
from vem3d.segment import load_model
from vem3d.train import TrainingConfig, save_weights, split_labelled, train_unet
from vem3d.unet import UNetConfig, build_unet, unet_gflop

TINY = UNetConfig(depth=2, base_filters=4)


def test_unet_output_shapes_and_ranges():
    image = np.random.default_rng(0).random((2, 32, 48, 1)).astype(np.float32)
    binary = build_unet(TINY).predict_on_batch(image)
    assert binary.shape == (2, 32, 48, 1)
    assert 0 <= binary.min() and binary.max() <= 1
    multi = build_unet(UNetConfig(depth=2, base_filters=4, n_classes=3)).predict_on_batch(image)
    assert multi.shape == (2, 32, 48, 3)
    np.testing.assert_allclose(multi.sum(-1), 1, atol=1e-5)


def test_split_keeps_validation_out_of_training():
    train, validation = split_labelled(8, 0.25, seed=0)
    assert len(validation) == 2 and not set(train) & set(validation)
    assert sorted(train + validation) == list(range(8))
    assert split_labelled(1, 0.5, seed=0) == ([0], [])


def test_weights_that_do_not_fit_the_model_are_refused_clearly(tmp_path):
    save_weights(build_unet(TINY), tmp_path / "tiny.weights.h5")
    with pytest.raises(ValueError, match="do not match the configured model"):
        load_model(tmp_path / "tiny.weights.h5", UNetConfig(depth=3, base_filters=4))
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.weights.h5", TINY)


def _blobs(seed, n=4, size=64):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    rows, columns = np.mgrid[:size, :size]
    for _ in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(4):
            y, x = rng.integers(8, size - 8, 2)
            mask[(rows - y) ** 2 + (columns - x) ** 2 < 36] = 1
        images.append((0.7 - 0.4 * mask + rng.normal(0, 0.05, mask.shape)).astype(np.float32))
        masks.append(mask)
    return images, masks


SHORT = TrainingConfig(epochs=3, steps_per_epoch=4, batch_size=4, patch_size=32, learning_rate=0.01)


def test_training_lowers_the_loss_and_keeps_the_best_weights(tmp_path):
    images, masks = _blobs(0)
    model, state = train_unet(images, masks, TINY, SHORT, tmp_path / "ck")
    losses = [row["loss"] for row in state["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert state["n_train"] == 3 and state["n_validation"] == 1
    assert 1 <= state["best_epoch"] <= 3


def interrupt_after_epoch(monkeypatch, last_epoch):
    """Make training stop (as if killed) once epoch ``last_epoch`` is recorded; returns the undo."""
    original = train_module._finish_epoch

    def finish_then_stop(model, state, row, directory, config):
        original(model, state, row, directory, config)
        if row["epoch"] == last_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_finish_epoch", finish_then_stop)
    return lambda: monkeypatch.setattr(train_module, "_finish_epoch", original)


def test_interrupted_training_resumes_after_its_last_checkpoint(tmp_path, monkeypatch):
    images, masks = _blobs(1)
    resume = interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_unet(images, masks, TINY, SHORT, tmp_path / "ck")
    (state_file,) = (tmp_path / "ck").glob("*/state.json")
    assert json.loads(state_file.read_text())["epoch"] == 2
    resume()
    _, state = train_unet(images, masks, TINY, SHORT, tmp_path / "ck")
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]


def test_other_settings_or_other_labels_start_afresh(tmp_path):
    images, masks = _blobs(2)
    short = TrainingConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32)
    train_unet(images, masks, TINY, short, tmp_path / "ck")
    _, longer = train_unet(images, masks, TINY, SHORT, tmp_path / "ck")
    assert [row["epoch"] for row in longer["history"]] == [1, 2, 3]
    relabelled = [1 - mask for mask in masks]
    _, other_labels = train_unet(images, relabelled, TINY, short, tmp_path / "ck")
    assert [row["epoch"] for row in other_labels["history"]] == [1]
    assert len(list((tmp_path / "ck").iterdir())) == 3


def test_fine_tuning_does_not_resume_a_run_from_other_starting_weights(tmp_path):
    images, masks = _blobs(2)
    short = TrainingConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32)
    from_scratch, _ = train_unet(images, masks, TINY, short, tmp_path / "ck")
    initial = tmp_path / "initial.weights.h5"
    save_weights(build_unet(TINY), initial)
    _, fine_tuned = train_unet(images, masks, TINY, short, tmp_path / "ck", initial_weights=initial)
    assert [row["epoch"] for row in fine_tuned["history"]] == [1]  # trained, not the finished run read back
    save_weights(from_scratch, initial)  # other weights under the same name
    train_unet(images, masks, TINY, short, tmp_path / "ck", initial_weights=initial)
    assert len(list((tmp_path / "ck").iterdir())) == 3


def test_a_resumed_run_keeps_the_best_weights_its_checkpoint_names(tmp_path, monkeypatch):
    images, masks = _blobs(4)
    # Epoch 1 is best at the checkpoint of epoch 2; epoch 3 beats it, and is lost with its run.
    scores = iter([0.5, 0.1, 0.9, 0.1, 0.1])
    monkeypatch.setattr(
        train_module, "validate", lambda *args: {"val_loss": 1.0, "val_dice": 0.0, "val_iou": next(scores)}
    )
    resume = interrupt_after_epoch(monkeypatch, 3)
    config = TrainingConfig(epochs=4, steps_per_epoch=2, batch_size=2, patch_size=32, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_unet(images, masks, TINY, config, tmp_path / "ck")
    (run,) = (tmp_path / "ck").iterdir()
    epoch_1 = (run / "checkpoint.best.weights.h5").read_bytes()
    assert (run / "best.weights.h5").read_bytes() != epoch_1  # epoch 3's
    resume()
    _, state = train_unet(images, masks, TINY, config, tmp_path / "ck")
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3, 4]
    assert state["best_epoch"] == 1 and (run / "best.weights.h5").read_bytes() == epoch_1


def test_training_stops_early_when_validation_stops_improving(tmp_path, monkeypatch):
    images, masks = _blobs(3)
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(
        train_module, "validate", lambda *args: {"val_loss": 1.0, "val_dice": 0.0, "val_iou": next(scores)}
    )
    config = TrainingConfig(epochs=5, steps_per_epoch=1, batch_size=2, patch_size=32, patience=2)
    _, state = train_unet(images, masks, TINY, config, tmp_path / "ck")
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["stopped_early"] and state["best_epoch"] == 1


def test_flop_count_matches_a_hand_count():
    # depth 1, 1 filter, 2x2 input: down 4*9*(1+1), bottleneck 1*9*(1*2+2*2),
    # transposed 4*2*1, up convolutions 4*9*(2+1), output 4*1*1 multiply-adds.
    multiply_adds = 72 + 54 + 8 + 108 + 4
    assert unet_gflop(UNetConfig(depth=1, base_filters=1), 2, 2) == pytest.approx(2 * multiply_adds / 1e9)
    assert unet_gflop(UNetConfig(depth=4, base_filters=64), 512, 512) == pytest.approx(384.7, rel=1e-3)


def test_a_patch_side_the_network_cannot_take_is_refused_before_training(tmp_path):
    images = [np.zeros((64, 64), np.float32)]
    masks = [np.zeros((64, 64, 1), np.float32)]
    with pytest.raises(ValueError, match="patch_size is 36, but a U-Net of depth 3 takes sides that are multiples of 8: e.g. 32 or 40"):
        train_unet(images, masks, UNetConfig(depth=3, base_filters=4), TrainingConfig(patch_size=36), tmp_path)
