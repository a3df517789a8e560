import imageio.v3 as iio
import mrcfile
import numpy as np
import pytest
import tifffile

from vem3d.preprocess import preprocess_stack

from vem3d.slices import (
    SliceError,
    list_slices,
    natural_key,
    read_slice,
    read_stack_slices,
    stack_pixel_size_nm,
    stack_slice_names,
    write_image,
)


def test_natural_order_puts_2_before_10(tmp_path):
    for name in ("10.png", "2.png", "1.png"):
        iio.imwrite(tmp_path / name, np.zeros((4, 4), np.uint8))
    assert [path.name for path in list_slices(tmp_path)] == ["1.png", "2.png", "10.png"]
    assert sorted(["s10", "s9", "S1"], key=natural_key) == ["S1", "s9", "s10"]
    for listed in (["s2", "s02", "S2", "s1x", "s1x2"], ["s1x2", "S2", "s02", "s1x", "s2"]):
        assert sorted(listed, key=natural_key) == ["s1x", "s1x2", "S2", "s02", "s2"]


def test_hidden_files_and_thumbs_db_are_skipped(tmp_path):
    iio.imwrite(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "._a.png").write_bytes(b"junk")
    (tmp_path / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not a slice")
    assert [path.name for path in list_slices(tmp_path)] == ["a.png"]


def test_symbolic_links_to_slices_are_slices_and_folders_are_not(tmp_path):
    stack = tmp_path / "stack"
    stack.mkdir()
    iio.imwrite(tmp_path / "elsewhere.png", np.zeros((4, 4), np.uint8))
    (stack / "s1.png").symlink_to(tmp_path / "elsewhere.png")
    (stack / "s2.png").mkdir()
    assert [path.name for path in list_slices(stack)] == ["s1.png"]


def test_empty_or_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(SliceError, match="no slice files"):
        list_slices(tmp_path)
    with pytest.raises(SliceError, match="does not exist"):
        list_slices(tmp_path / "missing")


def test_zero_byte_slice_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SliceError, match=r"empty\.png.*empty \(0 bytes\)"):
        read_slice(tmp_path / "empty.png")


def test_corrupt_slice_is_an_error_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    iio.imwrite(good, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(SliceError, match="truncated.png: cannot be read"):
        read_slice(truncated)
    (tmp_path / "text.tif").write_text("this is not a TIFF")
    with pytest.raises(SliceError, match="text.tif: cannot be read"):
        read_slice(tmp_path / "text.tif")


def test_rgb_and_16_bit_slices_become_grey_in_their_dtype(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 1] = 200
    iio.imwrite(tmp_path / "rgb.png", rgb)
    grey = read_slice(tmp_path / "rgb.png")
    assert grey.shape == (5, 6) and grey.dtype == np.uint8
    assert np.all(grey == round(0.587 * 200))
    deep = (np.arange(30, dtype=np.uint16) * 2000).reshape(5, 6)
    tifffile.imwrite(tmp_path / "deep.tif", deep)
    np.testing.assert_array_equal(read_slice(tmp_path / "deep.tif"), deep)


def test_multipage_tiff_stack_reads_page_by_page(tmp_path):
    stack = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    names = stack_slice_names(tmp_path / "stack.tif")
    assert names == ["z0000", "z0001", "z0002"]
    pages = list(read_stack_slices(tmp_path / "stack.tif", ["z0002", "z0000"]))
    np.testing.assert_array_equal(pages[0], stack[2])
    np.testing.assert_array_equal(pages[1], stack[0])


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_imagej_stacks_over_4_gib_are_read_image_by_image(tmp_path, byte_order):
    # ImageJ describes every image of such a stack in its first page: one page, 6 images.
    stack = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5)
    tifffile.imwrite(tmp_path / "big.tif", stack, imagej=True, truncate=True, byteorder=byte_order)
    assert stack_slice_names(tmp_path / "big.tif") == [f"z{z:04d}" for z in range(6)]
    pages = list(read_stack_slices(tmp_path / "big.tif", ["z0005", "z0001"]))
    for page, expected in zip(pages, (stack[5], stack[1])):
        assert page.dtype == np.uint16 and page.dtype.isnative
        np.testing.assert_array_equal(page, expected)


