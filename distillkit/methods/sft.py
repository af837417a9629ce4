"""`method=sft`: supervised fine-tuning, plain cross-entropy on fixed completions.

The honest baseline of every distillation recipe. The completions are the data set's (`completions: dataset`) or
the teacher's own samples (`completions: teacher`: sequence-level KD's data with a hard-label loss, Kim & Rush
2016). No teacher score enters the loss, so the teacher is never asked while training; it still gives evaluation
its accuracy and the teacher-forced KL. The loss is the completion tokens' summed negative log-likelihood over the
optimizer step's completion tokens, as every method's is.
"""

from __future__ import annotations

import torch

from distillkit.batch import collate
from distillkit.errors import ConfigError
from distillkit.losses.base import add
from distillkit.methods.method import Method
from distillkit.methods.micro_batch import MicroBatch, RolloutContext
from distillkit.teachers.teacher import TeacherDescription

SOURCES = ("dataset", "teacher")


class NegativeLogLikelihood:
    """The token term of SFT: -log p(y_t) of each completion token (at temperature 1)."""

    def __call__(self, token_logprobs: torch.Tensor, rows: slice, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        nll = -token_logprobs
        add(stats, "nll", nll.sum())
        return nll


class SFT(Method):
    beta = 0.0  # unused: there is no divergence term
    temperature = 1.0  # plain cross-entropy
    distillation_weight = 0.0  # the whole loss is the token term
    plain_divergence = False

    def __init__(self, completions: str = "dataset", temperature: float = 1.0):
        if completions not in SOURCES:
            raise ConfigError(f"method.completions={completions!r} must be one of {list(SOURCES)}.")
        if float(temperature) != 1.0:
            raise ConfigError(
                f"method.temperature={temperature}: SFT's cross-entropy is taken at temperature 1. To sample the "
                "teacher's completions at another temperature, set generation.temperature."
            )
        self.completions = completions

    @property
    def needs_dataset_completions(self) -> bool:
        return self.completions == "dataset"

    def scores_student_samples(self) -> bool:
        return False  # the teacher is asked only in evaluation, about the held-out completions

    def check_teacher(self, teacher: TeacherDescription, teacher_choice: str) -> None:
        if self.completions == "teacher" and not teacher.can_generate:
            raise ConfigError(
                f"method.completions=teacher needs a teacher that generates in process; teacher={teacher_choice} only "
                "scores. Use method.completions=dataset, or teacher=live with teacher.model."
            )

    def micro_batches(self, step: int, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        """The step's completions come from one call (the teacher's samples) or the data set, then get split."""
        if self.completions == "teacher":
            completions = ctx.teacher_generator.generate([r["prompt_ids"] for r in rows], n=1)
        else:
            completions = [r["completion_ids"] for r in rows]
        micros = []
        for m in range(ctx.num_micro_batches):
            part = list(range(m, len(rows), ctx.num_micro_batches))
            batch = collate([rows[i]["prompt_ids"] for i in part], [completions[i] for i in part], ctx.pad_id)
            micros.append(MicroBatch(batch, None, False, [rows[i] for i in part]))
        return micros

    def token_term(self, micro: MicroBatch, device: torch.device) -> NegativeLogLikelihood:
        return NegativeLogLikelihood()
