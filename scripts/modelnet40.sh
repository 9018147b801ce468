#!/usr/bin/env bash
#SBATCH --job-name=modelnet40
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=2-00:00:00
#SBATCH --output=logs/%A_%a-%x.out
# Table 1 grid on ModelNet40 point clouds: PointNet, DGCNN (data/modelnet40_ply_hdf5_2048/)
# (docs/reproduction.md §1): pretraining, then every method at 2x and 3x with fine-tuning, seed 1.
#
#   bash scripts/modelnet40.sh [--dry-run] [--methods l2,proj_sl] [--models resnet56] [--backend bash|slurm] ...
#
# With a SLURM controller reachable: one array for pretraining, one for pruning (afterok on the first);
# otherwise (or inside an allocation: sbatch scripts/modelnet40.sh) the runs go one after another here.
# Finished runs are skipped, so running it again resumes. #SBATCH values above are defaults:
# SBATCH_PARTITION, SBATCH_GRES (none on GPU-less nodes), SBATCH_TIMELIMIT, SBATCH_OUTPUT override them.
# More flags: python -m scripts.grid --help
set -euo pipefail
src=${BASH_SOURCE[0]}  # sbatch runs a spooled copy: then the original's path comes from scontrol
[[ -f $(dirname "$src")/../main.py || -z ${SLURM_JOB_ID:-} ]] || src=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
cd "${PROJPRUNE_ROOT:-$(dirname "$src")/..}" && [[ -f main.py ]] || { echo "$0: no repository (main.py) here; set PROJPRUNE_ROOT" >&2; exit 2; }
exec "${PYTHON:-python}" -m scripts.grid --dataset modelnet40 --headers-from scripts/modelnet40.sh "$@"
