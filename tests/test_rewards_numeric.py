"""`numeric_answer_match`: GSM8K references (`#### N`) against the final number of a completion."""

from __future__ import annotations

from fractions import Fraction

import pytest

from distillkit.rewards import completion_number, load_reward_functions, numeric_answer_match, parse_number

NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
           "in April and May.\n#### 72")


def reward(completion, reference):
    return numeric_answer_match(["q"], [completion], answer=[reference])[0]


@pytest.mark.parametrize(("completion", "expected"), [
    ("She sold 24 in May, so 48 + 24 = 72 clips in total.", 1.0),          # last number
    ("In May: 24. Total: \\boxed{72}", 1.0),                                # \boxed{}
    ("The answer is \\boxed{72} (not 71).", 1.0),                           # \boxed{} wins over the last number
    ("Total 72 clips, checked twice: 2 times.", 0.0),                       # last number is 2
    ("48 + 24 = 72\n#### 72", 1.0),                                         # GSM8K format
    ("#### 72 clips, i.e. 3 dozen... no, 6 dozen", 1.0),                    # after #### it is 72
    ("72.0", 1.0),                                                          # same number, other spelling
    ("\\boxed{72.00}", 1.0),
    ("<think>\n\n</think>\n\nSo she sold **72** clips.", 1.0),              # Qwen3 non-thinking, markdown
    ("She sold 71 clips.", 0.0),                                            # wrong
    ("I cannot tell.", 0.0),                                                # no number: wrong, not None
    ("", 0.0),
    ("\\boxed{seventy-two}", 0.0),                                          # a boxed answer without a number
])
def test_gsm8k_reference(completion, expected):
    assert reward(completion, NATALIA) == expected


@pytest.mark.parametrize(("completion", "reference", "expected"), [
    ("It costs $1,234.50 in total.", "#### 1234.5", 1.0),                  # thousands separator, dollar sign
    ("The total is 1,000 dollars", "#### 1,000", 1.0),                     # commas in the reference too
    ("So x = -3.", "#### -3", 1.0),                                         # negative
    ("From 2020-2021 it fell by 5", "#### 5", 1.0),                         # a hyphen is not a minus sign
    ("10-2=8", "#### 8", 1.0),
    ("It grows 12%.", "#### 12", 1.0),                                      # percent sign ignored
    ("The answer is \\boxed{\\frac{3}{4}}", "#### 0.75", 1.0),              # a boxed fraction
    ("The answer is \\boxed{\\dfrac{3}{4}}", "\\boxed{3/4}", 1.0),         # MATH-style boxed reference
    ("\\boxed{\\frac{1}{3}}", "#### 0.33", 0.0),                            # exact comparison: 1/3 != 0.33
    ("\\boxed{18 \\text{ dollars}}", "#### 18", 1.0),                      # units inside the box
    ("Answer: 5", "5", 1.0),                                                # a bare numeric reference
    ("Answer: 5", "  $5. ", 1.0),
])
def test_number_formats(completion, reference, expected):
    assert reward(completion, reference) == expected


@pytest.mark.parametrize("reference", [
    "Paris",                       # no number at all
    "#### ",                       # #### with nothing after it
    "#### many",
    "The answer is 5 apples",      # prose without #### or \boxed{}: not a parsable reference
    None,
])
def test_unparsable_reference_is_no_opinion(reference):
    assert numeric_answer_match(["q"], ["5"], answer=[reference]) == [None]


def test_batch_chat_completions_and_completion_column_fallback():
    completions = [[{"role": "assistant", "content": "so \\boxed{72}"}], [{"role": "assistant", "content": "71"}]]
    assert numeric_answer_match(["q", "q"], completions, answer=[NATALIA, NATALIA]) == [1.0, 0.0]
    # without an `answer` column, the data set's `completion` column is the reference (as for exact_match)
    assert numeric_answer_match(["q", "q"], ["72", "7"], completion=[NATALIA, NATALIA]) == [1.0, 0.0]
    assert numeric_answer_match(["q"], ["72"]) == [None]  # no reference column: no opinion


def test_helpers():
    assert parse_number("$1,234.50") == Fraction("1234.5")
    assert parse_number("x = -2") == -2
    assert parse_number("3/4") == Fraction(3, 4)
    assert parse_number("-\\frac{1}{2}") == Fraction(-1, 2)
    assert parse_number("no digits") is None
    assert completion_number("first \\boxed{1}, then \\boxed{2}") == 2  # the last box
    assert completion_number("\\boxed{\\frac{1}{2}") == 2  # unclosed box: falls back to the last number


def test_named_in_config_like_any_reward_function():
    (loaded,) = load_reward_functions([{"_target_": "distillkit.rewards.numeric_answer_match", "weight": 1.0}])
    assert loaded.name == "numeric_answer_match"
    assert loaded.fn(["q"], ["#### 72"], answer=[NATALIA]) == [1.0]
