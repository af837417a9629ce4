"""What a divergence takes in and gives back: completion-token rows only, already flattened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from distillkit.lm_head import LMHead
from distillkit.losses.chunked_head import chunked_head_loss

TeacherSignal = Literal["hidden", "topk", "token"]


@dataclass
class TeacherRequest:
    """What a loss needs from the teacher: the last hidden states (full), top-k log-probs, or token log-probs."""

    signal: TeacherSignal
    temperature: float
    k: int = 0


@dataclass
class StudentTokens:
    """The student's completion rows: hidden states before the LM head, the head, and the tokens that follow."""

    hidden: torch.Tensor  # [N, H]
    head: LMHead  # [V, H] (and bias), already cut to the vocabulary shared with the teacher
    targets: torch.Tensor  # [N] the completion tokens
    weights: torch.Tensor | None = None  # [N] per-token weights of the distillation term (masks); None means 1
    old_logprobs: torch.Tensor | None = None  # [N] log-probs at rollout time (reused rollouts): the IS ratio's base
    is_clip: float | None = None  # upper clip of the importance ratio on the distillation term; None = no IS


@dataclass
class TeacherTokens:
    """The teacher's view of the same N completion tokens. Which fields are set depends on the request."""

    hidden: torch.Tensor | None = None  # [N, H_t]
    head: LMHead | None = None  # [V, H_t] (and bias)
    topk_logprobs: torch.Tensor | None = None  # [N, k], normalized over the whole vocabulary
    topk_ids: torch.Tensor | None = None  # [N, k]
    token_logprobs: torch.Tensor | None = None  # [N] log-prob of the actual completion token


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # summed over tokens; the caller divides by the optimizer step's token count
    # sums over tokens ("kl", "entropy", "distillation", ...), still on the device: the step reads them all at once
    stat_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    token_logprobs: torch.Tensor | None = None  # [N] detached student log-probs of the targets (old log-probs later)

    @property
    def stats(self) -> dict[str, float]:
        """The sums as numbers (a host sync per statistic: for tests and one-off reads, not the training step)."""
        return {"kl": 0.0, "entropy": 0.0, **{key: float(value) for key, value in self.stat_sums.items()}}


class TokenTerm(Protocol):
    """A per-token loss on the student's log-prob of the actual token, added to the divergence (SDPO's policy term).

    It returns the per-token loss for `rows` and adds its statistics (sums over tokens) to `stats`.
    """

    def __call__(self, token_logprobs: torch.Tensor, rows: slice, stats: dict[str, torch.Tensor]) -> torch.Tensor: ...


def clipped_importance_ratio(token_logprobs: torch.Tensor, old_logprobs: torch.Tensor, clip: float) -> torch.Tensor:
    """min(pi_theta / pi_old, clip), detached: reweights a reused rollout's distillation loss (TRL's convention)."""
    log_ratio = (token_logprobs.detach() - old_logprobs).clamp(-20.0, 20.0)
    return log_ratio.exp().clamp(max=clip)


