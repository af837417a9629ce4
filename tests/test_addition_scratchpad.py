"""The built-in `addition_scratchpad` task: format, every scratchpad column, the answer, determinism, lengths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from distillkit.data.loading import BUILTIN_TASKS, load_examples
from distillkit.data.long_addition import (
    ALPHABET,
    MAX_DIGITS,
    MIN_DIGITS,
    final_answer,
    long_addition_dataset,
    long_addition_example,
)

PROMPT = re.compile(r"^(\d+)\+(\d+)=$")
COLUMN = re.compile(r"^\d{4}$")


def check_row(prompt: str, completion: str) -> int:
    """Recompute the scratchpad from the prompt alone, column by column; returns the number of digits."""
    match = PROMPT.match(prompt)
    assert match, prompt
    a_text, b_text = match.groups()
    assert len(a_text) == len(b_text)
    digits = len(a_text)
    assert MIN_DIGITS <= digits <= MAX_DIGITS
    assert a_text[0] != "0" and b_text[0] != "0"
    assert set(completion) <= set(ALPHABET)
    pad, sep, answer = completion.partition("|")
    assert sep and "|" not in answer
    columns = pad.split(",")
    assert len(columns) == digits
    carry, sum_digits = 0, []
    for i, column in enumerate(columns):
        assert COLUMN.match(column), column
        x, y, s, c = (int(ch) for ch in column)
        assert x == int(a_text[-1 - i]) and y == int(b_text[-1 - i]), (prompt, i, column)
        assert s == (x + y + carry) % 10 and c == (x + y + carry) // 10, (prompt, i, column)
        carry = c
        sum_digits.append(str(s))
    read_off = ("1" if carry else "") + "".join(reversed(sum_digits))
    assert answer == read_off == str(int(a_text) + int(b_text))
    assert final_answer(completion) == answer
    return digits


def test_worked_example():
    row = long_addition_example(48213, 90567, 5)
    assert row == {"prompt": "48213+90567=", "completion": "3701,1680,2570,8080,4931|138780"}
    assert long_addition_example(99999, 1, 5)["completion"] == "9101,9001,9001,9001,9001|100000"
    assert long_addition_example(10000, 10000, 5)["completion"] == "0000,0000,0000,0000,1120|20000"


def test_every_row_is_correct_and_lengths_are_in_range():
    rows = long_addition_dataset(2000, seed=7)
    lengths, digit_counts = [], set()
    for row in rows:
        digit_counts.add(check_row(row["prompt"], row["completion"]))
        lengths.append(len(row["completion"]))
    assert digit_counts == set(range(MIN_DIGITS, MAX_DIGITS + 1))  # every length occurs
    assert min(lengths) == 6 * MIN_DIGITS and max(lengths) == 6 * MAX_DIGITS + 1  # 30..49 characters
    assert 20 <= min(lengths) and max(lengths) + 1 <= 60  # 31..50 tokens with <eos>


def test_deterministic_and_seed_dependent():
    a = long_addition_dataset(200, seed=3).to_list()
    assert a == long_addition_dataset(200, seed=3).to_list()
    assert a != long_addition_dataset(200, seed=4).to_list()
    held_out = {r["prompt"] for r in long_addition_dataset(1000, seed=1234)}
    train = {r["prompt"] for r in long_addition_dataset(5000, seed=0)}
    assert len(held_out & train) <= 1  # 5- to 8-digit pairs: overlaps are (almost) impossible


def test_registered_as_a_built_in_task():
    assert BUILTIN_TASKS["addition_scratchpad"] is long_addition_dataset
    loaded = load_examples("addition_scratchpad", num_examples=50, seed=5)
    assert loaded.to_list() == long_addition_dataset(50, seed=5).to_list()
    assert loaded.column_names == ["prompt", "completion"]


def test_char_tokenizer_gives_one_token_per_character():
    from distillkit.data.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer(ALPHABET)
    row = long_addition_example(12345678, 87654321, 8)
    ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    assert len(ids) == len(row["completion"]) and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == row["completion"]


@pytest.mark.slow
def test_recipe_runs_with_the_shipped_models(tmp_path):
    """recipes/gkd_scratchpad as a user runs it (2 steps): the task, the shipped teacher and student, on-policy GKD."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "gkd_scratchpad"
    done = subprocess.run(
        [sys.executable, "-m", "distillkit.cli", "--config-dir", str(recipe), "--config-name", "scratchpad",
         "train.steps=2", "data.num_eval=16", "data.num_train=64", "train.batch_size=4", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher accuracy" in done.stdout and (tmp_path / "final_model" / "model.safetensors").exists()
