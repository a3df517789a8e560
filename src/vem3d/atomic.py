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
    """Hard-link ``source`` to ``target`` (no extra disk), or copy it where a link cannot
    be made (another file system, or one without hard links).

    An existing ``target`` is replaced atomically, through a temporary name beside it,
    so that a run resumed over the outputs of one interrupted does not fail on them;
    a ``target`` that already is ``source`` (the same file) is left as it is.
    """
    target = Path(target)
    if target.exists() and os.path.samefile(source, target):
        return
    temporary = target.with_name(f".partial-{os.getpid()}-{target.name}")
    temporary.unlink(missing_ok=True)  # left by a killed process that had this id
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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


def refuse_to_write_into(inputs, *outputs) -> None:
    """Stop before writing any of ``outputs`` into (or over) one of the input folders.

    Inputs are only ever read: an output folder that is an input folder, or inside one,
    would mix results with the data (or, with the same names, replace it).

    Parameters
    ----------
    inputs : iterable of path
        Input folders and files; only folders are guarded (a stack file's folder
        may hold outputs).
    *outputs : path or None
        Output files and folders about to be written; None is skipped.

    Raises
    ------
    ValueError
        Naming the output and the input folder it lies in.
    """
    folders = [(Path(source), Path(source).resolve()) for source in inputs if Path(source).is_dir()]
    for output in filter(None, outputs):
        resolved = Path(output).resolve()
        for folder, folder_resolved in folders:
            if resolved == folder_resolved or folder_resolved in resolved.parents:
                raise ValueError(
                    f"{output}: lies in the input folder {folder}; inputs are only read, "
                    "so write the outputs to a folder outside it"
                )
