"""The workflow run through Snakemake on tiny configurations."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import mrcfile
import numpy as np
import pandas as pd
import pytest
import yaml
from stl import mesh as stl_mesh

from vem3d.synth import write_demo_stack

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"

TINY_CONFIG = {
    "samples": "config/samples.tsv",
    "chunk_size": 4,
    "demo": {"path": "resources/demo", "n_slices": 8, "size": 64, "seed": 1, "label_every": 2},
    "model": {"classes": ["mitochondrion"], "depth": 2, "base_filters": 4},
    "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "patch_size": 32},
    "segment": {"tile_size": 32, "overlap": 8, "threshold": 0.5},
    "mesh": {"min_object_voxels": 0},
}
HEADER = "sample\tslices\tlabels\tground_truth\tvoxel_size_z_nm\tvoxel_size_y_nm\tvoxel_size_x_nm\n"
DEMO_ROW = "demo\tresources/demo/slices\tresources/demo/labels\tresources/demo/ground_truth\t20\t10\t10\n"


def make_project(tmp_path, rows=(DEMO_ROW,), **overrides):
    config = {**TINY_CONFIG, **overrides}
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "config" / "samples.tsv").write_text(HEADER + "".join(rows))
    return tmp_path


def snakemake(project, *arguments, cores="2"):
    """Run Snakemake on a project; cores=None leaves --cores out (as 'snakemake --report' is typed)."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(project),
         *(["--cores", cores] if cores else []), *arguments],
        capture_output=True,
        text=True,
    )


# A threshold just above 0 (the schema refuses 0) makes every pixel foreground, so the
# mesh step certainly has an object to mesh however little two epochs teach the network.
EVERYTHING_FOREGROUND = {"segment": {**TINY_CONFIG["segment"], "threshold": 1e-9}}


@pytest.fixture(scope="module")
def tiny_demo_run(tmp_path_factory):
    """A project in which the tiny demo has run once; shared by the tests that inspect its outputs."""
    project = make_project(tmp_path_factory.mktemp("tiny_demo"), **EVERYTHING_FOREGROUND)
    result = snakemake(project)
    assert result.returncode == 0, result.stderr[-3000:]
    return project, result


