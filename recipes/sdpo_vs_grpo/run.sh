#!/usr/bin/env bash
# One run of the feedback comparison: a plain `distillkit` command, timed; its MLflow curve kept as JSON.
#   bash recipes/sdpo_vs_grpo/run.sh NAME SEED CONFIG [distillkit overrides...]
# Writes recipes/sdpo_vs_grpo/results/NAME_sSEED.{json,log}. The run folder (with its own MLflow sqlite file, read
# by summarize.py --record) goes to ${RUNS_DIR:-/tmp/sdpo_vs_grpo}. One run at a time, 1 thread.
set -euo pipefail
name=$1 seed=$2 config=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
results=${RESULTS_DIR:-$here/results}
runs=${RUNS_DIR:-/tmp/sdpo_vs_grpo}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$results" "$runs"
run="$runs/${name}_s${seed}"
rm -rf "$run"
mkdir -p "$run"
cmd=(${DISTILLKIT:-distillkit} --config-dir "$here" --config-name "$config" "$@" train.seed="$seed"
     train.eval_every=10 tracking.tracking_uri="sqlite:///$run/mlflow.db" hydra.run.dir="$run")
start=$(date +%s.%N)
"${cmd[@]}" > "$results/${name}_s${seed}.log" 2>&1
end=$(date +%s.%N)
${PYTHON:-python} "$here/summarize.py" --record "$run" --name "$name" --seed "$seed" \
  --wall "$(echo "$end - $start" | bc)" --command "${cmd[*]}" --out "$results/${name}_s${seed}.json"
