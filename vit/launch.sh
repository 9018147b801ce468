#!/usr/bin/env bash
#SBATCH --job-name=vit
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=logs/%A_%a-%x.out
# The ViT grid of paper §4.1 (vit/grid.py): norm_analysis per model, then uniform and adaptive MLP
# pruning for every method, without fine-tuning. Finished runs (their .json summary exists) are skipped.
#
#   bash vit/launch.sh [--dry-run] [--models vit_b_16] [--methods l2,proj000] [--experiments uniform]
#                      [--dataroot data/imagenet] [--output-dir run] [--extra "--eval-batches 10"]
#   bash vit/launch.sh --models small --backend bash --parse     # the embedded digits ViT, CPU only
#
# With a SLURM controller (or --backend slurm) each stage is a job array, the second depending on the
# first; otherwise the runs go one after another here. ImageNet models need their weights in the torch
# hub cache (or --extra "--weights PATH") and <dataroot>/val in class folders. Tables: python vit/parse.py
set -euo pipefail
ROOT=${PROJPRUNE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
[[ -f $ROOT/vit/main.py || -z ${SLURM_SUBMIT_DIR:-} ]] || ROOT=$SLURM_SUBMIT_DIR  # sbatch runs a spooled copy
cd "$ROOT"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PROJPRUNE_NO_TQDM=${PROJPRUNE_NO_TQDM:-1}
exec "${PYTHON:-python}" -m vit.grid --headers-from vit/launch.sh --task-log-dir logs/vit "$@"
