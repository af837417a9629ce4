"""The teacher interface, with the defaults of a teacher that never changes."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from distillkit.batch import SequenceBatch
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.models import embedding_rows

if TYPE_CHECKING:
    from distillkit.strategies import Strategy


@dataclass(frozen=True)
class TeacherDescription:
    """What a teacher can give, said once: methods and losses check their needs against it at start-up."""

    signals: tuple[str, ...]  # the TeacherRequest signals it answers: hidden, topk, token
    can_generate: bool  # its weights can sample in this process (seq_kd, the teacher's own accuracy)
    k_max: int | None  # the largest top-k it returns; None: no limit
    scores_unseen: bool = True  # it can score any sequence, the student's fresh rollouts too (a cache: only its own)


class Teacher(ABC):
    """Scores completion tokens (`score`), and may change after optimizer steps (`ema`)."""

    signals: tuple[str, ...] = ("hidden", "topk", "token")
    can_generate: bool = True
    k_max: int | None = None
    route_column: str | None = None  # a data column naming each row's teacher (teacher=router); evaluation groups by it

    def describe(self) -> TeacherDescription:
        return TeacherDescription(self.signals, self.can_generate, self.k_max)

    def shared_vocab_size(self, tokenizer, student_config) -> int:
        """Start-up, no weights loaded: the vocabulary rows both heads mean the same thing by. A teacher made of the
        student's own weights shares all of the student's."""
        return embedding_rows(student_config)

    @property
    def context_length(self) -> int | None:
        """The teacher's own context limit, if it has one apart from the student's."""
        return None

    def check_request(self, request: TeacherRequest) -> None:
        """Refuse at start-up a request this teacher cannot answer beyond its `signals` (which
        `runner.check_composition` already compares with the loss's): a server's top-k limit."""

    def check_rows(self, rows: Sequence[Mapping], where: str) -> None:
        """Refuse at start-up data rows this teacher cannot score (the router: a row naming no configured teacher)."""

    @abstractmethod
    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module | None) -> None:
        """Load or bind the teacher's weights (before the student is sharded)."""

    @abstractmethod
    def score(self, batch: SequenceBatch, request: TeacherRequest,
              rows: Sequence[Mapping] | None = None) -> TeacherTokens:
        """The teacher's view of the batch's completion tokens. `rows` are the data set rows of the batch's
        sequences, for a teacher that picks by row (the router); the others ignore them."""

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The teacher's weights are in `self.model` for the duration (generation and scoring run inside)."""
        yield

    def place(self, strategy: Strategy, student: torch.nn.Module) -> None:
        """Called once the run's strategy has wrapped the student; a teacher outside the process does nothing."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (step counts from 1); a frozen teacher does nothing."""

    def metrics(self) -> dict[str, float]:
        """Metrics since the last call, logged with the step's (the router's per-teacher counts)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