class Divergence:
    """A loss mode. Subclasses say what they need from the teacher and how one chunk of rows is scored."""

    signal: TeacherSignal
    default_beta: float = 0.5  # what `method.beta: null` resolves to
    has_fused_kernel: bool = False  # `loss.kernel=liger` exists for it

    @classmethod
    def check_options(cls, beta: float, options) -> None:
        """Refuse, before anything loads, a beta or an option (`options`: the loss's config) this loss cannot take."""

    def __init__(self, beta: float, temperature: float, chunk_size: int | None = None):
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.chunk_size = chunk_size

    def teacher_request(self) -> TeacherRequest:
        return TeacherRequest(self.signal, self.temperature)

    def chunk(
        self, student_logp: torch.Tensor, teacher: TeacherTokens, targets: torch.Tensor, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss and per-token reverse KL (for metrics) for one chunk of rows."""
        raise NotImplementedError

    def chunk_gradient(
        self, student_logp: torch.Tensor, student_p: torch.Tensor, teacher: TeacherTokens, targets: torch.Tensor,
        rows: slice,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`chunk`'s per-token loss and KL, and the gradient of each row's loss w.r.t. that row's student log-probs
        (a row's loss depends on its own row only). Autograd through `chunk` here; a loss may write it out."""
        leaf = student_logp.detach().requires_grad_()
        with torch.enable_grad():
            per_token, kl = self.chunk(leaf, teacher, targets, rows)
            (grad,) = torch.autograd.grad(per_token.sum(), leaf)
        return per_token.detach(), kl.detach(), grad

    def __call__(
        self,
        student: StudentTokens,
        teacher: TeacherTokens | None,
        token_term: TokenTerm | None = None,
        distillation_weight: float = 1.0,
    ) -> LossOutput:
        """Sum over tokens of w * distillation + (1 - w) * token_term, in one pass over the LM head.

        `teacher=None` (SDPO with w=0) drops the distillation term; the teacher was never asked. Each chunk's
        gradient w.r.t. the student's logits is G - p * sum(G), divided by the temperature, where G is the gradient
        w.r.t. the log-probs: the distillation term's (`chunk_gradient`, times each token's detached weight) plus
        the token term's on each sampled token.
        """
        stats: dict[str, torch.Tensor] = {}  # sums kept on the device: one host sync per statistic, at the end
        token_logprobs = torch.empty(student.targets.shape[0], dtype=torch.float32, device=student.hidden.device)
        weight_of = {"distillation": distillation_weight if teacher is not None else 0.0,
                     "policy": 1.0 - distillation_weight if token_term is not None else 0.0}

        def chunk_loss(logits: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            rows = slice(start, end)
            targets = student.targets[rows].long()
            student_logp = torch.log_softmax(logits if self.temperature == 1.0 else logits / self.temperature, dim=-1)
            student_p = student_logp.exp()
            token_logp = student_logp.gather(-1, targets[:, None]).squeeze(-1)
            token_logprobs[rows] = token_logp
            loss = logits.new_zeros(())
            grad = None  # w.r.t. the log-probs
            if teacher is not None:
                per_token, kl, grad = self.chunk_gradient(student_logp, student_p, teacher, targets, rows)
                multiplier = None  # each token's detached weight on its gradient; None: 1
                if student.old_logprobs is not None and student.is_clip is not None:
                    ratio = clipped_importance_ratio(token_logp, student.old_logprobs[rows], student.is_clip)
                    per_token, multiplier = per_token * ratio, ratio
                    add(stats, "is_ratio", ratio.sum())
                    add(stats, "is_clipped", (ratio >= student.is_clip).sum())
                distilled = None
                if student.weights is not None:
                    weights = student.weights[rows]
                    per_token = per_token * weights
                    multiplier = weights if multiplier is None else multiplier * weights
                    distilled = weights > 0  # masked and skipped tokens are not distilled
                distillation = per_token.sum()
                add(stats, "kl", kl.sum() if distilled is None else kl[distilled].sum())
                add(stats, "kl_tokens", kl.new_tensor(kl.numel()) if distilled is None else distilled.sum())
                add(stats, "distillation", distillation)
                loss = loss + weight_of["distillation"] * distillation
                if multiplier is not None:
                    grad.mul_(multiplier[:, None])
                if weight_of["distillation"] != 1.0:
                    grad.mul_(weight_of["distillation"])
            if token_term is not None:
                leaf = token_logp.detach().requires_grad_()
                with torch.enable_grad():
                    policy = token_term(leaf, rows, stats).sum()
                    (per_token_grad,) = torch.autograd.grad(policy, leaf)
                add(stats, "policy", policy)
                loss = loss + weight_of["policy"] * policy.detach()
                if grad is None:
                    grad = torch.zeros_like(student_logp)
                grad.scatter_add_(-1, targets[:, None], weight_of["policy"] * per_token_grad[:, None])
            add(stats, "entropy", -(student_p * student_logp).sum())
            if grad is None:
                return loss, None
            grad_logits = grad.sub_(student_p * grad.sum(-1, keepdim=True))  # through the log-softmax
            return loss, grad_logits if self.temperature == 1.0 else grad_logits.div_(self.temperature)

        loss = chunked_head_loss(student.hidden, student.head, chunk_loss, self.chunk_size)
        return LossOutput(loss, stats, token_logprobs)


def add(stats: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    value = value.detach().double()
    stats[key] = stats[key] + value if key in stats else value
