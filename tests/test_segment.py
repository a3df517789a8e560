import itertools
import shutil
import threading
import time

import numpy as np
import pytest

import vem3d.segment as segment_module
from vem3d.devices import xla_speeds_up_inference
from vem3d.preprocess import preprocess_stack
from vem3d.segment import (
    Tiling,
    activation_bytes,
    automatic_batch_size,
    batch_tiles,
    blending_window,
    compute_ahead,
    load_model,
    predict_tiled,
    probabilities_to_mask,
    segment_folder,
    segment_slices,
    tile_starts,
    with_test_time_augmentation,
)
from vem3d.slices import write_image
from vem3d.train import save_weights
from vem3d.unet import UNetConfig, build_unet


def identity(batch):
    return batch


@pytest.mark.parametrize("shape", [(100, 77), (256, 256), (20, 300), (37, 41)])
def test_tiling_an_identity_model_gives_the_input_back(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    result = predict_tiled(identity, image, tile_size=64, overlap=16, batch_size=3)
    assert result.shape == shape + (1,)
    np.testing.assert_allclose(result[..., 0], image, atol=1e-5)


@pytest.mark.parametrize("shape", [(512, 512), (768, 1024), (100, 77), (2000, 300)])
def test_tiles_shrink_to_fit_the_slice_and_still_blend_back_to_it(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    fitted, fixed = Tiling(image, 256, 32, multiple=16), Tiling(image, 256, 32)
    assert fitted.tile_size % 16 == 0 and fitted.tile_size <= 256
    assert len(fitted.positions) <= len(fixed.positions)
    for axis in (0, 1):
        starts = sorted({position[axis] for position in fitted.positions})
        # Neighbours still share at least the asked-for overlap.
        assert all(b - a <= fitted.tile_size - 32 for a, b in zip(starts, starts[1:]))
    result = predict_tiled(identity, image, tile_size=256, overlap=32, batch_size=4, multiple=16)
    np.testing.assert_allclose(result[..., 0], image, atol=1e-5)
    if shape == (512, 512):
        # 9 tiles of 208 rather than 256: 1.5 rather than 2.25 times the slice's pixels,
        # in even batches (one shape for a compiled network).
        assert (fitted.tile_size, len(fitted.positions)) == (208, 9)
        assert [len(batch) for batch in fitted.batches(4)] == [3, 3, 3]


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


TINY = UNetConfig(depth=2, base_filters=4)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """float32 weights of a tiny U-Net whose output spans (0, 1) rather than sitting near 0.5.

    Drawn with numpy (He initialisation), so that they are the same on every Keras backend.
    """
    model = build_unet(TINY)
    rng = np.random.default_rng(0)
    model.set_weights(
        [rng.normal(0, np.sqrt(2 / np.prod(weight.shape[:-1])), weight.shape) if weight.ndim > 1 else weight for weight in model.get_weights()]
    )
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 3, bias])
    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    save_weights(model, path)
    return path


