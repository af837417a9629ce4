"""The built-in synthetic task: zero-padded multi-digit addition with a checkable answer.

`123+045=` -> `168`. The answer is written without leading zeros, so a model has to learn the carry and
the stop. Everything is generated from a seed; no data set is downloaded.
"""

from __future__ import annotations

import random

from datasets import Dataset

ALPHABET = "0123456789+="


def addition_example(a: int, b: int, digits: int) -> dict[str, str]:
    return {"prompt": f"{a:0{digits}d}+{b:0{digits}d}=", "completion": str(a + b)}


def addition_dataset(num_examples: int, seed: int, digits: int = 3) -> Dataset:
    """`num_examples` problems drawn with `seed`. Different seeds give (almost surely) different problems."""
    rng = random.Random(seed)
    hi = 10**digits - 1
    rows = [addition_example(rng.randint(0, hi), rng.randint(0, hi), digits) for _ in range(num_examples)]
    return Dataset.from_list(rows)
