"""The SmolLM2 chat recipe's table, from the JSON files that run_seed.sh (score.py) writes.

    python recipes/smollm2_chat/summarize.py [RESULTS_DIR]   # default: recipes/smollm2_chat/results

RESULTS_DIR holds teacher.json, student_before.json, gkd_s<SEED>.json, sft_s<SEED>.json and wall_s<SEED>.json.
Prints every run (nothing is filtered), the mean over seeds with min-max for GKD and SFT, and the wall times.
Then the equal-steps comparison (RESULTS_DIR/compare/, run_compare.sh): every run, the mean ± standard error
(sample std / sqrt(n)) per method, and each GKD arm minus each baseline (and minus on-policy GKD with β=0),
paired by seed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

KEYS = ("right", "right_train", "right_held_out", "format", "exact")
HEADER = "| model | seed | right, all 81 | train facts (60) | held-out facts (21) | teacher's format | exact (teacher's answer) |"


def row(name: str, seed: str, result: dict) -> str:
    return f"| {name} | {seed} | " + " | ".join(f"{result[k]:.1%}" for k in KEYS) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    load = lambda path: json.loads(path.read_text())  # noqa: E731
    runs: dict[str, dict[int, dict]] = {"gkd": {}, "sft": {}}
    for path in sorted(args.results.glob("*_s*.json")):
        m = re.fullmatch(r"(gkd|sft)_s(\d+)", path.stem)
        if m:
            runs[m[1]][int(m[2])] = load(path)
    print(HEADER)
    print("|---|---|---|---|---|---|---|")
    for name in ("teacher", "student_before"):
        if (args.results / f"{name}.json").exists():
            print(row(name.replace("_", " "), "-", load(args.results / f"{name}.json")))
    for method, by_seed in runs.items():
        for seed, result in sorted(by_seed.items()):
            print(row(f"student after {method.upper()}", str(seed), result))
    print()
    print("Mean over seeds (min-max):")
    print("| model | seeds | " + " | ".join(HEADER.split(" | ")[2:]))
    print("|---|---|---|---|---|---|---|")
    for method, by_seed in runs.items():
        if not by_seed:
            continue
        cells = []
        for key in KEYS:
            values = [r[key] for r in by_seed.values()]
            cells.append(f"{sum(values) / len(values):.1%} ({min(values):.1%}-{max(values):.1%})")
        print(f"| student after {method.upper()} | {','.join(map(str, sorted(by_seed)))} | " + " | ".join(cells) + " |")
    dev = sorted((args.results / "dev").glob("*.json"))
    if dev:
        print()
        print("Development runs (before the seeds; they chose the settings; results/dev/):")
        print("| run | settings | " + " | ".join(HEADER.split(" | ")[2:]))
        print("|---|---|---|---|---|---|---|")
        for path in dev:
            result = load(path)
            print(f"| {path.stem} | {result['settings']} | " + " | ".join(f"{result[k]:.1%}" for k in KEYS) + " |")
    walls = sorted(args.results.glob("wall_s*.json"))
    if walls:
        print()
        print("Wall seconds per stage (run_seed.sh; fetch/make/score-before are near 0 once cached):")
        stages = list(load(walls[0])["seconds"])
        print("| seed | " + " | ".join(stages) + " |")
        print("|---|" + "---|" * len(stages))
        for path in walls:
            wall = load(path)
            print(f"| {wall['seed']} | " + " | ".join(f"{wall['seconds'][s]:.0f}" for s in stages) + " |")
    compare_tables(args.results / "compare")


# run_compare.sh's runs: name -> (label, overrides); the order of the tables
COMPARE = {
    "gkd_onpolicy": ("on-policy GKD (λ=1, β=0)", "method.lmbda=1 method.beta=0"),
    "gkd_onpolicy_b05": ("on-policy GKD (λ=1, β=0.5)", "method.lmbda=1 method.beta=0.5"),
    "gkd_onpolicy_b1": ("on-policy GKD (λ=1, β=1)", "method.lmbda=1 method.beta=1"),
    "gkd_mixed": ("mixed GKD (λ=0.5, β=0)", "method.lmbda=0.5 method.beta=0"),
    "supervised_kd": ("supervised KD on the data set's completions (λ=0, β=0)", "method.lmbda=0 method.beta=0"),
    "seq_kd": ("sequence-level KD (teacher samples, β=0)", "method.seq_kd=true method.lmbda=0 method.beta=0"),
    "sft_gold": ("SFT on the data set's completions", "method=sft"),
    "sft_teacher": ("SFT on the teacher's samples", "method=sft method.completions=teacher"),
}
GKD = ("gkd_onpolicy", "gkd_onpolicy_b05", "gkd_onpolicy_b1", "gkd_mixed")  # each minus each baseline
COMPARE_KEYS = (*KEYS, "teacher_kl_after")


def mean_se(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3g}"
    return f"{mean:.3g} ± {statistics.stdev(values) / math.sqrt(len(values)):.2g}"


def percent(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * 100 / math.sqrt(len(values)):.1f}"


def compare_tables(folder: Path) -> None:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*_s*.json")):
        m = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        runs.setdefault(m[1], {})[int(m[2])] = json.loads(path.read_text())
    if not runs:
        return
    names = [n for n in COMPARE if n in runs]
    print()
    print("Equal-steps comparison (run_compare.sh; results/compare/): every run")
    print("| method | seed | steps | right, all 81 | train facts (60) | held-out facts (21) | teacher's format | "
          "exact | KL(T‖S) before -> after | run s | training loop s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        for seed, r in sorted(runs[n].items()):
            print(f"| {COMPARE[n][0]} | {seed} | {r['steps']} | " + " | ".join(f"{r[k]:.1%}" for k in KEYS)
                  + f" | {r['teacher_kl_before']:.2f} -> {r['teacher_kl_after']:.3f} | {r['run_seconds']:.0f} | "
                  f"{r['train_loop_seconds']} |")
    print()
    print("Mean ± standard error over seeds (%; KL in nats per token):")
    print("| method | overrides | seeds | right, all 81 | train facts (60) | held-out facts (21) | teacher's format | "
          "exact | KL(T‖S) after | run s | training loop s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        rs = [runs[n][s] for s in sorted(runs[n])]
        cells = [percent([r[k] for r in rs]) for k in KEYS]
        print(f"| {COMPARE[n][0]} | `{COMPARE[n][1]}` | {','.join(map(str, sorted(runs[n])))} | " + " | ".join(cells)
              + f" | {mean_se([r['teacher_kl_after'] for r in rs])} | "
              f"{statistics.fmean(r['run_seconds'] for r in rs):.0f} | "
              f"{statistics.fmean(r['train_loop_seconds'] for r in rs):.0f} |")
    gkd = [n for n in GKD if n in runs]
    if not gkd:
        return
    print()
    print("Each GKD arm minus each baseline, paired by seed (points, or nats for the KL; s.e. of the per-seed "
          "differences):")
    print("| GKD arm | baseline | seeds | right, all 81 | in s.e. | KL(T‖S) after |")
    print("|---|---|---|---|---|---|")
    for g in gkd:
        for n in names:
            if n in GKD and not (n == "gkd_onpolicy" and g != n):  # the other GKD arms against β=0 too
                continue
            seeds = sorted(set(runs[n]) & set(runs[g]))
            if not seeds:
                continue
            diff = [(runs[g][s]["right"] - runs[n][s]["right"]) * 100 for s in seeds]
            kl = [runs[g][s]["teacher_kl_after"] - runs[n][s]["teacher_kl_after"] for s in seeds]
            m = statistics.fmean(diff)
            se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
            ratio = f"{m / se:+.1f}" if se and not math.isnan(se) else ("0 (all equal)" if m == 0 else "")
            print(f"| {COMPARE[g][0]} | {COMPARE[n][0]} | {','.join(map(str, seeds))} | {m:+.1f} ± {se:.1f} | "
                  f"{ratio} | {statistics.fmean(kl):+.3f} |")

if __name__ == "__main__":
    main()
