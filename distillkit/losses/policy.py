"""The policy-gradient term of SDPO: PPO's clipped surrogate on the sampled tokens, per token.

    r_t = pi_theta(y_t) / pi_old(y_t),   loss_t = -min(r_t * A, clip(r_t, 1 - eps, 1 + eps_high) * A)

On a fresh rollout pi_old is the current policy (detached), so r_t = 1 and the gradient is A * grad log pi:
plain REINFORCE with group-normalized advantages (GRPO). Reused rollouts (`num_iterations > 1`) bring the
rollout-time log-probs, and the clip keeps the update near the policy that sampled them. The token-level sum
is normalized by the optimizer step's completion-token count, like the distillation term (DAPO's convention).
"""

from __future__ import annotations

import torch

from distillkit.losses.base import add


class PPOClipTerm:
    def __init__(
        self, advantages: torch.Tensor, old_logprobs: torch.Tensor | None, epsilon: float, epsilon_high: float
    ):
        self.advantages = advantages  # [N], each sequence's advantage repeated over its tokens
        self.old_logprobs = old_logprobs  # [N] or None (fresh rollout)
        self.epsilon, self.epsilon_high = float(epsilon), float(epsilon_high)

    def __call__(self, token_logprobs: torch.Tensor, rows: slice, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        old = token_logprobs.detach() if self.old_logprobs is None else self.old_logprobs[rows]
        advantages = self.advantages[rows].to(token_logprobs.dtype)
        ratio = torch.exp(token_logprobs - old)
        clipped = ratio.clamp(1.0 - self.epsilon, 1.0 + self.epsilon_high)
        per_token = -torch.minimum(ratio * advantages, clipped * advantages)
        with torch.no_grad():
            active = ((ratio < 1 - self.epsilon) & (advantages < 0)) | ((ratio > 1 + self.epsilon_high) & (advantages > 0))
            add(stats, "policy_clipped", active.sum())
            add(stats, "policy_ratio", ratio.sum())
        return per_token
