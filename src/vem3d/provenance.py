"""Machine-readable provenance of a sample's results: inputs, weights, settings, software, times."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import pandas as pd

from vem3d.atomic import write_text_atomically
from vem3d.cache import code_version

PACKAGES = (
    "vem3d",
    "numpy",
    "scipy",
    "scikit-image",
    "imageio",
    "pillow",
    "tifffile",
    "mrcfile",
    "zarr",
    "connected-components-3d",
    "numpy-stl",
    "pandas",
    "matplotlib",
    "plotly",
    "keras",
    "tensorflow",
    "snakemake",
)


def file_sha256(path: str | os.PathLike, block_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed version of each named distribution (None where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _plain(value):
    """JSON form of numpy scalars (from the sample sheet) and paths."""
    return value.item() if hasattr(value, "item") else str(value)


def _timestamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).isoformat(timespec="seconds")


def step_times(benchmark_files: dict[str, str | os.PathLike]) -> list[dict]:
    """When each step ran, from Snakemake benchmark files.

    Parameters
    ----------
    benchmark_files : dict of str to path
        Step name (e.g. ``segment/chunk0000``) to its benchmark TSV; missing files are
        skipped.

    Returns
    -------
    list of dict
        ``step``, ``started`` and ``finished`` (ISO 8601, UTC) and ``seconds`` (wall
        time). ``finished`` is the benchmark file's modification time, written as the
        job ended; ``started`` is that less the wall time.
    """
    steps = []
    for step, path in benchmark_files.items():
        if not Path(path).is_file():
            continue
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
        finished = Path(path).stat().st_mtime
        steps.append(
            {"step": step, "started": _timestamp(finished - seconds), "finished": _timestamp(finished), "seconds": seconds}
        )
    return sorted(steps, key=lambda row: row["started"])


def write_provenance(
    path: str | os.PathLike,
    sample: str,
    config: dict,
    sample_row: dict,
    input_files: dict[str, list],
    weights_path: str | os.PathLike,
    benchmark_files: dict[str, str | os.PathLike],
) -> dict:
    """Write a JSON record of how a sample's results were made.

    Parameters
    ----------
    path : path
        JSON file to write.
    sample : str
        Sample name.
    config : dict
        The effective workflow configuration (defaults filled in).
    sample_row : dict
        The sample's row of the sample sheet (paths, voxel size in nm).
    input_files : dict of str to list of path
        Input files by kind (``slices``, ``labels``, ``ground_truth``); each is
        recorded with its size in bytes and SHA-256.
    weights_path : path
        The weights the sample was segmented with; ``{weights_path}.json`` (written
        by training: labelled slices, settings, the kept epoch's score) is included
        where it exists.
    benchmark_files : dict of str to path
        As for :func:`step_times`.

    Returns
    -------
    dict
        The record: ``sample``, ``written``, ``python``, ``packages`` (versions in
        the environment of the job that wrote the record), ``vem3d_source`` (a hash
        of vem3d's source files, :func:`vem3d.cache.code_version`: the version
        number stays the same between commits), ``config``, ``sample_sheet``,
        ``inputs``, ``weights`` (path, SHA-256, how they were made), ``steps``,
        ``started`` and ``finished`` (first start and last end of the steps).
    """
    steps = step_times(benchmark_files)
    record = {
        "sample": sample,
        "written": _timestamp(datetime.datetime.now(datetime.timezone.utc).timestamp()),
        "python": platform.python_version(),
        "packages": package_versions(),
        "vem3d_source": code_version(),
        "config": config,
        "sample_sheet": sample_row,
        "inputs": {
            kind: [{"path": str(file), "bytes": Path(file).stat().st_size, "sha256": file_sha256(file)} for file in files]
            for kind, files in input_files.items()
        },
        "weights": {
            "path": str(weights_path),
            "sha256": file_sha256(weights_path),
            "made_by": read_weights_record(weights_path) or None,
        },
        "steps": steps,
        "started": steps[0]["started"] if steps else None,
        "finished": max(step["finished"] for step in steps) if steps else None,
    }
    write_text_atomically(path, json.dumps(record, indent=1, default=_plain))
    return record


def read_weights_record(weights_path: str | os.PathLike) -> dict:
    """What ``{weights}.json``, written beside weights vem3d trained, records: ``settings``
    (``unet``: the U-Net's, :meth:`vem3d.unet.UNetConfig.to_dict`; ``training``) and
    ``classes`` (the network's outputs, in order); empty for weights without it."""
    record = Path(f"{weights_path}.json")
    if not record.is_file():
        return {}
    try:
        made = json.loads(record.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{record}: not a weights record, not JSON ({error})") from None
    if not isinstance(made, dict):
        raise ValueError(f"{record}: not a weights record: expected a JSON object, found {type(made).__name__}")
    return made


def check_weights_settings(weights_path: str | os.PathLike, unet_settings: dict, classes=None) -> None:
    """Check, before any work, that weights were trained for the configured network.

    vem3d writes ``{weights}.json`` beside the weights it trains, recording the U-Net
    settings and the classes of the network's outputs; this compares them with
    ``unet_settings`` (the config's ``model`` keys) and, where given and more than
    one, with ``classes`` (in order: the outputs are the classes in the order they
    were trained). Weights without that record are checked only when they are loaded.

    Raises
    ------
    ValueError
        If the weights file is missing, or its record names other settings (each
        differing key with both values) or other classes.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: weights file does not exist")
    made = read_weights_record(weights_path)
    trained = made.get("settings", {}).get("unet", {})
    differing = {
        key: (trained[key], value) for key, value in unet_settings.items() if key in trained and trained[key] != value
    }
    if differing:
        details = ", ".join(f"{key}: trained with {old!r}, configured {new!r}" for key, (old, new) in differing.items())
        raise ValueError(f"{weights_path}: weights do not match the configured model ({details})")
    # A one-class network's output is the class whatever its name; several are told apart by order.
    trained_classes = made.get("classes")
    if classes is not None and len(classes) > 1 and trained_classes is not None and trained_classes != list(classes):
        raise ValueError(
            f"{weights_path}: weights were trained for the classes {trained_classes}, in that order, "
            f"but model.classes (--classes) is {list(classes)}: set it to the trained classes"
        )
