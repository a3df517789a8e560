"""Reading and writing slices of a vEM stack.

A stack is either a folder of 2D slice files (PNG, TIFF, JPEG), taken in natural
order (``2.png`` before ``10.png``), or one stack file: a multi-page TIFF, or an MRC
file (IMOD's and CCP-EM's format of serial-section and FIB-SEM stacks, read with
``mrcfile``). Every error names the offending file and says what is wrong with it.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import mrcfile
import numpy as np
import tifffile

from vem3d.atomic import write_atomically

SLICE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
# MRC stacks: .mrc, and IMOD's raw (.st), aligned (.ali) and reconstructed (.rec) stacks.
MRC_SUFFIXES = (".mrc", ".st", ".ali", ".rec")
ANGSTROM_PER_NM = 10.0  # MRC headers give voxel sizes in Angstrom
# Files that operating systems drop into folders and that are never slices.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


class SliceError(ValueError):
    """A slice file or stack that cannot be used, with the file named in the message."""


def natural_key(name: str) -> tuple[list, str]:
    """Sort key that orders embedded numbers by value (``2`` before ``10``).

    Names equal but for case or leading zeros (``s2``, ``s02``, ``S2``) go by the name
    itself, so that their order never depends on how a folder lists them.
    """
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)], name


def is_slice_file(path: Path) -> bool:
    """Whether ``path`` names a slice file (hidden files and OS clutter excluded)."""
    name = path.name
    return (
        not name.startswith(".")
        and name.lower() not in IGNORED_NAMES
        and path.suffix.lower() in SLICE_SUFFIXES
    )


def list_slices(folder: str | os.PathLike) -> list[Path]:
    """List the slice files of a folder in natural order.

    Parameters
    ----------
    folder : path
        Folder holding one image file per slice.

    Returns
    -------
    list of Path
        Slice files sorted in natural order; hidden files (``.DS_Store``, ``._x.png``)
        and ``Thumbs.db`` are skipped.

    Raises
    ------
    SliceError
        If the folder does not exist or holds no slice file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SliceError(f"{folder}: slice folder does not exist or is not a folder")
    # scandir knows which entries are files without a stat per file (thousands of slices).
    with os.scandir(folder) as entries:
        files = sorted(
            (Path(entry.path) for entry in entries if entry.is_file() and is_slice_file(Path(entry.name))),
            key=lambda path: natural_key(path.name),
        )
    if not files:
        raise SliceError(
            f"{folder}: no slice files found (expected {', '.join(SLICE_SUFFIXES)})"
        )
    return files


def read_slice(path: str | os.PathLike) -> np.ndarray:
    """Read one slice as a 2D array in its stored dtype.

    RGB and RGBA slices are converted to grey (luminance, alpha dropped).

    Parameters
    ----------
    path : path
        A PNG, TIFF or JPEG file holding one 2D image.

    Returns
    -------
    ndarray, shape (rows, columns)
        The slice, dtype as stored (``uint8``, ``uint16`` or ``float32``).

    Raises
    ------
    SliceError
        If the file is empty, truncated, not an image, or not a single 2D image.
    """
    path = Path(path)
    if not path.is_file():
        raise SliceError(f"{path}: slice file does not exist")
    if path.stat().st_size == 0:
        raise SliceError(f"{path}: slice file is empty (0 bytes)")
    try:
        image = np.asarray(iio.imread(path))
    except Exception as error:  # imageio raises many types for corrupt data
        raise SliceError(f"{path}: cannot be read as an image ({error})") from error
    return _grey_2d(image, str(path))


def _grey_2d(image: np.ndarray, where: str) -> np.ndarray:
    """A read slice as one grey 2D image (RGB(A) to grey), or a SliceError naming ``where``."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = rgb_to_grey(image)
    if image.ndim != 2:
        raise SliceError(f"{where}: expected one 2D grey slice, found an array of shape {image.shape}")
    if image.size == 0:
        raise SliceError(f"{where}: slice has no pixels")
    return image


def rgb_to_grey(image: np.ndarray) -> np.ndarray:
    """Convert an RGB(A) image to grey with ITU-R 601 luma weights, keeping its dtype."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    grey = image[..., :3].astype(np.float64) @ weights
    if np.issubdtype(image.dtype, np.integer):
        return np.round(grey).astype(image.dtype)
    return grey.astype(image.dtype)


