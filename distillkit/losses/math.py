"""The divergence formulas on log-probabilities, shared by every loss mode (TRL's conventions)."""

from __future__ import annotations

import math

import torch


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalized JSD over the last dim.

    beta=0 is forward KL(T||S), beta=1 is reverse KL(S||T); in between, with the mixture
    M = (1-beta)*S + beta*T, it is beta*KL(T||M) + (1-beta)*KL(S||M) (Agarwal et al., eq. 1; TRL's GKD).
    The endpoints are special-cased because the mixture form degenerates to 0 there.
    """
    if beta == 0.0:
        return kl(teacher_logp, student_logp)
    if beta == 1.0:
        return kl(student_logp, teacher_logp)
    mixture = torch.logsumexp(
        torch.stack([student_logp + math.log1p(-beta), teacher_logp + math.log(beta)]), dim=0
    )
    return beta * kl(teacher_logp, mixture) + (1.0 - beta) * kl(student_logp, mixture)


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P||Q) per row; terms with p=0 count as 0 (also when q=0 there)."""
    return xlogy_difference(p_logp.exp(), p_logp, q_logp).sum(-1)


def xlogy_difference(p: torch.Tensor, p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) elementwise, 0 where p = 0 (also when q = 0 there): the terms of KL(P||Q)."""
    return torch.where(p > 0, p * (p_logp - q_logp), 0.0)


def add_tail_bucket(logp: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum p) to a top-k support, so it is a distribution over k+1 outcomes."""
    captured = torch.logsumexp(logp, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([logp, torch.log(-torch.expm1(captured))], dim=-1)


def renormalize(logp: torch.Tensor) -> torch.Tensor:
    """Condition a top-k support on itself: the divergence then ignores the tail."""
    return logp - torch.logsumexp(logp, dim=-1, keepdim=True)
