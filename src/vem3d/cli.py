"""The ``vem3d`` command: each step of the workflow without Snakemake.

Every subcommand calls the package function that the workflow's script for that step
calls, so a command-line run and a workflow run compute the same thing. Output folders
are laid out like the workflow's ``results/{sample}/``. Logs go to stderr.

Only ``train`` and ``segment`` load Keras (seconds), and only ``pictures`` and ``montage``
matplotlib; the other subcommands start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

from vem3d.labels import output_channels
from vem3d.logs import exit_cleanly_on_terminate, log_to
from vem3d.mesh import mesh_volumes
from vem3d.metrics import evaluate_volumes
from vem3d.preprocess import preprocess_stack
from vem3d.provenance import check_weights_settings, read_weights_record
from vem3d.slices import stack_slice_names
from vem3d.stats import statistics_from_volumes, study_table
from vem3d.synth import write_demo_stack
from vem3d.volume import write_volumes

NETWORK_COMMANDS = ("train", "segment")
DEFAULT_CLASSES = ("foreground",)
PICTURE_COMMANDS = ("pictures", "montage")


def _attribute_help(cls) -> dict[str, str]:
    """Description of each attribute in a class's numpydoc ``Attributes`` section, on one line."""
    section = (cls.__doc__ or "").split("Attributes", 1)[-1]
    entries = re.findall(r"^ {4}(\w+) : [^\n]*\n((?: {8}[^\n]*\n?)+)", section, flags=re.MULTILINE)
    # argparse formats help with %, so literal percent signs are doubled.
    return {name: " ".join(text.split()).replace("``", "").replace("%", "%%") for name, text in entries}


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, title: str, skip=(), from_record=False) -> None:
    """One ``--option`` per field of a settings dataclass, defaulting to the field's default;
    with ``from_record``, to None (not given), for the weights' record to fill in (:func:`_unet_settings`)."""
    group = parser.add_argument_group(title)
    helps = _attribute_help(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = None if from_record else field.default
        shown = f"as the weights were trained, else {field.default}" if from_record else "%(default)s"
        text = f"{helps.get(field.name, '')} (default: {shown})"
        if isinstance(field.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(flag, type=type(field.default), default=default, help=text)


def _settings(args: argparse.Namespace, cls, skip=()):
    """Build a settings dataclass from the options :func:`_add_dataclass_options` added."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls) if field.name not in skip})


def _unet_settings(args: argparse.Namespace, recorded: dict | None = None):
    """The U-Net of ``train`` and ``segment``: its options, with one output channel per class
    plus background; options not given (None) take the ``recorded`` settings (the weights'
    record, :func:`vem3d.provenance.read_weights_record`), else their defaults."""
    from vem3d.unet import UNetConfig

    recorded = recorded or {}
    given = vars(args).copy()
    for field in dataclasses.fields(UNetConfig):
        if given.get(field.name, field.default) is None:
            given[field.name] = recorded.get(field.name, field.default)
    unet = _settings(argparse.Namespace(**given), UNetConfig, skip=("n_classes",))
    return dataclasses.replace(unet, n_classes=output_channels(args.classes))


def _class_values(text: str) -> tuple[str, list[int]]:
    """Parse ``CLASS=V[,V...]`` of ``--label-values``."""
    name, _, values = text.partition("=")
    try:
        return name, [int(value) for value in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CLASS=V[,V...] with integer pixel values") from None


def _class_folders(parser: argparse.ArgumentParser, entries: list[list[str]], option: str) -> dict[str, list[Path]]:
    """``{class: folders}`` from repeated ``--class-masks``-like options (CLASS DIR [DIR ...])."""
    folders = {}
    for name, *dirs in entries:
        if not dirs or name in folders:
            parser.error(f"{option} {name}: {'given twice' if dirs else 'needs at least one folder after the class'}")
        folders[name] = [Path(folder) for folder in dirs]
    return folders


def _default(function, name: str):
    """Default of a package function's parameter, so that the command line cannot drift from it."""
    return inspect.signature(function).parameters[name].default


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive number of tiles or ``auto``."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive number of tiles or auto, got {text!r}") from None


def _add_voxel_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--voxel-size",
        nargs=3,
        type=float,
        required=True,
        metavar=("Z", "Y", "X"),
        help="voxel size in nm: slice thickness, pixel height, pixel width",
    )


