"""SDPO's reprompting options, by what the method builds: the teacher's view of each rollout in the micro-batches,
the distillation mask, the metrics. A character tokenizer and fixed completions make every teacher prompt exact."""

from __future__ import annotations

import functools
import logging
import re
import string

import pytest
from configs import compose_config
from spies import SpyGenerator

from distillkit.data.char_tokenizer import build_char_tokenizer
from distillkit.data.loading import encode_prompt
from distillkit.errors import ConfigError
from distillkit.methods import SDPO, RolloutContext
from distillkit.runner import prepare

# short templates, so that a teacher prompt reads `question[S:demonstration][F:feedback]|`
TEMPLATES = {"reprompt_template": "{prompt}{solution}{feedback}|", "solution_template": "[S:{successful_previous_attempt}]",
             "feedback_template": "[F:{feedback_raw}]"}
THINKING = "<think>2\nand 2</think>\n4"  # right (4), after a thinking block that spans lines


def right_answer(prompts, completions, answer, **_):
    """1 when what follows the thinking block is the row's `answer`."""
    return [float(re.sub(r"<think>.*?</think>", "", c, flags=re.DOTALL).strip() == a)
            for c, a in zip(completions, answer, strict=True)]


@functools.cache
def char_tokenizer():
    """The tiny models' character tokenizer, over an alphabet that spells the templates and the thinking tags."""
    return build_char_tokenizer(string.ascii_letters + string.digits + string.punctuation + " \n")


@pytest.fixture
def tokenizer():
    return char_tokenizer()


def sdpo(**options) -> SDPO:
    return SDPO([{"_target_": "test_sdpo_options.right_answer"}], num_generations=2, **{**TEMPLATES, **options})


def make_rows(tokenizer, *questions: tuple) -> list[dict]:
    """(prompt, answer) or (prompt, answer, privileged_context) per row."""
    rows = []
    for prompt, answer, *feedback in questions:
        row = {"prompt": prompt, "prompt_ids": encode_prompt(prompt, tokenizer), "answer": answer}
        if feedback:
            row["privileged_context"] = feedback[0]
        rows.append(row)
    return rows


def rollout(method, tokenizer, rows, completions: list[str], step: int = 0):
    """One step's micro-batches, the completions (2 per row, adjacent) fixed; one generation call made."""
    generator = SpyGenerator.answering(tokenizer, completions)
    micros = method.micro_batches(step, rows, RolloutContext(generator, None, tokenizer, 2, 0))
    assert generator.calls == [([r["prompt_ids"] for r in rows], 2)]
    return micros


def prompt_ids(view, b: int) -> list[int]:
    return view.input_ids[b][view.attention_mask[b].bool() & ~view.completion_mask[b]].tolist()


def teacher_prompts(micros) -> list[list[int] | None]:
    """Each rollout's prompt as the teacher sees it (None: its micro-batch has no teacher); the teacher sees the
    student's completion tokens, whatever its prompt."""
    out = []
    for micro in micros:
        for b in range(len(micro.rows)):
            if micro.teacher is None:
                out.append(None)
                continue
            completion = micro.teacher.input_ids[b][micro.teacher.completion_mask[b]]
            assert completion.tolist() == micro.student.input_ids[b][micro.student.completion_mask[b]].tolist()
            out.append(prompt_ids(micro.teacher, b))
    return out


def teacher_texts(micros, tokenizer) -> list[str | None]:
    """Each rollout's teacher prompt as text where it is distilled; None where it is masked out."""
    return [tokenizer.decode(ids) if weight else None
            for ids, weight in zip(teacher_prompts(micros), distilled(micros), strict=True)]


