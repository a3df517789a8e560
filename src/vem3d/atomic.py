"""Atomic file writes: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomically(path: str | os.PathLike, save: Callable[[str], object]) -> None:
    """Write ``path`` by calling ``save`` on a temporary file beside it, then renaming.

    Parameters
    ----------
    path : path
        The file to create or replace; its folder is created if missing.
    save : callable
        Called with the temporary file's path (a hidden name that ends with
        ``path``'s name, so writers that check the extension accept it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=f"-{path.name}")
    os.close(handle)
    try:
        save(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes files private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Hard-link ``source`` to the new path ``target`` (no extra disk), or copy it where
    a link cannot be made (another file system, or one without hard links)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_directory_atomically(path: str | os.PathLike, save: Callable[[str], object]) -> None:
    """Write the folder ``path`` by calling ``save`` on a temporary folder beside it, then renaming.

    Parameters
    ----------
    path : path
        The folder to create or replace (e.g. a zarr store); its parent is created if
        missing. An existing folder is replaced only once ``save`` has succeeded.
    save : callable
        Called with the temporary folder's path (hidden, empty, ending with ``path``'s name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=path.parent, prefix=".partial-", suffix=f"-{path.name}")
    try:
        save(temporary)
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp makes folders private
        if path.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            retired = tempfile.mkdtemp(dir=path.parent, prefix=".retired-", suffix=f"-{path.name}")
            os.replace(path, Path(retired) / path.name)
            os.replace(temporary, path)
            shutil.rmtree(retired)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
