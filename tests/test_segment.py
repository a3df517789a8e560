import numpy as np
import pytest

from vem3d.segment import (
    blending_window,
    predict_tiled,
    probabilities_to_mask,
    tile_starts,
    with_test_time_augmentation,
)


def identity(batch):
    return batch


@pytest.mark.parametrize("shape", [(100, 77), (256, 256), (20, 300), (37, 41)])
def test_tiling_an_identity_model_gives_the_input_back(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    result = predict_tiled(identity, image, tile_size=64, overlap=16, batch_size=3)
    assert result.shape == shape + (1,)
    np.testing.assert_allclose(result[..., 0], image, atol=1e-5)


def test_tiles_cover_the_slice_and_end_flush():
    assert tile_starts(100, 64, 48) == [0, 36]
    assert tile_starts(64, 64, 48) == [0]
    starts = tile_starts(1000, 256, 192)
    assert starts[-1] == 1000 - 256 and all(b - a <= 192 for a, b in zip(starts, starts[1:]))


def test_blending_removes_tile_edge_artefacts():
    # A model that is wrong near tile edges (as convolutions with zero padding are)
    # must not leave seams: the blended output stays close to the truth everywhere.
    def edge_damaged(batch):
        out = batch.copy()
        out[:, :4] = out[:, -4:] = out[:, :, :4] = out[:, :, -4:] = 0
        return out

    image = np.full((200, 200), 0.8, np.float32)
    result = predict_tiled(edge_damaged, image, tile_size=64, overlap=24)
    error = np.abs(result[..., 0] - 0.8)
    assert error.max() < 0.01
    window = blending_window(64, 24)
    assert window.shape == (64, 64) and window[32, 32] == 1 and window[0, 0] < 0.01


def test_probabilities_to_mask():
    binary = np.array([[[0.2], [0.7]]])
    np.testing.assert_array_equal(probabilities_to_mask(binary), [[0, 1]])
    multi = np.array([[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]])
    np.testing.assert_array_equal(probabilities_to_mask(multi), [[1, 0]])


def test_test_time_augmentation_maps_every_prediction_back():
    # An identity model stays an identity; a model that sees orientation (here: the
    # left half of each tile is boosted) gets averaged over all orientations.
    batch = np.random.default_rng(1).random((2, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(with_test_time_augmentation(identity)(batch), batch, atol=1e-6)

    def left_biased(tiles):
        out = np.zeros_like(tiles)
        out[:, :, :8] = 1
        return out

    np.testing.assert_allclose(with_test_time_augmentation(left_biased)(batch), 0.5, atol=1e-6)