def test_a_tiff_stack_written_a_page_at_a_time_is_read_page_by_page(tmp_path):
    # Each page its own series, as tifffile's append writes them; a thumbnail is no slice.
    stack = np.arange(4 * 6 * 8, dtype=np.uint8).reshape(4, 6, 8)
    for plane in stack:
        tifffile.imwrite(tmp_path / "pages.tif", plane, append=True)
    tifffile.imwrite(tmp_path / "pages.tif", stack[0, ::2, ::2], append=True, subfiletype=1)
    assert stack_slice_names(tmp_path / "pages.tif") == ["z0000", "z0001", "z0002", "z0003"]
    pages = list(read_stack_slices(tmp_path / "pages.tif", ["z0000", "z0001", "z0002", "z0003"]))
    np.testing.assert_array_equal(np.stack(pages), stack)


def test_tiff_stacks_of_channels_or_of_pages_not_grey_2d_are_refused_naming_them(tmp_path):
    tifffile.imwrite(tmp_path / "channels.tif", np.zeros((3, 2, 4, 5), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(SliceError, match="channels.tif: a TIFF of axes ZCYX .*not channels or time points"):
        stack_slice_names(tmp_path / "channels.tif")
    tifffile.imwrite(tmp_path / "alpha.tif", np.zeros((2, 4, 5, 2), np.uint8), extrasamples=["unassalpha"])
    with pytest.raises(SliceError, match=r"alpha.tif, page z0001: expected one 2D grey slice, found .* \(4, 5, 2\)"):
        list(read_stack_slices(tmp_path / "alpha.tif", ["z0001"]))


def test_imagej_stacks_of_one_axis_are_read_as_sections_whatever_its_letter(tmp_path):
    # tifffile.imwrite(..., imagej=True) of a 3D array labels its planes channels.
    stack = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    for axes in ("TYX", None):
        tifffile.imwrite(tmp_path / "planes.tif", stack, imagej=True, metadata={"axes": axes} if axes else {})
        assert stack_slice_names(tmp_path / "planes.tif") == ["z0000", "z0001", "z0002"]
        np.testing.assert_array_equal(next(read_stack_slices(tmp_path / "planes.tif", ["z0002"])), stack[2])


def test_imod_byte_stacks_are_read_unsigned_as_imod_writes_them(tmp_path):
    stack = np.array([0, 100, 200, 255], np.uint8).reshape(1, 2, 2)

    def written(imod_flags):
        path = tmp_path / f"bytes{imod_flags}.st"
        with mrcfile.new(path) as mrc:
            mrc.set_data(stack.view(np.int8))  # mode 0, signed by the MRC2014 standard
            if imod_flags is not None:  # IMOD's stamp and flags: header bytes 152-159
                extra = bytearray(mrc.header.extra2.tobytes())
                extra[40:48] = np.array([1146047817, imod_flags], np.int32).tobytes()
                mrc.header.extra2 = np.frombuffer(bytes(extra), mrc.header.extra2.dtype).reshape(())
        return next(read_stack_slices(path, ["z0000"]))

    np.testing.assert_array_equal(written(0), stack[0])  # IMOD: unsigned unless flagged
    np.testing.assert_array_equal(written(1), stack[0].view(np.int8))  # IMOD, flagged signed
    np.testing.assert_array_equal(written(None), stack[0].view(np.int8))  # no IMOD header: the standard's


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float32])
def test_mrc_stack_reads_section_by_section_in_native_byte_order(tmp_path, dtype):
    stack = (np.arange(3 * 4 * 5) - 30).reshape(3, 4, 5).astype(dtype)
    with mrcfile.new(tmp_path / "stack.ali") as mrc:
        mrc.set_data(stack.astype(np.dtype(dtype).newbyteorder(">")))  # as a big-endian machine wrote it
    assert stack_slice_names(tmp_path / "stack.ali") == ["z0000", "z0001", "z0002"]
    sections = list(read_stack_slices(tmp_path / "stack.ali", ["z0002", "z0000"]))
    for section, expected in zip(sections, (stack[2], stack[0])):
        assert section.dtype == np.dtype(dtype) and section.dtype.isnative
        np.testing.assert_array_equal(section, expected)
    with mrcfile.new(tmp_path / "one.mrc") as mrc:
        mrc.set_data(stack[1])  # a single 2D image
    assert stack_slice_names(tmp_path / "one.mrc") == ["z0000"]
    np.testing.assert_array_equal(next(read_stack_slices(tmp_path / "one.mrc", ["z0000"])), stack[1])


