"""The method interface: what the loop asks of `method=...`, declared once.

A method turns an optimizer step's data set rows into micro-batches (what the student and the teacher see), says
which loss terms apply (the divergence to the teacher, and an optional per-token term on the student's own
log-probs: SDPO's PPO-clip term, SFT's cross-entropy), and refuses the teachers it cannot work with. The loop
calls nothing else, so a new method is one new file and one YAML.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from distillkit.errors import ConfigError
from distillkit.losses.base import TokenTerm
from distillkit.methods.micro_batch import MicroBatch, RolloutContext
from distillkit.teachers.teacher import TeacherDescription


class Method(ABC):
    beta: float = 0.5  # the divergence's beta (0 forward KL, 1 reverse KL)
    temperature: float = 1.0  # divides both models' logits in the loss; the sampling temperature
    distillation_weight: float = 1.0  # loss = w * distillation + (1 - w) * token term
    distillation_is_clip: float | None = None  # upper clip of the IS ratio on reused rollouts; None: no IS
    num_iterations: int = 1  # optimizer steps per rollout batch
    plain_divergence: bool = True  # no token masks, IS weights or token term: a fused kernel (Liger) can compute it

    @property
    def needs_dataset_completions(self) -> bool:
        """Whether training rows must carry a `completion` (off-policy data)."""
        return False

    def required_columns(self) -> dict[str, str]:
        """Other columns a training row must have: name -> what it is for (in the error message)."""
        return {}

    def prompts_per_step(self, sequences_per_step: int) -> int:
        """Data set rows per optimizer step, given the sequences it holds (groups of rollouts divide it)."""
        return sequences_per_step

    def prepare_rows(self, rows: list[dict], tokenizer, teacher_budget: int, student_budget: int, where: str) -> None:
        """Tokenize what the method adds to each row once (teacher prompts), checked against the context."""

    def check_teacher(self, teacher: TeacherDescription, teacher_choice: str) -> None:
        """Refuse, before anything loads, a teacher this method's settings cannot work with."""

    def scores_student_samples(self) -> bool:
        """Whether the teacher is asked about the student's own rollouts (sequences no one could score ahead)."""
        return True

    def check_async_rollouts(self, method_choice: str) -> None:
        """Refuse `train.async_generation`, before anything loads, where this method's rollouts cannot be sampled a
        step ahead from a copy of the student (state carried between steps, a teacher that samples)."""
        raise ConfigError(
            f"train.async_generation=true samples from a copy of the student a step ahead; method={method_choice} "
            "builds its steps from state that changes every step, so it does not support it yet. Set "
            "train.async_generation=false."
        )

    @abstractmethod
    def micro_batches(self, step: int, rows: list[dict], ctx: RolloutContext) -> list[MicroBatch]:
        """The optimizer step's micro-batches, built from one generation call per source."""

    def token_term(self, micro: MicroBatch, device: torch.device) -> TokenTerm | None:
        """A per-token loss on the student's log-prob of each completion token, or None."""
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        """Plain data and tensors (checkpointed); what a resume needs to continue exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
