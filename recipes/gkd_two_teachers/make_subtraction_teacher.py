"""Build the second tiny teacher of the routed-teachers demo: the addition teacher retrained on subtraction.

    python recipes/gkd_two_teachers/make_subtraction_teacher.py

Writes `distillkit/assets/tiny/teacher_sub/`. It starts from `distillkit/assets/tiny/teacher` (addition, 96%)
and is trained with cross-entropy on subtraction only (`123-045=` -> `78<eos>`, the built-in task `subtraction`),
so it knows subtraction and has forgotten most of addition: each of the two teachers knows the task the other does
not. Same tokenizer as the tiny student (the 16-token character set includes `-`), so both teachers can distill it.
Deterministic (seeded streams, 1 thread); nothing is downloaded.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from make_tiny_models import (  # noqa: E402  (the shipped models' own training helpers)
    encode,
    forced_exact_match,
    greedy_exact_match,
    make_optimizer,
    pin_seeds,
    save,
    train_step,
)

from distillkit.data.addition import addition_dataset  # noqa: E402
from distillkit.data.hinted_tasks import subtraction_dataset, subtraction_example  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "distillkit" / "assets" / "tiny"
STREAM_SEED, EVAL_SEED, TARGET, MAX_STEPS, EVAL_EVERY, BATCH = 7, 1234, 0.95, 3000, 50, 128


def main() -> None:
    torch.set_num_threads(1)
    pin_seeds(0)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "teacher")
    model = AutoModelForCausalLM.from_pretrained(ASSETS / "teacher", dtype=torch.float32)
    model.train()
    optimizer, scheduler = make_optimizer(model, MAX_STEPS)
    rng = random.Random(STREAM_SEED)
    held_out = subtraction_dataset(1000, EVAL_SEED)
    forced = encode(tokenizer, list(held_out))
    start, accuracy = time.perf_counter(), 0.0
    for step in range(1, MAX_STEPS + 1):
        batch = encode(tokenizer, [subtraction_example(rng.randint(0, 999), rng.randint(0, 999), 3)
                                   for _ in range(BATCH)])
        loss = train_step(model, optimizer, scheduler, batch)
        if step % EVAL_EVERY == 0:
            accuracy = forced_exact_match(model, forced)
            print(f"step {step}: loss {loss:.3f}, held-out subtraction {accuracy:.1%}", flush=True)
            if accuracy >= TARGET:
                break
    model.eval()
    sub = greedy_exact_match(model, tokenizer, held_out)
    add = greedy_exact_match(model, tokenizer, addition_dataset(1000, EVAL_SEED))
    size = save(model, tokenizer, ASSETS / "teacher_sub")
    print(f"teacher_sub: {step} steps, {time.perf_counter() - start:.0f} s, greedy exact match subtraction "
          f"{sub:.1%}, addition {add:.1%}, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
