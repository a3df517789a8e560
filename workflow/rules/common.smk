import contextlib
import io
import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

# Parsing the workflow needs the package of this checkout, installed or not; the
# jobs' environments install it (pip install -e ., or envs/*.post-deploy.sh).
sys.path.insert(0, str(Path(workflow.basedir).parent / "src"))

from vem3d.atomic import refuse_to_write_into
from vem3d.labels import class_values, label_slices, output_channels
from vem3d.provenance import check_weights_settings
from vem3d.slices import (
    is_stack_file,
    list_slices,
    stack_pixel_size_nm,
    stack_slice_files,
    stack_slice_names,
)
from vem3d.synth import demo_slice_names
from vem3d.threads import gpu_device_present

validate(config, schema="../schemas/config.schema.yaml", set_default=True)

OPTIONAL_COLUMNS = ("labels", "ground_truth")
VOXEL_COLUMNS = ("voxel_size_z_nm", "voxel_size_y_nm", "voxel_size_x_nm")


def read_sample_sheet(path):
    """Read and check the sample sheet; one row per sample, indexed by sample name.

    Lines starting with '#' are left out (a '#' elsewhere, as in a path, is kept).
    """
    if not Path(path).is_file():
        raise ValueError(f"sample sheet {path} does not exist (config key 'samples')")
    lines = Path(path).read_text().splitlines(keepends=True)
    sheet = pd.read_csv(
        io.StringIO("".join(line for line in lines if not line.startswith("#"))),
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )
    unknown = sorted(
        set(sheet.columns) - {"sample", "slices", *OPTIONAL_COLUMNS, *VOXEL_COLUMNS}
    )
    if unknown:
        raise ValueError(
            f"sample sheet {path}: unknown column(s) {unknown}; the columns are sample, slices, "
            f"{', '.join(OPTIONAL_COLUMNS)} (optional) and {', '.join(VOXEL_COLUMNS)}"
        )
    for column in OPTIONAL_COLUMNS:
        if column not in sheet:
            sheet[column] = ""
    missing = [column for column in VOXEL_COLUMNS if column not in sheet]
    if missing:
        raise ValueError(f"sample sheet {path}: missing column(s) {missing}")
    for column in VOXEL_COLUMNS:
        numbers = pd.to_numeric(sheet[column], errors="coerce")
        for sample, text in zip(
            sheet["sample"][numbers.isna()], sheet[column][numbers.isna()]
        ):
            raise ValueError(
                f"sample sheet {path}: sample {sample!r}, column {column!r}: {text!r} is not a "
                "number of nanometres"
            )
        sheet[column] = numbers
    validate(sheet, schema="../schemas/samples.schema.yaml")
    duplicates = sorted(set(sheet["sample"][sheet["sample"].duplicated()]))
    if duplicates:
        raise ValueError(f"sample sheet {path}: duplicate sample name(s) {duplicates}")
    return sheet.set_index("sample", drop=False)


samples = read_sample_sheet(config["samples"])
CLASSES = config["model"]["classes"]
# Stops on a class name in model.label_values that model.classes lacks, or a value given
# to two classes, before any work.
class_values(CLASSES, config["model"]["label_values"])
DEMO_DIR = Path(config["demo"]["path"])
DEMO_SLICE_NAMES = demo_slice_names(config["demo"]["n_slices"])
DEMO_LABEL_NAMES = DEMO_SLICE_NAMES[
    config["demo"]["label_every"] // 2 :: config["demo"]["label_every"]
]
DEMO_FOLDERS = {
    "slices": DEMO_DIR / "slices",
    "labels": DEMO_DIR / "labels",
    "ground_truth": DEMO_DIR / "ground_truth",
}


wildcard_constraints:
    sample="|".join(map(re.escape, samples.index)),
    chunk=r"chunk\d\d\d\d+",  # chunk0000 to chunk9999, then chunk10000 on
    class_name="|".join(map(re.escape, config["model"]["classes"])),


def is_demo(path):
    """Whether a sample-sheet path is one the workflow generates (the demo stack)."""
    return Path(path) in DEMO_FOLDERS.values()


