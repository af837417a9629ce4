"""`train.mixed_precision`: autocast with fp32 master weights and optimizer state, against fp32 on one step."""

from __future__ import annotations

import pytest
import torch

from distillkit.errors import ConfigError
from distillkit.methods import RolloutContext
from distillkit.runner import accumulate_gradients, build, prepare, run


def one_step_gradients(compose_cfg, *overrides: str) -> tuple[float, dict[str, torch.Tensor]]:
    cfg = compose_cfg("method.lmbda=0", "train.batch_size=8", *overrides)  # off-policy: the same tokens in both runs
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:8]
    context = RolloutContext(parts.generator, parts.teacher_generator, parts.tokenizer, 1, seed=0)
    metrics = accumulate_gradients(parts, parts.method.micro_batches(0, rows, context))
    return metrics["train/loss"], {n: p.grad.clone() for n, p in parts.student.named_parameters()}


@pytest.mark.parametrize("loss", ["full", "topk"])
def test_a_bf16_step_matches_fp32(compose_cfg, loss):
    """Tolerance: bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2%) per matmul; over the tiny model's few
    layers the loss stays within 1% and the whole gradient within 5% (relative norm of the difference)."""
    loss_32, grads_32 = one_step_gradients(compose_cfg, f"loss={loss}")
    loss_16, grads_16 = one_step_gradients(compose_cfg, f"loss={loss}", "train.mixed_precision=bf16")
    assert loss_16 != loss_32  # autocast really ran
    assert loss_16 == pytest.approx(loss_32, rel=1e-2)
    flat_32 = torch.cat([g.flatten() for g in grads_32.values()])
    flat_16 = torch.cat([g.flatten() for g in grads_16.values()])
    assert all(g.dtype == torch.float32 for g in grads_16.values())  # gradients of fp32 master weights
    assert ((flat_16 - flat_32).norm() / flat_32.norm()).item() < 5e-2


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_trains_with_a_bf16_teacher(compose_cfg, tmp_path, mode):
    """Two optimizer steps with the teacher's weights in bf16 and the student in mixed precision: the loss is finite,
    the student's weights and AdamW state stay fp32 and change; fp16's loss scaler is checkpointed."""
    cfg = compose_cfg(f"train.mixed_precision={mode}", "teacher.dtype=bfloat16", "train.steps=2",
                      "train.save_every=1", "train.lr=1e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    assert next(parts.teacher.model.parameters()).dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in parts.student.named_parameters()}
    from distillkit.runner import train

    summary = train(cfg, tmp_path, [], prepared, parts)
    assert summary.steps == 2 and all(kl == kl and abs(kl) != float("inf") for kl in summary.teacher_kl)
    for name, param in parts.student.named_parameters():
        assert param.dtype == torch.float32, name
        assert not torch.equal(param.detach(), before[name]), name
    for state in parts.optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    from distillkit.checkpoint import latest_checkpoint, load_checkpoint

    precision = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["precision"]
    assert (precision["scale"] > 0) if mode == "fp16" else precision == {}


@pytest.mark.parametrize("overrides, words", [
    (["train.mixed_precision=bf16", "model.dtype=bfloat16"], "keeps fp32 master weights"),
    (["train.mixed_precision=int8"], "must be one of"),
])
def test_bad_mixed_precision_is_refused_before_loading(compose_cfg, tmp_path, overrides, words):
    with pytest.raises(ConfigError, match=words):
        run(compose_cfg(*overrides), tmp_path)
