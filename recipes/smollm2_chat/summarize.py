"""The SmolLM2 chat recipe's table, from the JSON files that run_seed.sh (score.py) writes.

    python recipes/smollm2_chat/summarize.py [RESULTS_DIR]   # default: recipes/smollm2_chat/results

RESULTS_DIR holds teacher.json, student_before.json, gkd_s<SEED>.json, sft_s<SEED>.json and wall_s<SEED>.json.
Prints every run (nothing is filtered), the mean over seeds with min-max for GKD and SFT, and the wall times.
"""

from __future__ import annotations

import argparse
import json
import re
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


if __name__ == "__main__":
    main()
