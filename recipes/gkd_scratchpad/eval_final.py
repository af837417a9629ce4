"""Score the final students of the comparison beyond distillkit's exact match (greedy, the same held-out set).

    python recipes/gkd_scratchpad/eval_final.py [RUNS_DIR] [--out results/final_answers.json]

For each `RUNS_DIR/<name>_s<seed>/final_model` (run.sh's folders, default /tmp/gkd_scratchpad) and for the
starting student and the teacher: whole-completion exact match, final-answer accuracy (the text after `|` is the
sum, whatever the scratchpad), and, over the wrong completions, the column where the first mistake is made (1 =
the rightmost column) and the share of those that still reach the right answer.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))  # tiny_training: the greedy evaluation make_models.py scores its models with

from tiny_training import greedy_completions  # noqa: E402

from distillkit import ASSETS_DIR  # noqa: E402
from distillkit.data.long_addition import long_addition_dataset  # noqa: E402

MAX_NEW_TOKENS = 50


def score(folder: Path, eval_set, batch_size: int = 500) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    completions = greedy_completions(model, tokenizer, list(eval_set["prompt"]), max_new_tokens=MAX_NEW_TOKENS,
                                     batch_size=batch_size)
    exact = answer = 0
    first_errors, recovered, in_answer = [], 0, 0
    for (text, has_eos), target in zip(completions, eval_set["completion"], strict=True):
        ok_answer = has_eos and text.partition("|")[2] == target.partition("|")[2]
        answer += ok_answer
        if has_eos and text == target:
            exact += 1
            continue
        recovered += ok_answer
        pairs = enumerate(zip(text, target, strict=False))
        mismatch = next((i for i, (a, b) in pairs if a != b), min(len(text), len(target)))
        first_errors.append(mismatch // 5 + 1)  # 5 characters per column (4 digits and a comma)
        in_answer += mismatch > target.index("|")  # the scratchpad was right; the read-off answer is not
    n, wrong = len(eval_set), len(first_errors)
    return {"exact": exact / n, "answer": answer / n,
            "first_error_column_mean": sum(first_errors) / wrong if wrong else None,
            "wrong_but_right_answer": recovered / wrong if wrong else None,
            "first_error_in_answer": in_answer / wrong if wrong else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=Path, default=Path("/tmp/gkd_scratchpad"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "final_answers.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    eval_set = long_addition_dataset(1000, seed=1234)
    scores = {"teacher": score(ASSETS_DIR / "scratchpad" / "teacher", eval_set),
              "student (start)": score(ASSETS_DIR / "scratchpad" / "student", eval_set)}
    for folder in sorted(args.runs.glob("*_s[0-9]*/final_model")):
        scores[folder.parent.name] = score(folder, eval_set)
        print(folder.parent.name, scores[folder.parent.name], flush=True)
    args.out.write_text(json.dumps(scores, indent=1) + "\n")
    by_method: dict[str, list[dict]] = {}
    for name, s in scores.items():
        by_method.setdefault(re.sub(r"_s\d+$", "", name), []).append(s)
    print("| run | n | exact match | final answer right | first wrong column (mean, wrong ones) "
          "| wrong ones: scratchpad right, answer wrong | wrong with right answer |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in by_method.items():
        def mean(key, rows=rows):
            values = [r[key] for r in rows if r[key] is not None]
            return sum(values) / len(values) if values else float("nan")
        print(f"| {name} | {len(rows)} | {100 * mean('exact'):.1f}% | {100 * mean('answer'):.1f}% "
              f"| {mean('first_error_column_mean'):.2f} | {100 * mean('first_error_in_answer'):.1f}% "
              f"| {100 * mean('wrong_but_right_answer'):.1f}% |")


if __name__ == "__main__":
    main()
