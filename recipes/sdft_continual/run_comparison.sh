#!/usr/bin/env bash
# One SDFT run and the two SFT baselines at one learning rate and seed, all scored the same way.
#   bash recipes/sdft_continual/run_comparison.sh LR SEED RESULTS_DIR [extra distillkit overrides...]
# Writes RESULTS_DIR/{sdft_base,sft_demo,sft_native}_lr<LR>_s<SEED>.json; one process at a time, 1 thread.
set -euo pipefail
lr=$1 seed=$2 out=$3
shift 3
tag=${TAG:-base}
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
mkdir -p "$out/runs"
run="$out/runs/sdft_${tag}_lr${lr}_s${seed}"
rm -rf "$run"
distillkit --config-dir "$here" --config-name sdft train.lr="$lr" train.seed="$seed" data.seed="$seed" \
  tracking.enabled=false train.eval_every=0 hydra.run.dir="$run" "$@" > "$run.log" 2>&1
python "$here/eval_skills.py" "$run" --out "$out/sdft_${tag}_lr${lr}_s${seed}.json" > /dev/null 2>&1
if [ -z "${SKIP_SFT:-}" ]; then
  python "$here/sft_baseline.py" --lr "$lr" --seed "$seed" --target demonstration \
    --out "$out/sft_demo_lr${lr}_s${seed}.json" > "$out/sft_demo_lr${lr}_s${seed}.log" 2>&1
  python "$here/sft_baseline.py" --lr "$lr" --seed "$seed" --target native \
    --out "$out/sft_native_lr${lr}_s${seed}.json" > "$out/sft_native_lr${lr}_s${seed}.log" 2>&1
fi
