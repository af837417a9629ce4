#!/usr/bin/env bash
# One run of the equal-steps comparison (issue 15, part 4): on-policy GKD, supervised KD, sequence-level KD and SFT,
# each a plain distillkit command on gkd.yaml, then scored by score.py.
#   bash recipes/smollm2_chat/run_compare.sh NAME SEED [distillkit overrides...]
# Writes recipes/smollm2_chat/results/compare/NAME_sSEED.{json,log}: score.py's result plus distillkit's printed
# summary (teacher-forced KL before/after) and the wall seconds. STEPS (default 40). Run from the repository root;
# the teacher and the student are made once (run_seed.sh's first two stages). One process at a time, 1 thread.
set -euo pipefail
name=$1 seed=$2
shift 2
here=recipes/smollm2_chat
steps=${STEPS:-40}
results=${RESULTS_DIR:-$here/results/compare}
work=outputs/smollm2_chat
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$results" "$work"
teacher=$(python -m distillkit.cli fetch-model smollm2-135m-instruct | tail -n 1)
student=$work/student_l0-10-20-29
[ -f "$student/config.json" ] || python -m distillkit.cli make-student --from "$teacher" --layers 0,10,20,29 --out "$student"
run=$work/compare/${name}_s$seed
rm -rf "$run"
cmd=(python -m distillkit.cli --config-dir $here --config-name gkd model.student="$student" teacher.model="$teacher"
     train.seed="$seed" data.seed="$seed" train.steps="$steps" "$@" hydra.run.dir="$run")
start=$(date +%s.%N)
"${cmd[@]}" > "$results/${name}_s$seed.log" 2>&1
mid=$(date +%s.%N)
python $here/score.py "$run/final_model" --label "$name" --out "$results/${name}_s$seed.json"
end=$(date +%s.%N)
python - "$results/${name}_s$seed.json" "$results/${name}_s$seed.log" "$seed" "$steps" \
  "$(echo "$mid - $start" | bc)" "$(echo "$end - $mid" | bc)" "${cmd[*]}" <<'PY'
import json, re, sys
out, log, seed, steps, run_s, score_s, command = sys.argv[1:]
text = open(log).read()
kl = re.search(r"teacher-student KL\(T\|\|S\) per token\s+([\d.]+) -> ([\d.]+)", text)
loop = re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)<", text)
result = json.load(open(out))
result.update(seed=int(seed), steps=int(steps), command=command, run_seconds=round(float(run_s), 1),
              score_seconds=round(float(score_s), 1), teacher_kl_before=float(kl[1]), teacher_kl_after=float(kl[2]),
              train_loop_seconds=int(loop[-1][2]) * 60 + int(loop[-1][3]) if loop else None)
json.dump(result, open(out, "w"), indent=2)
PY
