"""The `subtraction_lettered` task: subtraction problems whose demonstration is the answer written in letters."""

from __future__ import annotations

from distillkit.data.char_tokenizer import build_char_tokenizer
from distillkit.data.hinted_tasks import (
    LETTERED_ALPHABET,
    from_letters,
    hinted_prompt,
    subtraction_dataset,
    subtraction_lettered_dataset,
    to_letters,
)
from distillkit.data.loading import load_examples


def test_letters_round_trip():
    assert to_letters("78") == "hi" and to_letters("1090") == "baja"
    assert from_letters("hi") == "78" and from_letters(to_letters("0123456789")) == "0123456789"
    assert from_letters("7i") == "78"  # mixed spellings read by value


def test_same_rows_as_subtraction_demonstration_in_letters():
    lettered = subtraction_lettered_dataset(50, seed=3)
    plain = subtraction_dataset(50, seed=3)
    assert lettered["prompt"] == plain["prompt"] and lettered["completion"] == plain["completion"]
    assert lettered[:] == subtraction_lettered_dataset(50, seed=3)[:]
    for row in lettered:
        a, b = row["prompt"].rstrip("=").split("-")
        assert int(row["completion"]) == int(a) - int(b) >= 0
        assert row["privileged_context"] == to_letters(row["completion"])
        assert not set(row["privileged_context"]) & set("0123456789")
    # the previous tasks are unchanged: their demonstration is still the answer itself
    assert plain["privileged_context"] == plain["completion"]


def test_builtin_task_and_tokenizer():
    rows = load_examples("subtraction_lettered", num_examples=8, seed=0)
    assert set(rows.column_names) >= {"prompt", "completion", "privileged_context"}
    tokenizer = build_char_tokenizer(LETTERED_ALPHABET)
    assert len(tokenizer) == 28
    text = hinted_prompt(rows[0]["privileged_context"], rows[0]["prompt"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
