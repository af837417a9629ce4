"""What SDFT and SDPO share: groups of rollouts, their split into micro-batches, and rollout reuse.

A step's rollouts are generated in one call, `num_generations` per prompt, kept adjacent, and split into
micro-batches only after everything that needs whole groups (rewards, advantages, reprompting) is computed.
With `num_iterations > 1` the same rollouts serve that many optimizer steps. The student's log-probs recorded at
the first one (its weights then are the rollout policy's) become the old log-probs of the importance ratio.
"""

from __future__ import annotations

from distillkit.errors import ConfigError
from distillkit.methods.method import Method
from distillkit.methods.micro_batch import MicroBatch, RolloutContext


class SelfDistillationMethod(Method):
    plain_divergence = False  # token masks, importance weights, SDPO's policy term

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        num_generations: int = 1,
        num_iterations: int = 1,
        distillation_is_clip: float | None = 2.0,
    ):
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.num_generations = int(num_generations)
        self.num_iterations = int(num_iterations)
        self.distillation_is_clip = None if distillation_is_clip is None else float(distillation_is_clip)
        if self.num_generations < 1 or self.num_iterations < 1:
            raise ConfigError("method.num_generations and method.num_iterations must be >= 1.")
        if self.distillation_is_clip is not None and self.distillation_is_clip <= 0:
            raise ConfigError(
                f"method.distillation_is_clip={distillation_is_clip} must be > 0 (null turns the correction off)."
            )
        self._cycle: int | None = None
        self._micros: list[MicroBatch] = []
        self._metrics: dict[str, float] = {}

    needs_dataset_completions = False

    def prompts_per_step(self, sequences_per_step: int) -> int:
        """`train.batch_size` counts sequences (as TRL's per-device batch size does); a step holds whole groups."""
        if sequences_per_step % self.num_generations:
            raise ConfigError(
                f"An optimizer step holds train.batch_size x train.gradient_accumulation_steps = {sequences_per_step} "
                f"sequences, which is not a multiple of method.num_generations={self.num_generations}, so a group "
                "of rollouts would be cut. Change the batch size or the accumulation steps so that their product "
                "is a multiple (the batch size alone need not be)."
            )
        return sequences_per_step // self.num_generations

    def micro_batches(self, step: int, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        """Fresh rollouts at the first step of every `num_iterations` cycle; the same ones, re-weighted, after."""
        cycle = step // self.num_iterations
        if cycle != self._cycle or not self._micros:
            self._micros, self._cycle = self.rollouts(rows, ctx), cycle
            return self._micros
        for micro in self._micros:
            if micro.old_logprobs is None and micro.token_logprobs is not None:
                micro.old_logprobs = micro.token_logprobs  # the rollout policy's, recorded at the first iteration
        self._metrics = {}  # rollout statistics are logged once, at the step that made them
        return self._micros

    def rollouts(self, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict:
        """The rollouts being reused: a resume in the middle of a cycle continues with the same ones."""
        return {"cycle": self._cycle, "micros": [micro.to_state() for micro in self._micros]}

    def load_state_dict(self, state: dict) -> None:
        self._cycle = state.get("cycle")
        self._micros = [MicroBatch.from_state(micro) for micro in state.get("micros", [])]


def grouped(items: list, n: int) -> list:
    """Each item repeated n times, adjacent: the layout `generate(prompts, n)` returns completions in."""
    return [item for item in items for _ in range(n)]

