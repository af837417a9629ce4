"""SDFT and SDPO through the real loop on tiny models: groups, masks, reuse, resume, metrics and refusals."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from spies import SpyGenerator

from distillkit.batch import collate
from distillkit.methods import MicroBatch, RolloutContext
from distillkit.methods.micro_batch import per_token
from distillkit.methods.sdpo import group_advantages
from distillkit.models import ConfigError
from distillkit.runner import StepClock, accumulate_gradients, build, optimizer_step, prepare, run

HINTED = ["data.train=addition_hinted", "data.eval=addition"]


class FixedRewards:
    """Hands out a fixed list of rewards, whatever the completions: the selection logic is then checkable."""

    def __init__(self, values: list[float]):
        self.values = list(values)

    def __call__(self, prompts, completions, **columns):
        assert "privileged_context" in columns and "completion" in columns and "completion_ids" in columns
        return self.values[: len(completions)]


class CountingTeacher:
    def __init__(self, teacher):
        self.teacher, self.calls = teacher, 0

    def score(self, batch, request, rows=None):
        self.calls += 1
        return self.teacher.score(batch, request, rows)

    def __getattr__(self, name):
        return getattr(self.teacher, name)


def sdpo_cfg(compose_cfg, *overrides):
    return compose_cfg("method=sdpo", *HINTED, "method.num_generations=4", "train.batch_size=3",
                       "train.gradient_accumulation_steps=4", *overrides)


REWARDS = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
FIXED = f"+method.reward_funcs=[{{_target_: test_self_distillation_runs.FixedRewards, values: {REWARDS}}}]"


def test_sdpo_groups_masks_and_advantages_across_micro_batches(compose_cfg):
    cfg = sdpo_cfg(compose_cfg, "~method.reward_funcs", FIXED, "method.distillation_weight=0.5")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:3]  # 3 prompts x 4 rollouts = 12 sequences in micro-batches of 3
    micros = parts.method.micro_batches(0, rows, RolloutContext(parts.generator, None, parts.tokenizer, 4, 0))
    assert [len(m.rows) for m in micros] == [3, 3, 3, 3]
    assert [r["prompt"] for m in micros for r in m.rows] == [r["prompt"] for r in rows for _ in range(4)]
    # group 0: only rollout 0 succeeded, so it has no *other* demonstration; group 1: none; group 2: all get one
    active = [0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    completions = [m.student.input_ids[b][m.student.completion_mask[b]].tolist() for m in micros for b in range(3)]
    advantages, _ = group_advantages(torch.tensor(REWARDS, dtype=torch.float32), 4, "group")
    for k, micro in enumerate(micros):
        part = completions[3 * k: 3 * k + 3]
        torch.testing.assert_close(micro.distill_weights, per_token([float(a) for a in active[3 * k: 3 * k + 3]], part))
        torch.testing.assert_close(micro.advantages, per_token(advantages[3 * k: 3 * k + 3], part))
    # rollout 1's teacher prompt holds rollout 0's completion (the demonstration), the question, the template
    demo = parts.tokenizer.decode(completions[0], skip_special_tokens=True)
    teacher_prompt = micros[0].teacher.input_ids[1][~micros[0].teacher.completion_mask[1]
                                                    & micros[0].teacher.attention_mask[1].bool()]
    text = parts.tokenizer.decode(teacher_prompt, skip_special_tokens=True)
    assert rows[0]["prompt"] in text and demo in text
    metrics = parts.method.metrics()
    assert metrics["self_distillation/reprompt_fraction"] == pytest.approx(7 / 12)
    assert metrics["self_distillation/success_group_fraction"] == pytest.approx(2 / 3)
    assert metrics["rewards/flat_group_fraction"] == pytest.approx(1 / 3)


def test_sdpo_policy_only_never_asks_the_teacher(compose_cfg):
    cfg = sdpo_cfg(compose_cfg, "method.distillation_weight=0")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    parts.teacher = CountingTeacher(parts.teacher)
    metrics = optimizer_step(parts, prepared.train_rows[:3], 0, StepClock())
    assert parts.teacher.calls == 0
    assert "train/policy_loss" in metrics and "train/distillation_loss" not in metrics


def fixed_micro(rows, completions, pad, advantages, weights):
    student = collate([r["prompt_ids"] for r in rows], completions, pad)
    teacher = collate([r["teacher_prompt_ids"] for r in rows], completions, pad)
    return MicroBatch(student, teacher, True, rows, distill_weights=per_token(weights, completions),
                      advantages=per_token(advantages, completions))


@pytest.mark.parametrize("loss", ["full", "topk", "sampled"])
def test_hybrid_loss_one_micro_batch_of_four_equals_two_of_two(compose_cfg, loss):
    cfg = compose_cfg("method=sdft", *HINTED, f"loss={loss}", "loss.k=8" if loss == "topk" else "train.seed=0")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    parts.method.distillation_weight, parts.method.epsilon, parts.method.epsilon_high = 0.4, 0.2, 0.2
    rows = prepared.train_rows[:4]
    completions = [[3, 4, 5, 1], [6, 1], [7, 8, 1], [1]]  # different lengths: a per-micro mean would differ
    adv, weights = [1.0, -0.5, 0.25, 2.0], [1.0, 0.0, 1.0, 1.0]

    def grads(splits):
        parts.optimizer.zero_grad(set_to_none=True)
        micros = [fixed_micro(rows[a:b], completions[a:b], 0, adv[a:b], weights[a:b]) for a, b in splits]
        accumulate_gradients(parts, micros)
        return {n: p.grad.clone() for n, p in parts.student.named_parameters() if p.grad is not None}

    one, two = grads([(0, 4)]), grads([(0, 2), (2, 4)])
    assert one.keys() == two.keys() and one
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-7, msg=name)


def test_reused_rollouts_bring_old_logprobs_and_the_is_clip(compose_cfg):
    cfg = compose_cfg("method=sdft", *HINTED, "method.num_iterations=2", "train.lr=5e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:4]
    first = optimizer_step(parts, rows, 0, StepClock())
    micros = parts.method._micros
    recorded = [m.token_logprobs.clone() for m in micros]
    second = optimizer_step(parts, rows, 1, StepClock())
    assert parts.method._micros is micros  # the same rollouts
    for micro, logp in zip(micros, recorded, strict=True):
        torch.testing.assert_close(micro.old_logprobs, logp)
        assert not torch.allclose(micro.token_logprobs, logp)  # the policy moved between the two steps
    assert "train/is_ratio_mean" not in first and "train/is_ratio_mean" in second
    optimizer_step(parts, prepared.train_rows[4:8], 2, StepClock())
    assert parts.method._micros is not micros  # a new cycle samples afresh


def final_weights(folder):
    return load_file(str(folder / "final_model" / "model.safetensors"))


def test_resume_in_the_middle_of_a_reuse_cycle_is_exact(compose_cfg, tmp_path):
    common = ["method=sdpo", *HINTED, "method.num_generations=2", "method.num_iterations=2",
              "method.distillation_weight=0.5", "train.steps=3", "train.save_every=1", "train.keep_checkpoints=5",
              "tracking.enabled=false", "train.eval_every=0", "data.num_eval=8"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(compose_cfg(*common), straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final_model")
    shutil.rmtree(resumed / "checkpoints" / "step_00000002")  # the newest left is after step 1: mid-cycle
    run(compose_cfg(*common), resumed)
    for name, value in final_weights(straight).items():
        torch.testing.assert_close(final_weights(resumed)[name], value, rtol=0, atol=0, msg=name)


def test_metrics_reach_mlflow(compose_cfg, tmp_path):
    cfg = sdpo_cfg(compose_cfg, "method.distillation_weight=0.5", "method.success_reward_threshold=0",
                   "method.num_iterations=2", "train.steps=2", "train.eval_every=0", "data.num_eval=8")
    summary = run(cfg, tmp_path)
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    logged = mlflow.get_run(summary.run_id).data.metrics
    assert mlflow.get_run(summary.run_id).info.run_name.startswith("sdpo-ema-full-hf-")  # what ran, not a random name
    for key in ("rewards/mean", "rewards/std", "rewards/exact_match/mean", "self_distillation/reprompt_fraction",
                "self_distillation/success_sample_fraction", "self_distillation/success_group_fraction",
                "train/policy_loss", "train/distillation_loss", "train/is_ratio_mean", "train/is_clipped_fraction",
                "completions/mean_length", "rewards/flat_group_fraction"):
        assert key in logged, key
    assert logged["self_distillation/reprompt_fraction"] == 1.0  # threshold 0: every sibling is a demonstration


def test_sdft_without_privileged_context_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="no `privileged_context` column"):
        prepare(compose_cfg("method=sdft"))


def test_sdft_teacher_prompt_over_the_context_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="teacher prompts"):
        prepare(compose_cfg("method=sdft", *HINTED, "method.teacher_prompt_template='"
                            + "0" * 60 + "{privileged_context}{prompt}'"))


def test_step_that_cuts_a_group_is_refused_before_loading(compose_cfg):
    with pytest.raises(ConfigError, match="not a multiple of method.num_generations=4"):
        prepare(compose_cfg("method=sdpo", *HINTED, "method.num_generations=4", "train.batch_size=3"))


@pytest.mark.parametrize("from_teacher", [False, True])
def test_sdft_samples_from_the_prompt_the_config_names(compose_cfg, from_teacher):
    cfg = compose_cfg("method=sdft", *HINTED, f"method.generate_from_teacher={from_teacher}",
                      "method.num_generations=2", "method.num_loss_tokens_to_skip=1")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    recorder = SpyGenerator(parts.generator)
    rows = prepared.train_rows[:2]
    micros = parts.method.micro_batches(0, rows, RolloutContext(recorder, None, parts.tokenizer, 1, 0))
    key = "teacher_prompt_ids" if from_teacher else "prompt_ids"
    assert recorder.calls == [([r[key] for r in rows], 2)]
    (micro,) = micros
    assert [r["prompt"] for r in micro.rows] == [rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2
    # the student always sees the plain prompt; the teacher sees the demonstration; the first token is skipped
    lengths = micro.student.completion_mask.sum(1)
    assert micro.num_loss_tokens == int((lengths - 1).clamp(min=0).sum())
    assert torch.equal(micro.student.completion_targets(), micro.teacher.completion_targets())
    assert micro.student.input_ids[0, : len(rows[0]["prompt_ids"])].tolist() == rows[0]["prompt_ids"]
    assert micro.teacher.input_ids[0, : len(rows[0]["teacher_prompt_ids"])].tolist() == rows[0]["teacher_prompt_ids"]


@pytest.mark.parametrize(("override", "message"), [
    ("method.num_generations=1", "at least 2"),
    ("method.distillation_weight=2", "distillation_weight"),
    ("method.scale_rewards=mean", "scale_rewards"),
    ("+method.reward_funcs=[{_target_: nowhere.reward}]", "cannot be imported"),
])
def test_bad_sdpo_options_are_refused_as_config_errors(compose_cfg, override, message):
    overrides = ["~method.reward_funcs", override] if override.startswith("+") else [override]
    with pytest.raises(ConfigError, match=message):
        prepare(compose_cfg("method=sdpo", *HINTED, "method.num_generations=2", *overrides))


def test_sdft_chat_prompts_keep_the_system_turn_through_the_chat_template(tiny_pair):
    from distillkit.methods import SDFT
    from distillkit.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_pair[0]))
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'][0] }}{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}={% endif %}")
    rows = [{"prompt": [{"role": "system", "content": "1"}, {"role": "user", "content": "2+2"}],
             "privileged_context": [{"role": "assistant", "content": "4"}]}]
    SDFT(teacher_prompt_template="{privileged_context}={prompt}").prepare_rows(rows, tokenizer, 64, 64, "training")
    # s(ystem) and u(ser) are not in the tiny alphabet, so they decode as <unk>; the contents keep their places
    decoded = tokenizer.decode(rows[0]["teacher_prompt_ids"], skip_special_tokens=True)
    assert decoded == "1" + "4=2+2" + "="
