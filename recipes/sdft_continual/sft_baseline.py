"""Baseline for the SDFT continual-learning recipe: SFT on the same demonstrations, and what it forgets.

    python recipes/sdft_continual/sft_baseline.py [--steps 200] [--batch-size 64] [--lr 3e-4] [--seed 0]
                                                  [--target demonstration|native] [--out sft.json]

Fine-tunes `distillkit/assets/tiny/self_v3` (old skills: plain addition and maximum; it reads a lettered hint
`hi|123-045=` -> `78`; never saw plain subtraction) with cross-entropy on the `subtraction_lettered` task:
plain `a-b=` prompts (`subtraction_lettered_dataset(steps * batch_size, seed)`, read in order), and as target
the demonstration itself (`--target demonstration`, the default and the paper's SFT: the `privileged_context`,
the answer written in letters, `hi`) or the native answer (`--target native`, `78`: a control, SFT on
demonstrations already in the model's own notation). Scores the model before training, every `--eval-every`
steps and after with `eval_skills.score` (new skill by value in either notation, old skills in the model's own
notation and by value; see that file). Prints a table and writes the curve as JSON to `--out`.

Plain torch/transformers and the `distillkit.data` task generators only (none of distillkit's training code),
so the comparison with SDFT at the same budget does not share its code path. AdamW (betas 0.9/0.98, no weight
decay), cosine schedule with 10 warmup steps (transformers' `get_cosine_schedule_with_warmup`), gradient
clipping at 1.0 (the distillkit recipe's optimizer settings), 1 CPU thread, seed `--seed` (weights are not
re-initialised; it seeds the problems and torch), deterministic torch algorithms.
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

from distillkit.data.hinted_tasks import subtraction_lettered_dataset  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "recipes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_skills import held_out_sets, score  # noqa: E402  (the same held-out sets and scoring as for SDFT)
from make_tiny_models import encode  # noqa: E402  (prompt masked; loss on the target and eos)

MODEL_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny" / "self_v3"
BETAS = (0.9, 0.98)
WARMUP_STEPS = 10
MAX_GRAD_NORM = 1.0
COLUMNS = ("sub_value", "sub_native", "sub_letters", "add_native", "add_value", "max_native", "max_value", "kl_sub",
           "kl_add", "kl_max")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=("demonstration", "native"), default="demonstration")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("outputs/sft_baseline.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train()
    train_set = subtraction_lettered_dataset(args.steps * args.batch_size, seed=args.seed)
    target_column = "privileged_context" if args.target == "demonstration" else "completion"
    held_out = held_out_sets()
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=BETAS, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, WARMUP_STEPS, args.steps)

    curve = []
    t0 = time.perf_counter()
    train_seconds = 0.0
    print(f"SFT of {args.model} on plain subtraction, target {target_column}: {vars(args)}", flush=True)
    print(f"{'step':>5} {'loss':>7} " + " ".join(f"{c:>10}" for c in COLUMNS) + f" {'train s':>8}", flush=True)

    def evaluate(step: int, loss: float | None) -> None:
        acc = score(model, tokenizer, held_out, base)
        curve.append({"step": step, "loss": loss, **acc, "train_seconds": train_seconds})
        loss_text = f"{loss:7.4f}" if loss is not None else f"{'-':>7}"
        print(f"{step:5d} {loss_text} " + " ".join(f"{acc[c]:10.1%}" if not c.startswith("kl") else f"{acc[c]:10.3f}" for c in COLUMNS)
              + f" {train_seconds:8.1f}", flush=True)

    evaluate(0, None)
    for step in range(1, args.steps + 1):
        t_step = time.perf_counter()
        rows = train_set[(step - 1) * args.batch_size : step * args.batch_size]
        examples = [{"prompt": p, "completion": c} for p, c in zip(rows["prompt"], rows[target_column], strict=True)]
        loss = model(**encode(tokenizer, examples)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - t_step
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, loss.item())
    wall = time.perf_counter() - t0

    result = {
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "betas": BETAS,
            "warmup_steps": WARMUP_STEPS,
            "schedule": "cosine",
            "max_grad_norm": MAX_GRAD_NORM,
            "threads": 1,
        },
        "before": curve[0],
        "after": curve[-1],
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "curve": curve,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    before, after = curve[0], curve[-1]
    print(
        f"new skill (subtraction, by value) {before['sub_value']:.1%} -> {after['sub_value']:.1%}, "
        f"old skills: addition {before['add_native']:.1%} -> {after['add_native']:.1%}, "
        f"maximum {before['max_native']:.1%} -> {after['max_native']:.1%}; "
        f"{train_seconds:.0f}s training, {wall:.0f}s wall; curve in {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
