"""Rollouts are generated once per optimizer step and split so every prompt keeps its own completion."""

from __future__ import annotations

import torch
from spies import SpyGenerator

from distillkit.batch import collate, completion_hidden
from distillkit.methods import RolloutContext
from distillkit.runner import build, prepare


def test_one_generation_call_per_step_and_prompts_keep_their_completions(compose_cfg):
    cfg = compose_cfg("method.lmbda=0.5", "method.seq_kd=true", "train.gradient_accumulation_steps=4")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    student, teacher = SpyGenerator(parts.generator), SpyGenerator(parts.teacher_generator)
    rows = prepared.train_rows[:16]
    micro_rows = [rows[i::4] for i in range(4)]
    plan = [True, False, True, False]
    micros = parts.method.planned_micro_batches(micro_rows, plan, RolloutContext(student, teacher, parts.tokenizer, 4, 0))

    assert [len(prompts) for prompts, _ in student.calls] == [8]  # both on-policy micro-batches at once
    assert [len(prompts) for prompts, _ in teacher.calls] == [8]  # both seq_kd micro-batches at once
    for micro, rows_in, on in zip(micros, micro_rows, plan, strict=True):
        assert micro.on_policy == on and micro.rows == rows_in
        for b, row in enumerate(rows_in):
            ids = micro.student.input_ids[b][micro.student.attention_mask[b].bool()].tolist()
            assert ids[: len(row["prompt_ids"])] == row["prompt_ids"]
            assert not micro.student.completion_mask[b, : len(row["prompt_ids"])].any()


def test_plan_is_a_function_of_seed_and_step(compose_cfg):
    method = prepare(compose_cfg("method.lmbda=0.5")).method
    plans = [method.on_policy_plan(step, 8, seed=0) for step in range(20)]
    assert plans == [method.on_policy_plan(step, 8, seed=0) for step in range(20)]
    assert 0.3 < sum(map(sum, plans)) / 160 < 0.7
    assert all(all(p) for p in (m.on_policy_plan(s, 8, 0) for m in [type(method)(lmbda=1.0)] for s in range(5)))


def test_only_completion_positions_are_selected():
    batch = collate([[5, 6, 7], [5]], [[8, 1], [9, 9, 1]], pad_id=0)
    hidden = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)  # value = row*5 + position
    rows = completion_hidden(hidden, batch)
    # row 0: completion at positions 3,4 -> predicted from 2,3; row 1: at 1,2,3 -> from 0,1,2
    assert rows.squeeze(-1).tolist() == [2.0, 3.0, 5.0, 6.0, 7.0]
    assert batch.completion_targets().tolist() == [8, 1, 9, 9, 1]
