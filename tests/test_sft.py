"""`method=sft`: cross-entropy on fixed completions, against a naive float64 NLL of `model(input_ids).logits`."""

from __future__ import annotations

import pytest
import torch

from distillkit.errors import ConfigError
from distillkit.methods import RolloutContext
from distillkit.runner import accumulate_gradients, build, prepare, run


def test_loss_and_gradients_are_the_mean_nll_of_the_completions(compose_cfg):
    cfg = compose_cfg("method=sft", "train.gradient_accumulation_steps=2", "train.batch_size=3")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:6]
    asked = []
    parts.teacher.score = lambda *args: asked.append(args)  # the teacher must not be asked while training
    micros = parts.method.micro_batches(0, rows, RolloutContext(parts.generator, parts.teacher_generator,
                                                                parts.tokenizer, 2, seed=0))
    metrics = accumulate_gradients(parts, micros)
    ours = {n: p.grad.clone() for n, p in parts.student.named_parameters()}
    assert not asked and metrics["train/micro_batches_with_loss"] == 2

    parts.student.zero_grad()
    total, tokens = torch.zeros((), dtype=torch.float64), 0
    for row in rows:  # one sequence at a time, no padding: the naive formula
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        logp = torch.log_softmax(parts.student(input_ids=ids).logits[0].double(), -1)
        start = len(row["prompt_ids"])
        targets = ids[0, start:]
        total = total - logp[start - 1 : -1].gather(-1, targets[:, None]).sum()
        tokens += len(targets)
    (total / tokens).backward()
    assert metrics["train/loss"] == pytest.approx(total.item() / tokens, rel=1e-5)
    assert metrics["train/policy_loss"] == pytest.approx(metrics["train/loss"], rel=1e-9)
    for name, param in parts.student.named_parameters():
        torch.testing.assert_close(ours[name], param.grad.float(), rtol=1e-4, atol=1e-6, msg=name)


def test_teacher_completions_are_the_teachers_samples(compose_cfg):
    cfg = compose_cfg("method=sft", "method.completions=teacher")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:4]
    torch.manual_seed(7)
    micros = parts.method.micro_batches(0, rows, RolloutContext(parts.generator, parts.teacher_generator,
                                                                parts.tokenizer, 1, seed=0))
    torch.manual_seed(7)
    samples = parts.teacher_generator.generate([r["prompt_ids"] for r in rows], n=1)
    batch = micros[0].student
    for i, sample in enumerate(samples):
        assert batch.input_ids[i][batch.completion_mask[i]].tolist() == sample


def test_sft_trains(compose_cfg, tmp_path):
    """A few steps on the tiny student: the held-out exact match rises from the untrained start."""
    summary = run(compose_cfg("method=sft", "train.steps=30", "train.batch_size=16", "data.num_eval=64",
                              "train.lr=5e-3", "train.warmup_steps=0"), tmp_path)
    assert summary.steps == 30
    assert summary.teacher_kl[-1] < summary.teacher_kl[0]


@pytest.mark.parametrize("overrides, words", [
    (["method.completions=teacher", "teacher=remote", "teacher.url=http://127.0.0.1:9", "loss=topk"],
     "needs a teacher that generates in process"),
    (["method.completions=gold"], "must be one of"),
    (["method.temperature=0.7"], "taken at temperature 1"),
])
def test_bad_sft_options_are_refused(compose_cfg, tmp_path, overrides, words):
    with pytest.raises(ConfigError, match=words):
        run(compose_cfg("method=sft", *overrides), tmp_path)
