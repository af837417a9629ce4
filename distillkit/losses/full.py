"""`loss=full`: the generalized JSD over the whole vocabulary, chunked over completion rows.

`kernel=liger` (CUDA only) hands the same objective to liger-kernel's fused linear JSD instead, so neither
model's logits are materialized; only completion rows go in (`liger_inputs`).
"""

from __future__ import annotations

import math

import torch

from distillkit.errors import ConfigError
from distillkit.losses.base import Divergence, LossOutput, StudentTokens, TeacherTokens
from distillkit.losses.math import generalized_jsd, kl

KERNELS = ("torch", "liger")


class FullDivergence(Divergence):
    signal = "hidden"
    has_fused_kernel = True

    def __init__(self, beta: float, temperature: float, chunk_size: int | None = None, kernel: str = "torch"):
        super().__init__(beta, temperature, chunk_size)
        if kernel not in KERNELS:
            raise ConfigError(f"loss.kernel={kernel!r} must be one of {list(KERNELS)}.")
        self.kernel = kernel
        self._liger = None

    def teacher_logp(self, teacher: TeacherTokens, rows: slice) -> torch.Tensor:
        logits = teacher.head.logits(teacher.hidden[rows])
        return torch.log_softmax(logits if self.temperature == 1.0 else logits / self.temperature, dim=-1)

    def chunk(self, student_logp, teacher: TeacherTokens, targets, rows):
        with torch.no_grad():
            teacher_logp = self.teacher_logp(teacher, rows)
        per_token = generalized_jsd(student_logp, teacher_logp, self.beta)
        return per_token, kl(student_logp.detach(), teacher_logp)

    @torch.no_grad()
    def chunk_gradient(self, student_logp, student_p, teacher: TeacherTokens, targets, rows):
        """The generalized JSD and its gradient w.r.t. the student's log-probs s, written out. With the mixture
        log m = logaddexp(s + log(1-beta), t + log beta): d/ds_j = (1-beta) p_j (s_j - m_j); at beta=0 (forward
        KL) it is -q_j, at beta=1 (reverse KL) p_j (s_j - t_j + 1), where p and q are the student's and the
        teacher's probabilities. The logits are finite, so every log-prob is too (a probability that underflows
        to 0 contributes 0): no masking is needed, and the work is done in place on the chunk's own tiles."""
        teacher_logp = self.teacher_logp(teacher, rows)
        beta = self.beta
        log_ratio = student_logp - teacher_logp  # s - t
        reverse = (student_p * log_ratio).sum(-1)  # KL(S||T) per row: the metric, and the loss at beta=1
        if beta == 1.0:
            return reverse, reverse, log_ratio.add_(1.0).mul_(student_p)
        teacher_p = teacher_logp.exp()
        if beta == 0.0:
            return -(teacher_p * log_ratio).sum(-1), reverse, teacher_p.neg_()
        del log_ratio
        mixture = torch.logaddexp(student_logp + math.log1p(-beta), teacher_logp + math.log(beta))
        to_teacher = (teacher_p * teacher_logp.sub_(mixture)).sum(-1)  # KL(T||M)
        student_terms = mixture.neg_().add_(student_logp).mul_(student_p)  # p (s - m)
        per_token = beta * to_teacher + (1.0 - beta) * student_terms.sum(-1)
        return per_token, reverse, student_terms.mul_(1.0 - beta)

    def __call__(self, student, teacher, token_term=None, distillation_weight: float = 1.0) -> LossOutput:
        if self.kernel == "torch" or teacher is None:
            return super().__call__(student, teacher, token_term, distillation_weight)
        if token_term is not None or student.weights is not None or student.old_logprobs is not None:
            raise ConfigError("loss.kernel=liger computes the plain JSD only: no token masks, importance weights or "
                              "policy term. Use loss.kernel=torch with this method's options.")
        return LossOutput(self.liger_sum(*liger_inputs(student, teacher)), {})

    def liger_sum(self, student_hidden, student_weight, teacher_hidden, teacher_weight) -> torch.Tensor:
        """Liger averages over rows; the loop wants the sum (it divides by the step's token count itself)."""
        if self._liger is None:
            from liger_kernel.transformers import LigerFusedLinearJSD

            # Liger's conventions are ours: M = beta*T + (1-beta)*S, beta=0 forward KL(T||S), beta=1 reverse KL,
            # both logits divided by the temperature (and no T^2 factor).
            self._liger = LigerFusedLinearJSD(jsd_beta=self.beta, temperature=self.temperature)
        rows = student_hidden.shape[0]
        return self._liger(student_hidden, student_weight, teacher_hidden, teacher_weight) * rows


def liger_inputs(student: StudentTokens, teacher: TeacherTokens) -> tuple[torch.Tensor, ...]:
    """The fused kernel's four inputs, completion rows only (TRL's Liger path passed every prompt position too).

    `StudentTokens.hidden` and `TeacherTokens.hidden` are already cut to completion positions by
    `batch.completion_hidden` before the LM head, so this only checks shapes and lines the two up.
    """
    if teacher.hidden is None or teacher.head is None:
        raise ValueError("loss.kernel=liger needs the teacher's hidden states and LM head (an in-process teacher).")
    if student.hidden.shape[0] != teacher.hidden.shape[0]:
        raise ValueError(f"{student.hidden.shape[0]} student rows but {teacher.hidden.shape[0]} teacher rows.")
    if student.head.vocab_size != teacher.head.vocab_size:
        raise ValueError("The student and teacher heads must cover the same (shared) vocabulary.")
    for head in (student.head, teacher.head):
        if head.bias is not None or not head.transform.is_identity:
            raise ConfigError("loss.kernel=liger takes a plain LM head; this model's head has a bias or a logit "
                              "scale/softcap that Liger's fused JSD does not apply. Use loss.kernel=torch.")
    return student.hidden, student.head.weight, teacher.hidden, teacher.head.weight

