"""`loss=full`: the generalized JSD over the whole vocabulary, chunked over completion rows."""

from __future__ import annotations

import torch

from distillkit.losses.base import Divergence, TeacherTokens
from distillkit.losses.chunked_head import project
from distillkit.losses.math import generalized_jsd, kl


class FullDivergence(Divergence):
    signal = "hidden"

    def chunk(self, student_logp, teacher: TeacherTokens, targets, rows):
        with torch.no_grad():
            teacher_logits = project(teacher.hidden[rows], teacher.head_weight)
            teacher_logp = torch.log_softmax(teacher_logits / self.temperature, dim=-1)
        per_token = generalized_jsd(student_logp, teacher_logp, self.beta)
        return per_token, kl(student_logp.detach(), teacher_logp)
