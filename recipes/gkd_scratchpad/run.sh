#!/usr/bin/env bash
# One run of the comparison: a plain `distillkit` command, timed, its printed summary kept as JSON.
#   bash recipes/gkd_scratchpad/run.sh NAME SEED [distillkit overrides...]
# Writes recipes/gkd_scratchpad/results/NAME_sSEED.{json,log}; the run folder goes to ${RUNS_DIR:-/tmp/gkd_scratchpad}.
# One run at a time, 1 thread. The seed sets both train.seed (sampling) and data.seed (which rows, in which order):
# with train.seed alone, the off-policy runs on the data set's completions would be identical across seeds.
set -euo pipefail
name=$1 seed=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
results=${RESULTS_DIR:-$here/results}
runs=${RUNS_DIR:-/tmp/gkd_scratchpad}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$results" "$runs"
run="$runs/${name}_s${seed}"
rm -rf "$run"
cmd=(${DISTILLKIT:-distillkit} --config-dir "$here" --config-name scratchpad "$@" train.seed="$seed" data.seed="$seed"
     hydra.run.dir="$run")
start=$(date +%s.%N)
"${cmd[@]}" > "$results/${name}_s${seed}.log" 2>&1
end=$(date +%s.%N)
${PYTHON:-python} "$here/summarize.py" --record "$results/${name}_s${seed}.log" --name "$name" --seed "$seed" \
  --wall "$(echo "$end - $start" | bc)" --command "${cmd[*]}" --out "$results/${name}_s${seed}.json"
