"""`loss=topk`: the generalized JSD on the teacher's top-k support.

The support is the teacher's k most likely tokens (what a server can send). Both distributions are either
completed with a tail bucket log(1 - sum p), which keeps the divergence an approximation of the full one,
or renormalized on the support (`add_tail=false`), which ignores the tail (TRL's two conventions).
"""

from __future__ import annotations

import torch

from distillkit.errors import ConfigError
from distillkit.losses.base import Divergence, TeacherRequest, TeacherTokens
from distillkit.losses.chunked_head import at_least_fp32
from distillkit.losses.math import add_tail_bucket, generalized_jsd, kl, renormalize


class TopKDivergence(Divergence):
    signal = "topk"

    @classmethod
    def check_options(cls, beta: float, options) -> None:
        if int(options.k) < 1:
            raise ConfigError(f"loss.k={options.k} must be >= 1.")

    def __init__(self, beta: float, temperature: float, k: int = 20, add_tail: bool = True, chunk_size=None):
        super().__init__(beta, temperature, chunk_size)
        self.k = int(k)
        self.add_tail = bool(add_tail)

    def teacher_request(self) -> TeacherRequest:
        return TeacherRequest("topk", self.temperature, self.k)

    def chunk(self, student_logp, teacher: TeacherTokens, targets, rows):
        teacher_logp = at_least_fp32(teacher.topk_logprobs[rows])
        student_top = student_logp.gather(-1, teacher.topk_ids[rows].long())
        support = add_tail_bucket if self.add_tail else renormalize
        student_top, teacher_logp = support(student_top), support(teacher_logp)
        per_token = generalized_jsd(student_top, teacher_logp, self.beta)
        with torch.no_grad():
            return per_token, kl(student_top.detach(), teacher_logp)
