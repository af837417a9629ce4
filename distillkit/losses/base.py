"""What a divergence takes in and gives back: completion-token rows only, already flattened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

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
    head_weight: torch.Tensor  # [V, H], already cut to the vocabulary shared with the teacher
    targets: torch.Tensor  # [N] the completion tokens
    weights: torch.Tensor | None = None  # [N] per-token weights (masks, importance ratios); None means 1


@dataclass
class TeacherTokens:
    """The teacher's view of the same N completion tokens. Which fields are set depends on the request."""

    hidden: torch.Tensor | None = None  # [N, H_t]
    head_weight: torch.Tensor | None = None  # [V, H_t]
    topk_logprobs: torch.Tensor | None = None  # [N, k], normalized over the whole vocabulary
    topk_ids: torch.Tensor | None = None  # [N, k]
    token_logprobs: torch.Tensor | None = None  # [N] log-prob of the actual completion token


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # summed over tokens; the caller divides by the optimizer step's token count
    stats: dict[str, float] = field(default_factory=dict)  # sums over tokens: "kl", "entropy"


class Divergence:
    """A loss mode. Subclasses say what they need from the teacher and how one chunk of rows is scored."""

    signal: TeacherSignal

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

    def __call__(self, student: StudentTokens, teacher: TeacherTokens) -> LossOutput:
        sums = torch.zeros(2, dtype=torch.float64)

        def chunk_loss(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
            rows = slice(start, end)
            student_logp = torch.log_softmax(logits / self.temperature, dim=-1)
            per_token, kl = self.chunk(student_logp, teacher, student.targets[rows], rows)
            with torch.no_grad():
                entropy = -(student_logp.exp() * student_logp).sum(-1)
                sums[0] += kl.sum().double().cpu()
                sums[1] += entropy.sum().double().cpu()
            if student.weights is not None:
                per_token = per_token * student.weights[rows]
            return per_token.sum()

        loss = chunked_head_loss(student.hidden, student.head_weight, chunk_loss, self.chunk_size)
        return LossOutput(loss, {"kl": sums[0].item(), "entropy": sums[1].item()})
