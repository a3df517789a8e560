#!/usr/bin/env bash
# Snakemake runs this inside the freshly built environment, from its working
# directory (the repository root; set VEM3D_SOURCE to the checkout when running with
# --directory elsewhere): install the vem3d package that the workflow's scripts import.
# Editable, so that the jobs run the checkout's src/ as it is now: Snakemake rebuilds
# an environment only when its yaml or this script changes, not when the code does.
# Dependencies come from the environment file.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation --editable "${VEM3D_SOURCE:-$PWD}"