def per_rollout(micros, field: str) -> list[float]:
    """A per-token field (`distill_weights`, `advantages`) as one value per rollout (it is constant over the
    rollout's tokens); 0 where the micro-batch does not have it."""
    out = []
    for micro in micros:
        lengths = micro.student.completion_mask.sum(1).tolist()
        if getattr(micro, field) is None:
            out += [0.0] * len(lengths)
            continue
        for values in getattr(micro, field).split(lengths):
            assert values.unique().numel() == 1
            out.append(float(values[0]))
    return out


def distilled(micros) -> list[float]:
    """Each rollout's distillation weight; 0 where the micro-batch has no teacher."""
    return per_rollout(micros, "distill_weights")


@pytest.mark.parametrize(("limit", "cut"), [(10240, 0), (32, 0), (31, 1), (10, 1), (9, 3)])
def test_max_reprompt_len_keeps_the_last_tokens_and_counts_the_cut(tokenizer, limit, cut):
    rows = make_rows(tokenizer, ("2+2=", "4"), ("3+3=", "6"))
    completions = ["<think>2 and 2</think>4", "5", "6", "6"]  # rollout 1 learns from 0; 2 and 3 from each other
    full = "2+2=[S:<think>2 and 2</think>4]|"  # 32 characters, one token each; group 1's are 10
    method = sdpo(max_reprompt_len=limit)
    micros = rollout(method, tokenizer, rows, completions)
    whole = teacher_prompts(rollout(sdpo(), tokenizer, rows, completions))
    assert len(whole[1]) == len(full) and len(whole[2]) == len(whole[3]) == 10
    assert teacher_prompts(micros) == [ids[-limit:] for ids in whole]
    assert teacher_texts(micros, tokenizer)[:2] == [None, full[-limit:]]  # cut in front: the question goes
    assert teacher_prompts(micros)[0] == rows[0]["prompt_ids"]  # masked out: the student's own view, not cut
    assert method.metrics()["self_distillation/reprompt_truncated"] == cut


@pytest.mark.parametrize("remove", [True, False])
def test_thinking_is_removed_from_the_demonstration_only(tokenizer, remove):
    rows = make_rows(tokenizer, ("2+2=", "4"))
    micros = rollout(sdpo(remove_thinking_from_demonstration=remove), tokenizer, rows, [THINKING, "5"])
    assert teacher_texts(micros, tokenizer) == [None, "2+2=[S:4]|" if remove else f"2+2=[S:{THINKING}]|"]
    # the demonstrating rollout itself is trained on as sampled, thinking included
    student = micros[0].student
    assert tokenizer.decode(student.input_ids[0][student.completion_mask[0]], skip_special_tokens=True) == THINKING


FEEDBACK_ROWS = (("2+2=", "4", "F0"), ("3+3=", "6", "F1"), ("1+1=", "2", "  "))  # blank feedback is no feedback
FEEDBACK_COMPLETIONS = ["4", "5", "7", "8", "3", "3"]  # only rollout 0 is right: rollout 1's demonstration


@pytest.mark.parametrize(("options", "texts", "used"), [
    ({"include_environment_feedback": True},
     ["2+2=[F:F0]|", "2+2=[S:4][F:F0]|", "3+3=[F:F1]|", "3+3=[F:F1]|", None, None], 4),
    ({"include_environment_feedback": True, "environment_feedback_only_without_solution": True},
     ["2+2=[F:F0]|", "2+2=[S:4]|", "3+3=[F:F1]|", "3+3=[F:F1]|", None, None], 3),
    ({"include_environment_feedback": False}, [None, "2+2=[S:4]|", None, None, None, None], 0),
    ({"include_environment_feedback": False, "environment_feedback_only_without_solution": True},
     [None, "2+2=[S:4]|", None, None, None, None], 0),
], ids=["feedback", "feedback-only-without-solution", "no-feedback", "only-without-solution-alone"])
def test_environment_feedback_in_the_teacher_prompt(tokenizer, options, texts, used):
    method = sdpo(**options)
    micros = rollout(method, tokenizer, make_rows(tokenizer, *FEEDBACK_ROWS), FEEDBACK_COMPLETIONS)
    assert teacher_texts(micros, tokenizer) == texts  # None: masked out of the distillation term
    if not used:  # rollouts 3-5, the second micro-batch of 3, are all masked: it has no teacher forward at all
        assert micros[1].teacher is None and micros[1].distill_weights is None
    metrics = method.metrics()
    assert metrics["self_distillation/feedback_available_fraction"] == pytest.approx(4 / 6)
    assert metrics["self_distillation/feedback_used_fraction"] == pytest.approx(used / 6)


