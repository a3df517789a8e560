"""Results of costly computations kept between runs, found again by the content of their inputs.

Snakemake re-runs a whole-volume step (mesh, object statistics) when any slice of the
stack changes. These caches let such a step redo only the parts whose inputs changed:
the mesh of a block whose voxels (and halo) are unchanged, the measurements of an
object whose voxels are unchanged, are read back instead of computed. Keys are hashes
of the inputs' bytes and of every setting the result depends on, never timestamps.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from vem3d.atomic import write_atomically

log = logging.getLogger(__name__)


# What reading a kept file raises where it is missing, damaged or of an older layout
# (EOFError: an empty file); the caches count such a file as absent.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@functools.cache
def code_version() -> str:
    """A hash of vem3d's own source files, which every kept result depends on.

    The package version stays the same from commit to commit, so a kept result
    computed by older code (a re-run forced after an update) would otherwise be
    read back beside results of the new code. Any change to the package's source
    makes the caches start afresh.
    """
    digest = hashlib.blake2b(digest_size=16)
    package = Path(__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        digest.update(source.read_bytes())
    return digest.hexdigest()


def content_key(*parts) -> str:
    """A hash of ``parts``: arrays by dtype, shape and bytes, anything else by its ``repr``."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(repr((part.dtype.str, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).data)
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def mask_key(context: str, mask: np.ndarray, *settings) -> str:
    """:func:`content_key` of a binary mask (packed to bits, so hashing reads 8 times less) and settings."""
    mask = np.asarray(mask, dtype=bool)
    return content_key(context, mask.shape, np.packbits(mask), *settings)


class ArrayCache:
    """Arrays kept per key, one ``.npz`` file each, for results too large to keep in one table.

    Parameters
    ----------
    folder : path
        Where the entries live (created).
    context
        What every entry depends on besides its key's parts (settings, ``repr``-able);
        vem3d's source (:func:`code_version`) is added.

    Notes
    -----
    :meth:`prune` removes the entries not read or written since the cache was opened,
    so the folder holds the last run's entries only. An unreadable entry (a run killed
    while writing leaves none: entries are written atomically) counts as missing.
    """

    def __init__(self, folder: str | os.PathLike, context=()):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.context = content_key(context, code_version())
        self.hits = 0
        self.misses = 0
        self._used: set[str] = set()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None."""
        path = self.folder / f"{key}.npz"
        try:
            with np.load(path) as entry:
                arrays = {name: entry[name] for name in entry.files}
        except UNREADABLE:
            self.misses += 1
            return None
        self._used.add(key)
        self.hits += 1
        return arrays

    def put(self, key: str, **arrays: np.ndarray) -> None:
        """Store ``arrays`` under ``key``."""

        def save(temporary: str) -> None:
            with open(temporary, "wb") as entry:
                np.savez(entry, **arrays)

        write_atomically(self.folder / f"{key}.npz", save)
        self._used.add(key)

    def prune(self) -> None:
        """Remove the entries not used since the cache was opened."""
        for path in self.folder.glob("*.npz"):
            if path.stem not in self._used:
                path.unlink(missing_ok=True)


class TableCache:
    """Rows of numbers kept per key, all in one ``.npz`` file, for many small results.

    Parameters
    ----------
    path : path
        The file (``.npz``); read when the cache is opened, written by :meth:`save`
        with the rows used since.
    columns : int
        Numbers per row.
    context
        As for :class:`ArrayCache`.
    """

    def __init__(self, path: str | os.PathLike, columns: int, context=()):
        self.path = Path(path)
        self.columns = columns
        self.context = content_key(context, code_version())
        self.hits = 0
        self.misses = 0
        self._stored: dict[str, np.ndarray] = {}
        self._used: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path) as table:
                if table["values"].shape[1:] == (columns,):
                    self._stored = dict(zip(table["keys"].tolist(), table["values"]))
        except UNREADABLE:
            pass  # no table yet, or one from an older layout: start empty

    def get(self, key: str) -> np.ndarray | None:
        """The row stored under ``key``, or None."""
        row = self._stored.get(key)
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        self._used[key] = row
        return row

    def put(self, key: str, row) -> None:
        """Store ``row`` (``columns`` numbers) under ``key``."""
        self._used[key] = np.asarray(row, dtype=np.float64).reshape(self.columns)

    def save(self) -> None:
        """Write the rows used since the cache was opened, and only those."""
        keys = np.array(list(self._used), dtype=str)
        values = np.array(list(self._used.values()), dtype=np.float64).reshape(-1, self.columns)

        def save(temporary: str) -> None:
            with open(temporary, "wb") as table:
                np.savez(table, keys=keys, values=values)

        write_atomically(self.path, save)
