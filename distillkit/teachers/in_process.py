"""What every in-process teacher shares: scoring completion tokens with a causal LM held in this process.

Subclasses say which module holds the teacher's weights and what must be swapped in while it scores
(`active()`): nothing for a separate model, the adapter switched off for `base` under LoRA, the averaged adapter
for `ema` under LoRA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from distillkit.batch import SequenceBatch, completion_hidden
from distillkit.lm_head import LMHead
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.losses.chunked_head import auto_chunk_size
from distillkit.models import decoder_and_head
from distillkit.strategies import DataParallel, Strategy
from distillkit.teachers.teacher import Teacher


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class InProcessTeacher(Teacher):
    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.vocab_size: int | None = None
        self.strategy: Strategy = DataParallel()  # one process until `place` says otherwise

    def bind(self, model: torch.nn.Module, vocab_size: int) -> None:
        self.model, self.parts, self.vocab_size = model, decoder_and_head(model), vocab_size

    def place(self, strategy: Strategy, student: torch.nn.Module) -> None:
        """A separate teacher module (a live model, a frozen or averaged copy) is wrapped like the student; the
        student itself already is."""
        self.strategy = strategy
        if self.model is not student:
            strategy.wrap_module(self.model)
        self.parts = strategy.decoder_and_head(self.model)

    @torch.no_grad()
    def score(self, batch: SequenceBatch, request: TeacherRequest, rows=None) -> TeacherTokens:
        with self.active(), eval_mode(self.model):
            hidden = completion_hidden(self.parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
            head = self.parts.lm_head(self.vocab_size).detached()
            if request.signal == "hidden":
                return TeacherTokens(hidden=hidden, head=self.strategy.head_outliving_forward(head))
            return score_tokens(hidden, head, batch.completion_targets(), request)


def score_tokens(hidden: torch.Tensor, head: LMHead, targets: torch.Tensor, request: TeacherRequest) -> TeacherTokens:
    """Top-k or actual-token log-probs at the loss temperature, computed in chunks of rows."""
    chunk = auto_chunk_size(head.vocab_size)
    topk_lp, topk_ids, token_lp = [], [], []
    for start in range(0, max(hidden.shape[0], 1), chunk):  # one empty chunk keeps the shapes for N=0
        logp = torch.log_softmax(head.logits(hidden[start : start + chunk]) / request.temperature, -1)
        if request.signal == "topk":
            values, ids = logp.topk(min(request.k, logp.shape[-1]), dim=-1)
            topk_lp.append(values)
            topk_ids.append(ids)
        token_lp.append(logp.gather(-1, targets[start : start + chunk, None]).squeeze(-1))
    return TeacherTokens(
        topk_logprobs=torch.cat(topk_lp) if topk_lp else None,
        topk_ids=torch.cat(topk_ids) if topk_ids else None,
        token_logprobs=torch.cat(token_lp),
    )


class TeacherGenerator:
    """A generator that samples with the teacher's weights active (seq_kd, and the teacher's accuracy)."""

    def __init__(self, generator, teacher: InProcessTeacher):
        self.generator, self.teacher = generator, teacher

    def generate(self, prompt_ids: list[list[int]], n: int = 1, greedy: bool = False) -> list[list[int]]:
        with self.teacher.active():
            return self.generator.generate(prompt_ids, n=n, greedy=greedy)