def is_stack_file(source: str | os.PathLike) -> bool:
    """Whether ``source`` is one stack file (multi-page TIFF or MRC) rather than a folder of slices."""
    source = Path(source)
    return source.suffix.lower() in TIFF_SUFFIXES + MRC_SUFFIXES and not source.is_dir()


def _is_mrc(source: Path) -> bool:
    return source.suffix.lower() in MRC_SUFFIXES


IMOD_STAMP = 1146047817  # IMOD's mark in an MRC header (bytes 152-155): its flags follow
IMOD_SIGNED_BYTES = 1  # a flag of IMOD's (bytes 156-159): mode 0 bytes are signed


def _imod_flags(header) -> int | None:
    """IMOD's flags of an MRC header, or None where IMOD did not write them.

    ``mrcfile`` keeps header bytes 112-195 as one field, ``extra2``; IMOD's stamp
    and flags are its bytes 40-47, in the header's byte order.
    """
    stamp, flags = np.frombuffer(header.extra2.tobytes()[40:48], dtype=header.dtype["nx"])
    return int(flags) if stamp == IMOD_STAMP else None


def _mrc_sections(mrc, source: Path) -> np.ndarray:
    """The sections of an open MRC file as (z, rows, columns), memory-mapped (read where indexed).

    Bytes (mode 0) are signed by the MRC2014 standard, as ``mrcfile`` reads them, but
    IMOD writes them unsigned and says so by leaving a flag of its header unset:
    those are read unsigned, or values 128-255 would come out as -128 to -1.
    """
    data = mrc.data
    if data is None or data.ndim not in (2, 3) or data.dtype.kind not in "iuf":
        shape, dtype = (None, None) if data is None else (data.shape, data.dtype)
        raise SliceError(f"{source}: expected an MRC stack of grey 2D sections, found data of shape {shape}, {dtype}")
    if data.dtype == np.int8:
        imod_flags = _imod_flags(mrc.header)
        if imod_flags is not None and not imod_flags & IMOD_SIGNED_BYTES:
            data = data.view(np.uint8)
    return data[np.newaxis] if data.ndim == 2 else data


def _open_mrc(source: Path):
    """``mrcfile.mmap`` of ``source`` for reading, or a SliceError naming it."""
    try:
        return mrcfile.mmap(source, mode="r")
    except (ValueError, OSError) as error:  # mrcfile says what is wrong in a ValueError
        raise SliceError(f"{source}: cannot be read as an MRC stack ({error})") from error


def _open_tiff(source: Path) -> tifffile.TiffFile:
    """``tifffile.TiffFile`` of ``source``, or a SliceError naming it."""
    try:
        return tifffile.TiffFile(source)
    except Exception as error:  # tifffile raises many types for corrupt data
        raise SliceError(f"{source}: cannot be read as a TIFF stack ({error})") from error


def _tiff_images(tiff: tifffile.TiffFile, source: Path) -> tuple[int, Callable[[int], np.ndarray]]:
    """The 2D images of an open TIFF stack: how many, and a function reading one by index.

    - A file of one series (a stack written at once, as ImageJ and OME write them):
      its images, refusing channels or time points beside z. They may outnumber the
      pages: ImageJ's stacks over 4 GiB describe every image in their first page, and
      lie uncompressed one after the other; those are mapped and read where indexed.
    - A file of several series (a stack written a page at a time, as
      ``tifffile.imwrite(..., append=True)`` does): its pages, thumbnails left out.
    """
    if len(tiff.series) > 1:
        pages = [page for page in tiff.pages if not page.is_reduced]
        return len(pages), lambda index: pages[index].asarray()
    series = tiff.series[0]
    # One axis besides the plane's is z, whatever its letter: tifffile writes a 3D array
    # with imagej=True as channels, and acquisition software often labels sections frames.
    planes = [length for axis, length in zip(series.axes, series.shape) if axis not in "YXS"]
    if sum(length > 1 for length in planes) > 1:
        raise SliceError(
            f"{source}: a TIFF of axes {series.axes} (shape {series.shape}): expected one stack of "
            "grey 2D slices, not channels or time points beside z; save one channel as its own stack"
        )
    depth = int(np.prod(planes))
    if len(series.pages) == depth:
        return depth, lambda index: series.asarray(key=index)
    plane_shape = [length for axis, length in zip(series.axes, series.shape) if axis in "YXS"]
    try:
        images = tifffile.memmap(source, series=0, mode="r").reshape(depth, *plane_shape)
    except Exception as error:
        raise SliceError(f"{source}: cannot be read as a TIFF stack ({error})") from error
    return depth, lambda index: images[index].astype(images.dtype.newbyteorder("="))  # a copy, in memory


