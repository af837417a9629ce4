"""One micro-batch of 4 sequences gives the same gradient as two micro-batches of 2."""

from __future__ import annotations

import pytest
import torch

from distillkit.methods import RolloutContext
from distillkit.runner import accumulate_gradients, build, prepare


def gradients(parts, rows, num_micro: int) -> dict[str, torch.Tensor]:
    parts.optimizer.zero_grad(set_to_none=True)
    context = RolloutContext(parts.generator, parts.teacher_generator, parts.tokenizer, num_micro, seed=0)
    micros = parts.method.micro_batches(0, rows, context)
    assert not any(m.on_policy for m in micros)
    accumulate_gradients(parts, micros)
    return {n: p.grad.clone() for n, p in parts.student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["full", "topk", "sampled"])
def test_one_micro_batch_of_four_equals_two_of_two(compose_cfg, loss):
    cfg = compose_cfg(f"loss={loss}", "method.lmbda=0")  # off-policy: fixed data set completions
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    # completions of different lengths, so a per-micro-batch mean would weight tokens differently
    rows = sorted(prepared.train_rows, key=lambda r: len(r["completion_ids"]))[::16][:4]
    assert len({len(r["completion_ids"]) for r in rows}) > 1
    one = gradients(parts, rows, 1)
    two = gradients(parts, rows, 2)
    assert one.keys() == two.keys() and len(one) > 0
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in one.values())
