"""Baseline for the SDFT continual-learning recipe: plain SFT on the new skill, and how much of the old it forgets.

    python recipes/sdft_continual/sft_baseline.py [--steps 200] [--batch-size 64] [--lr 1e-3]

Fine-tunes the tiny self-distillation model (`distillkit/assets/tiny/self`: partial addition, maximum `a>b=`,
no subtraction unless hinted) with cross-entropy on the `subtraction` task's demonstrations (plain `a-b=` prompts, no hint;
`subtraction_dataset(steps * batch_size, seed=0)`, read in order), and scores greedy exact match on 1,000
held-out problems (seed 1234) of the new skill (plain subtraction) and the old skills (plain addition and plain
maximum) before
training, every `--eval-every` steps and after. Prints a table and writes the curve as JSON to `--out`.

Plain torch/transformers and the `distillkit.data` task generators only (none of distillkit's training code),
so the comparison with SDFT at the same budget does not share its code path. AdamW (betas 0.9/0.98, no weight
decay), cosine schedule with 10 warmup steps (transformers' `get_cosine_schedule_with_warmup`), gradient
clipping at 1.0, 1 CPU thread, seed 0, deterministic torch algorithms.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from distillkit.data.addition import addition_dataset  # noqa: E402
from distillkit.data.hinted_tasks import maximum_dataset, subtraction_dataset  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "recipes"))
from make_tiny_models import encode, greedy_exact_match  # noqa: E402  (the same encoding and metric as the models')

MODEL_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny" / "self"
SEED = 0
DATA_SEED = 0
EVAL_SEED = 1234
EVAL_SIZE = 1000
BETAS = (0.9, 0.98)
WARMUP_STEPS = 10
MAX_GRAD_NORM = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("outputs/sft_baseline.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train()
    train_set = subtraction_dataset(args.steps * args.batch_size, seed=DATA_SEED)
    held_out = {
        "new (subtraction)": subtraction_dataset(EVAL_SIZE, seed=EVAL_SEED),
        "old (addition)": addition_dataset(EVAL_SIZE, seed=EVAL_SEED),
        "old (maximum)": maximum_dataset(EVAL_SIZE, seed=EVAL_SEED),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=BETAS, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, WARMUP_STEPS, args.steps)

    curve = []
    t0 = time.perf_counter()
    train_seconds = 0.0
    header = (
        f"{'step':>5} {'loss':>7} {'new (subtraction)':>18} {'old (addition)':>15} {'old (maximum)':>14} "
        f"{'train s':>8}"
    )
    print(f"SFT of {args.model} on plain subtraction: {vars(args)}\n{header}", flush=True)

    def evaluate(step: int, loss: float | None) -> None:
        acc = {name: greedy_exact_match(model, tokenizer, ds) for name, ds in held_out.items()}
        curve.append(
            {
                "step": step,
                "loss": loss,
                "new_skill_subtraction": acc["new (subtraction)"],
                "old_skill_addition": acc["old (addition)"],
                "old_skill_maximum": acc["old (maximum)"],
                "train_seconds": train_seconds,
            }
        )
        loss_text = f"{loss:7.4f}" if loss is not None else f"{'-':>7}"
        print(
            f"{step:5d} {loss_text} {acc['new (subtraction)']:18.1%} {acc['old (addition)']:15.1%} "
            f"{acc['old (maximum)']:14.1%} {train_seconds:8.1f}",
            flush=True,
        )

    evaluate(0, None)
    for step in range(1, args.steps + 1):
        t_step = time.perf_counter()
        rows = train_set[(step - 1) * args.batch_size : step * args.batch_size]
        loss = model(**encode(tokenizer, [{"prompt": p, "completion": c}
                                              for p, c in zip(rows["prompt"], rows["completion"], strict=True)])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - t_step
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, loss.item())
    wall = time.perf_counter() - t0

    before, after = curve[0], curve[-1]
    result = {
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "betas": BETAS,
            "warmup_steps": WARMUP_STEPS,
            "schedule": "cosine",
            "max_grad_norm": MAX_GRAD_NORM,
            "seed": SEED,
            "data_seed": DATA_SEED,
            "eval_seed": EVAL_SEED,
            "eval_size": EVAL_SIZE,
            "threads": 1,
        },
        "before": {k: before[k] for k in ("new_skill_subtraction", "old_skill_addition", "old_skill_maximum")},
        "after": {k: after[k] for k in ("new_skill_subtraction", "old_skill_addition", "old_skill_maximum")},
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "curve": curve,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"new skill (subtraction) {before['new_skill_subtraction']:.1%} -> {after['new_skill_subtraction']:.1%}, "
        f"old skills: addition {before['old_skill_addition']:.1%} -> {after['old_skill_addition']:.1%}, "
        f"maximum {before['old_skill_maximum']:.1%} -> {after['old_skill_maximum']:.1%}; "
        f"{train_seconds:.0f}s training, {wall:.0f}s wall; curve in {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
