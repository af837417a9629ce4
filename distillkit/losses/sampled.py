"""`loss=sampled`: the per-token reverse-KL estimator on the sampled completion tokens.

(log s(y) - log t(y)).detach() * log s(y): its gradient is an unbiased estimate of the gradient of
KL(S||T) when y is drawn from the student. It needs only the teacher's log-prob of each actual token, and it
is reverse KL by construction, so it is defined for beta=1 only (the config check refuses other values).
"""

from __future__ import annotations

from distillkit.errors import ConfigError
from distillkit.losses.base import Divergence, TeacherTokens
from distillkit.losses.chunked_head import at_least_fp32


class SampledDivergence(Divergence):
    signal = "token"
    default_beta = 1.0

    @classmethod
    def check_options(cls, beta: float, options) -> None:
        if float(beta) != 1.0:
            raise ConfigError(
                f"loss=sampled estimates reverse KL on the sampled tokens, so it needs method.beta=1 (got "
                f"{beta}). Set method.beta=1, or use loss=full / loss=topk for forward KL or the JSD."
            )

    def chunk(self, student_logp, teacher: TeacherTokens, targets, rows):
        student_token = student_logp.gather(-1, targets[:, None].long()).squeeze(-1)
        log_ratio = (student_token - at_least_fp32(teacher.token_logprobs[rows])).detach()
        return log_ratio * student_token, log_ratio
