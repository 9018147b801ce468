#!/usr/bin/env bash
# Install a single-node-capable SLURM (Debian packages) when it is missing, for tests/test_slurm.py.
# Exit 0 when slurmctld, slurmd, sbatch and munged are available afterwards; otherwise non-zero with
# the reason (the SLURM test then skips itself, saying that SLURM is not installed).
set -euo pipefail
need=(slurmctld slurmd sbatch squeue scontrol munged mungekey)
missing() { for tool in "${need[@]}"; do command -v "$tool" >/dev/null || { echo "$tool"; return 0; }; done; return 1; }

if ! tool=$(missing); then
  echo "install_slurm: SLURM already installed ($(dpkg-query -W -f='slurm ${Version}' slurmctld 2>/dev/null || true))"
  exit 0
fi
echo "install_slurm: $tool not found; installing slurmctld slurmd slurm-client munge"
if [[ $(id -u) != 0 ]]; then
  echo "install_slurm: cannot install: needs root (apt-get); run as root or install the packages yourself" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install_slurm: cannot install: no apt-get (not a Debian/Ubuntu system)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge; }; then
  echo "install_slurm: apt-get failed (no package registry reachable?)" >&2
  exit 1
fi
if tool=$(missing); then
  echo "install_slurm: installed, but $tool is still not on PATH" >&2
  exit 1
fi
echo "install_slurm: done ($(dpkg-query -W -f='slurm ${Version}' slurmctld))"
