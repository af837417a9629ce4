"""`teacher=live`: a model run in process under no_grad: a separate frozen model, or the student itself."""

from __future__ import annotations

import functools

import torch

from distillkit.lm_head import check_head_matches_model
from distillkit.models import (
    context_length,
    freeze,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
    shared_vocab_size,
)
from distillkit.teachers.in_process import InProcessTeacher


class LiveTeacher(InProcessTeacher):
    """With `model`, a separate teacher (frozen, eval mode, its own dtype). Without, the current student."""

    def __init__(self, model: str | None = None, dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__()
        self.model_name = model
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code

    @functools.cached_property
    def _config(self):
        """The separate teacher's config, read once at start-up (no weights)."""
        return load_model_config(self.model_name, self.trust_remote_code)

    def shared_vocab_size(self, tokenizer, student_config) -> int:
        """A separate model: its tokenizer must be the student's, and the heads share the rows that cover it."""
        if self.model_name is None:
            return super().shared_vocab_size(tokenizer, student_config)
        teacher_tokenizer = load_tokenizer(self.model_name, self.trust_remote_code)
        return shared_vocab_size(tokenizer, teacher_tokenizer, student_config, self._config)

    @property
    def context_length(self) -> int | None:
        return None if self.model_name is None else context_length(self._config)

    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module) -> None:
        if self.model_name is None:
            self.bind(student, vocab_size)  # self-distillation: the same module, scored without grad
            return
        self.bind(freeze(load_causal_lm(self.model_name, self.dtype, device, self.trust_remote_code)), vocab_size)
        check_head_matches_model(self.model, self.parts.hidden_states, f"The teacher {self.model_name}")
