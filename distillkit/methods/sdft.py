"""`method=sdft`: self-distillation fine-tuning (Shenfeld et al., 2026, arXiv 2601.19897).

The student samples from the plain prompt. The teacher (by default an EMA of the student) scores the same
completion tokens with a demonstration in its context, `teacher_prompt_template`, and the student is pulled to
that demonstration-conditioned distribution on its own samples: on-policy learning from demonstrations, which
the paper shows forgets less than SFT on them.
"""

from __future__ import annotations

import torch

from distillkit.batch import collate
from distillkit.data.loading import encode_prompt
from distillkit.errors import ConfigError
from distillkit.methods.micro_batch import MicroBatch, RolloutContext, split_evenly
from distillkit.methods.self_distillation import SelfDistillationMethod, grouped
from distillkit.methods.teacher_prompts import check_template, context_text, rewrite_prompt


class SDFT(SelfDistillationMethod):
    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        num_generations: int = 1,
        num_iterations: int = 1,
        distillation_is_clip: float | None = 2.0,
        teacher_prompt_template: str = "{privileged_context}\n\n{prompt}",
        num_loss_tokens_to_skip: int = 0,
        generate_from_teacher: bool = False,
    ):
        super().__init__(beta, temperature, num_generations, num_iterations, distillation_is_clip)
        check_template("teacher_prompt_template", teacher_prompt_template, ("prompt", "privileged_context"),
                       ("prompt", "privileged_context"))
        self.teacher_prompt_template = teacher_prompt_template
        self.num_loss_tokens_to_skip = int(num_loss_tokens_to_skip)
        if self.num_loss_tokens_to_skip < 0:
            raise ConfigError(f"method.num_loss_tokens_to_skip={num_loss_tokens_to_skip} must be >= 0.")
        self.generate_from_teacher = bool(generate_from_teacher)

    def required_columns(self) -> dict[str, str]:
        return {"privileged_context": "SDFT's teacher sees a demonstration (a golden answer, a hint) in its prompt"}

    def teacher_prompt(self, prompt, privileged_context):
        context = context_text(privileged_context)
        return rewrite_prompt(prompt, lambda q: self.teacher_prompt_template.format(prompt=q, privileged_context=context))

    def prepare_rows(self, rows: list[dict], tokenizer, teacher_budget: int, student_budget: int, where: str) -> None:
        """Tokenize every teacher prompt once, and refuse those that do not fit, before any model loads.

        Teacher prompts are not cut to the student's prompt length; they need only fit the context. With
        `generate_from_teacher` the student samples from them, so they must fit the student's budget too.
        """
        budget = min(teacher_budget, student_budget) if self.generate_from_teacher else teacher_budget
        too_long = []
        for i, row in enumerate(rows):
            row["teacher_prompt_ids"] = encode_prompt(self.teacher_prompt(row["prompt"], row["privileged_context"]),
                                                      tokenizer)
            if len(row["teacher_prompt_ids"]) > budget:
                too_long.append(i)
        if too_long:
            worst = max(len(rows[i]["teacher_prompt_ids"]) for i in too_long)
            raise ConfigError(
                f"{len(too_long)} {where} teacher prompts (template + privileged_context) are longer than the "
                f"{budget} tokens that fit before train.max_completion_length (the longest has {worst}, e.g. row "
                f"{too_long[0]}). Shorten method.teacher_prompt_template or the privileged_context column, or "
                "lower train.max_completion_length."
            )

    def rollouts(self, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        source = "teacher_prompt_ids" if self.generate_from_teacher else "prompt_ids"
        completions = ctx.generator.generate([r[source] for r in rows], n=self.num_generations)
        sequences = list(zip(grouped(rows, self.num_generations), completions, strict=True))
        micros = []
        for part in split_evenly(sequences, ctx.num_micro_batches):
            part_rows = [r for r, _ in part]
            part_completions = [c for _, c in part]
            student = collate([r["prompt_ids"] for r in part_rows], part_completions, ctx.pad_id)
            teacher = collate([r["teacher_prompt_ids"] for r in part_rows], part_completions, ctx.pad_id)
            weights = skip_mask(part_completions, self.num_loss_tokens_to_skip)
            micros.append(MicroBatch(
                student, teacher, on_policy=True, rows=part_rows, distill_weights=weights,
                num_loss_tokens=None if weights is None else int(weights.sum()),
            ))
        self._metrics = {}
        return micros


def skip_mask(completions: list[list[int]], skip: int) -> torch.Tensor | None:
    """[N] 1 for completion tokens at position >= `skip` within their sequence, 0 for the first `skip`."""
    if skip == 0:
        return None
    return torch.cat([(torch.arange(len(c)) >= skip).float() for c in completions])
