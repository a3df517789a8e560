"""The conda environments in envs/ stay consistent with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(text).name.lower(): Requirement(text) for text in project["dependencies"]}


def environment_pins(path):
    """{pypi name: pinned version} of a conda environment file (conda and pip sections)."""
    pins = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        specs = entry["pip"] if isinstance(entry, dict) else [entry]
        for spec in specs:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(?:==?)\s*([0-9][^\s]*)", spec)
            if match:
                name = CONDA_TO_PYPI.get(match[1].lower(), match[1].lower())
                pins[name] = match[2]
    return pins


ENVIRONMENTS = sorted((ROOT / "envs").glob("*.yaml"))


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=lambda path: path.name)
def test_environment_pins_satisfy_pyproject(environment):
    requirements = pyproject_requirements()
    pins = environment_pins(environment)
    assert pins, f"{environment} pins nothing"
    for name, version in pins.items():
        if name in requirements:
            assert requirements[name].specifier.contains(version), f"{environment.name}: {name}=={version} is outside pyproject's {requirements[name]}"


def test_network_environment_has_keras_and_tensorflow():
    pins = environment_pins(ROOT / "envs" / "tensorflow.yaml")
    assert {"keras", "tensorflow", "numpy", "scikit-image"} <= set(pins)


def test_every_rule_names_an_existing_environment():
    for rule_file in (ROOT / "workflow" / "rules").glob("*.smk"):
        for relative in re.findall(r'conda:\s*\n\s*"([^"]+)"', rule_file.read_text()):
            assert (rule_file.parent / relative).resolve().is_file(), f"{rule_file.name}: {relative}"


def test_every_dependency_of_the_imaging_steps_is_pinned():
    pins = environment_pins(ROOT / "envs" / "imaging.yaml")
    imaging = set(pyproject_requirements()) - {"keras", "tensorflow", "snakemake"}
    assert imaging <= set(pins), imaging - set(pins)
