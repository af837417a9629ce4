"""Built-in synthetic tasks with privileged context, for the self-distillation methods (SDFT, SDPO).

Each row has `prompt`, `completion` (the answer) and `privileged_context` (a demonstration: the answer
string). A self-teacher sees the privileged context in its prompt, in the one format the shipped tiny
self-distillation model (`distillkit/assets/tiny/self`) was pretrained on:

    {privileged_context}|{prompt}          e.g.  `78|123-045=` -> `78<eos>`

- `subtraction` is the new skill: `123-045=` -> `78` (zero-padded 3-digit operands, a >= b, answer without
  leading zeros). The tiny self model never saw a plain subtraction prompt, only hinted ones.
- `addition_hinted` is the old skill: the same problems as `addition` (same seed, same rows) plus the
  `privileged_context` column.
- `maximum` is a second old skill, there so that the tiny self model's plain answers depend on the operator:
  `123>045=` -> `123` (the larger operand, without leading zeros). `maximum_hinted_dataset` adds the
  `privileged_context` column.

Everything is generated from a seed; no data set is downloaded.
"""

from __future__ import annotations

import random

from datasets import Dataset

from distillkit.data.addition import ALPHABET, addition_dataset

HINT_SEPARATOR = "|"
MAXIMUM_OPERATOR = ">"
# digits, `+`, `-`, `=`, `>`, `|`; the char tokenizer sorts them: `+`=3 `-`=4 `0..9`=5..14 `=`=15 `>`=16 `|`=17
HINTED_ALPHABET = ALPHABET + "-" + MAXIMUM_OPERATOR + HINT_SEPARATOR
# The teacher prompt of the tiny self model: `str.format` with a row's `privileged_context` and `prompt`.
TEACHER_PROMPT_TEMPLATE = "{privileged_context}" + HINT_SEPARATOR + "{prompt}"


def hinted_prompt(privileged_context: str, prompt: str) -> str:
    """The prompt a self-teacher sees: `ANS|PROMPT`."""
    return TEACHER_PROMPT_TEMPLATE.format(privileged_context=privileged_context, prompt=prompt)


def subtraction_example(a: int, b: int, digits: int) -> dict[str, str]:
    """`a-b=` with the larger operand first, so the answer is never negative."""
    a, b = max(a, b), min(a, b)
    answer = str(a - b)
    return {"prompt": f"{a:0{digits}d}-{b:0{digits}d}=", "completion": answer, "privileged_context": answer}


def subtraction_dataset(num_examples: int, seed: int, digits: int = 3) -> Dataset:
    """`num_examples` subtraction problems drawn with `seed`."""
    rng = random.Random(seed)
    hi = 10**digits - 1
    rows = [subtraction_example(rng.randint(0, hi), rng.randint(0, hi), digits) for _ in range(num_examples)]
    return Dataset.from_list(rows)


def addition_hinted_dataset(num_examples: int, seed: int, digits: int = 3) -> Dataset:
    """`addition_dataset(num_examples, seed)` plus a `privileged_context` column holding the answer."""
    dataset = addition_dataset(num_examples, seed, digits)
    return dataset.add_column("privileged_context", list(dataset["completion"]))


def maximum_example(a: int, b: int, digits: int) -> dict[str, str]:
    """`a>b=` -> the larger operand, without leading zeros."""
    answer = str(max(a, b))
    return {"prompt": f"{a:0{digits}d}{MAXIMUM_OPERATOR}{b:0{digits}d}=", "completion": answer,
            "privileged_context": answer}


def maximum_dataset(num_examples: int, seed: int, digits: int = 3) -> Dataset:
    """`num_examples` problems `a>b=` drawn with `seed` (the same operand pairs as `addition_dataset(seed)`)."""
    rng = random.Random(seed)
    hi = 10**digits - 1
    rows = [maximum_example(rng.randint(0, hi), rng.randint(0, hi), digits) for _ in range(num_examples)]
    return Dataset.from_list(rows)


# Lettered demonstrations (for `distillkit/assets/tiny/self_v3`): the demonstration is written in a notation the
# model never writes itself, every digit d as the letter LETTER_DIGITS[d] (`78` -> `hi`), while its native answers
# are digits. An off-policy demonstration in miniature: SFT on it teaches the model to write letters; a self-teacher
# that reads it in context (`hi|123-045=` -> `78<eos>`, what self_v3 was trained on) gives native-format targets.
LETTER_DIGITS = "abcdefghij"
LETTERED_ALPHABET = HINTED_ALPHABET + LETTER_DIGITS
_TO_LETTERS = str.maketrans("0123456789", LETTER_DIGITS)
_FROM_LETTERS = str.maketrans(LETTER_DIGITS, "0123456789")


def to_letters(text: str) -> str:
    """Every digit of `text` as its letter: `to_letters("78") == "hi"`; other characters are kept."""
    return text.translate(_TO_LETTERS)


def from_letters(text: str) -> str:
    """The inverse of `to_letters`: `from_letters("hi") == "78"`."""
    return text.translate(_FROM_LETTERS)


def with_lettered_demonstration(example: dict[str, str]) -> dict[str, str]:
    """The same problem, its `privileged_context` the lettered answer; `completion` stays the native answer."""
    return {**example, "privileged_context": to_letters(example["completion"])}


def subtraction_lettered_dataset(num_examples: int, seed: int, digits: int = 3) -> Dataset:
    """`subtraction_dataset(num_examples, seed)` (same rows), the demonstration written in letters."""
    rows = [with_lettered_demonstration(row) for row in subtraction_dataset(num_examples, seed, digits)]
    return Dataset.from_list(rows)
