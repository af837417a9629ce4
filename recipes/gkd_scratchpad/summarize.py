"""The comparison table of recipes/gkd_scratchpad, from the per-run JSON files in results/.

    python recipes/gkd_scratchpad/summarize.py [RESULTS_DIR]          # the tables (markdown)
    python recipes/gkd_scratchpad/summarize.py --record LOG ...       # (run.sh) one run's printed summary -> JSON

Per method: held-out exact match after training, mean ± standard error over seeds (s.e. = sample std / sqrt(n)),
and the mean wall time of a run. Then on-policy GKD (each β) minus each off-policy baseline: the difference of
the means with its standard error sqrt(se_a² + se_b²) (unpaired), and the paired one (per-seed differences; a seed
fixes the training rows and their order for both, `data.seed`), with how many standard errors apart they are.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (label, the overrides run.sh gets); the order of the table
METHODS = {
    "gkd_onpolicy_b0": ("on-policy GKD, β=0 (forward KL)", "method.lmbda=1 method.beta=0"),
    "gkd_onpolicy_b05": ("on-policy GKD, β=0.5 (JSD)", "method.lmbda=1 method.beta=0.5"),
    "gkd_onpolicy_b1": ("on-policy GKD, β=1 (reverse KL)", "method.lmbda=1 method.beta=1"),
    "gkd_mixed": ("mixed, λ=0.5 (β=0.5)", "method.lmbda=0.5"),
    "supervised_kd": ("supervised KD on gold, β=0", "method.lmbda=0 method.beta=0"),
    "seq_kd": ("sequence-level KD (teacher samples, β=0.5)", "method.seq_kd=true method.lmbda=0"),
    "sft_gold": ("SFT on gold completions", "method=sft"),
    "sft_teacher": ("SFT on teacher samples", "method=sft method.completions=teacher"),
    # run_extra.sh, added after the first results: a β-matched off-policy control, and equal training-loop time
    "supervised_kd_b05": ("(extra) supervised KD on gold, β=0.5", "method.lmbda=0 method.beta=0.5"),
    "sft_gold_500steps": ("(extra) SFT on gold, 500 steps", "method=sft train.steps=500"),
    "supervised_kd_200steps": ("(extra) supervised KD on gold β=0, 200 steps",
                               "method.lmbda=0 method.beta=0 train.steps=200"),
    "gkd_onpolicy_b05_500steps": ("(extra) on-policy GKD β=0.5, 500 steps",
                                  "method.lmbda=1 method.beta=0.5 train.steps=500"),
}
ON_POLICY = ["gkd_onpolicy_b0", "gkd_onpolicy_b05", "gkd_onpolicy_b1"]
BASELINES = ["gkd_mixed", "supervised_kd", "seq_kd", "sft_gold", "sft_teacher"]
# (on-policy, baseline): the predeclared pairs, then the extras' (β-matched, equal training time, equal 500 steps)
PAIRS = [(a, b) for a in ON_POLICY for b in BASELINES] + [
    ("gkd_onpolicy_b05", "supervised_kd_b05"), ("gkd_onpolicy_b05", "sft_gold_500steps"),
    ("gkd_onpolicy_b05", "supervised_kd_200steps"), ("gkd_onpolicy_b05_500steps", "sft_gold_500steps")]

PATTERNS = {
    "accuracy": r"student accuracy \(held-out exact match\)\s+([\d.]+)% -> ([\d.]+)%",
    "teacher": r"teacher accuracy\s+([\d.]+)%",
    "kl": r"teacher-student KL\(T\|\|S\) per token\s+([\d.]+) -> ([\d.]+)",
    "tokens_per_s": r"training tokens/s\s+([\d,]+)",
}


def record(log: Path, name: str, seed: int, wall: float, command: str, out: Path) -> None:
    text = log.read_text()
    found = {key: re.search(pattern, text) for key, pattern in PATTERNS.items()}
    missing = [key for key, m in found.items() if m is None]
    if missing:
        raise SystemExit(f"{log}: no {missing} in the printed summary (did the run fail?)")
    row = {
        "name": name, "seed": seed, "command": command, "wall_s": round(wall, 1),
        "student_accuracy_before": float(found["accuracy"].group(1)) / 100,
        "student_accuracy_after": float(found["accuracy"].group(2)) / 100,
        "teacher_accuracy": float(found["teacher"].group(1)) / 100,
        "teacher_kl_before": float(found["kl"].group(1)), "teacher_kl_after": float(found["kl"].group(2)),
        "tokens_per_s": float(found["tokens_per_s"].group(1).replace(",", "")),
    }
    loop = re.findall(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<", text)  # tqdm's elapsed time of the training loop
    done = [m for m in loop if m[0] == m[1]]
    if done:
        hours, minutes, seconds = done[-1][2] or "0", done[-1][3], done[-1][4]
        row["train_loop_s"] = 3600 * int(hours) + 60 * int(minutes) + int(seconds)
    out.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row))


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def pct(mean: float, se: float) -> str:
    return f"{100 * mean:.1f} ± {100 * se:.1f}"


def table(results: Path) -> str:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(results.glob("*_s[0-9]*.json")):  # one per run (not final_answers.json)
        row = json.loads(path.read_text())
        runs.setdefault(row["name"], {})[row["seed"]] = row
    lines = ["| method | overrides | seeds | before | after (mean ± s.e.) | per seed | KL(T‖S) after | wall s/run "
             "| training loop s/run |", "|---|---|---|---|---|---|---|---|---|"]
    stats = {}
    for name, (label, overrides) in METHODS.items():
        if name not in runs:
            continue
        by_seed = runs[name]
        seeds = sorted(by_seed)
        after = [by_seed[s]["student_accuracy_after"] for s in seeds]
        stats[name] = (mean_se(after), {s: by_seed[s]["student_accuracy_after"] for s in seeds})
        before = sorted({by_seed[s]["student_accuracy_before"] for s in seeds})
        kl = mean_se([by_seed[s]["teacher_kl_after"] for s in seeds])[0]
        wall = mean_se([by_seed[s]["wall_s"] for s in seeds])
        loop = mean_se([by_seed[s].get("train_loop_s", float("nan")) for s in seeds])
        lines.append(
            f"| {label} | `{overrides}` | {','.join(map(str, seeds))} | {'/'.join(f'{100 * b:.1f}' for b in before)} "
            f"| **{pct(*stats[name][0])}** | {' / '.join(f'{100 * v:.1f}' for v in after)} "
            f"| {kl:.4f} | {wall[0]:.0f} ± {wall[1]:.0f} | {loop[0]:.0f} ± {loop[1]:.0f} |"
        )
    teacher = sorted({r["teacher_accuracy"] for by_seed in runs.values() for r in by_seed.values()})
    lines += ["", f"Teacher (greedy, same held-out set): {' / '.join(f'{100 * t:.1f}%' for t in teacher)}.", ""]
    lines += ["| on-policy | minus baseline | difference (unpaired s.e.) | in s.e. | paired by seed (s.e.) | in s.e. |",
              "|---|---|---|---|---|---|"]
    for a, b in PAIRS:
        if a not in stats or b not in stats:
            continue
        (ma, sa), per_a = stats[a]
        (mb, sb), per_b = stats[b]
        diff, se = ma - mb, math.sqrt(sa**2 + sb**2)
        common = sorted(set(per_a) & set(per_b))
        pd, ps = mean_se([per_a[s] - per_b[s] for s in common])
        lines.append(
            f"| {METHODS[a][0]} | {METHODS[b][0]} | {100 * diff:+.1f} ± {100 * se:.1f} | {diff / se:+.1f} "
            f"| {100 * pd:+.1f} ± {100 * ps:.1f} | {pd / ps if ps else float('nan'):+.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "results")
    parser.add_argument("--record", type=Path, help="a run's log: write its summary as JSON (--out)")
    parser.add_argument("--name")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--wall", type=float)
    parser.add_argument("--command", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.record:
        record(args.record, args.name, args.seed, args.wall, args.command, args.out)
    else:
        print(table(args.results))


if __name__ == "__main__":
    main()
