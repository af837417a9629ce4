"""In-process teachers: live (separate or self), base (frozen initial student) and ema, with and without LoRA."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from distillkit.batch import collate
from distillkit.losses.base import TeacherRequest
from distillkit.models import is_peft
from distillkit.runner import StepClock, build, optimizer_step, prepare, run

LORA = "model.lora={r: 4, lora_alpha: 8, target_modules: all-linear}"


def weights(module: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad or not trainable_only}


def train_steps(parts, prepared, steps: int):
    """Run optimizer steps and return the student's weights after each one."""
    after = []
    for step in range(steps):
        optimizer_step(parts, prepared.train_rows[step * 4 : step * 4 + 4], step, StepClock())
        after.append(weights(parts.student, trainable_only=is_peft(parts.student)))
    return after


@pytest.mark.parametrize("lora", [False, True])
def test_ema_matches_a_hand_computation(compose_cfg, lora):
    alpha, sync = 0.3, 2
    cfg = compose_cfg("teacher=ema", f"teacher.teacher_update_rate={alpha}", f"teacher.teacher_sync_steps={sync}",
                      "train.lr=1e-2", *([LORA] if lora else []))
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    teacher = parts.teacher
    expected = weights(parts.student, trainable_only=lora)
    history = train_steps(parts, prepared, 4)
    for step in (2, 4):  # theta_T <- (1 - alpha) theta_T + alpha theta_S, only on sync steps
        expected = {n: (1 - alpha) * t + alpha * history[step - 1][n] for n, t in expected.items()}
    averaged = teacher.average if lora else weights(teacher.model)
    assert averaged.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-5, atol=1e-7, msg=name)
    # the student moved away from the average, so the direction matters
    assert any((history[-1][n] - expected[n]).abs().max() > 1e-4 for n in expected)


@pytest.mark.parametrize("lora", [False, True])
def test_ema_rate_one_is_the_student(compose_cfg, lora):
    cfg = compose_cfg("teacher=ema", "teacher.teacher_update_rate=1.0", "train.lr=1e-2", "method.lmbda=0",
                      *([LORA] if lora else []))
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    train_steps(parts, prepared, 2)
    batch = fixed_batch(prepared.train_rows[:4])
    request = TeacherRequest("topk", 1.0, k=5)
    theirs = parts.teacher.score(batch, request)
    student_view = _student_scores(parts, batch, request)
    torch.testing.assert_close(theirs.topk_logprobs, student_view.topk_logprobs, rtol=1e-5, atol=1e-5)
    assert torch.equal(theirs.topk_ids, student_view.topk_ids)


def _student_scores(parts, batch, request):
    from distillkit.teachers import LiveTeacher

    me = LiveTeacher(model=None)
    me.setup(parts.device, parts.vocab_size, parts.student)
    return me.score(batch, request)


def test_lora_ema_swaps_the_average_in_and_out(compose_cfg):
    cfg = compose_cfg("teacher=ema", "teacher.teacher_update_rate=0.5", "train.lr=1e-2", LORA)
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    train_steps(parts, prepared, 2)
    live = weights(parts.student, trainable_only=True)
    with parts.teacher.active():
        inside = weights(parts.student, trainable_only=True)
    for name in live:
        assert torch.equal(inside[name], parts.teacher.average[name])
        assert torch.equal(weights(parts.student, trainable_only=True)[name], live[name])
    assert not all(torch.equal(inside[n], live[n]) for n in live)
    assert sum(p.numel() for p in parts.teacher.average.values()) < sum(p.numel() for p in parts.student.parameters()) / 2


@pytest.mark.parametrize("lora", [False, True])
def test_base_teacher_is_the_initial_student(compose_cfg, tiny_pair, lora):
    from distillkit.teachers import LiveTeacher

    cfg = compose_cfg("teacher=base", "train.lr=1e-2", "method.lmbda=0", *([LORA] if lora else []))
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    if lora:
        for name, p in parts.student.named_parameters():  # LoRA B starts at zero: move it so the adapter matters
            if "lora_B" in name:
                p.data.normal_(0, 0.1)
    train_steps(parts, prepared, 2)
    initial = LiveTeacher(model=str(tiny_pair[0]))
    initial.setup(parts.device, parts.vocab_size, None)
    batch = fixed_batch(prepared.train_rows[:4])
    request = TeacherRequest("topk", 1.0, k=5)
    torch.testing.assert_close(parts.teacher.score(batch, request).topk_logprobs,
                               initial.score(batch, request).topk_logprobs, rtol=1e-5, atol=1e-6)
    moved = _student_scores(parts, batch, request).topk_logprobs
    assert (moved - initial.score(batch, request).topk_logprobs).abs().max() > 1e-4
    if lora:
        assert parts.teacher.model is parts.student  # no second copy


def test_self_teacher_scores_like_the_student_without_grad(compose_cfg):
    cfg = compose_cfg("teacher.model=null", "method.lmbda=0")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    assert parts.teacher.model is parts.student
    batch = fixed_batch(prepared.train_rows[:4])
    scores = parts.teacher.score(batch, TeacherRequest("hidden", 1.0))
    assert not scores.hidden.requires_grad and not scores.head.weight.requires_grad
    metrics = optimizer_step(parts, prepared.train_rows[:4], 0, StepClock())
    assert metrics["train/loss"] == pytest.approx(0.0, abs=1e-6)  # the student is its own teacher


@pytest.mark.parametrize("teacher", ["ema", "base"])
def test_teacher_state_survives_a_resume(compose_cfg, tmp_path, teacher):
    overrides = (f"teacher={teacher}", "train.steps=6", "train.save_every=2", "train.eval_every=0",
                 "tracking.enabled=false", "train.lr=1e-2", "teacher.teacher_update_rate=0.5"
                 if teacher == "ema" else "train.seed=0")
    straight = tmp_path / "straight"
    run(compose_cfg(*overrides), straight)
    resumed = tmp_path / "resumed"
    run(compose_cfg(*overrides), resumed)
    shutil.rmtree(resumed / "final_model")
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")  # continue from step 2
    run(compose_cfg(*overrides), resumed)
    a = load_file(straight / "final_model" / "model.safetensors")
    b = load_file(resumed / "final_model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def fixed_batch(rows: list[dict]):
    """The data set's own completions, as an off-policy micro-batch would hold them."""
    return collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], pad_id=0)
