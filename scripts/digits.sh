#!/usr/bin/env bash
#SBATCH --job-name=digits
#SBATCH --gres=none
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=logs/%A_%a-%x.out
# Table 1 in miniature on the embedded digits data (no download, CPU): pretrain one small ResNet,
# prune it to 2x FLOPs with all eleven methods, fine-tune briefly, then print the table.
#
#   bash scripts/digits.sh [--dry-run] [--methods l2,proj_sl] [--finetune-epochs 2] [--output-dir run]
#                          [--seeds 1,2,3]   # one run tree per seed (<output-dir>/seed<N>); cells mean [min, max]
#
# It prints one table per setting: methods against best_pruned, paper, one_shot, one_shot_bn and the speed-up
# reached (scripts/parse_logs.py's table_digits-resnet20-2x.md).
#
# Runs sequentially here (per-run output in logs/digits/), or, with GRID_BACKEND=slurm (or --backend
# slurm), as two SLURM job arrays that it waits for. Finished runs are skipped; tables and figures go
# to scripts/results/digits/ (scripts/parse_logs.py).
set -euo pipefail
src=${BASH_SOURCE[0]}  # sbatch runs a spooled copy: then the original's path comes from scontrol
[[ -f $(dirname "$src")/../main.py || -z ${SLURM_JOB_ID:-} ]] || src=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
cd "${PROJPRUNE_ROOT:-$(dirname "$src")/..}" && [[ -f main.py ]] || { echo "$0: no repository (main.py) here; set PROJPRUNE_ROOT" >&2; exit 2; }
export PROJPRUNE_NO_TQDM=${PROJPRUNE_NO_TQDM:-1}
# one thread: the models are tiny, and extra threads only fight over the cores (8x slower on a busy 2-core box)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${PYTHON:-python}" -m scripts.grid --dataset digits --headers-from scripts/digits.sh \
  --backend "${GRID_BACKEND:-bash}" --task-log-dir logs/digits --wait --timeout 1800 --parse "$@"
