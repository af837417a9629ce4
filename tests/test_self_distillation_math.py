"""SDFT/SDPO math against hand-computed values: advantages, reprompt selection, masks, the PPO and IS clips,
skipped tokens, teacher prompts and the w-mix of the two terms."""

from __future__ import annotations

import math

import pytest
import torch

from distillkit.lm_head import LMHead
from distillkit.losses import SampledDivergence, StudentTokens, TeacherTokens, TopKDivergence
from distillkit.losses.policy import PPOClipTerm
from distillkit.methods.micro_batch import split_evenly
from distillkit.methods.sdft import SDFT, skip_mask
from distillkit.methods.sdpo import SDPO, demonstration_indices, group_advantages
from distillkit.models import ConfigError
from distillkit.rewards import load_reward_functions

EXACT = [{"_target_": "distillkit.rewards.exact_match"}]


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    group_std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    adv, stds = group_advantages(rewards, 4, "group")
    expected = [0.5 / (group_std + 1e-4), -0.5 / (group_std + 1e-4)] * 2
    assert adv[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]], rel=1e-6)
    assert adv[4:].tolist() == [0.0] * 4  # a flat group has no signal
    assert stds.tolist() == pytest.approx([group_std, 0.0])
    batch_std = float(rewards.std())
    adv, _ = group_advantages(rewards, 4, "batch")
    assert adv[0].item() == pytest.approx(0.5 / (batch_std + 1e-4))
    adv, _ = group_advantages(rewards, 4, "none")
    assert adv[:4].tolist() == pytest.approx([0.5 / (1 + 1e-4), -0.5 / (1 + 1e-4)] * 1 + [-0.5 / (1 + 1e-4),
                                             0.5 / (1 + 1e-4)])


def test_demonstration_is_the_first_other_success_in_the_group():
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.0]
    assert demonstration_indices(rewards, 4, 1.0, exclude_self=True) == [2, 0, 0, 0, None, None, None, None]
    assert demonstration_indices(rewards, 4, 1.0, exclude_self=False) == [0, 0, 0, 0, None, None, None, None]
    assert demonstration_indices(rewards, 4, 0.5, exclude_self=True)[4:] == [6, 6, None, 6]


def test_ppo_clip_values_and_gradients_by_hand():
    old = torch.zeros(4)
    logp = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    stats: dict[str, float] = {}
    loss = PPOClipTerm(adv, old, epsilon=0.2, epsilon_high=0.3)(logp, slice(0, 4), stats)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    # A>0: min(r, clip(r)) -> r_hi is clipped to 1.3, r_lo (0.61 < 0.8) is not. A<0: -min(-r, -clip) = max(r, clip)
    assert loss.tolist() == pytest.approx([-1.3, -r_lo, r_hi, 0.8])
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([0.0, -r_lo, r_hi, 0.0])  # clipped branches carry no gradient
    assert stats["policy_clipped"] == 2


def test_fresh_rollout_policy_term_is_reinforce():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss = PPOClipTerm(adv, None, 0.2, 0.2)(logp, slice(0, 2), {})
    assert loss.tolist() == pytest.approx([-2.0, 1.0])  # ratio 1
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-2.0, 1.0])  # -A * d log pi


def tokens(n=5, v=7, h=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    teacher = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64), -1)
    return hidden, weight, targets, teacher


def test_is_clip_reweights_the_distillation_term_by_hand():
    hidden, weight, targets, teacher_logp = tokens()
    student_logp = torch.log_softmax(hidden @ weight.T, -1)
    token = student_logp.gather(-1, targets[:, None]).squeeze(-1)
    old = token.detach() + torch.tensor([1.0, -1.0, 0.0, 2.0, -0.1], dtype=torch.float64)  # ratios e^-1, e, 1, e^-2, e^.1
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    teacher = TeacherTokens(token_logprobs=teacher_logp.gather(-1, targets[:, None]).squeeze(-1))
    out = SampledDivergence(beta=1.0, temperature=1.0)(
        StudentTokens(hidden, LMHead(weight), targets, weights=mask, old_logprobs=old, is_clip=2.0), teacher)
    ratio = torch.tensor([math.exp(-1), 2.0, 1.0, math.exp(-2), math.exp(0.1)], dtype=torch.float64)
    per_token = (token - teacher.token_logprobs).detach() * token
    naive = (per_token * ratio * mask).sum()
    torch.testing.assert_close(out.loss_sum, naive)
    grads = torch.autograd.grad(out.loss_sum, (hidden, weight))
    torch.testing.assert_close(grads, torch.autograd.grad(naive, (hidden, weight)))
    assert out.stats["is_clipped"] == 1
    torch.testing.assert_close(out.token_logprobs.double(), token.detach(), rtol=1e-6, atol=1e-6)


