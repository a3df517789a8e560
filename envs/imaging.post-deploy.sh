#!/usr/bin/env bash
# Snakemake runs this inside the freshly built environment, from its working
# directory (the repository root, or VEM3D_SOURCE if set): install the vem3d package
# that the workflow's scripts import. Dependencies come from the environment file.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation "${VEM3D_SOURCE:-$PWD}"
