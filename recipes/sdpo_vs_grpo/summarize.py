"""The tables of recipes/sdpo_vs_grpo/README.md (feedback section), from the per-run JSON files in results/.

    python recipes/sdpo_vs_grpo/summarize.py [RESULTS_DIR]        # the tables (markdown)
    python recipes/sdpo_vs_grpo/summarize.py --record RUN_DIR ...  # (run.sh) one run's MLflow curve -> JSON

Per arm: held-out greedy exact match every 10 steps (64 rollouts a step), mean ± standard error over seeds
(s.e. = sample std / sqrt(n)); the paired difference to the GRPO-like baseline (same seed); and the rollouts SDPO
needs to reach the baseline's final accuracy: per seed, the first evaluation at or above that seed's baseline
after 150 steps (and, less noisy, above the baseline's mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROLLOUTS_PER_STEP = 64
BASELINE = "grpo_w0"
NINE_SEED_BASELINE = 0.362  # the baseline's mean final accuracy over seeds 0-8 (README, first section)
# name -> label; the order of the tables
ARMS = {
    "sdpo_feedback": "SDPO + feedback (reference answer as privileged context), w = 1",
    "sdpo": "SDPO, successful siblings only (sdpo.yaml), w = 1",
    BASELINE: "GRPO-like baseline, w = 0",
}
TRAIN_METRICS = ("self_distillation/reprompt_fraction", "self_distillation/feedback_used_fraction",
                 "self_distillation/success_group_fraction", "rewards/mean")


def record(run_dir: Path, name: str, seed: int, wall: float, command: str, out: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    curve = {m.step: m.value for m in client.get_metric_history(run_id, "eval/accuracy")}
    means = {}
    for key in TRAIN_METRICS:
        values = [m.value for m in client.get_metric_history(run_id, key)]
        means[key] = statistics.fmean(values) if values else None
    out.write_text(json.dumps({"name": name, "seed": seed, "command": command, "wall_s": round(wall, 1),
                               "eval_accuracy": {str(k): v for k, v in sorted(curve.items())},
                               "train_means": means}, indent=1) + "\n")


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan)


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    m, se = mean_se(values)
    return f"{m * scale:.{digits}f} ± {se * scale:.{digits}f}" if not math.isnan(se) else f"{m * scale:.{digits}f}"


def load(results: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(results.glob("*_s*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run["name"], {})[run["seed"]] = run
    return runs


def curve(run: dict) -> dict[int, float]:
    return {int(k): v for k, v in run["eval_accuracy"].items()}


def first_reaching(run: dict, target: float) -> int | None:
    """The first evaluated step whose accuracy is >= target (None: never within the run)."""
    return next((step for step, acc in sorted(curve(run).items()) if step > 0 and acc >= target - 1e-9), None)


def tables(results: Path) -> None:
    runs = load(results)
    arms = [a for a in ARMS if a in runs]
    steps = sorted(set.intersection(*(set(curve(r)) for a in arms for r in runs[a].values())))
    print("Held-out greedy exact match (%), mean ± s.e. over seeds, by optimizer step (rollouts = 64 x step):\n")
    shown = [s for s in steps if s % 30 == 0 or s == steps[-1]]
    print("| arm | seeds | " + " | ".join(f"{s} ({s * ROLLOUTS_PER_STEP:,})" for s in shown) + " | wall s/run |")
    print("|---|---|" + "---|" * (len(shown) + 1))
    for a in arms:
        seeds = sorted(runs[a])
        cells = [fmt([curve(runs[a][s])[step] for s in seeds]) for step in shown]
        wall = statistics.fmean(runs[a][s]["wall_s"] for s in seeds)
        print(f"| {ARMS[a]} | {','.join(map(str, seeds))} | " + " | ".join(cells) + f" | {wall:.0f} |")

    print("\nPer seed, final (step 150) accuracy (%):\n")
    seeds_all = sorted(set().union(*(runs[a] for a in arms)))
    print("| seed | " + " | ".join(ARMS[a] for a in arms) + " |")
    print("|---|" + "---|" * len(arms))
    for s in seeds_all:
        cells = [f"{curve(runs[a][s])[steps[-1]] * 100:.1f}" if s in runs[a] else "" for a in arms]
        print(f"| {s} | " + " | ".join(cells) + " |")

    if BASELINE not in runs:
        return
    base = runs[BASELINE]
    final = steps[-1]
    base_mean = statistics.fmean(curve(r)[final] for r in base.values())
    print(f"\nAgainst the baseline (same seed), final step {final}; rollouts to reach the baseline's final accuracy "
          f"(its own seed's, and its mean over seeds, {base_mean * 100:.1f}%):\n")
    print("| arm | seeds | final minus baseline, paired (points) | in s.e. | steps to the same seed's baseline final "
          "(per seed) | rollouts, mean ± s.e. | fraction of the baseline's 9,600 | steps to the baseline's mean final"
          " (per seed) | steps to its 9-seed mean final, 36.2% (per seed) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        if a == BASELINE:
            continue
        seeds = sorted(s for s in runs[a] if s in base)
        diffs = [curve(runs[a][s])[final] - curve(base[s])[final] for s in seeds]
        m, se = mean_se(diffs)
        reach = [first_reaching(runs[a][s], curve(base[s])[final]) for s in seeds]
        reach_mean = [first_reaching(runs[a][s], base_mean) for s in seeds]
        per_seed = " / ".join("never" if r is None else str(r) for r in reach)
        per_seed_mean = " / ".join("never" if r is None else str(r) for r in reach_mean)
        reach_nine = " / ".join("never" if r is None else str(r)
                                for r in (first_reaching(runs[a][s], NINE_SEED_BASELINE) for s in seeds))
        if all(r is not None for r in reach):
            rm, rse = mean_se([r * ROLLOUTS_PER_STEP for r in reach])
            roll = f"{rm:,.0f} ± {rse:,.0f}"
            frac = f"{rm / (final * ROLLOUTS_PER_STEP):.2f}"
        else:
            roll, frac = "(not all reach it)", ""
        print(f"| {ARMS[a]} | {','.join(map(str, seeds))} | {m * 100:+.1f} ± {se * 100:.1f} | "
              f"{m / se if se else math.inf:+.1f} | {per_seed} | {roll} | {frac} | {per_seed_mean} | {reach_nine} |")

    for a in arms:
        if a == BASELINE:
            continue
        seeds = sorted(runs[a])
        mean_curve = {step: statistics.fmean(curve(runs[a][s])[step] for s in seeds) for step in steps}
        for target, what in ((base_mean, "the baseline's mean final over these seeds"),
                             (NINE_SEED_BASELINE, "its 9-seed mean final")):
            step = next((st for st in steps if st > 0 and mean_curve[st] >= target - 1e-9), None)
            where = "never" if step is None else f"step {step}, {step * ROLLOUTS_PER_STEP:,} rollouts " \
                f"({step / final:.2f} of the baseline's)"
            print(f"\n{ARMS[a]}: its mean curve first reaches {what} ({target * 100:.1f}%) at {where}.", end="")
        print()
    print("\nTraining-time means over the 150 steps (per arm, mean over seeds):\n")
    print("| arm | " + " | ".join(f"`{k}`" for k in TRAIN_METRICS) + " |")
    print("|---|" + "---|" * len(TRAIN_METRICS))
    for a in arms:
        cells = []
        for k in TRAIN_METRICS:
            if a == BASELINE and k in ("self_distillation/reprompt_fraction", "self_distillation/feedback_used_fraction"):
                cells.append("- (w = 0 distills nothing)")
                continue
            vals = [runs[a][s]["train_means"][k] for s in runs[a] if runs[a][s]["train_means"][k] is not None]
            cells.append(f"{statistics.fmean(vals):.3f}" if vals else "")
        print(f"| {ARMS[a]} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "results")
    parser.add_argument("--record", type=Path, help="a run folder (run.sh)")
    parser.add_argument("--name")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--wall", type=float)
    parser.add_argument("--command")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.record:
        record(args.record, args.name, args.seed, args.wall, args.command, args.out)
    else:
        tables(args.results)


if __name__ == "__main__":
    main()
