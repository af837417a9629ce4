"""The built-in task `arithmetic_routed`: addition and subtraction problems, each row naming the teacher that knows
its operation in a `teacher_id` column (`add` or `sub`), for `teacher=router` (docs/teachers.md)."""

from __future__ import annotations

import random

from datasets import Dataset

from distillkit.data.addition import addition_example
from distillkit.data.hinted_tasks import subtraction_example

TEACHER_IDS = {"+": "add", "-": "sub"}


def arithmetic_routed_dataset(num_examples: int, seed: int, digits: int = 3) -> Dataset:
    """`num_examples` problems drawn with `seed`, each operation with probability one half."""
    rng = random.Random(seed)
    hi = 10**digits - 1
    rows = []
    for _ in range(num_examples):
        operator = rng.choice("+-")
        make = addition_example if operator == "+" else subtraction_example
        rows.append({**make(rng.randint(0, hi), rng.randint(0, hi), digits), "teacher_id": TEACHER_IDS[operator]})
    return Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "teacher_id")} for r in rows])