def check_tiny_demo_outputs(project, result):
    """Every core output of a tiny demo run with EVERYTHING_FOREGROUND is there and plausible."""
    names = [f"slice_{z:04d}" for z in range(8)]
    for step, suffix in (("preprocessed", "tif"), ("probabilities", "png"), ("masks", "png")):
        found = sorted(path.stem for path in (project / "results/demo" / step).glob(f"**/chunk*/*.{suffix}"))
        assert found == names, step
    masks = np.stack(
        [iio.imread(path) for path in sorted((project / "results/demo/masks/mitochondrion").glob("chunk*/*.png"))]
    )
    assert masks.shape == (8, 64, 64) and set(np.unique(masks)) <= {0, 255}
    solid = stl_mesh.Mesh.from_file(project / "results/demo/meshes/mitochondrion.stl")
    assert len(solid.vectors) > 0
    summary = (project / "results/demo/mesh_summary.tsv").read_text().splitlines()
    assert summary[0].split("\t")[:3] == ["class", "objects", "foreground_voxels"]
    assert int(summary[1].split("\t")[2]) == np.count_nonzero(masks) > 0
    for name in ("unet.weights.h5", "training_history.tsv", "training_curves.png", "unet.weights.h5.json"):
        assert (project / "results/model" / name).is_file(), name
    scores = (project / "results/demo/evaluation/scores.tsv").read_text()
    assert scores.splitlines()[-1].startswith("mitochondrion\tvolume")
    assert "vem3d: demo: mitochondrion: Dice" in result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end(tiny_demo_run):
    project, result = tiny_demo_run
    check_tiny_demo_outputs(project, result)
    names = [f"slice_{z:04d}" for z in range(8)]
    for picture in ("mesh_preview", "montage"):
        assert iio.imread(project / "results/demo" / picture / "mitochondrion.png").std() > 10, picture
    assert "plotly" in (project / "results/demo/mesh_viewer/mitochondrion.html").read_text()
    objects = pd.read_csv(project / "results/demo/objects.tsv", sep="\t")
    assert list(objects["voxels"]) == [8 * 64 * 64] and list(objects["class"]) == ["mitochondrion"]
    study = pd.read_csv(project / "results/study_objects.tsv", sep="\t")
    assert list(study["sample"]) == ["demo"] and study.loc[0, "volume_fraction"] == 1.0
    provenance = json.loads((project / "results/demo/provenance.json").read_text())
    weights = (project / "results/model/unet.weights.h5").read_bytes()
    assert provenance["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert provenance["weights"]["made_by"]["labelled_slices"]
    assert [Path(item["path"]).stem for item in provenance["inputs"]["slices"]] == names
    assert provenance["config"]["segment"]["threshold"] == 1e-9
    assert {"train", "segment/chunk0001", "mesh"} <= {step["step"] for step in provenance["steps"]}
    assert provenance["started"] < provenance["finished"]
    # A second run finds nothing to do.
    again = snakemake(project, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def chromium(*arguments, cwd):
    """Run headless Chromium (Debian's package); skip the test where it is not installed."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return subprocess.run(
        [executable, *CHROMIUM_FLAGS, "--virtual-time-budget=15000", *arguments],
        cwd=cwd, capture_output=True, text=True, timeout=180,
    )


@pytest.mark.slow
def test_report_holds_pictures_tables_and_the_3d_view(tiny_demo_run):
    project, _ = tiny_demo_run
    started = time.monotonic()
    result = snakemake(project, "--report", "report.html", cores=None)
    print(f"report built in {time.monotonic() - started:.1f} s, {(project / 'report.html').stat().st_size} bytes")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "mitochondrion.png", "mitochondrion.html", "objects.tsv", "objects_summary.tsv",
        "study_objects.tsv", "training_curves.png", "training_history.tsv", "scores.tsv", "mesh_summary.tsv",
        "provenance.json",
    ):
        assert f"Adding {name}" in result.stderr, name


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tiny_demo_run):
    project, _ = tiny_demo_run
    if not (project / "report.html").is_file():
        assert snakemake(project, "--report", "report.html", cores=None).returncode == 0
    dom = chromium("--dump-dom", "report.html", cwd=project)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in ("Training", "Segmentation", "Evaluation", "Meshes", "Objects", "Provenance"):
        assert f">{section}<" in dom.stdout, section  # drawn in the menu, not just in the data
    shot = chromium("--screenshot=report.png", "--window-size=1280,900", "report.html", cwd=project)
    assert shot.returncode == 0, shot.stderr[-2000:]
    picture = iio.imread(project / "report.png")[..., :3]
    assert picture.std() > 10 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 50  # not blank


@pytest.mark.slow
def test_3d_viewer_page_runs_without_network(tiny_demo_run):
    project, _ = tiny_demo_run
    # No proxy reachable and no DNS: any fetch would fail, so a drawn plot proves the page stands alone.
    dom = chromium(
        "--proxy-server=127.0.0.1:9", "--dump-dom", "results/demo/mesh_viewer/mitochondrion.html", cwd=project
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # plotly marks the graph's div once it has drawn it (the name alone is also in the library).
    assert re.search(r'<div[^>]*class="[^"]*js-plotly-plot', dom.stdout)


def own_stack(tmp_path, n_slices=4, shape=(32, 32)):
    folder = tmp_path / "stack"
    folder.mkdir()
    for z in range(n_slices):
        iio.imwrite(folder / f"img{z}.png", np.full(shape, 40 * z, np.uint8))
    return folder


def row(name, slices, voxel="20\t10\t10"):
    return f"{name}\t{slices}\t\t\t{voxel}\n"


def test_dry_run_of_the_default_config_succeeds():
    # Every job, also where the README's demo has already run in this checkout (then
    # a plain dry run has nothing to do and says so instead).
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "This was a dry-run" in result.stdout


def test_lint_reports_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_is_clean():
    if shutil.which("snakefmt") is None:
        pytest.skip("snakefmt is not installed (pip install -e .[test])")
    result = subprocess.run(["snakefmt", "--check", "workflow"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "sample_row, message",
    [
        (row("s1", "does/not/exist"), "does/not/exist: slice folder does not exist"),
        (row("s1", "{stack}", voxel="0\t10\t10"), "voxel_size_z_nm"),
        (row("s1", "{stack}", voxel="-5\t10\t10"), "voxel_size_z_nm"),
        (row("../x", "{stack}"), "does not match"),
        (row("s1", "{stack}") + row("s1", "{stack}"), "duplicate sample name"),
        (row("s1", "{empty}"), "no slice files found"),
        (row("s1", "{not_mrc}"), "not.mrc: cannot be read as an MRC stack"),
        (
            row("s1", "{stack}").replace("\t\t\t", "\tno/labels\t\t"),
            "sample 's1', column 'labels': [Errno 2] No such file or directory: 'no/labels'",
        ),
    ],
    ids=[
        "missing-path", "zero-voxel", "negative-voxel", "path-in-name", "duplicate-name", "empty-folder", "not-mrc",
        "missing-labels",
    ],
)
def test_bad_sample_sheet_stops_before_any_work(tmp_path, sample_row, message):
    stack = own_stack(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "not.mrc").write_text("a text file named like an MRC stack\n" * 64)
    project = make_project(
        tmp_path,
        rows=(DEMO_ROW, sample_row.format(stack=stack, empty=tmp_path / "empty", not_mrc=tmp_path / "not.mrc")),
    )
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / "img2.png").write_bytes(b""), "img2.png: slice file is empty"),
        (lambda folder: (folder / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "img1.png: cannot be read"),
        (lambda folder: iio.imwrite(folder / "img3.png", np.zeros((32, 40), np.uint8)), "slice img3 has shape (32, 40)"),
    ],
    ids=["zero-byte", "corrupt", "other-shape"],
)
def test_bad_slice_stops_the_run_naming_the_file(tmp_path, damage, message):
    stack = own_stack(tmp_path)
    damage(stack)
    before = {path.name: path.read_bytes() for path in stack.iterdir()}
    project = make_project(tmp_path, rows=(DEMO_ROW, row("own", stack)))
    result = snakemake(project, "--until", "preprocess")
    assert result.returncode != 0
    logs = "".join(path.read_text() for path in (project / "logs/own/preprocess").glob("*.log"))
    assert message in logs
    assert {path.name: path.read_bytes() for path in stack.iterdir()} == before


def test_an_mrc_stack_is_preprocessed_section_by_section(tmp_path):
    stack = np.random.default_rng(1).integers(-500, 4000, (5, 32, 32)).astype(np.int16)
    source = tmp_path / "data" / "stack.mrc"
    source.parent.mkdir()
    with mrcfile.new(source) as mrc:
        mrc.set_data(stack)
    before = source.read_bytes()
    project = make_project(tmp_path, rows=(DEMO_ROW, row("own", source)))
    result = snakemake(project, "--until", "preprocess")
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(path.name for path in (project / "results/own/preprocessed").rglob("*.tif"))
    assert written == [f"z{z:04d}.tif" for z in range(5)]
    assert [path.name for path in source.parent.iterdir()] == ["stack.mrc"] and source.read_bytes() == before


def test_an_mrc_header_of_another_pixel_size_is_pointed_out_once(tmp_path):
    source = tmp_path / "stack.mrc"
    with mrcfile.new(source) as mrc:
        mrc.set_data(np.zeros((3, 32, 32), np.int16))
        mrc.voxel_size = 50.0  # Angstrom: pixels of 5 nm, where the sheet says 10
    project = make_project(tmp_path, rows=(DEMO_ROW, row("own", source)))
    result = snakemake(project, "--until", "preprocess")
    assert result.returncode == 0, result.stderr[-3000:]
    warning = f"sample 'own': the sample sheet gives pixels of 10 x 10 nm (voxel_size_y_nm, voxel_size_x_nm), but the header of {source} says 5 x 5 nm"
    assert result.stderr.count(warning) == 1


def test_demo_data_generation_is_deterministic(tmp_path):
    first = write_demo_stack(tmp_path / "a", n_slices=3, size=48, seed=5)
    second = write_demo_stack(tmp_path / "b", n_slices=3, size=48, seed=5)
    for path in first["slices"].iterdir():
        assert path.read_bytes() == (second["slices"] / path.name).read_bytes()


@pytest.mark.slow
def test_only_changed_slices_are_reprocessed(tmp_path):
    stack = own_stack(tmp_path, n_slices=6)
    project = make_project(tmp_path, rows=(DEMO_ROW, row("own", stack)))
    first = snakemake(project)
    assert first.returncode == 0, first.stderr[-3000:]
    # Same bytes, new time stamp: nothing to do.
    (stack / "img1.png").touch()
    touched = snakemake(project, "-n")
    assert "Nothing to be done" in touched.stdout + touched.stderr
    # New content in the second chunk (slices 4-5): that chunk and what depends on it.
    iio.imwrite(stack / "img5.png", np.full((32, 32), 99, np.uint8))
    assert planned_jobs(project) == {"preprocess": 1, "segment": 1, "train": 0, "mesh": 1}
    assert snakemake(project).returncode == 0
    # Appended slices: the partial last chunk and the new one, nothing before them.
    for z in (6, 7, 8):
        iio.imwrite(stack / f"img{z}.png", np.full((32, 32), 10 * z, np.uint8))
    assert planned_jobs(project) == {"preprocess": 2, "segment": 2, "train": 0, "mesh": 1}
    assert snakemake(project).returncode == 0
    # The volume step decoded the new masks only: the others' files are unchanged (the
    # re-run chunk's earlier slice came back from the segment step's cache).
    assert "masks: 3 of 9 slices new or changed" in (project / "logs/own/volume.log").read_text()
    # A preprocessing setting: every chunk of both samples (4 slices each), retraining too.
    make_project(tmp_path, rows=(DEMO_ROW, row("own", stack)), preprocess={"high_percentile": 99.0})
    assert planned_jobs(project) == {"preprocess": 5, "segment": 5, "train": 1, "mesh": 2}
    # Retraining alone (another number of epochs): segmentation again, preprocessing not.
    make_project(tmp_path, rows=(DEMO_ROW, row("own", stack)), train={**TINY_CONFIG["train"], "epochs": 3})
    assert planned_jobs(project) == {"preprocess": 0, "segment": 5, "train": 1, "mesh": 2}


def planned_jobs(project):
    """Jobs per rule that a dry run of the project plans, for the per-slice and model rules."""
    dry_run = snakemake(project, "-n", "--quiet", "rules")
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry_run.stdout, flags=re.MULTILINE))
    return {rule: int(counts.get(rule, 0)) for rule in ("preprocess", "segment", "train", "mesh")}


def two_class_stack(root, n_slices=6, size=48):
    """Grey slices with a dark square (class 'dark', label value 100) and a bright one ('bright', 200)."""
    for folder in ("slices", "labels"):
        (root / folder).mkdir(parents=True)
    for z in range(n_slices):
        image = np.full((size, size), 128, np.uint8)
        label_map = np.zeros((size, size), np.uint8)
        image[8:20, 8:20], label_map[8:20, 8:20] = 25, 100
        image[28:40, 26 + z % 3 : 40], label_map[28:40, 26 + z % 3 : 40] = 230, 200
        iio.imwrite(root / "slices" / f"s{z}.png", image)
        iio.imwrite(root / "labels" / f"s{z}.png", label_map)
    return root


@pytest.mark.slow
def test_several_classes_give_a_mask_folder_an_stl_and_scores_per_class(tmp_path):
    data = two_class_stack(tmp_path / "data")
    project = make_project(
        tmp_path / "project",
        rows=[f"two\t{data}/slices\t{data}/labels\t{data}/labels\t40\t10\t10\n"],
        chunk_size=8,
        model={"classes": ["dark", "bright"], "label_values": {"dark": [100], "bright": [200]}, "depth": 2,
               "base_filters": 8},
        train={**TINY_CONFIG["train"], "epochs": 6, "steps_per_epoch": 8, "learning_rate": 0.01},
        segment={"tile_size": 48, "overlap": 0},
    )
    result = snakemake(project)
    assert result.returncode == 0, result.stderr[-3000:]
    results = project / "results/two"
    for name in ("dark", "bright"):
        for step in ("masks", "probabilities"):
            assert sorted(path.stem for path in (results / step / name).glob("chunk*/*.png")) == [
                f"s{z}" for z in range(6)
            ], (step, name)
        assert iio.imread(results / "montage" / f"{name}.png").std() > 10
    summary = pd.read_csv(results / "mesh_summary.tsv", sep="\t")
    assert list(summary["class"]) == ["dark", "bright"]
    scores = pd.read_csv(results / "evaluation/scores.tsv", sep="\t")
    volume = scores[scores["slice"] == "volume"].set_index("class")
    assert list(volume.index) == ["dark", "bright"]
    # Two classes of plain squares on grey: six short epochs learn them.
    assert (volume["iou"] > 0.5).all(), volume
    for name in ("dark", "bright"):
        assert (results / "meshes" / f"{name}.stl").is_file()
    assert "vem3d: two: bright: Dice" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "model, label_folders, message",
    [
        ({"classes": ["mitochondrion"], "label_values": {"mitocondrion": [1]}}, (), r"unknown class name\(s\) \['mitocondrion'\]"),
        ({"classes": ["a", "b"]}, ("a", "c"), r"unknown class name\(s\) \['c'\]"),
    ],
    ids=["in-label-values", "as-a-label-folder"],
)
def test_an_unknown_class_name_stops_before_any_work(tmp_path, model, label_folders, message):
    stack = own_stack(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in label_folders:
        (labels / name).mkdir()
        iio.imwrite(labels / name / "img0.png", np.zeros((32, 32), np.uint8))
    project = make_project(tmp_path, rows=[f"s1\t{stack}\t{labels}\t\t20\t10\t10\n"], model=model)
    result = snakemake(project, "-n")
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr[-2000:]
    assert not (project / "results").exists()