def test_a_file_that_is_not_an_mrc_stack_is_named(tmp_path):
    (tmp_path / "text.mrc").write_text("this is not an MRC file, but long enough for a header" * 40)
    with pytest.raises(SliceError, match="text.mrc: cannot be read as an MRC stack"):
        stack_slice_names(tmp_path / "text.mrc")
    (tmp_path / "empty.st").write_bytes(b"")
    with pytest.raises(SliceError, match="empty.st: stack file does not exist or is empty"):
        stack_slice_names(tmp_path / "empty.st")
    with mrcfile.new(tmp_path / "stack.mrc") as mrc:
        mrc.set_data(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(SliceError, match=r"stack.mrc: the stack has no slice\(s\) \['z0005'\]"):
        list(read_stack_slices(tmp_path / "stack.mrc", ["z0000", "z0005"]))


def test_an_mrc_header_gives_the_pixel_size_in_nm_where_set(tmp_path):
    for name, angstrom in (("set.mrc", (60.0, 52.0, 50.0)), ("unset.mrc", 0.0), ("imod_default.st", 1.0)):
        with mrcfile.new(tmp_path / name) as mrc:
            mrc.set_data(np.zeros((2, 4, 4), np.uint8))
            mrc.voxel_size = angstrom  # x, y, z
    assert stack_pixel_size_nm(tmp_path / "set.mrc") == pytest.approx((5.2, 6.0))  # rows (y), columns (x)
    assert stack_pixel_size_nm(tmp_path / "unset.mrc") is None
    assert stack_pixel_size_nm(tmp_path / "imod_default.st") is None
    assert stack_pixel_size_nm(tmp_path) is None  # a folder of slices has no header


def test_an_mrc_stack_preprocesses_as_the_same_slices_in_a_folder(tmp_path):
    stack = np.random.default_rng(0).integers(-2000, 3000, (4, 24, 20)).astype(np.int16)
    with mrcfile.new(tmp_path / "stack.mrc") as mrc:
        mrc.set_data(stack)
    (tmp_path / "slices").mkdir()
    for z, section in enumerate(stack):
        tifffile.imwrite(tmp_path / "slices" / f"z{z:04d}.tif", section)
    names = stack_slice_names(tmp_path / "stack.mrc")
    assert names == stack_slice_names(tmp_path / "slices")
    preprocess_stack(tmp_path / "stack.mrc", names[1:3], tmp_path / "from_mrc")
    preprocess_stack(tmp_path / "slices", names[1:3], tmp_path / "from_folder")
    written = sorted(path.name for path in (tmp_path / "from_mrc").iterdir())
    assert written == sorted(path.name for path in (tmp_path / "from_folder").iterdir()) == [
        "shapes.tsv", "z0001.tif", "z0002.tif"
    ]
    for name in written:
        assert (tmp_path / "from_mrc" / name).read_bytes() == (tmp_path / "from_folder" / name).read_bytes()


def test_write_image_is_atomic_and_leaves_no_temporary_file(tmp_path):
    image = np.full((3, 3), 7, np.uint8)
    write_image(tmp_path / "out" / "x.png", image)
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["x.png"]
    np.testing.assert_array_equal(iio.imread(tmp_path / "out" / "x.png"), image)
