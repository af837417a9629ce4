"""`teacher=remote`: a teacher model served over HTTP, by `distillkit serve-teacher`, a stock vLLM server, or TRL's
`trl vllm-serve` up to TRL 1.9.2.

It answers `topk` and `token` requests (log-probs of the completion positions); it cannot give hidden states, so
`loss=full` needs an in-process teacher. See docs/serve-teacher.md.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from distillkit.batch import SequenceBatch
from distillkit.errors import ConfigError
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.models import embedding_rows
from distillkit.serve.client import TeacherClient, TeacherError, TeacherUnavailableError
from distillkit.serve.protocol import tokenizer_hash
from distillkit.teachers.teacher import Teacher

API_KEY_ENV = "DISTILLKIT_API_KEY"
VLLM_DEFAULT_MAX_LOGPROBS = 20


class RemoteTeacher(Teacher):
    """Scores completion tokens on a teacher server. No weights are loaded in this process."""

    signals = ("topk", "token")
    can_generate = False  # seq_kd and the teacher's own accuracy need a teacher in process

    def __init__(self, url: str = "http://127.0.0.1:8000", protocol: str = "binary", api_key: str | None = None,
                 k_max: int | None = None, model: str | None = None, timeout: float = 300.0,
                 connect_timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 max_tokens_per_request: int = 32768, max_concurrency: int = 4,
                 approximate_temperature: bool = False, deadline: float = 120.0):
        self.url, self.protocol = url, protocol
        self.k_max = k_max
        self.model = None
        self.parts = None
        self.vocab_size: int | None = None
        self.server_info: dict | None = None
        self.client = TeacherClient(
            url, api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
            protocol=protocol, model=model, max_tokens_per_request=max_tokens_per_request,
            max_concurrency=max_concurrency, connect_timeout=connect_timeout, read_timeout=timeout,
            retries=retries, backoff=backoff, approximate_temperature=approximate_temperature, deadline=deadline,
        )
        self._connected = False

    @property
    def context_length(self) -> int | None:
        info = self.connect()
        if info is not None:
            return int(info["context_length"])
        with contextlib.suppress(TeacherError, KeyError, IndexError, TypeError, ValueError):
            return int(self.client.request("GET", "/v1/models").json()["data"][0]["max_model_len"])
        return None

    def connect(self) -> dict | None:
        """Check /health and read /info (None from a vLLM server). A server that does not answer is a ConfigError
        here, at start-up, before any training work."""
        if self._connected:
            return self.server_info
        try:
            self.client.health()
            self.server_info = self.client.info()
            if self.protocol == "openai":
                self.client.served_model()
        except TeacherUnavailableError as err:
            raise ConfigError(
                f"teacher=remote: no teacher server answers at {self.url} ({err}). Start one, e.g. "
                f"`distillkit serve-teacher --model TEACHER --port PORT`, and set teacher.url=http://HOST:PORT."
            ) from err
        except TeacherError as err:
            raise ConfigError(f"teacher=remote: the server at {self.url} refused the start-up check: {err}") from err
        info = self.server_info
        if self.protocol == "trl":  # serve-teacher applies TRL's temperature; TRL's own (vLLM) server does not
            self.client.exact_temperature = info is not None
        if info is not None:
            server_k = int(info.get("max_k", 0))
            self.k_max = server_k if self.k_max is None else min(int(self.k_max), server_k)
        elif self.k_max is None:
            self.k_max = VLLM_DEFAULT_MAX_LOGPROBS
        self._connected = True
        return info

    def check_tokenizer(self, tokenizer) -> None:
        """The server's tokenizer must map every token to the same id as the student's."""
        info = self.connect()
        if info is None:
            warnings.warn(f"teacher=remote: the server at {self.url} has no /info (a vLLM server?), so the teacher's "
                          "tokenizer cannot be checked against the student's; make sure they are the same", stacklevel=2)
            return
        mine = tokenizer_hash(tokenizer.get_vocab())
        if mine != info["tokenizer_hash"]:
            raise ConfigError(
                f"teacher=remote: the teacher served at {self.url} ({info.get('model')}, {info.get('tokenizer_vocab_size')}"
                f" tokens) uses a different tokenizer from the student ({len(tokenizer)} tokens): token-level "
                "distillation needs one vocabulary. Serve a teacher from the student's model family."
            )

    def shared_vocab_size(self, tokenizer, student_config) -> int:
        """The vocabulary rows both LM heads mean the same thing by (as `distillkit.models.shared_vocab_size`):
        asks the server (/health, /info, the tokenizer hash)."""
        student_rows = embedding_rows(student_config)
        self.check_tokenizer(tokenizer)
        info = self.connect()
        rows = min(student_rows, int(info["vocab_size"])) if info is not None else student_rows
        if rows < len(tokenizer):
            raise ConfigError(f"The LM heads have {rows} rows but the tokenizer has {len(tokenizer)} tokens.")
        return rows

    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module | None = None) -> None:
        info = self.connect()
        if info is not None and vocab_size > int(info["vocab_size"]):
            raise ConfigError(f"teacher=remote: the student's vocabulary has {vocab_size} rows but the teacher at "
                              f"{self.url} has {info['vocab_size']}.")
        self.vocab_size = vocab_size

    def check_request(self, request: TeacherRequest) -> int:
        """Refuse what this teacher cannot answer (call it at start-up with the loss's request); returns the k to
        ask the server for."""
        if request.signal == "hidden":
            raise ConfigError("teacher=remote cannot give what loss=full needs (hidden states): a server sends top-k "
                              "and token log-probs. Use loss=topk or loss=sampled.")
        if request.signal not in self.signals:
            raise ConfigError(f"teacher=remote cannot answer a {request.signal!r} request")
        self.connect()
        if (not self.client.exact_temperature and float(request.temperature) != 1.0
                and not self.client.approximate_temperature):
            raise ConfigError(
                f"teacher.protocol={self.protocol} against {self.url} gives log-probs at temperature 1 only (vLLM "
                f"ignores `temperature` for prompt_logprobs) and only the top-k, so method.temperature="
                f"{request.temperature} cannot be applied exactly. Use `distillkit serve-teacher` (which applies it), "
                "method.temperature=1, or teacher.approximate_temperature=true (renormalizes over the top-k; see "
                "docs/serve-teacher.md)."
            )
        if request.signal != "topk":
            return 1
        k = min(int(request.k), self.vocab_size) if self.vocab_size else int(request.k)
        if self.k_max is not None and k > self.k_max:
            raise ConfigError(
                f"loss.k={request.k} but the teacher server at {self.url} gives at most {self.k_max} log-probs "
                "per position: lower loss.k, or raise the server's --max-k (vLLM: --max-logprobs)."
            )
        return k

    def score(self, batch: SequenceBatch, request: TeacherRequest, rows=None) -> TeacherTokens:
        k = self.check_request(request)
        vocab = self.vocab_size
        sequences, prompt_lengths, keeps = split_rows(batch)
        topk_lp, topk_ids, token_lp = self.client.score(
            sequences, prompt_lengths, k, float(request.temperature),
            vocab_size=vocab if self.protocol in ("binary", "json") else None,
        )
        if any(keep is not None for keep in keeps):  # completion masks with holes: drop the rows in between
            mask = torch.cat([keep if keep is not None else torch.ones(len(s) - p, dtype=torch.bool)
                              for keep, s, p in zip(keeps, sequences, prompt_lengths, strict=True)])
            topk_lp, topk_ids, token_lp = topk_lp[mask], topk_ids[mask], token_lp[mask]
        if token_lp.shape[0] != batch.num_completion_tokens:
            raise TeacherError(f"the teacher at {self.url} gave {token_lp.shape[0]} rows for "
                               f"{batch.num_completion_tokens} completion tokens")
        device = batch.input_ids.device
        if request.signal == "token":
            return TeacherTokens(token_logprobs=token_lp.to(device))
        return TeacherTokens(topk_logprobs=topk_lp.to(device), topk_ids=topk_ids.to(device),
                             token_logprobs=token_lp.to(device))


def split_rows(batch: SequenceBatch) -> tuple[list[list[int]], list[int], list[torch.Tensor | None]]:
    """Per row: the non-pad tokens up to the last completion token, the index of the first completion token, and
    (only when the completion tokens are not contiguous) which positions after it are completion tokens.

    The teacher's rows then come back in the order `batch.completion_targets()` flattens them (row-major).
    """
    ids, attention, completion = batch.input_ids.cpu(), batch.attention_mask.cpu().bool(), batch.completion_mask.cpu()
    if (completion & ~attention).any():
        raise ValueError("the completion mask marks padding positions")
    sequences, prompt_lengths, keeps = [], [], []
    for row in range(ids.shape[0]):
        tokens, marks = ids[row][attention[row]], completion[row][attention[row]]
        where = torch.nonzero(marks).flatten()
        if len(where) == 0:
            continue
        first, last = int(where[0]), int(where[-1])
        if first == 0:
            raise ValueError(f"row {row}: its first token is a completion token, which has no prefix to score it")
        sequences.append(tokens[: last + 1].tolist())
        prompt_lengths.append(first)
        span = marks[first : last + 1]
        keeps.append(None if bool(span.all()) else span.clone())
    return sequences, prompt_lengths, keeps
