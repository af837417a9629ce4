#!/usr/bin/env bash
# The whole comparison, one run at a time: 8 methods x seeds 0 1 2 (predeclared), seed-major order.
#   bash recipes/gkd_scratchpad/run_all.sh            # skips runs whose results/NAME_sSEED.json exists
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
declare -A METHODS=(
  [gkd_onpolicy_b05]="method.lmbda=1 method.beta=0.5"
  [supervised_kd]="method.lmbda=0 method.beta=0"
  [sft_gold]="method=sft"
  [seq_kd]="method.seq_kd=true method.lmbda=0"
  [gkd_onpolicy_b0]="method.lmbda=1 method.beta=0"
  [gkd_onpolicy_b1]="method.lmbda=1 method.beta=1"
  [sft_teacher]="method=sft method.completions=teacher"
  [gkd_mixed]="method.lmbda=0.5"
)
ORDER=(gkd_onpolicy_b05 supervised_kd sft_gold seq_kd gkd_onpolicy_b0 gkd_onpolicy_b1 sft_teacher gkd_mixed)
# shellcheck source=run_methods.sh
source "$here/run_methods.sh"
run_methods "${ORDER[@]}"
