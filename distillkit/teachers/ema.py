"""`teacher=ema`: an exponential moving average of the student.

Every `teacher_sync_steps` optimizer steps, theta_T <- (1 - alpha) * theta_T + alpha * theta_S with
alpha = `teacher_update_rate` (1.0 is a hard copy). Under LoRA only the adapter tensors are averaged (a second
adapter, swapped in while the teacher works), so there is no full copy of the model.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from distillkit.models import ConfigError, freeze, is_peft
from distillkit.strategies import Strategy
from distillkit.teachers.in_process import InProcessTeacher


class EmaTeacher(InProcessTeacher):
    def __init__(self, teacher_update_rate: float = 0.05, teacher_sync_steps: int = 1):
        super().__init__()
        if not 0.0 < teacher_update_rate <= 1.0:
            raise ConfigError(f"teacher.teacher_update_rate={teacher_update_rate} must lie in (0, 1].")
        if teacher_sync_steps < 1:
            raise ConfigError(f"teacher.teacher_sync_steps={teacher_sync_steps} must be >= 1.")
        self.rate = float(teacher_update_rate)
        self.sync_steps = int(teacher_sync_steps)

    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module) -> None:
        self.student = student
        self.adapter_only = is_peft(student)
        if self.adapter_only:
            self.bind(student, vocab_size)
            self.average = self._adapter_copy()
        else:
            self.bind(freeze(copy.deepcopy(student)), vocab_size)

    def place(self, strategy: Strategy, student: torch.nn.Module) -> None:
        super().place(strategy, student)
        if self.adapter_only:  # the average takes the (sharded) layout of the adapter it follows
            self.average = self._adapter_copy()

    def _adapter_copy(self) -> dict[str, torch.Tensor]:
        """The averaged tensors' current values in the student (sharded like the student's)."""
        return {n: p.detach().clone() for n, p in self._pairs()}

    def _pairs(self):
        """(name, student parameter) for every averaged tensor."""
        return [(n, p) for n, p in self.student.named_parameters() if p.requires_grad or not self.adapter_only]

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        if step % self.sync_steps:
            return
        with self.strategy.local_parameters(self.student, self.model):  # average the shards, not a gathered copy
            if self.adapter_only:
                for name, param in self._pairs():
                    self.average[name].lerp_(param.detach(), self.rate)
                return
            teacher_params = dict(self.model.named_parameters())
            for name, param in self.student.named_parameters():
                teacher_params[name].lerp_(param.detach().to(teacher_params[name].dtype), self.rate)

    @contextlib.contextmanager
    def active(self):
        if not self.adapter_only:
            yield
            return
        with self.strategy.local_parameters(self.student), torch.no_grad():
            live = self._adapter_copy()
            for name, param in self._pairs():
                param.copy_(self.average[name])
        try:
            yield
        finally:
            with self.strategy.local_parameters(self.student), torch.no_grad():
                for name, param in self._pairs():
                    param.copy_(live[name])

    def state_dict(self) -> dict:
        """Whole tensors (gathered from the shards under FSDP: every process must call this)."""
        with self.strategy.local_parameters(self.model):
            averaged = self.average if self.adapter_only else dict(self.model.named_parameters())
            return {"average": self.strategy.whole_tensors(averaged)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        with self.strategy.local_parameters(self.model):
            targets = self.average if self.adapter_only else dict(self.model.named_parameters())
            for name, target in targets.items():
                self.strategy.copy_whole_into(target, state["average"][name])
