"""The teacher interface, with the defaults of a teacher that never changes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Teacher:
    """Scores completion tokens (`score`), and may change after optimizer steps (`ema`).

    Subclasses set `signals` (which `TeacherRequest`s they answer) and `can_generate` (whether the teacher's
    weights can sample in this process, for seq_kd and the teacher's accuracy).
    """

    model_name: str | None = None  # a model to load and compare vocabularies with; None for the student's own
    trust_remote_code: bool = False
    signals: tuple[str, ...] = ("hidden", "topk", "token")
    can_generate: bool = True

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The teacher's weights are in `self.model` for the duration (generation and scoring run inside)."""
        yield

    def shard(self, student, reshard_after_forward: bool) -> None:
        """Called once the student is FSDP-sharded (`distillkit.sharding`); a teacher outside the process does
        nothing."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (step counts from 1); a frozen teacher does nothing."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
