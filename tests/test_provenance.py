import hashlib
import json
import os

import numpy as np
import pytest

from vem3d.cache import code_version
from vem3d.provenance import check_weights_settings, file_sha256, package_versions, step_times, write_provenance


def test_sha256_matches_hashlib_across_blocks(tmp_path):
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", block_bytes=1024) == hashlib.sha256(data).hexdigest()


def test_versions_of_installed_and_missing_packages():
    versions = package_versions(["numpy", "no-such-package-vem3d"])
    assert versions["numpy"] == np.__version__ and versions["no-such-package-vem3d"] is None


def test_weights_are_checked_against_the_classes_they_were_trained_for(tmp_path):
    weights = tmp_path / "unet.weights.h5"
    weights.write_bytes(b"")
    record = {"classes": ["membrane", "mitochondrion"], "settings": {"unet": {"n_classes": 3}}}
    (tmp_path / "unet.weights.h5.json").write_text(json.dumps(record))
    check_weights_settings(weights, {"n_classes": 3}, ["membrane", "mitochondrion"])
    check_weights_settings(weights, {"n_classes": 3})  # fine-tuning: the classes may change
    with pytest.raises(ValueError, match=r"trained for the classes \['membrane', 'mitochondrion'\], in that order"):
        check_weights_settings(weights, {"n_classes": 3}, ["mitochondrion", "membrane"])
    # One class: the network's one output is the class, whatever either run called it.
    record = {"classes": ["foreground"], "settings": {"unet": {"n_classes": 1}}}
    (tmp_path / "unet.weights.h5.json").write_text(json.dumps(record))
    check_weights_settings(weights, {"n_classes": 1}, ["mitochondrion"])


def test_step_times_come_from_benchmarks(tmp_path):
    (tmp_path / "mesh.tsv").write_text("s\th:m:s\n2.5\t0:00:02\n")
    os.utime(tmp_path / "mesh.tsv", (1_700_000_010, 1_700_000_010))
    (steps,) = step_times({"mesh": tmp_path / "mesh.tsv", "montage": tmp_path / "missing.tsv"})
    assert steps["step"] == "mesh" and steps["seconds"] == 2.5
    assert steps["finished"] == "2023-11-14T22:13:30+00:00" and steps["started"] == "2023-11-14T22:13:27+00:00"


def test_record_names_inputs_weights_settings_and_times(tmp_path):
    (tmp_path / "s0.png").write_bytes(b"slice zero")
    (tmp_path / "w.h5").write_bytes(b"weights")
    (tmp_path / "w.h5.json").write_text(json.dumps({"best_score": 0.9}))
    (tmp_path / "mesh.tsv").write_text("s\n1.0\n")
    record = write_provenance(
        tmp_path / "provenance.json",
        "s1",
        {"segment": {"threshold": 0.5}},
        {"sample": "s1", "voxel_size_z_nm": np.int64(20)},
        {"slices": [tmp_path / "s0.png"], "labels": []},
        tmp_path / "w.h5",
        {"mesh": tmp_path / "mesh.tsv"},
    )
    written = json.loads((tmp_path / "provenance.json").read_text())
    assert written["sample_sheet"]["voxel_size_z_nm"] == 20
    assert written["inputs"]["slices"][0]["sha256"] == hashlib.sha256(b"slice zero").hexdigest()
    assert written["weights"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert written["weights"]["made_by"] == {"best_score": 0.9}
    assert written["config"]["segment"]["threshold"] == 0.5
    assert written["packages"]["numpy"] == np.__version__
    assert written["vem3d_source"] == code_version()  # the version number alone names no commit
    assert written["started"] <= written["finished"] == record["finished"]
