#!/usr/bin/env bash
#SBATCH --job-name=imagenet
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --time=7-00:00:00
#SBATCH --output=logs/%A_%a-%x.out
# ResNet-50 on ImageNet (docs/reproduction.md §1): 90 epochs, batch 256, lr 0.08, 2x FLOPs speed-up
# (--target-flops 2: the paper's 2 GFLOPs), every method, each run data-parallel over GPUS (default 4) with torchrun.
# ILSVRC2012 train/ and val/ class folders under --dataroot (default data/).
#
#   GPUS=4 bash scripts/imagenet.sh [--dry-run] [--dataroot /data/ilsvrc] [--methods l2,proj_sl]
#       [--stage prune]   # skip pretraining when run/imagenet/pretrain/imagenet_resnet50.pth exists already
#
# SLURM arrays when a controller answers (pruning after pretraining), else sequentially here. Finished
# runs are skipped. SBATCH_PARTITION, SBATCH_GRES, SBATCH_TIMELIMIT, SBATCH_OUTPUT override the headers
# (keep --gres and GPUS in step).
set -euo pipefail
src=${BASH_SOURCE[0]}  # sbatch runs a spooled copy: then the original's path comes from scontrol
[[ -f $(dirname "$src")/../main.py || -z ${SLURM_JOB_ID:-} ]] || src=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
cd "${PROJPRUNE_ROOT:-$(dirname "$src")/..}" && [[ -f main.py ]] || { echo "$0: no repository (main.py) here; set PROJPRUNE_ROOT" >&2; exit 2; }
exec "${PYTHON:-python}" -m scripts.grid --dataset imagenet --headers-from scripts/imagenet.sh "$@"
