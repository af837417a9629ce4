"""What a method hands the training loop for each micro-batch, and the step-level pieces every method shares."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from distillkit.batch import SequenceBatch


@dataclass
class MicroBatch:
    """One forward/backward of an optimizer step. Per-token tensors are over the N completion tokens, row by row."""

    student: SequenceBatch  # prompt + completion, as the student sees it
    teacher: SequenceBatch | None  # the same completion tokens as the teacher sees them; None: no distillation term
    on_policy: bool
    rows: list[dict]  # the data set row of each sequence
    distill_weights: torch.Tensor | None = None  # [N] 0 masks a token out of the distillation term
    advantages: torch.Tensor | None = None  # [N] set: add the policy-gradient term (SDPO)
    old_logprobs: torch.Tensor | None = None  # [N] the rollout policy's log-probs (reused or stale rollouts)
    is_clip: float | None = None  # the IS ratio's clip on old_logprobs here; None: the method's own
    num_loss_tokens: int | None = None  # tokens this micro-batch adds to the step's normalizer; None: all
    token_logprobs: torch.Tensor | None = None  # [N] filled by the loop: the student's log-probs at its forward

    @property
    def loss_tokens(self) -> int:
        return self.student.num_completion_tokens if self.num_loss_tokens is None else self.num_loss_tokens

    def to_state(self) -> dict:
        """Plain data and tensors, for a checkpoint (no pickled objects)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["student"] = vars(self.student).copy()
        state["teacher"] = None if self.teacher is None else vars(self.teacher).copy()
        return state

    @classmethod
    def from_state(cls, state: dict) -> MicroBatch:
        student = SequenceBatch(**state["student"])
        teacher = None if state["teacher"] is None else SequenceBatch(**state["teacher"])
        return cls(**{**state, "student": student, "teacher": teacher})


@dataclass
class RolloutContext:
    """What a method needs to build a step: the samplers, the tokenizer and the step's shape."""

    generator: object  # samples with the student's weights
    teacher_generator: object | None  # samples with the teacher's weights (seq_kd); None for a remote teacher
    tokenizer: object
    num_micro_batches: int
    seed: int

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous pieces whose sizes differ by at most one, in order (a group of rollouts stays adjacent)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def per_token(values: list[float] | torch.Tensor, completions: list[list[int]]) -> torch.Tensor:
    """A per-sequence value repeated over that sequence's completion tokens: [N]."""
    lengths = torch.tensor([len(c) for c in completions])
    return torch.repeat_interleave(torch.as_tensor(values, dtype=torch.float32), lengths)
