"""Checkpoints hold tensors (safetensors) and plain data only: `torch.load(weights_only=True)` reads them, and a
resume rebuilds the method's rollout buffer, the summary and every RNG stream from that plain data."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from distillkit.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint, save_checkpoint
from distillkit.methods.micro_batch import MicroBatch
from distillkit.runner import Summary, run

PLAIN = (type(None), bool, int, float, str, dict, list, tuple)


def assert_plain(value, path="state") -> None:
    assert isinstance(value, PLAIN), f"{path} is a {type(value).__name__}"
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else []
    for key, child in children:
        assert_plain(child, f"{path}/{key}")


def test_tied_weights_optimizer_and_summary_round_trip(tmp_path):
    config = Qwen2Config(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    summary = Summary(student_accuracy=[0.1], teacher_accuracy=0.9, teacher_kl=[2.0], steps=3)
    from dataclasses import asdict

    path = save_checkpoint(tmp_path, 3, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "summary": asdict(summary)})
    raw = torch.load(path / STATE_FILE, weights_only=True)  # no pickled object in it
    assert_plain(raw)
    assert raw["aliases"]  # the tied head is written once
    state = load_checkpoint(path)
    assert Summary(**state["summary"]) == summary and state["step"] == 3
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(state["model"][name], tensor, rtol=0, atol=0)
    fresh = torch.optim.AdamW(Qwen2ForCausalLM(config).parameters())
    fresh.load_state_dict(state["optimizer"])
    for group_state, original in zip(fresh.state.values(), optimizer.state.values(), strict=True):
        torch.testing.assert_close(group_state["exp_avg"], original["exp_avg"], rtol=0, atol=0)


def test_objects_are_refused_rather_than_pickled(tmp_path):
    with pytest.raises(TypeError, match="plain data and tensors only, not Summary"):
        save_checkpoint(tmp_path, 1, {"summary": Summary()})


def test_sdft_checkpoint_is_plain_and_counts_its_steps(compose_cfg, tmp_path):
    """SDFT with num_iterations=2 keeps its rollouts in the checkpoint; `summary.steps` counts the steps taken (1 at
    the step-1 checkpoint, whatever train.steps says), and the buffer comes back as MicroBatch objects."""
    cfg = compose_cfg("method=sdft", "data.train=addition_hinted", "method.num_iterations=2", "train.steps=3",
                      "train.save_every=1", "train.keep_checkpoints=5",
                      "method.teacher_prompt_template='{privileged_context}|{prompt}'")
    summary = run(cfg, tmp_path)
    assert summary.steps == 3
    first = tmp_path / "checkpoints" / "step_00000001"
    assert_plain(torch.load(first / STATE_FILE, weights_only=True))
    state = load_checkpoint(first)
    assert state["summary"]["steps"] == 1
    micros = [MicroBatch.from_state(m) for m in state["method"]["micros"]]
    assert micros and all(m.student.input_ids.dtype == torch.long for m in micros)
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["summary"]["steps"] == 2
