"""`method=gkd`: on-policy distillation with the generalized JSD (Agarwal et al., ICLR 2024).

Each micro-batch is on-policy (the student samples its completions) with probability `lmbda`. Otherwise it is
supervised KD on fixed completions: the data set's, or the teacher's own samples with `seq_kd`.
"""

from __future__ import annotations

import random

from distillkit.batch import collate
from distillkit.errors import ConfigError
from distillkit.methods.method import Method
from distillkit.methods.micro_batch import MicroBatch, RolloutContext
from distillkit.teachers.teacher import TeacherDescription


class GKD(Method):

    def __init__(self, lmbda: float = 1.0, beta: float = 0.5, temperature: float = 1.0, seq_kd: bool = False):
        self.lmbda = float(lmbda)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.seq_kd = bool(seq_kd)

    @property
    def needs_dataset_completions(self) -> bool:
        return self.lmbda < 1.0 and not self.seq_kd

    def check_teacher(self, teacher: TeacherDescription, teacher_choice: str) -> None:
        if self.seq_kd and self.lmbda < 1 and not teacher.can_generate:
            raise ConfigError(
                f"method.seq_kd=true needs a teacher that generates in process; teacher={teacher_choice} only "
                "scores. Set method.seq_kd=false, or use teacher=live with teacher.model."
            )

    def scores_student_samples(self) -> bool:
        return self.lmbda > 0

    def check_async_rollouts(self, method_choice: str) -> None:
        """Only the student samples ahead: teacher samples (seq_kd) would need a copy of the teacher too."""
        if self.seq_kd and self.lmbda < 1:
            raise ConfigError(
                "train.async_generation=true samples the student's rollouts a step ahead, not the teacher's: with "
                "method.seq_kd=true set train.async_generation=false (or method.seq_kd=false)."
            )

    def on_policy_plan(self, step: int, num_micro_batches: int, seed: int) -> list[bool]:
        """One draw per micro-batch, from (seed, step) alone: every process and every resume draws the same."""
        rng = random.Random(seed * 1_000_003 + step)
        return [rng.random() < self.lmbda for _ in range(num_micro_batches)]

    def micro_batches(self, step: int, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        """Completions for the whole optimizer step come from one generation call per source, then get split.

        Generating once per step (not per micro-batch) keeps the generator's batches large; the split keeps every
        prompt with its own completions.
        """
        num_micro = ctx.num_micro_batches
        micro_rows = [rows[i::num_micro] for i in range(num_micro)]
        return self.planned_micro_batches(micro_rows, self.on_policy_plan(step, num_micro, ctx.seed), ctx)

    def planned_micro_batches(self, micro_rows: list[list[dict]], plan: list[bool], ctx: RolloutContext
                              ) -> list[MicroBatch]:
        slots = [(m, i) for m, rows in enumerate(micro_rows) for i in range(len(rows))]
        on_policy = [(m, i) for m, i in slots if plan[m]]
        teacher_made = [(m, i) for m, i in slots if not plan[m] and self.seq_kd]
        completions: dict[tuple[int, int], list[int]] = {}
        for keys, generator in ((on_policy, ctx.generator), (teacher_made, ctx.teacher_generator)):
            if keys:
                outputs = generator.generate([micro_rows[m][i]["prompt_ids"] for m, i in keys], n=1)
                completions.update(zip(keys, outputs, strict=True))
        batches = []
        for m, (rows, on) in enumerate(zip(micro_rows, plan, strict=True)):
            prompts = [r["prompt_ids"] for r in rows]
            chosen = [completions[m, i] if (m, i) in completions else r["completion_ids"] for i, r in enumerate(rows)]
            batch = collate(prompts, chosen, ctx.pad_id)
            batches.append(MicroBatch(batch, batch, on, rows))
        return batches
