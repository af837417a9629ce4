"""The data of the SmolLM2 chat recipe: the single-digit multiplication table, answered by the teacher.

    python recipes/smollm2_chat/make_data.py [--teacher DIR] [--out recipes/smollm2_chat/data]

Prompts: "What is {a} x {b}? Answer with a number." for a, b in 1..9 (81 facts), a plain string that distillkit
(`data.chat=true`) and the scripts here wrap as one user message, so SmolLM2's chat template applies (with its
default system prompt). The facts are split once, with a fixed seed (0), into 60 training facts and 21 held-out
facts; `eval.jsonl` holds all 81 (each row says `split`).

The `completion` column is the **teacher's own greedy answer** (through the chat template, at most 16 new tokens),
cut at its first line break: SmolLM2 writes "7 x 8 = 54" and sometimes rambles on after a blank line. No ground
truth enters training: GKD learns from the teacher's distributions on the student's samples, and the SFT baseline
(`sft_baseline.py`) trains on these completions (sequence-level KD). The truth, `answer` = a * b, is used only by
the scoring (`score.py`), which also reports whether the teacher's answer was right (`teacher_correct`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import torch

PROMPT = "What is {a} x {b}? Answer with a number."
SPLIT_SEED = 0
NUM_HELD_OUT = 21


def facts() -> list[dict]:
    rows = [{"a": a, "b": b, "prompt": PROMPT.format(a=a, b=b), "answer": a * b} for a in range(1, 10)
            for b in range(1, 10)]
    held_out = set(random.Random(SPLIT_SEED).sample(range(len(rows)), NUM_HELD_OUT))
    for i, row in enumerate(rows):
        row["split"] = "held_out" if i in held_out else "train"
    return rows


def answer_number(text: str) -> int | None:
    """The number the model gives as its answer: the first number after the first "=" ("7 x 8 = 56"), else the
    first number after the first " is " ("The answer is 56."), else none (no answer: "The answer 7 x 7" is not
    read as 7)."""
    for marker in ("=", " is "):
        if marker in text:
            found = re.search(r"-?\d+", text.split(marker, 1)[1])
            return int(found[0]) if found else None
    return None


def chat_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy answers through the chat template, left-padded batches, decoded without special tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids = [chat_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=None, help="default: the cached SmolLM2 (fetch-model)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from distillkit.real_models import smollm2_folder

    torch.set_num_threads(1)
    teacher_dir = args.teacher or smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    rows = facts()
    answers = greedy(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=16)
    for row, text in zip(rows, answers, strict=True):
        row["teacher_text"] = text
        row["completion"] = text.strip().split("\n")[0].strip()
        row["teacher_correct"] = answer_number(text) == row["answer"]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", [r for r in rows if r["split"] == "train"]), ("eval", rows)):
        with open(args.out / f"{name}.jsonl", "w") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    right = sum(r["teacher_correct"] for r in rows)
    held = [r for r in rows if r["split"] == "held_out"]
    print(f"teacher greedy: {right}/{len(rows)} right ({sum(r['teacher_correct'] for r in held)}/{len(held)} "
          f"held out); files in {args.out}")


if __name__ == "__main__":
    main()