def demo_files(folder, names):
    return [str(DEMO_FOLDERS[folder] / f"{name}.png") for name in names]


@contextlib.contextmanager
def naming_sample(sample, column):
    """Turn an unusable slice folder or stack (or any bad input found in one) into an
    error naming the sample-sheet cell."""
    try:
        yield
    # SliceError among the ValueErrors; OSError: a missing folder, or a file for one.
    except (ValueError, OSError) as error:
        raise ValueError(f"sample {sample!r}, column {column!r}: {error}") from error


# Every output goes under results/ and logs/: refused inside an input folder (a project
# folder within the slice folder, say) before any work rather than by the first job.
for sample in samples.index:
    for column in ("slices", *OPTIONAL_COLUMNS):
        if samples.loc[sample, column]:
            with naming_sample(sample, column):
                refuse_to_write_into([samples.loc[sample, column]], "results", "logs")


def _listed_slice_files(sample):
    """Slice name -> file of a sample's stack in z order (each name -> the one file of a
    TIFF or MRC stack); listed once, as input functions ask for it job after job."""
    source = samples.loc[sample, "slices"]
    if is_demo(source):
        return dict(zip(DEMO_SLICE_NAMES, demo_files("slices", DEMO_SLICE_NAMES)))
    with naming_sample(sample, "slices"):
        names = stack_slice_names(source)
        files = (
            [source] * len(names)
            if is_stack_file(source)
            else stack_slice_files(source, names)
        )
    return {name: str(path) for name, path in zip(names, files)}


SLICE_FILES = {sample: _listed_slice_files(sample) for sample in samples.index}
SLICE_NAMES = {sample: list(files) for sample, files in SLICE_FILES.items()}


def warn_of_other_pixel_sizes(sheet):
    """Say where an MRC stack's header gives another pixel size than the sample sheet."""
    for sample, row in sheet.iterrows():
        with naming_sample(sample, "slices"):
            header_nm = stack_pixel_size_nm(row["slices"])
        sheet_nm = (float(row["voxel_size_y_nm"]), float(row["voxel_size_x_nm"]))
        if header_nm and any(
            abs(given - header) > 0.01 * header
            for given, header in zip(sheet_nm, header_nm)
        ):
            print(
                f"vem3d: sample {sample!r}: the sample sheet gives pixels of "
                f"{sheet_nm[0]:g} x {sheet_nm[1]:g} nm (voxel_size_y_nm, voxel_size_x_nm), "
                f"but the header of {row['slices']} says {header_nm[0]:g} x "
                f"{header_nm[1]:g} nm. The sheet's are used; every volume and area "
                "measured scales with them.",
                file=sys.stderr,
            )


if workflow.is_main_process:  # once, not again in every job
    warn_of_other_pixel_sizes(samples)


