"""`train.async_generation`: rollouts sampled one step ahead from a copy of the student.

Checked against ground truth: the rollouts a step trains on were sampled by the weights of the step before (never
older), their recorded rollout log-probs are those weights' log-probs of the sampled tokens, the importance ratio
reweights them, a run resumed from a checkpoint ends with the uninterrupted run's weights, and the options that
cannot sample ahead are refused before anything loads.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file

from distillkit.errors import ConfigError
from distillkit.models import decoder_and_head
from distillkit.runner import StepClock, StepSampler, build, optimizer_step, prepare, run

ASYNC = ["train.async_generation=true", "method.lmbda=1", "train.batch_size=8", "train.gradient_accumulation_steps=2",
         "train.lr=1e-2", "train.warmup_steps=0", "tracking.enabled=false", "train.eval_every=0", "data.num_eval=8"]


@torch.no_grad()
def token_logprobs(model, batch, vocab: int, temperature: float) -> torch.Tensor:
    """The naive reference: the model's full forward, log-softmax at the temperature, the sampled tokens."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1, :vocab].double()
    logp = torch.log_softmax(logits / temperature, -1)[batch.completion_mask[:, 1:]]
    return logp.gather(-1, batch.completion_targets()[:, None]).squeeze(-1)


def built_with_rows(cfg):
    """The run's parts and the rows of each of its steps, as the loop samples them (16 prompts a step)."""
    prepared = prepare(cfg)
    sampler = StepSampler(len(prepared.train_rows), 16, cfg.data.seed)
    rows = [[prepared.train_rows[i] for i in sampler.indices(step)] for step in range(cfg.train.steps)]
    return build(cfg, prepared), rows


def test_rollouts_are_one_step_old_and_carry_that_policy_logprobs(compose_cfg):
    cfg = compose_cfg(*ASYNC, "method.temperature=0.8", "train.steps=4")
    parts, rows = built_with_rows(cfg)
    taken, started_from, clock = {}, {}, StepClock()
    take = parts.rollouts.take

    def recording_take(step, step_rows):
        taken[step] = take(step, step_rows)
        return taken[step]

    parts.rollouts.take = recording_take
    for step in range(3):
        started_from[step] = copy.deepcopy(parts.student)
        metrics = optimizer_step(parts, rows[step], step, clock, rows[step + 1])
        assert metrics["rollouts/staleness"] == (0 if step == 0 else 1)
    for step in range(3):
        sampler_weights = started_from[max(step - 1, 0)]  # step t's rollouts: the weights step t-1 started from
        for micro in taken[step]:
            assert micro.on_policy and micro.is_clip == cfg.train.async_is_clip
            expected = token_logprobs(sampler_weights, micro.student, parts.vocab_size, 0.8)
            torch.testing.assert_close(micro.old_logprobs.double(), expected, rtol=1e-4, atol=1e-5)
            if step >= 1:  # and not the weights the step trains
                current = token_logprobs(started_from[step], micro.student, parts.vocab_size, 0.8)
                assert not torch.allclose(micro.old_logprobs.double(), current, atol=1e-4)
    parts.rollouts.close()


def test_stale_tokens_are_reweighted_by_the_clipped_ratio(compose_cfg):
    """The train/is_ratio_mean the step logs is the mean of min(pi_theta / pi_rollout, clip) over its tokens."""
    cfg = compose_cfg(*ASYNC, "train.steps=3", "train.async_is_clip=1.05")
    parts, rows = built_with_rows(cfg)
    clock = StepClock()
    optimizer_step(parts, rows[0], 0, clock, rows[1])
    micros = parts.rollouts.take(1, rows[1])
    parts.rollouts.ready[1] = (parts.rollouts.version - 1, micros)  # hand the same micro-batches back to the step
    ratios = []
    for micro in micros:
        now = token_logprobs(parts.student, micro.student, parts.vocab_size, 1.0)
        ratios.append((now - micro.old_logprobs.double()).exp().clamp(max=1.05))
    metrics = optimizer_step(parts, rows[1], 1, clock)
    expected = torch.cat(ratios)
    assert metrics["train/is_ratio_mean"] == pytest.approx(float(expected.mean()), rel=1e-4)
    assert metrics["train/is_clipped_fraction"] == pytest.approx(float((expected >= 1.05).double().mean()), abs=1e-6)
    parts.rollouts.close()


def test_a_resumed_async_run_ends_with_the_uninterrupted_weights(compose_cfg, tmp_path):
    common = [*ASYNC, "train.steps=4", "train.save_every=1", "train.keep_checkpoints=5",
              "train.lr_scheduler=constant"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(compose_cfg(*common), straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final_model")
    # the newest left is after step 2 (the last step is not checkpointed), holding step 3's rollouts sampled ahead
    shutil.rmtree(resumed / "checkpoints" / "step_00000003")
    run(compose_cfg(*common), resumed)
    ours = load_file(str(resumed / "final_model" / "model.safetensors"))
    for name, value in load_file(str(straight / "final_model" / "model.safetensors")).items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("overrides, words", [
    (["method=sdpo", "data.train=addition_hinted", "data.eval=addition_hinted"], "method=sdpo builds its steps"),
    (["method.lmbda=0.5", "method.seq_kd=true"], "not the teacher's"),
    (["generation=vllm"], "generation=hf"),
    (["distributed.strategy=fsdp2"], "distributed.strategy=fsdp2"),
    (["train.async_generation_threads=0"], "must be >= 1"),
    (["train.async_is_clip=0.5"], "must be >= 1"),
])
def test_what_cannot_sample_ahead_is_refused_before_loading(compose_cfg, overrides, words):
    with pytest.raises(ConfigError, match=words):
        prepare(compose_cfg("train.async_generation=true", *overrides))


def test_the_copy_samples_while_the_student_trains_unchanged(compose_cfg):
    """The background copy is a separate module: the student's parameters are never the sampler's."""
    cfg = compose_cfg(*ASYNC, "train.steps=2")
    parts = build(cfg, prepare(cfg))
    sampler = decoder_and_head(parts.rollouts.model)
    ours = {id(p) for p in parts.student.parameters()}
    assert not any(id(p) in ours for p in parts.rollouts.model.parameters())
    assert sampler.root is parts.rollouts.model and not any(p.requires_grad for p in parts.rollouts.model.parameters())
    parts.rollouts.close()
