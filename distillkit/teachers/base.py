"""`teacher=base`: the frozen initial student.

Under LoRA it is the same module with the adapters switched off, so no second copy sits in memory. Without LoRA
it is a frozen copy of the student's weights as they were when training started (before any checkpoint is
restored), not a fresh load from the hub id, which would differ for a student changed in memory.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from distillkit.models import freeze, is_peft
from distillkit.teachers.in_process import InProcessTeacher


class BaseTeacher(InProcessTeacher):
    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module) -> None:
        self.adapter_off = is_peft(student)
        self.bind(student if self.adapter_off else freeze(copy.deepcopy(student)), vocab_size)

    @contextlib.contextmanager
    def active(self):
        if not self.adapter_off:
            yield
            return
        with self.model.disable_adapter():
            yield
