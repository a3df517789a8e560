"""The conda environments the rules name pin versions that pyproject.toml allows."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names of packages that PyPI knows under another name.
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(line).name: Requirement(line) for line in project["dependencies"]}


def environment_pins(path):
    pins = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==?\s*([0-9][^\s]*)\s*", spec)
            if match:
                pins[CONDA_TO_PYPI.get(match.group(1), match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("environment", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda path: path.stem)
def test_environment_pins_agree_with_pyproject(environment):
    requirements = pyproject_requirements()
    pins = environment_pins(environment)
    assert pins, environment
    for name, version in pins.items():
        if name in requirements:
            assert requirements[name].specifier.contains(version), f"{environment.name}: {name} {version}"


def test_every_dependency_of_the_imaging_steps_is_pinned():
    pins = environment_pins(ROOT / "envs" / "imaging.yaml")
    imaging = set(pyproject_requirements()) - {"keras", "tensorflow", "snakemake"}
    assert imaging <= set(pins), imaging - set(pins)
