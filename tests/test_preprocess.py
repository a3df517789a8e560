import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from vem3d.preprocess import (
    from_stored,
    integer_percentiles,
    normalise_percentile,
    preprocess_slice,
    preprocess_stack,
    read_preprocessed,
    to_uint16,
)
from vem3d.slices import SliceError


def test_percentile_normalisation_maps_to_unit_range_and_clips_outliers():
    image = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    image[0, 0] = 60000  # one hot pixel must not squash the contrast
    normalised = normalise_percentile(image, 1, 99)
    assert normalised.dtype == np.float32
    assert normalised.min() == 0 and normalised.max() == 1
    assert 0.45 < normalised[5, 0] < 0.55


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_percentiles_of_integer_slices_are_numpys(dtype):
    # Normalisation takes them from a histogram; they must be the values np.percentile gives.
    rng = np.random.default_rng(1)
    percentiles = [0, 0.5, 12.3, 50, 99.5, 100]
    for rows, columns, top in [(1, 1, 7), (3, 5, 2), (64, 48, 200), (100, 100, np.iinfo(dtype).max)]:
        image = rng.integers(0, top, (rows, columns), endpoint=True).astype(dtype)
        np.testing.assert_allclose(
            integer_percentiles(image, percentiles), np.percentile(image, percentiles), rtol=1e-12, atol=0
        )


def test_constant_slice_does_not_divide_by_zero():
    assert np.all(normalise_percentile(np.zeros((4, 4), np.uint8)) == 0.5)
    assert np.all(normalise_percentile(np.full((4, 4), 255, np.uint8)) == 0.5)


def test_scale_and_fixed_size():
    image = np.random.default_rng(0).integers(0, 255, (100, 60)).astype(np.uint8)
    assert preprocess_slice(image, scale=0.5).shape == (50, 30)
    assert preprocess_slice(image, size=(64, 64)).shape == (64, 64)
    assert preprocess_slice(image).shape == (100, 60)


def test_storage_round_trip_keeps_16_bit_precision():
    values = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 100)
    np.testing.assert_allclose(from_stored(to_uint16(values)), values, atol=1 / 65535)


def test_preprocess_stack_writes_slices_and_original_shapes(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for z in range(3):
        iio.imwrite(source / f"s{z}.png", np.full((20, 30), z * 50, np.uint8) + np.eye(20, 30, dtype=np.uint8))
    before = {path.name: path.stat().st_mtime_ns for path in source.iterdir()}
    preprocess_stack(source, ["s0", "s1", "s2"], tmp_path / "out", reference_name="s0", scale=0.5)
    slices = list(read_preprocessed(tmp_path / "out"))
    assert [name for name, _, _ in slices] == ["s0", "s1", "s2"]
    assert all(image.shape == (10, 15) and shape == (20, 30) for _, image, shape in slices)
    assert {path.name: path.stat().st_mtime_ns for path in source.iterdir()} == before
    # Stored as 16-bit TIFF, byte for byte the same when preprocessed again (the segment cache keys on the bytes).
    first = (tmp_path / "out/s1.tif").read_bytes()
    preprocess_stack(source, ["s1"], tmp_path / "again", scale=0.5)
    assert tifffile.imread(tmp_path / "out/s1.tif").dtype == np.uint16
    assert (tmp_path / "again/s1.tif").read_bytes() == first


def test_a_missing_preprocessed_slice_is_named(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("s0", "s1"):
        iio.imwrite(source / f"{name}.png", np.zeros((8, 8), np.uint8))
    preprocess_stack(source, ["s0", "s1"], tmp_path / "out")
    (tmp_path / "out/s1.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"out: 1 preprocessed slices .* missing, e.g. s1.tif"):
        list(read_preprocessed(tmp_path / "out"))


def test_slice_of_another_shape_stops_naming_it(tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    iio.imwrite(slices / "a.png", np.zeros((20, 30), np.uint8))
    iio.imwrite(slices / "b.png", np.zeros((20, 31), np.uint8))
    with pytest.raises(SliceError, match=r"slice b has shape \(20, 31\).*first slice a has \(20, 30\)"):
        preprocess_stack(slices, ["a", "b"], tmp_path / "out", reference_name="a")
