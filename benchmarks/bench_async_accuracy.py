"""Held-out accuracy at equal optimizer steps: synchronous rollouts vs `train.async_generation=true`.

    python benchmarks/bench_async_accuracy.py                     # the embedded default, seeds 0 1 2, both modes
    python benchmarks/bench_async_accuracy.py --seeds 0 1 --steps 400 --threads 1

Each run is the plain `distillkit` command on the embedded default (tiny teacher and student, 3-digit addition,
1,000 held-out problems), one process, alternating sync and async per seed. The summary gives each mode's mean
accuracy after training with its standard error over seeds, the paired difference (async - sync) with its standard
error, and each mode's wall time. Results go to `--out` (one JSON per run), so a rerun only adds missing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = {"sync": [], "async": ["train.async_generation=true"]}
RUNS = Path(tempfile.gettempdir()) / "distillkit_async_accuracy"  # checkpoints and final models: not kept


def run_one(mode: str, seed: int, args, out: Path) -> dict:
    path = out / f"{mode}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    overrides = [f"train.seed={seed}", f"data.seed={seed}", f"train.steps={args.steps}", "tracking.enabled=false",
                 f"hydra.run.dir={RUNS / f'{mode}_seed{seed}'}", *MODES[mode]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "distillkit.cli", *overrides], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    accuracy = re.search(r"student accuracy.*?([\d.]+)% -> ([\d.]+)%", done.stdout)
    result = {"mode": mode, "seed": seed, "steps": args.steps, "threads": args.threads, "wall_s": wall,
              "accuracy_before": float(accuracy.group(1)) / 100, "accuracy_after": float(accuracy.group(2)) / 100,
              "overrides": overrides}
    path.write_text(json.dumps(result, indent=1))
    return result


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "async_accuracy")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {mode: {} for mode in MODES}
    for seed in args.seeds:
        for mode in MODES:
            runs[mode][seed] = run_one(mode, seed, args, args.out)
            r = runs[mode][seed]
            print(f"{mode:>5} seed {seed}: {r['accuracy_before']:.1%} -> {r['accuracy_after']:.1%} in {r['wall_s']:.0f} s",
                  flush=True)
    print(f"\n{args.steps} steps, seeds {args.seeds}, {args.threads} thread(s) per run:")
    for mode in MODES:
        acc = mean_se([r["accuracy_after"] for r in runs[mode].values()])
        wall = statistics.fmean(r["wall_s"] for r in runs[mode].values())
        print(f"  {mode:>5}: accuracy {acc[0]:.1%} +- {acc[1]:.1%} (s.e.), wall {wall:.0f} s per run")
    diff = mean_se([runs["async"][s]["accuracy_after"] - runs["sync"][s]["accuracy_after"] for s in args.seeds])
    print(f"  async - sync, paired by seed: {diff[0]:+.1%} +- {diff[1]:.1%} (s.e.)")


if __name__ == "__main__":
    main()
