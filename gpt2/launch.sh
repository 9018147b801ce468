#!/usr/bin/env bash
#SBATCH --job-name=gpt2
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=1-00:00:00
#SBATCH --output=logs/%A_%a-%x.out
# GPT-2 QK-dimension pruning without fine-tuning, perplexity table (docs/reproduction.md §3).
#
#   bash gpt2/launch.sh tiny  [--dry-run] [--methods proj,norm] [--rates 0.1,0.2] ...   # CPU, minutes
#   bash gpt2/launch.sh paper [--dry-run] [--models gpt2] [--datasets wikitext2] ...     # needs weights + data
#
# tiny : trains the embedded GPT-2 on the standard library's docstrings (cached in run/gpt2/tiny/),
#        then every method at rates .1/.2/.3, sequentially here; table in run/gpt2/table.md.
# paper: gpt2 (PTB, WikiText-2), gpt2-medium, gpt2-large, gpt2-xl (WikiText-2) from the local hub
#        and datasets caches (HF_HOME); with a SLURM controller reachable, two job arrays
#        (unpruned runs, then pruned runs afterok), else sequentially here.
# The grid itself is data in gpt2/grid.py and runs through scripts/gridrun.py; finished runs
# (run/gpt2/<name>/result.csv) are skipped, so running it again resumes. #SBATCH values above are
# defaults: SBATCH_PARTITION, SBATCH_GRES (none on GPU-less nodes), SBATCH_TIMELIMIT override them.
# More flags: python -m gpt2.grid --help
set -euo pipefail
ROOT=${PROJPRUNE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
[[ -f $ROOT/gpt2/main.py || -z ${SLURM_SUBMIT_DIR:-} ]] || ROOT=$SLURM_SUBMIT_DIR  # sbatch runs a spooled copy
cd "$ROOT"
PRESET=${1:-tiny}
[[ $# -gt 0 ]] && shift
case $PRESET in
  tiny)
    export PROJPRUNE_NO_TQDM=${PROJPRUNE_NO_TQDM:-1}
    # one thread: the per-head solves are small, extra threads only fight over the cores
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    export SBATCH_GRES=${SBATCH_GRES:-none}
    exec "${PYTHON:-python}" -m gpt2.grid --preset tiny --headers-from gpt2/launch.sh \
      --backend "${GRID_BACKEND:-bash}" --task-log-dir logs/gpt2 --parse "$@" ;;
  paper)
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    exec "${PYTHON:-python}" -m gpt2.grid --preset paper --headers-from gpt2/launch.sh \
      --main-args "--threads 0 --device ${DEVICE:-cuda}" "$@" ;;
  *)
    echo "usage: bash gpt2/launch.sh tiny|paper [gpt2.grid flags]" >&2
    exit 2 ;;
esac
