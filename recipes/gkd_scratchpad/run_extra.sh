#!/usr/bin/env bash
# Controls added after the first results (not predeclared): an off-policy run with on-policy GKD's β, and the
# off-policy baselines at about on-policy GKD's training-loop time (more steps). Seeds 0 1 2, one run at a time.
#   bash recipes/gkd_scratchpad/run_extra.sh       # skips runs whose results/NAME_sSEED.json exists
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
declare -A METHODS=(
  [supervised_kd_b05]="method.lmbda=0 method.beta=0.5"
  [sft_gold_500steps]="method=sft train.steps=500"
  [supervised_kd_200steps]="method.lmbda=0 method.beta=0 train.steps=200"
)
ORDER=(supervised_kd_b05 sft_gold_500steps supervised_kd_200steps)
# shellcheck source=run_methods.sh
source "$here/run_methods.sh"
run_methods "${ORDER[@]}"
