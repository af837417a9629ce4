"""recipes/sdpo_vs_grpo/sdpo_feedback.yaml, as composed for a user: the self-teacher reads `ANS|a+b=` (the hint
format the tiny self model knows) whether the answer comes from a right sibling or from the feedback column, so
every rollout is distilled, also in a group with no right rollout; the w = 0 baseline distills none."""

from __future__ import annotations

from pathlib import Path

import pytest
from configs import CONF_DIR, compose_config
from test_sdpo_options import distilled, rollout, teacher_prompts

from distillkit.data.loading import encode_prompt
from distillkit.runner import prepare

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sdpo_vs_grpo"


def prepared(*overrides: str):
    """The recipe as `distillkit --config-dir recipes/sdpo_vs_grpo --config-name sdpo_feedback` composes it."""
    return prepare(compose_config([f"hydra.searchpath=[file://{CONF_DIR}]", "method.num_generations=2",
                                   "data.num_train=8", "data.num_eval=4", *overrides], RECIPE, "sdpo_feedback"))


def test_every_rollout_gets_the_answer_as_its_teachers_hint():
    run = prepared()
    rows = run.train_rows[:2]
    answers = [r["completion"] for r in rows]
    assert [r["privileged_context"] for r in rows] == answers  # addition_hinted: the feedback is the answer
    wrong = [str(int(a) + 1) for a in answers]
    # group 0: both wrong (feedback only); group 1: right, wrong (the wrong one learns from its right sibling, the
    # right one, with no other right sibling, from the feedback)
    completions = [wrong[0], wrong[0], answers[1], wrong[1]]
    micros = rollout(run.method, run.tokenizer, rows, completions)
    expected = [encode_prompt(f"{answers[i // 2]}|{rows[i // 2]['prompt']}", run.tokenizer) for i in range(4)]
    assert teacher_prompts(micros) == expected
    assert distilled(micros) == [1.0, 1.0, 1.0, 1.0]
    assert run.method.metrics()["self_distillation/feedback_used_fraction"] == pytest.approx(0.75)


def test_the_baseline_distills_nothing():
    run = prepared("method.distillation_weight=0")
    rows = run.train_rows[:2]
    micros = rollout(run.method, run.tokenizer, rows, [rows[0]["completion"], "1", "2", "3"])
    assert distilled(micros) == [0.0, 0.0, 0.0, 0.0]
    assert all(micro.teacher is None for micro in micros)
