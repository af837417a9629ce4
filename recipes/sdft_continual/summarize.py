"""Tables for the SDFT-vs-SFT comparison from the JSON files that `eval_skills.py` and `sft_baseline.py` write.

    python recipes/sdft_continual/summarize.py RESULTS_DIR

RESULTS_DIR holds `sdft_*.json` (eval_skills.py on an SDFT run: its checkpoints every 20 steps and the final
model, `step` -1) and `sft_*.json` (sft_baseline.py curves). A file name is `<method>_<tag>_lr<lr>_s<seed>.json`.

Prints (1) every run's final numbers, (2) retention at matched new-skill accuracy: for each method and lr and
each threshold T, the first point of each seed's curve (SDFT: checkpoints every 20 steps; SFT: evaluations every
20 steps) with `sub_value` >= T, and the old skills there, averaged over the seeds that reach T (n), and (3) for
each SDFT run, the point of each SFT curve of the same seed closest in `sub_value` to SDFT's final model.
Nothing is filtered: every file is listed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

THRESHOLDS = (0.45, 0.55, 0.65)
KEYS = ("sub_value", "add_native", "max_native", "add_value", "max_value", "kl_sub", "kl_add", "kl_max")


def load(results: Path):
    runs = {}
    for path in sorted(results.glob("*.json")):
        m = re.match(r"(sdft|sft)_(.+)_lr([0-9.e-]+)_s(\d+)$", path.stem)
        if not m:
            continue
        data = json.loads(path.read_text())
        curve = data["curve"] if isinstance(data, dict) else data
        points = []
        for row in curve:
            step = row["step"]
            if step == -1:  # the final model of an SDFT run
                step = max(r["step"] for r in curve) + 20
            points.append({**row, "step": step})
        runs[path.stem] = {"method": m[1], "tag": m[2], "lr": m[3], "seed": int(m[4]),
                           "curve": sorted(points, key=lambda r: r["step"])}
    return runs


def fmt(row) -> str:
    return (f"{row['sub_value']:6.1%} | {row['add_native']:6.1%} | {row['max_native']:6.1%} | "
            f"{row.get('kl_sub', float('nan')):.2f} / {row.get('kl_add', float('nan')):.2f} / "
            f"{row.get('kl_max', float('nan')):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    runs = load(args.results)
    print("| run | lr | seed | steps | new: sub (value) | old: add | old: max | KL sub / add / max "
          "| old: add / max by value |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs.values():
        last = run["curve"][-1]
        print(f"| {run['method']} {run['tag']} | {run['lr']} | {run['seed']} | {last['step']} | {fmt(last)} | "
              f"{last['add_value']:.1%} / {last['max_value']:.1%} |")
    print()
    print("Final models, mean over seeds (min-max):")
    print("| run | lr | seeds | new: sub (value) | old: add | old: max | old: add / max by value | KL sub |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for run in runs.values():
        groups.setdefault((run["method"], run["tag"], run["lr"]), []).append(run)
    for (method, tag, lr), group in groups.items():
        lasts = [run["curve"][-1] for run in group]

        def span(key, lasts=lasts):
            values = [r[key] for r in lasts]
            return f"{sum(values) / len(values):.1%} ({min(values):.1%}-{max(values):.1%})"

        kl = sum(r["kl_sub"] for r in lasts) / len(lasts)
        print(f"| {method} {tag} | {lr} | {len(group)} | {span('sub_value')} | {span('add_native')} | "
              f"{span('max_native')} | {span('add_value')} / {span('max_value')} | {kl:.2f} |")
    print()
    print("Retention at matched new-skill accuracy: first curve point with sub (value) >= T, mean over seeds.")
    print("| T | run | lr | n | step | sub (value) | old: add | old: max | old: add / max by value | KL sub |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in THRESHOLDS:
        for (method, tag, lr), group in groups.items():
            hits = [next((r for r in run["curve"] if r["sub_value"] >= t), None) for run in group]
            hits = [h for h in hits if h is not None]
            if not hits:
                print(f"| {t:.0%} | {method} {tag} | {lr} | 0/{len(group)} | | | | | | |")
                continue

            def mean(key, hits=hits):
                return sum(h.get(key, float("nan")) for h in hits) / len(hits)

            print(f"| {t:.0%} | {method} {tag} | {lr} | {len(hits)}/{len(group)} | {mean('step'):.0f} | "
                  f"{mean('sub_value'):.1%} | {mean('add_native'):.1%} | {mean('max_native'):.1%} | "
                  f"{mean('add_value'):.1%} / {mean('max_value'):.1%} | {mean('kl_sub'):.2f} |")
    print()
    print("Matched new-skill accuracy: each SDFT checkpoint with the closest point of each SFT curve (same seed).")
    print("| SDFT run, step | sub (value) | old: add | old: max | KL sub / add / max "
          "| SFT run, step | sub (value) | old: add | old: max | KL sub / add / max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs.values():
        if run["method"] != "sdft":
            continue
        for point in run["curve"][-1:]:
            for other in runs.values():
                if other["method"] != "sft" or other["seed"] != run["seed"]:
                    continue
                best = min(other["curve"], key=lambda r: abs(r["sub_value"] - point["sub_value"]))
                print(f"| {run['tag']} lr {run['lr']} s{run['seed']}, {point['step']} | {fmt(point)} | "
                      f"{other['tag']} lr {other['lr']}, {best['step']} | {fmt(best)} |")


if __name__ == "__main__":
    main()
