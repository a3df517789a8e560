#!/usr/bin/env bash
# Installs a single-node Slurm (and munge) for tests/test_slurm.py, which configures
# and starts it. Debian/Ubuntu, as root; does nothing when Slurm is already installed.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
