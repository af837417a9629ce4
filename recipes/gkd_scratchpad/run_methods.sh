# The run loop of run_all.sh and run_extra.sh (sourced by both, so it is written once).
#   run_methods NAME...   # needs the caller's associative array METHODS (NAME -> distillkit overrides)
# Runs run.sh for every seed in ${SEEDS:-0 1 2} (seed-major) and every NAME in the order given, one at a time,
# skipping runs whose ${RESULTS_DIR:-results}/NAME_sSEED.json exists.
run_methods() {
  local here results seed name
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  results=${RESULTS_DIR:-$here/results}
  for seed in ${SEEDS:-0 1 2}; do
    for name in "$@"; do
      [ -e "$results/${name}_s${seed}.json" ] && continue
      # shellcheck disable=SC2086
      bash "$here/run.sh" "$name" "$seed" ${METHODS[$name]} | cut -c1-200
    done
  done
}