def test_mixed_loss_is_w_distillation_plus_one_minus_w_policy():
    hidden, weight, targets, teacher_logp = tokens(seed=1)
    top = teacher_logp.topk(4, -1)
    teacher = TeacherTokens(topk_logprobs=top.values, topk_ids=top.indices)
    divergence = TopKDivergence(beta=0.5, temperature=1.0, k=4)
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.0], dtype=torch.float64)
    student = StudentTokens(hidden, LMHead(weight), targets)
    w = 0.3
    mixed = divergence(student, teacher, PPOClipTerm(adv, None, 0.2, 0.2), w)
    distill = divergence(student, teacher).loss_sum
    policy = divergence(student, None, PPOClipTerm(adv, None, 0.2, 0.2), 0.0).loss_sum
    torch.testing.assert_close(mixed.loss_sum, w * distill + (1 - w) * policy)
    assert mixed.stats["distillation"] == pytest.approx(float(distill.detach()))
    assert mixed.stats["policy"] == pytest.approx(float(policy.detach()))
    g_mixed = torch.autograd.grad(mixed.loss_sum, (hidden, weight))
    g_parts = torch.autograd.grad(w * distill + (1 - w) * policy, (hidden, weight))
    torch.testing.assert_close(g_mixed, g_parts)


def test_skipped_tokens_are_masked_per_sequence():
    assert skip_mask([[1, 2, 3], [4], [5, 6]], 2).tolist() == [0, 0, 1, 0, 0, 0]
    assert skip_mask([[1, 2]], 0) is None


def test_groups_stay_adjacent_when_split():
    items = list(range(12))  # 3 prompts x 4 rollouts, 4 micro-batches of 3
    assert split_evenly(items, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]


def test_step_size_must_hold_whole_groups():
    method = SDPO(EXACT, num_generations=4)
    assert method.prompts_per_step(3 * 4) == 3  # batch size 3 is not a multiple of 4, the step is
    with pytest.raises(ConfigError, match="multiple of method.num_generations=4"):
        method.prompts_per_step(3 * 1)


def test_sdft_teacher_prompt_for_strings_and_chat():
    method = SDFT(teacher_prompt_template="Example: {privileged_context}\n{prompt}")
    assert method.teacher_prompt("2+2=", "4") == "Example: 4\n2+2="
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]
    rewritten = method.teacher_prompt(chat, [{"role": "assistant", "content": "4"}])
    assert rewritten[:3] == chat[:3]
    assert rewritten[3] == {"role": "user", "content": "Example: 4\n2+2?"}
    with pytest.raises(ConfigError, match="last user turn"):
        method.teacher_prompt(chat[:3], "4")


def test_sdpo_teacher_prompt_with_solution_and_feedback():
    method = SDPO(EXACT, reprompt_template="{prompt}{solution}{feedback}!", solution_template="[S:{successful_previous_attempt}]",
                  feedback_template="[F:{feedback_raw}]")
    assert method.teacher_prompt("Q", "42", None) == "Q[S:42]!"
    assert method.teacher_prompt("Q", None, "too small") == "Q[F:too small]!"
    assert method.teacher_prompt("Q", "42", "too small") == "Q[S:42][F:too small]!"


def test_templates_are_checked_at_construction():
    with pytest.raises(ConfigError, match=r"must contain \{privileged_context\}"):
        SDFT(teacher_prompt_template="{prompt}")
    with pytest.raises(ConfigError, match="unknown fields"):
        SDPO(EXACT, reprompt_template="{prompt}{answer}")
    with pytest.raises(ConfigError, match="distillation_weight"):
        SDPO(EXACT, distillation_weight=1.5)
    with pytest.raises(ConfigError, match="at least 2"):
        SDPO(EXACT, num_generations=1)
    with pytest.raises(ConfigError, match="cannot be imported"):
        SDPO([{"_target_": "distillkit.rewards.no_such_reward"}])


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def none_reward(prompts, completions, **_):
    return [None] * len(completions)


def test_rewards_are_weighted_and_none_is_skipped():
    funcs = [{"_target_": "test_self_distillation_math.length_reward", "weight": 0.5},
             {"_target_": "distillkit.rewards.exact_match", "weight": 2.0},
             {"_target_": "test_self_distillation_math.none_reward"}]
    method = SDPO(funcs, num_generations=2)
    assert [r.weight for r in method.rewards] == [0.5, 2.0, 1.0]

    class Decoder:
        def batch_decode(self, ids, skip_special_tokens=True):
            return ["".join(chr(i) for i in row) for row in ids]

    rows = [{"prompt": "1+1=", "completion": "2", "prompt_ids": [1]}] * 2
    rewards, means = method.score(rows, [[ord("2")], [ord("3"), ord("3")]], Decoder())
    assert rewards.tolist() == [0.5 * 1 + 2.0 * 1, 0.5 * 2 + 0.0]
    assert means["rewards/exact_match/mean"] == 0.5 and math.isnan(means["rewards/none_reward/mean"])


def test_reward_entries_need_a_target():
    with pytest.raises(ConfigError, match="_target_"):
        load_reward_functions([{"weight": 1.0}])
    with pytest.raises(ConfigError, match="empty"):
        load_reward_functions([])