def _stack_depth(source: Path) -> int:
    """Sections of an MRC file or images of a multi-page TIFF."""
    if _is_mrc(source):
        with _open_mrc(source) as mrc:
            return len(_mrc_sections(mrc, source))
    with _open_tiff(source) as tiff:
        return _tiff_images(tiff, source)[0]


def stack_pixel_size_nm(source: str | os.PathLike) -> tuple[float, float] | None:
    """The pixel size (rows, columns) in nm that an MRC stack's header gives.

    Parameters
    ----------
    source : path
        A stack: folder of slices, multi-page TIFF or MRC file.

    Returns
    -------
    (float, float) or None
        ``voxel_size`` y and x of the MRC header (stored in Angstrom); None for other
        stacks and for a header that leaves it unset (0, or IMOD's 1 Angstrom).
    """
    source = Path(source)
    if not is_stack_file(source) or not _is_mrc(source):
        return None
    with _open_mrc(source) as mrc:
        rows, columns = float(mrc.voxel_size.y), float(mrc.voxel_size.x)
    if rows in (0.0, 1.0) or columns in (0.0, 1.0):
        return None
    return rows / ANGSTROM_PER_NM, columns / ANGSTROM_PER_NM


def stack_slice_names(source: str | os.PathLike) -> list[str]:
    """Names of the slices of a stack, in z order.

    For a folder these are the slice file stems; for a stack file (multi-page TIFF or
    MRC) they are ``z0000``, ``z0001``, ... one per 2D image or section.

    Raises
    ------
    SliceError
        If the source does not exist, holds no slice, or two files share a stem.
    """
    source = Path(source)
    if is_stack_file(source):
        if not source.is_file() or source.stat().st_size == 0:
            raise SliceError(f"{source}: stack file does not exist or is empty")
        return [f"z{index:04d}" for index in range(_stack_depth(source))]
    names = [path.stem for path in list_slices(source)]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise SliceError(f"{source}: several files share the slice name(s) {duplicates}")
    return names


def stack_slice_files(source: str | os.PathLike, names: list[str]) -> list[Path]:
    """The files that hold the named slices: the slice files, or the one stack file."""
    source = Path(source)
    if is_stack_file(source):
        return [source]
    by_name = {path.stem: path for path in list_slices(source)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise SliceError(f"{source}: no slice file for slice(s) {missing}")
    return [by_name[name] for name in names]


def read_stack_slices(source: str | os.PathLike, names: list[str]):
    """Yield the named slices of a stack as 2D arrays, in the order given.

    Parameters
    ----------
    source : path
        A folder of slice files, or a multi-page TIFF or MRC file (read a page or
        section at a time).
    names : list of str
        Slice names as returned by :func:`stack_slice_names`.

    Yields
    ------
    ndarray, shape (rows, columns)
        Each slice in its stored dtype (in native byte order), grey.
    """
    source = Path(source)
    if not is_stack_file(source):
        for path in stack_slice_files(source, names):
            yield read_slice(path)
        return
    index_of = {name: index for index, name in enumerate(stack_slice_names(source))}
    missing = [name for name in names if name not in index_of]
    if missing:
        raise SliceError(f"{source}: the stack has no slice(s) {missing}")
    if _is_mrc(source):
        with _open_mrc(source) as mrc:
            sections = _mrc_sections(mrc, source)
            for name in names:
                section = sections[index_of[name]]
                yield section.astype(section.dtype.newbyteorder("="))  # a copy, in memory
        return
    with _open_tiff(source) as tiff:
        _, read_image = _tiff_images(tiff, source)
        for name in names:
            try:
                page = read_image(index_of[name])
            except Exception as error:
                raise SliceError(f"{source}: page {name} cannot be read ({error})") from error
            yield _grey_2d(page, f"{source}, page {name}")


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a 2D ``uint8`` or ``uint16`` image as PNG, atomically.

    zlib's fastest level: a stack's thousands of per-slice files are written 2 to 4
    times faster than at the default level, at most a sixth larger (smaller, for
    16-bit slices).
    """
    write_atomically(path, lambda temporary: iio.imwrite(temporary, image, extension=".png", compress_level=1))