def _add_block_options(parser: argparse.ArgumentParser, function, work: str, blocks: str, memory: str) -> None:
    """``--block-size``, ``--memory-gib`` and ``--workers``, with the defaults of ``function``.

    ``blocks`` says what 0 means for ``--block-size``, ``memory`` what ``--memory-gib`` bounds.
    """
    parser.add_argument(
        "--block-size",
        type=int,
        default=_default(function, "block_size"),
        help=f"work in blocks of this many voxels a side; 0: {blocks} (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=_default(function, "memory_gib"),
        help=f"{memory}, GiB (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=_default(function, "workers"),
        help=f"processes that {work} at once, up to the cores there are (default: %(default)s)",
    )


def _add_volume_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``volume``: the masks and the 3D clean-up."""
    parser.add_argument(
        "mask_dirs", nargs="*", type=Path, metavar="MASK_DIR", help="mask folders of one class (--class-name), in z order"
    )
    parser.add_argument(
        "--class-masks",
        nargs="+",
        action="append",
        default=[],
        metavar=("CLASS", "MASK_DIR"),
        help="a class and its mask folders in z order, instead of MASK_DIR...; once per class, for several "
        "classes in one volume.zarr (as 'vem3d segment --classes' writes them: OUT/masks/CLASS)",
    )
    _add_voxel_size(parser)
    parser.add_argument("--out-dir", type=Path, required=True, help="sample folder to write into")
    parser.add_argument("--class-name", default="foreground", help="the class of MASK_DIR... (default: %(default)s)")
    parser.add_argument(
        "--z-smoothing-sigma",
        type=float,
        default=_default(write_volumes, "z_smoothing_sigma"),
        help="smooth the probabilities across slices (in slices) and threshold again; needs "
        "--class-probabilities for every class and the whole volume in memory (default: %(default)s)",
    )
    parser.add_argument(
        "--class-probabilities",
        nargs="+",
        action="append",
        default=[],
        metavar=("CLASS", "PROBABILITY_DIR"),
        help="a class and its probability folders in z order (OUT/probabilities/CLASS), for --z-smoothing-sigma",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=_default(write_volumes, "threshold"),
        help="probability above which smoothed voxels are the class (default: %(default)s)",
    )
    parser.add_argument(
        "--min-object-voxels",
        type=int,
        default=_default(write_volumes, "min_object_voxels"),
        help="drop 3D objects with fewer voxels; the workflow uses 64 (default: %(default)s)",
    )
    parser.add_argument(
        "--fill-cavities",
        action=argparse.BooleanOptionalAction,
        default=_default(write_volumes, "fill_cavities"),
        help="fill background cavities enclosed in 3D (default: %(default)s)",
    )
    _add_block_options(
        parser,
        write_volumes,
        "clean up blocks",
        blocks="the whole volume in memory where it fits --memory-gib, else blocks of 256 a side; with "
        "--cache-dir always blocks of 64 x 256 x 256",
        memory="memory the whole-volume clean-up may use (16 bytes a voxel) before it goes block by block",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep the assembled masks and cleaned blocks here (may be shared with mesh's); the next run "
        "decodes only the masks that changed and cleans again only the blocks they reach (default: no cache)",
    )


def _add_surface_options(parser: argparse.ArgumentParser, function, work: str, blocks: str) -> None:
    """Options of ``mesh`` and ``stats``, which read the cleaned volumes of ``volume``."""
    parser.add_argument(
        "volume", type=Path, metavar="VOLUME", help="cleaned volumes written by vem3d volume (volume.zarr)"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="sample folder to write into")
    parser.add_argument(
        "--smoothing-sigma",
        type=float,
        default=_default(function, "smoothing_sigma"),
        help="Gaussian smoothing before marching cubes, voxels; 0 meshes raw voxels (default: %(default)s)",
    )
    _add_block_options(
        parser,
        function,
        work,
        blocks=blocks,
        memory="memory the cleaned volume may take when read whole (2 bytes a voxel); larger ones are read "
        "block by block",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep per-block meshes / per-object measures here and reuse those of unchanged parts on the "
        "next run (default: no cache)",
    )


def build_parser(network_options: bool = True, picture_options: bool = True) -> argparse.ArgumentParser:
    """The argument parser.

    Parameters
    ----------
    network_options : bool
        Add the model and training options of ``train`` and ``segment``, which are
        read from :class:`vem3d.unet.UNetConfig` and :class:`vem3d.train.TrainingConfig`
        and so import Keras.
    picture_options : bool
        Add the options of ``pictures`` and ``montage``, whose defaults are read from
        :mod:`vem3d.render` and so import matplotlib and plotly (0.3 s).
    """
    parser = argparse.ArgumentParser(
        prog="vem3d", description="3D models of cells and organelles from volume EM stacks, step by step."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write a synthetic EM stack with labels and ground truth")
    synth.add_argument("out_dir", type=Path, help="folder to create: slices/, labels/, ground_truth/")
    for flag, name, text in (
        ("--slices", "n_slices", "number of slices"),
        ("--size", "size", "rows and columns per slice"),
        ("--seed", "seed", "random seed"),
        ("--label-every", "label_every", "label every n-th slice"),
    ):
        synth.add_argument(flag, type=int, default=_default(write_demo_stack, name), help=f"{text} (default: %(default)s)")

    preprocess = commands.add_parser("preprocess", help="normalise (and resample) slices for the network")
    preprocess.add_argument("source", type=Path, help="folder of slices, or a multi-page TIFF or MRC stack")
    preprocess.add_argument("out_dir", type=Path, help="folder for the normalised 16-bit slices and shapes.tsv")
    for flag, name, text in (
        ("--low-percentile", "low_percentile", "intensity percentile mapped to 0"),
        ("--high-percentile", "high_percentile", "intensity percentile mapped to 1"),
        ("--scale", "scale", "resampling factor"),
    ):
        preprocess.add_argument(
            flag, type=float, default=_default(preprocess_stack, name), help=f"{text} (default: %(default)s)"
        )
    preprocess.add_argument("--size", type=int, nargs=2, metavar=("ROWS", "COLUMNS"), help="fixed size instead of --scale")

    train = commands.add_parser("train", help="train a U-Net on preprocessed slices with sparse labels")
    train.add_argument(
        "--preprocessed", type=Path, nargs="+", required=True, metavar="DIR", help="preprocessed slice folders"
    )
    train.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="label folders: one for all preprocessed folders, or one each, in the same order",
    )
    train.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="writes unet.weights.h5 (+ .json), training_history.tsv, training_curves.png and "
        "checkpoints/ (a rerun resumes from them)",
    )
    train.add_argument("--initial-weights", type=Path, help="start from these weights (fine-tuning)")
    _add_label_values(train)

    segment = commands.add_parser("segment", help="segment preprocessed slices with trained weights")
    segment.add_argument("preprocessed_dir", type=Path, help="a preprocessed slice folder")
    segment.add_argument("--weights", type=Path, required=True, help="weights file from 'vem3d train'")
    segment.add_argument("--out-dir", type=Path, required=True, help="writes probabilities/ and masks/")
    segment.add_argument(
        "--cache-dir",
        type=Path,
        help="keep each slice's results here (hard links) and reuse them on later runs for slices, "
        "weights and settings that did not change (default: no cache)",
    )

    if network_options:
        from vem3d.segment import segment_folder
        from vem3d.train import TrainingConfig
        from vem3d.unet import PRECISIONS, UNetConfig

        for flag, name, kind, text in (
            ("--tile-size", "tile_size", int, "tile side, a multiple of 2^depth"),
            ("--overlap", "overlap", int, "pixels shared by neighbouring tiles"),
            ("--threshold", "threshold", float, "probability above which a pixel is foreground"),
        ):
            segment.add_argument(flag, type=kind, default=_default(segment_folder, name), help=f"{text} (default: %(default)s)")
        segment.add_argument(
            "--batch-size",
            type=_batch_size,
            default="auto",
            help="tiles per forward pass, or auto: about a quarter of a megapixel on a CPU, 16 "
            "megapixels on a GPU, within a memory budget (default: %(default)s)",
        )
        segment.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=_default(segment_folder, "precision"),
            help="compute precision: mixed_float16 for GPUs, mixed_bfloat16 for GPUs and CPUs "
            "with bfloat16 instructions; weights stay float32 (default: %(default)s)",
        )
        segment.add_argument(
            "--test-time-augmentation",
            action=argparse.BooleanOptionalAction,
            default=_default(segment_folder, "test_time_augmentation"),
            help="average predictions over the 8 flips and rotations of each tile, 8 times slower (default: %(default)s)",
        )
        # segment takes the model and its classes from the weights' record where not given.
        for command, from_record in ((train, False), (segment, True)):
            command.add_argument(
                "--classes",
                nargs="+",
                default=None if from_record else list(DEFAULT_CLASSES),
                metavar="CLASS",
                help="structures to segment, background excluded; one gives a binary network, several a softmax "
                "(the same for train and segment; sets the model's n_classes) (default: "
                + ("as the weights were trained, else " + " ".join(DEFAULT_CLASSES) if from_record else "%(default)s")
                + ")",
            )
            _add_dataclass_options(
                command, UNetConfig, "model (the same for train and segment)", skip=("n_classes",), from_record=from_record
            )
        _add_dataclass_options(train, TrainingConfig, "training")

    volume = commands.add_parser(
        "volume", help="assemble masks into a 3D volume and clean it up: volume.zarr, read by mesh and stats"
    )
    _add_volume_options(volume)
    mesh = commands.add_parser("mesh", help="mesh a cleaned volume: meshes/{class}.stl and mesh_summary.tsv")
    _add_surface_options(mesh, mesh_volumes, "mesh blocks", blocks="blocks of 16 x 256 x 256")
    mesh.add_argument(
        "--max-faces",
        type=int,
        default=_default(mesh_volumes, "max_faces"),
        help="simplify the STL to at most this many faces; 0 keeps the full mesh (default: %(default)s)",
    )
    stats = commands.add_parser("stats", help="measure each 3D object: objects.tsv and objects_summary.tsv")
    _add_surface_options(
        stats, statistics_from_volumes, "label and measure blocks and mesh objects", blocks="blocks of 256"
    )

    evaluate = commands.add_parser(
        "evaluate", help="score cleaned volumes against ground truth: evaluation/scores.tsv and object_scores.tsv"
    )
    evaluate.add_argument("volume", type=Path, metavar="VOLUME", help="cleaned volumes written by vem3d volume")
    evaluate.add_argument(
        "--ground-truth", type=Path, required=True, metavar="DIR",
        help="ground truth named like the slices: masks, label maps or one folder per class; only slices there are scored",
    )
    evaluate.add_argument("--out-dir", type=Path, required=True, help="sample folder to write into")
    _add_label_values(evaluate)

    pictures = commands.add_parser(
        "pictures", help="pictures of a mesh: mesh_preview/NAME.png (three views) and mesh_viewer/NAME.html (3D)"
    )
    montage = commands.add_parser(
        "montage", help="slices with their predicted masks and references outlined: montage/CLASS.png"
    )
    if picture_options:
        _add_picture_options(pictures, montage)

    study = commands.add_parser("study", help="one table of several samples' object summaries")
    study.add_argument(
        "sample_dirs", nargs="+", type=Path, metavar="SAMPLE_DIR",
        help="sample folders with objects_summary.tsv (from vem3d stats); the folder's name is the sample's",
    )
    study.add_argument("--out", type=Path, required=True, help="TSV to write, e.g. study_objects.tsv")
    return parser


def _add_picture_options(pictures: argparse.ArgumentParser, montage: argparse.ArgumentParser) -> None:
    """Options of ``pictures`` and ``montage``, with the defaults of :mod:`vem3d.render`."""
    from vem3d.render import mesh_pictures_from_stl, montage_from_folders

    pictures.add_argument("stl", type=Path, metavar="STL", help="a mesh written by vem3d mesh")
    pictures.add_argument("--out-dir", type=Path, required=True, help="sample folder to write into")
    for flag, name in (("--preview-max-faces", "preview_max_faces"), ("--viewer-max-faces", "viewer_max_faces")):
        pictures.add_argument(
            flag, type=_positive_int, default=_default(mesh_pictures_from_stl, name),
            help="faces at most; larger meshes are simplified (default: %(default)s)",
        )

    montage.add_argument("source", type=Path, help="the raw slices: a folder, or a multi-page TIFF or MRC stack")
    montage.add_argument("mask_dirs", nargs="+", type=Path, metavar="MASK_DIR", help="the class's mask folders")
    montage.add_argument("--out-dir", type=Path, required=True, help="sample folder to write into")
    montage.add_argument("--class-name", default="foreground", help="the class of the masks (default: %(default)s)")
    montage.add_argument(
        "--classes", nargs="+", metavar="CLASS",
        help="every class, in order, to decode label maps of several (default: the --class-name alone)",
    )
    montage.add_argument("--reference", type=Path, metavar="DIR", help="ground truth or labels to outline")
    montage.add_argument(
        "--reference-name", default="reference", help="what the references are, for the legend (default: %(default)s)"
    )
    montage.add_argument(
        "--panels", type=_positive_int, default=_default(montage_from_folders, "n_panels"),
        help="slices shown (default: %(default)s)",
    )
    _add_label_values(montage)


def _add_label_values(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-values",
        nargs="+",
        default=[],
        type=_class_values,
        metavar="CLASS=V[,V...]",
        help="pixel values of a class in integer label maps, e.g. mitochondrion=191 membrane=0,32,64 "
        "(default: a class's position, 1 for the first; a single class: any non-zero value)",
    )


def run(args: argparse.Namespace) -> None:
    """Carry out a parsed command."""
    if args.command == "synth":
        write_demo_stack(args.out_dir, n_slices=args.slices, size=args.size, seed=args.seed, label_every=args.label_every)
    elif args.command == "preprocess":
        names = stack_slice_names(args.source)
        preprocess_stack(
            args.source,
            names,
            args.out_dir,
            reference_name=names[0],
            low_percentile=args.low_percentile,
            high_percentile=args.high_percentile,
            scale=args.scale,
            size=args.size,
        )
    elif args.command == "train":
        from vem3d.train import TrainingConfig, train_from_folders

        labels = args.labels * len(args.preprocessed) if len(args.labels) == 1 else args.labels
        if len(labels) != len(args.preprocessed):
            raise ValueError(f"{len(args.preprocessed)} preprocessed folders but {len(labels)} label folders")
        train_from_folders(
            args.preprocessed,
            labels,
            weights_path=args.out_dir / "unet.weights.h5",
            history_path=args.out_dir / "training_history.tsv",
            curves_path=args.out_dir / "training_curves.png",
            checkpoint_dir=args.out_dir / "checkpoints",
            unet_config=_unet_settings(args),
            config=_settings(args, TrainingConfig),
            initial_weights=args.initial_weights,
            classes=args.classes,
            label_values=dict(args.label_values),
        )
    elif args.command == "segment":
        from vem3d.segment import segment_folder

        made = read_weights_record(args.weights)
        args.classes = args.classes or made.get("classes") or list(DEFAULT_CLASSES)
        unet_config = _unet_settings(args, made.get("settings", {}).get("unet"))
        check_weights_settings(args.weights, unet_config.to_dict(), args.classes)
        segment_folder(
            args.preprocessed_dir,
            args.weights,
            [args.out_dir / "probabilities" / name for name in args.classes],
            [args.out_dir / "masks" / name for name in args.classes],
            unet_config=unet_config,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=None if args.batch_size == "auto" else args.batch_size,
            threshold=args.threshold,
            test_time_augmentation=args.test_time_augmentation,
            precision=args.precision,
            cache_dir=args.cache_dir,
        )
    elif args.command == "volume":
        write_volumes(
            args.masks,
            args.out_dir / "volume.zarr",
            args.voxel_size,
            probability_dirs=args.probabilities or None,
            z_smoothing_sigma=args.z_smoothing_sigma,
            threshold=args.threshold,
            min_object_voxels=args.min_object_voxels,
            fill_cavities=args.fill_cavities,
            block_size=args.block_size,
            memory_gib=args.memory_gib,
            workers=args.workers,
            cache_dir=args.cache_dir,
        )
    elif args.command in ("mesh", "stats"):
        common = {
            "smoothing_sigma": args.smoothing_sigma,
            "block_size": args.block_size,
            "memory_gib": args.memory_gib,
            "cache_dir": args.cache_dir,
            "workers": args.workers,
        }
        args.out_dir.mkdir(parents=True, exist_ok=True)
        if args.command == "mesh":
            mesh_volumes(
                args.volume,
                args.out_dir / "meshes",
                args.out_dir / "mesh_summary.tsv",
                max_faces=args.max_faces,
                **common,
            )
        else:
            statistics_from_volumes(
                args.volume, args.out_dir / "objects.tsv", args.out_dir / "objects_summary.tsv", **common
            )
    elif args.command == "evaluate":
        evaluate_volumes(
            args.volume,
            args.ground_truth,
            args.out_dir / "evaluation" / "scores.tsv",
            args.out_dir / "evaluation" / "object_scores.tsv",
            label_values=dict(args.label_values),
        )
    elif args.command == "pictures":
        from vem3d.render import mesh_pictures_from_stl

        # The workflow draws a missing STL as an empty mesh (a class with no voxels left);
        # a path given here by hand that names no file is a mistake.
        if not args.stl.is_file():
            raise ValueError(f"{args.stl}: no such STL file (vem3d mesh writes none for a class with no voxels left)")
        mesh_pictures_from_stl(
            args.stl,
            args.out_dir / "mesh_preview" / f"{args.stl.stem}.png",
            args.out_dir / "mesh_viewer" / f"{args.stl.stem}.html",
            preview_max_faces=args.preview_max_faces,
            viewer_max_faces=args.viewer_max_faces,
        )
    elif args.command == "montage":
        from vem3d.render import montage_from_folders

        montage_from_folders(
            args.source,
            args.mask_dirs,
            args.out_dir / "montage" / f"{args.class_name}.png",
            reference_dir=args.reference,
            reference_name=args.reference_name,
            n_panels=args.panels,
            classes=args.classes or [args.class_name],
            class_name=args.class_name,
            label_values=dict(args.label_values),
        )
    elif args.command == "study":
        study_table(
            [folder / "objects_summary.tsv" for folder in args.sample_dirs],
            [folder.resolve().name for folder in args.sample_dirs],
            args.out,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vem3d`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    parser = build_parser(network_options=command in NETWORK_COMMANDS, picture_options=command in PICTURE_COMMANDS)
    args = parser.parse_args(argv)
    if args.command == "volume":
        if bool(args.mask_dirs) == bool(args.class_masks):
            parser.error("volume: give either MASK_DIR... (one class) or --class-masks CLASS MASK_DIR...")
        args.masks = _class_folders(parser, args.class_masks, "--class-masks") or {args.class_name: args.mask_dirs}
        args.probabilities = _class_folders(parser, args.class_probabilities, "--class-probabilities")
    exit_cleanly_on_terminate()
    with log_to(None) as logger:
        try:
            run(args)
        except (ValueError, OSError) as error:
            # Bad input: the message names the file or setting; a traceback would bury it.
            logger.error("vem3d %s: %s", args.command, error)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