def chunk_ids(sample):
    """Chunk ids of a sample: consecutive runs of chunk_size slices, stable when slices are appended."""
    n_chunks = -(-len(SLICE_NAMES[sample]) // config["chunk_size"])
    return [f"chunk{index:04d}" for index in range(n_chunks)]


def chunk_slice_names(sample, chunk):
    start = int(chunk.removeprefix("chunk")) * config["chunk_size"]
    return SLICE_NAMES[sample][start : start + config["chunk_size"]]


def slice_files(sample, names):
    """The files holding a sample's named slices (or the one stack file)."""
    return list(dict.fromkeys(SLICE_FILES[sample][name] for name in names))


def get_chunk_slice_files(wildcards):
    """Input of a preprocessing job: the chunk's slice files (or the one stack file)."""
    return slice_files(
        wildcards.sample, chunk_slice_names(wildcards.sample, wildcards.chunk)
    )


def label_files(sample, column="labels"):
    """Files of a sample's label (or ground-truth) folder; empty when the sample has none."""
    folder = samples.loc[sample, column]
    if not folder:
        return []
    if is_demo(folder):
        return demo_files(
            column, DEMO_LABEL_NAMES if column == "labels" else DEMO_SLICE_NAMES
        )
    with naming_sample(sample, column):
        return [
            str(path)
            for paths in label_slices(folder, CLASSES).values()
            for path in paths
        ]


def montage_reference(sample):
    """Column whose masks the slice montage outlines: ground truth, else labels, else None."""
    for column in ("ground_truth", "labels"):
        if samples.loc[sample, column]:
            return column
    return None


def get_montage_references(wildcards):
    """Input function of the montage: the files of its reference column (or none)."""
    column = montage_reference(wildcards.sample)
    return label_files(wildcards.sample, column) if column else []


def montage_reference_params(wildcards):
    """The montage's reference folder and its name as the picture shows it."""
    column = montage_reference(wildcards.sample)
    return {
        "folder": samples.loc[wildcards.sample, column] if column else None,
        "name": (column or "reference").replace("_", " "),
    }


def labelled_chunks(sample):
    """Chunks of a sample that hold at least one labelled slice."""
    labelled = {Path(path).stem for path in label_files(sample)}
    return [
        chunk
        for chunk in chunk_ids(sample)
        if labelled & set(chunk_slice_names(sample, chunk))
    ]


TRAINING_SAMPLES = [sample for sample in samples.index if samples.loc[sample, "labels"]]
TRAINING_CHUNKS = [
    (sample, chunk) for sample in TRAINING_SAMPLES for chunk in labelled_chunks(sample)
]
WEIGHTS = (
    "results/model/unet.weights.h5"
    if config["train"]["enabled"]
    else config["model"]["weights"]
)
if config["train"]["enabled"] and not TRAINING_CHUNKS:
    raise ValueError(
        "train.enabled is true but no sample in the sample sheet has labels matching its "
        "slices: fill the 'labels' column, or set train.enabled to false and model.weights"
    )


def unet_settings():
    """Keyword arguments of vem3d.unet.UNetConfig from the config."""
    return {
        **{
            key: config["model"][key]
            for key in ("depth", "base_filters", "batch_norm", "dropout")
        },
        "n_classes": output_channels(CLASSES),
    }


# Network input sides, before any work (vem3d.unet.check_input_side checks them again
# in the jobs; importing it here would load Keras into every dry run).
for key, side in (
    ("train.patch_size", config["train"]["patch_size"]),
    ("segment.tile_size", config["segment"]["tile_size"]),
):
    if side % 2 ** config["model"]["depth"]:
        raise ValueError(
            f"{key} is {side}, but model.depth {config['model']['depth']} needs a multiple "
            f"of {2 ** config['model']['depth']}"
        )

if config["segment"]["overlap"] >= config["segment"]["tile_size"]:
    raise ValueError(
        f"segment.overlap ({config['segment']['overlap']}) must be below "
        f"segment.tile_size ({config['segment']['tile_size']})"
    )

if config["preprocess"]["low_percentile"] >= config["preprocess"]["high_percentile"]:
    raise ValueError(
        f"preprocess.low_percentile ({config['preprocess']['low_percentile']}) must be "
        f"below preprocess.high_percentile ({config['preprocess']['high_percentile']})"
    )

# z-smoothing needs whole volumes (vem3d.volume.write_volumes stops otherwise, but
# only after segmentation).
if config["mesh"]["z_smoothing_sigma"] and config["mesh"]["block_size"]:
    raise ValueError(
        "mesh.z_smoothing_sigma needs the whole volume in memory, but mesh.block_size "
        "makes the clean-up go block by block: set one of them to 0"
    )

if not config["train"]["enabled"] and not WEIGHTS:
    raise ValueError(
        "train.enabled is false, so model.weights must name a weights file"
    )
# Weights named in the config must exist and fit the configured network, before any work;
# those segmented with must also have been trained for the configured classes, in order
# (weights to fine-tune may come from other structures).
for key, path, classes in (
    ("model.weights", "" if config["train"]["enabled"] else WEIGHTS, CLASSES),
    ("train.initial_weights", config["train"]["initial_weights"], None),
):
    if path:
        try:
            check_weights_settings(path, unet_settings(), classes)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error


def every_core(wildcards):
    """Threads of train and volume: every core given with --cores; 1 where none is given
    (snakemake --report), which workflow.cores would refuse."""
    return workflow.resource_settings.cores or 1


def surface_threads(wildcards):
    """Processes of mesh and object_statistics, which run side by side on the one
    cleaned volume: half the cores each."""
    return max(1, every_core(wildcards) // 2)


HAS_GPU = gpu_device_present()


def segment_threads(wildcards):
    """Threads of a segment job. Without a GPU, half the cores: two chunks run at once,
    so that one's start (importing TensorFlow and, with XLA, compiling the network:
    5 to 7 s on 2 cores) overlaps the other's forward passes, and two one-thread jobs do 13 % more
    forward passes per second than one two-thread job (2 AVX2 cores). With a GPU, all
    cores and one chunk at a time, which then has the GPU's memory to itself.
    --set-threads segment=N overrides this."""
    cores = every_core(wildcards)
    return cores if HAS_GPU else max(1, cores // 2)


def voxel_size_nm(sample):
    return [float(samples.loc[sample, column]) for column in VOXEL_COLUMNS]


def class_chunk_dirs(sample, step):
    """Each class's chunk folders of masks or probabilities, in z order, by class name."""
    return {
        name: [f"results/{sample}/{step}/{name}/{chunk}" for chunk in chunk_ids(sample)]
        for name in CLASSES
    }


def get_volume_inputs(wildcards):
    """Input of the steps that read the 3D result: masks, and probabilities when smoothed along z."""
    steps = ["masks"] + (
        ["probabilities"] if config["mesh"]["z_smoothing_sigma"] else []
    )
    return [
        folder
        for step in steps
        for folders in class_chunk_dirs(wildcards.sample, step).values()
        for folder in folders
    ]


def clean_up_settings(wildcards):
    """Keyword arguments of vem3d.volume.write_volumes (the 3D clean-up) for a sample."""
    return {
        "mask_dirs": class_chunk_dirs(wildcards.sample, "masks"),
        "probability_dirs": class_chunk_dirs(wildcards.sample, "probabilities"),
        "z_smoothing_sigma": config["mesh"]["z_smoothing_sigma"],
        "threshold": config["segment"]["threshold"],
        "min_object_voxels": config["mesh"]["min_object_voxels"],
        "fill_cavities": config["mesh"]["fill_cavities"],
    }


def sample_outputs(sample):
    """The results of one sample that rule all asks for (provenance aside)."""
    outputs = [
        f"results/{sample}/{name}" for name in ("mesh_summary.tsv", "objects.tsv")
    ]
    outputs += [
        f"results/{sample}/{name}/{class_name}.{extension}"
        for name, extension in (
            ("mesh_preview", "png"),
            ("mesh_viewer", "html"),
            ("montage", "png"),
        )
        for class_name in CLASSES
    ]
    if samples.loc[sample, "ground_truth"]:
        outputs.append(f"results/{sample}/evaluation/scores.tsv")
    return outputs


def sample_benchmarks(sample):
    """Benchmark file of each step that made a sample's results, by step name."""
    steps = [
        f"{step}/{chunk}"
        for step in ("preprocess", "segment")
        for chunk in chunk_ids(sample)
    ]
    steps += ["volume", "mesh", "object_statistics"]
    if samples.loc[sample, "ground_truth"]:
        steps.append("evaluate")
    steps += [
        f"{step}/{class_name}"
        for step in ("mesh_pictures", "montage")
        for class_name in CLASSES
    ]
    files = {step: f"results/benchmarks/{sample}/{step}.tsv" for step in steps}
    if config["train"]["enabled"]:
        files["train"] = "results/benchmarks/train.tsv"
    return files


def get_final_outputs():
    outputs = []
    for sample in samples.index:
        outputs += sample_outputs(sample)
        outputs.append(f"results/{sample}/provenance.json")
    if config["train"]["enabled"]:
        outputs.append("results/model/training_curves.png")
    outputs.append("results/study_objects.tsv")
    return outputs