def test_feedback_left_out_is_warned_about_once(tokenizer, caplog):
    rows = make_rows(tokenizer, *FEEDBACK_ROWS)
    for include in (False, True):
        caplog.clear()
        method = sdpo(include_environment_feedback=include)
        with caplog.at_level(logging.WARNING, logger="distillkit.methods.sdpo"):
            for step in range(3):  # fresh rollouts every step (num_iterations=1)
                rollout(method, tokenizer, rows, FEEDBACK_COMPLETIONS, step)
        warned = [r for r in caplog.records if "include_environment_feedback=false" in r.getMessage()]
        assert len(warned) == (0 if include else 1)


def test_feedback_without_its_column_is_refused_before_loading():
    """The shipped config and tiny student; `data.train=addition` has no privileged_context column."""
    sdpo_run = ["method=sdpo", "method.num_generations=2", "data.num_train=8", "data.num_eval=4"]
    with pytest.raises(ConfigError, match="no `privileged_context` column.*include_environment_feedback=true"):
        prepare(compose_config([*sdpo_run, "method.include_environment_feedback=true"]))
    prepare(compose_config([*sdpo_run, "method.include_environment_feedback=false"]))  # the column is not needed
    prepare(compose_config([*sdpo_run, "method.include_environment_feedback=true", "data.train=addition_hinted"]))


@pytest.mark.parametrize("successful", [True, False])
def test_without_successful_teachers_only_feedback_rollouts_are_distilled(tokenizer, successful):
    rows = make_rows(tokenizer, ("2+2=", "4", None), ("3+3=", "6", "F1"))
    method = sdpo(use_successful_as_teacher=successful, include_environment_feedback=True)
    micros = rollout(method, tokenizer, rows, ["4", "5", "6", "7"])  # rollouts 0 and 2 are right
    if successful:
        assert teacher_texts(micros, tokenizer) == [None, "2+2=[S:4]|", "3+3=[F:F1]|", "3+3=[S:6][F:F1]|"]
    else:  # right siblings are no demonstration: group 0 (no feedback) is masked out, group 1 has feedback only
        assert teacher_texts(micros, tokenizer) == [None, None, "3+3=[F:F1]|", "3+3=[F:F1]|"]
        assert distilled(micros) == [0.0, 0.0, 1.0, 1.0]
        assert micros[0].teacher is None  # group 0's micro-batch is not distilled: no teacher forward
    metrics = method.metrics()
    assert metrics["self_distillation/with_demonstration_fraction"] == (0.5 if successful else 0.0)
    assert metrics["self_distillation/reprompt_fraction"] == (0.75 if successful else 0.5)


def test_without_successful_teachers_or_feedback_nothing_is_distilled(tokenizer, caplog):
    rows = make_rows(tokenizer, ("2+2=", "4"), ("3+3=", "6"))
    method = sdpo(use_successful_as_teacher=False)
    with caplog.at_level(logging.WARNING, logger="distillkit.methods.sdpo"):
        micros = rollout(method, tokenizer, rows, ["4", "4", "6", "6"])  # every rollout is right
    assert all(m.teacher is None and m.distill_weights is None for m in micros)  # no teacher forward at all
    assert method.metrics()["self_distillation/reprompt_fraction"] == 0.0
    assert any("no rollout had a successful sibling or feedback" in r.getMessage() for r in caplog.records)
