"""A built-in task with long completions: 5- to 8-digit addition with a written, column-by-column scratchpad.

`48213+90567=` -> `3701,1680,2570,8080,4931|138780`

The completion walks the columns right to left. Each column is four characters `x y s c`: the two operand digits
of that column (`x` from the first operand, `y` from the second), the sum digit `s = (x + y + carry_in) % 10` and
the carry out `c = (x + y + carry_in) // 10`; the carry into the rightmost column is 0, the carry into every other
column is the previous column's `c`. Columns are separated by `,`; after the last column comes `|` and the sum,
written normally (most significant digit first, no leading zeros): the sum digits of the scratchpad read backwards,
preceded by the last carry when it is 1.

Both operands of a problem have the same number of digits n (uniform in 5..8, no leading zero), so the
completion is 6n or 6n + 1 characters (4n column digits, n - 1 commas, `|`, n or n + 1 answer digits): 30 to
49, i.e. 31 to 50 tokens with `<eos>`. An early mistake (a misread digit, a dropped carry) changes every later
sum digit the model copies or carries forward, and the answer, which is read off the scratchpad: the setting where a student that only ever trained on correct prefixes (teacher
forcing) has never seen the states it makes for itself.

Everything is generated from a seed; no data set is downloaded.
"""

from __future__ import annotations

import random

from datasets import Dataset

COLUMN_SEPARATOR = ","
ANSWER_SEPARATOR = "|"
ALPHABET = "0123456789+=" + COLUMN_SEPARATOR + ANSWER_SEPARATOR
MIN_DIGITS, MAX_DIGITS = 5, 8


def scratchpad_columns(a: int, b: int, digits: int) -> list[str]:
    """The `x y s c` groups of `a + b`, rightmost column first."""
    xs, ys = f"{a:0{digits}d}"[::-1], f"{b:0{digits}d}"[::-1]
    carry, columns = 0, []
    for x, y in zip(xs, ys, strict=True):
        total = int(x) + int(y) + carry
        carry = total // 10
        columns.append(f"{x}{y}{total % 10}{carry}")
    return columns


def long_addition_example(a: int, b: int, digits: int) -> dict[str, str]:
    """`a+b=` -> scratchpad `|` sum; `a` and `b` are written with `digits` digits."""
    columns = scratchpad_columns(a, b, digits)
    return {
        "prompt": f"{a:0{digits}d}+{b:0{digits}d}=",
        "completion": COLUMN_SEPARATOR.join(columns) + ANSWER_SEPARATOR + str(a + b),
    }


def long_addition_dataset(
    num_examples: int, seed: int, min_digits: int = MIN_DIGITS, max_digits: int = MAX_DIGITS
) -> Dataset:
    """`num_examples` problems drawn with `seed`: n uniform in [min_digits, max_digits], both operands n digits
    with a nonzero leading digit. Different seeds give (almost surely) different problems."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        digits = rng.randint(min_digits, max_digits)
        lo, hi = 10 ** (digits - 1), 10**digits - 1
        rows.append(long_addition_example(rng.randint(lo, hi), rng.randint(lo, hi), digits))
    return Dataset.from_list(rows)


def final_answer(completion: str) -> str | None:
    """The sum after `|` in a completion, or None when there is no `|`."""
    head, sep, tail = completion.partition(ANSWER_SEPARATOR)
    return tail if sep else None