BATCH = np.random.default_rng(1).random((2, 32, 32, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def float32_probabilities(tiny_weights):
    return load_model(tiny_weights, TINY).predict_on_batch(BATCH)


# Rounding errors of 16-bit computation: float16 keeps 11 significant bits, bfloat16 8.
@pytest.mark.parametrize("precision, max_error, mean_error", [("mixed_float16", 0.01, 0.001), ("mixed_bfloat16", 0.04, 0.005)])
def test_each_precision_loads_float32_weights_and_gives_float32_probabilities_close_to_float32(
    tiny_weights, float32_probabilities, precision, max_error, mean_error
):
    reference = float32_probabilities
    assert 0.1 < reference.std()  # the comparison means something
    model = load_model(tiny_weights, TINY, precision)
    probabilities = model.predict_on_batch(BATCH)
    assert model.get_layer("down0_conv1").compute_dtype == precision.removeprefix("mixed_")
    assert probabilities.dtype == np.float32
    assert model.jit_compile == xla_speeds_up_inference()
    error = np.abs(probabilities - reference)
    assert error.max() < max_error and error.mean() < mean_error


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of float32, mixed_float16, mixed_bfloat16"):
        build_unet(TINY, precision="float16")


def _slices(count=5):
    rng = np.random.default_rng(2)
    shapes = [(40, 56), (64, 64), (30, 90), (48, 48), (50, 41)][:count]
    # The second slice was preprocessed from a larger raw slice: resized back.
    originals = [shape if index != 1 else (96, 96) for index, shape in enumerate(shapes)]
    return [(f"s{index}", rng.random(shape, dtype=np.float32), original) for index, (shape, original) in enumerate(zip(shapes, originals))]


def test_streamed_segmentation_gives_what_the_plain_loop_gives():
    model = build_unet(TINY)  # not XLA-compiled as by load_model: no compilation per batch shape
    settings = {"tile_size": 32, "overlap": 8, "batch_size": 3}
    plain = list(segment_slices(model, iter(_slices()), **settings, prefetch=0))
    streamed = list(segment_slices(model, iter(_slices()), **settings, prefetch=2))
    assert [name for name, _, _ in streamed] == [f"s{index}" for index in range(5)]
    assert streamed[1][1].shape == (96, 96, 1) and streamed[1][2].shape == (96, 96)
    for (_, probabilities, mask), (_, expected_probabilities, expected_mask) in zip(streamed, plain):
        np.testing.assert_array_equal(probabilities, expected_probabilities)
        np.testing.assert_array_equal(mask, expected_mask)


class _RecordingIdentity:
    """A model that returns its input and records the size of each forward pass."""

    def __init__(self):
        self.batch_sizes = []

    def predict_on_batch(self, batch):
        self.batch_sizes.append(len(batch))
        return batch


def test_forward_passes_take_tiles_from_several_slices():
    # Slices of one tile each (as half-resolution Lucchi++ slices are with 512-pixel
    # tiles): a pass fills up with the next slices' tiles instead of running one tile.
    rng = np.random.default_rng(3)
    slices = [(f"s{index}", rng.random((24, 24), dtype=np.float32), (24, 24)) for index in range(9)]
    model = _RecordingIdentity()
    results = list(segment_slices(model, iter(slices), tile_size=32, overlap=8, batch_size=4))
    # 9 tiles: 4, 4, and the last one padded to 4, so a compiled network sees one shape.
    assert model.batch_sizes == [4, 4, 4]
    assert [name for name, _, _ in results] == [name for name, _, _ in slices]
    for (_, image, _), (_, probabilities, _) in zip(slices, results):
        np.testing.assert_allclose(probabilities[..., 0], image, atol=1e-5)


def test_the_network_thread_only_runs_the_network(monkeypatch):
    # On a GPU the network's thread is the step's bottleneck: blending there held the
    # step to about half the network's rate, so the caller's thread blends.
    threads = {"network": set(), "blend": set()}

    class Recording(_RecordingIdentity):
        def predict_on_batch(self, batch):
            threads["network"].add(threading.current_thread())
            return super().predict_on_batch(batch)

    blend = Tiling.blend

    def recording_blend(self, predictions):
        threads["blend"].add(threading.current_thread())
        return blend(self, predictions)

    monkeypatch.setattr(Tiling, "blend", recording_blend)
    results = list(segment_slices(Recording(), iter(_slices()), tile_size=32, overlap=8, batch_size=3))
    assert len(results) == 5
    assert threads["blend"] == {threading.current_thread()}
    assert len(threads["network"]) == 1 and threads["network"].isdisjoint(threads["blend"])


def test_a_caller_that_stops_early_stops_the_segmentation_threads():
    results = segment_slices(_RecordingIdentity(), iter(_slices()), tile_size=32, overlap=8, batch_size=3)
    assert next(results)[0] == "s0"
    results.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "vem3d-compute-ahead"]


def test_tiles_of_another_size_start_a_new_batch():
    rng = np.random.default_rng(4)
    images = [rng.random(shape, dtype=np.float32) for shape in [(40, 40)] * 4 + [(20, 20), (40, 40)]]
    tilings = [(index, Tiling(image, 64, 16, multiple=16)) for index, image in enumerate(images)]
    assert [(tiling.tile_size, len(tiling.positions)) for _, tiling in tilings] == [(64, 1)] * 4 + [(48, 1), (64, 1)]
    batches = list(batch_tiles(tilings, batch_size=3))
    assert [(batch.shape, owners) for batch, owners in batches] == [
        ((3, 64, 64, 1), [0, 1, 2]),
        ((3, 64, 64, 1), [3]),  # padded: a full batch of 64s has run
        ((1, 48, 48, 1), [4]),  # not padded: none of 48s has
        ((3, 64, 64, 1), [5]),
    ]
    np.testing.assert_array_equal(batches[1][0][1:], batches[1][0][[0, 0]])  # padded with copies of slice 3's tile


def _counting(items, counter):
    for item in items:
        counter.append(item)
        yield item


def test_computing_ahead_stays_bounded_and_stops_with_its_caller():
    produced = []
    ahead = compute_ahead(_counting(itertools.count(), produced), depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.3)
    assert len(produced) <= 3 + 2 + 1  # taken, waiting, in the making
    before = len(produced)
    ahead.close()  # stops and joins the thread
    time.sleep(0.2)
    assert len(produced) == before
    assert not [thread for thread in threading.enumerate() if thread.name == "vem3d-compute-ahead"]


def test_an_error_while_computing_ahead_is_raised_in_its_place():
    def failing():
        yield 1
        raise OSError("slice 2 unreadable")

    ahead = compute_ahead(compute_ahead(failing(), depth=2), depth=2)
    assert next(ahead) == 1
    with pytest.raises(OSError, match="slice 2 unreadable"):
        next(ahead)


def test_a_failing_slice_stops_streamed_segmentation_with_its_error():
    def slices():
        yield from _slices(2)
        raise ValueError("s2.png: not a PNG")

    with pytest.raises(ValueError, match="s2.png: not a PNG"):
        list(segment_slices(build_unet(TINY), slices(), tile_size=32, overlap=8))
    assert not [thread for thread in threading.enumerate() if thread.name == "vem3d-compute-ahead"]


def test_automatic_batch_size_fills_the_device_within_memory():
    default = UNetConfig(depth=3, base_filters=16)
    assert automatic_batch_size(default, 256, on_gpu=False) == 4
    assert automatic_batch_size(default, 512, on_gpu=False) == 1
    assert automatic_batch_size(default, 64, on_gpu=False) == 64
    assert automatic_batch_size(default, 512, on_gpu=True) == 32
    wide = UNetConfig(depth=4, base_filters=64)
    assert automatic_batch_size(wide, 512, on_gpu=True) * activation_bytes(wide, 512) <= 8 * 2**30
    assert automatic_batch_size(wide, 2048, on_gpu=False) == 1


def _segment_chunk(tmp_path, weights, cache_dir):
    """Segment the preprocessed chunk as a fresh Snakemake job would (outputs deleted first);
    return the names of the slices that went through the network and the output bytes."""
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    folders = [out / "probabilities", out / "masks"]
    through_network = []
    original = segment_module.segment_slices

    def recording(model, slices, *args, **kwargs):
        slices = list(slices)
        through_network.extend(name for name, _, _ in slices)
        return original(model, slices, *args, **kwargs)

    segment_module.segment_slices = recording
    try:
        segment_folder(tmp_path / "preprocessed", weights, [folders[0]], [folders[1]], TINY,
                       tile_size=32, overlap=8, cache_dir=cache_dir)
    finally:
        segment_module.segment_slices = original
    files = {f"{folder.name}/{path.name}": path.read_bytes() for folder in folders for path in sorted(folder.iterdir())}
    return through_network, files


def test_a_rerun_chunk_sends_only_its_changed_slices_through_the_network(tmp_path):
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    raw.mkdir()
    for index in range(4):
        write_image(raw / f"s{index}.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    names = [f"s{index}" for index in range(4)]
    preprocess_stack(raw, names, tmp_path / "preprocessed")
    weights = tmp_path / "unet.weights.h5"
    save_weights(build_unet(TINY), weights)
    cache = tmp_path / "cache"

    first_names, first = _segment_chunk(tmp_path, weights, cache)
    assert first_names == names and len(first) == 8

    # Unchanged slices come back byte for byte without the network.
    again_names, again = _segment_chunk(tmp_path, weights, cache)
    assert again_names == [] and again == first

    # A re-acquired slice: only it is segmented again; its results replace the old ones.
    write_image(raw / "s2.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    preprocess_stack(raw, names, tmp_path / "preprocessed")
    changed_names, changed = _segment_chunk(tmp_path, weights, cache)
    assert changed_names == ["s2"]
    assert {name for name in first if changed[name] != first[name]} <= {"probabilities/s2.png", "masks/s2.png"}
    assert changed["probabilities/s2.png"] != first["probabilities/s2.png"]
    assert len(list((cache / "s2").iterdir())) == 1  # its older entry is gone

    # Other weights (a retrained model): every slice goes through the network again.
    save_weights(build_unet(TINY), weights)
    retrained_names, _ = _segment_chunk(tmp_path, weights, cache)
    assert retrained_names == names
