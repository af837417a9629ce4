#!/usr/bin/env bash
# The whole SmolLM2 chat recipe for one seed, from a fresh machine: teacher, student, GKD, SFT, all scored alike.
#   bash recipes/smollm2_chat/run_seed.sh SEED [RESULTS_DIR] [extra distillkit overrides...]
# Run from the repository root. Writes RESULTS_DIR (default recipes/smollm2_chat/results)/{teacher,student_before,
# gkd_s<SEED>,sft_s<SEED>}.json (score.py), the runs' logs, and wall_s<SEED>.json (seconds per stage);
# models go to outputs/smollm2_chat/. One process at a time, 1 thread each.
set -euo pipefail
seed=$1
results=${2:-recipes/smollm2_chat/results}
shift $(( $# >= 2 ? 2 : 1 ))
here=recipes/smollm2_chat
layers=${LAYERS:-0,10,20,29}
steps=${STEPS:-120}
lr=${LR:-5e-4}
work=outputs/smollm2_chat
export OMP_NUM_THREADS=1
mkdir -p "$results" "$work"
now() { date +%s.%N; }
t_start=$(now)

# converts once (about a minute), then cached; its last line is the folder (DeepSpeed, imported by accelerate when
# installed, may print a warning to stdout before it)
teacher=$(python -m distillkit.cli fetch-model smollm2-135m-instruct | tail -n 1)
t_fetch=$(now)
student=$work/student_l${layers//,/-}
[ -f "$student/config.json" ] || python -m distillkit.cli make-student --from "$teacher" --layers "$layers" --out "$student"
t_make=$(now)
[ -f "$results/teacher.json" ] || python $here/score.py "$teacher" --label teacher --out "$results/teacher.json"
[ -f "$results/student_before.json" ] || python $here/score.py "$student" --label student_before --out "$results/student_before.json"
t_score0=$(now)

run=$work/gkd_s$seed
rm -rf "$run"
python -m distillkit.cli --config-dir $here --config-name gkd model.student="$student" teacher.model="$teacher" \
  train.seed="$seed" data.seed="$seed" train.steps="$steps" train.lr="$lr" hydra.run.dir="$run" "$@" \
  > "$results/gkd_s$seed.log" 2>&1
t_gkd=$(now)
python $here/score.py "$run/final_model" --label gkd --out "$results/gkd_s$seed.json"
t_gkd_score=$(now)

python $here/sft_baseline.py --student "$student" --out "$work/sft_s$seed" --seed "$seed" --steps "$steps" --lr "$lr" \
  > "$results/sft_s$seed.log" 2>&1
cp "$work/sft_s$seed/sft_log.json" "$results/sft_s${seed}_train.json"
t_sft=$(now)
python $here/score.py "$work/sft_s$seed" --label sft --out "$results/sft_s$seed.json"
t_end=$(now)
python - "$results/wall_s$seed.json" <<PY
import json, sys
t = dict(start=$t_start, fetch=$t_fetch, make=$t_make, score0=$t_score0, gkd=$t_gkd, gkd_score=$t_gkd_score,
         sft=$t_sft, end=$t_end)
stages = {"fetch_model": t["fetch"] - t["start"], "make_student": t["make"] - t["fetch"],
          "score_teacher_and_student_before": t["score0"] - t["make"], "gkd_run": t["gkd"] - t["score0"],
          "score_gkd": t["gkd_score"] - t["gkd"], "sft_run": t["sft"] - t["gkd_score"], "score_sft": t["end"] - t["sft"],
          "total": t["end"] - t["start"]}
json.dump({"seed": $seed, "layers": "$layers", "steps": $steps, "lr": $lr, "seconds": stages}, open(sys.argv[1], "w"), indent=2)
print("wall seconds:", {k: round(v) for k, v in stages.items()})
PY
