"""`teacher=live`: a model run in process, frozen, in eval mode, without grad, in its own dtype."""

from __future__ import annotations

import torch

from distillkit.batch import SequenceBatch, completion_hidden
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.losses.chunked_head import auto_chunk_size, project
from distillkit.models import decoder_and_head, freeze, load_causal_lm


class LiveTeacher:
    """A separate teacher model given by path or hub name."""

    def __init__(self, model: str | None = None, dtype: str = "float32", trust_remote_code: bool = False):
        self.model_name = model
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.model: torch.nn.Module | None = None
        self.vocab_size: int | None = None

    @property
    def needs_model_load(self) -> bool:
        return self.model_name is not None

    def setup(self, device: torch.device, vocab_size: int) -> None:
        if self.model_name is None:
            raise NotImplementedError("teacher=live without teacher.model (self-distillation) comes with issue 4")
        self.model = freeze(load_causal_lm(self.model_name, self.dtype, device, self.trust_remote_code))
        self.parts = decoder_and_head(self.model)
        self.vocab_size = vocab_size

    def after_optimizer_step(self, step: int) -> None:
        """A separate frozen teacher never changes."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @torch.no_grad()
    def score(self, batch: SequenceBatch, request: TeacherRequest) -> TeacherTokens:
        hidden = completion_hidden(self.parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
        weight = self.parts.head.weight[: self.vocab_size]
        if request.signal == "hidden":
            return TeacherTokens(hidden=hidden, head_weight=weight)
        return self.score_tokens(hidden, weight, batch.completion_targets(), request)

    @staticmethod
    def score_tokens(hidden, weight, targets, request: TeacherRequest) -> TeacherTokens:
        """Top-k or actual-token log-probs at the loss temperature, computed in chunks of rows."""
        chunk = auto_chunk_size(weight.shape[0])
        topk_lp, topk_ids, token_lp = [], [], []
        for start in range(0, max(hidden.shape[0], 1), chunk):  # one empty chunk keeps shapes for N=0
            logp = torch.log_softmax(project(hidden[start : start + chunk], weight) / request.temperature, -1)
            if request.signal == "topk":
                values, ids = logp.topk(min(request.k, logp.shape[-1]), dim=-1)
                topk_lp.append(values)
                topk_ids.append(ids)
            token_lp.append(logp.gather(-1, targets[start : start + chunk, None]).squeeze(-1))
        cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731 (no top-k asked)
        return TeacherTokens(topk_logprobs=cat(topk_lp), topk_ids=cat(topk_ids), token_logprobs=cat(token_lp))
