"""The teacher model behind the server, and the dynamic batcher that feeds it.

Requests become `ScoreJob`s in a queue. One worker thread (the only one that touches the model) takes the first
job, keeps collecting jobs for up to `batch_window_ms` or until `max_batch_tokens`, sorts the collected sequences
by length, packs them into right-padded forwards of at most `max_batch_tokens` padded tokens, applies the LM head
to the rows each job asked for only, and resolves each job's future with its own rows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from distillkit.lm_head import check_head_matches_model
from distillkit.losses.chunked_head import auto_chunk_size
from distillkit.models import (
    context_length,
    decoder_and_head,
    freeze,
    load_causal_lm,
    load_tokenizer,
)
from distillkit.serve.protocol import tokenizer_hash

log = logging.getLogger("distillkit.serve")


@dataclass
class ScoreJob:
    """Score positions `starts[i]..len-1` of each sequence (each predicted from its prefix).

    `next_row` adds one row per sequence predicted from the whole sequence; its "actual token" is its argmax (the
    greedy continuation). `want_rank` also returns each actual token's 1-based rank in the distribution.
    """

    sequences: list[np.ndarray]
    starts: list[int]
    k: int
    temperature: float
    vocab_size: int
    next_row: bool = False
    want_rank: bool = False
    future: Future = field(default_factory=Future)

    def __post_init__(self) -> None:
        for seq, start in zip(self.sequences, self.starts, strict=True):
            assert 1 <= start <= len(seq) or (start == len(seq) == 0 and not self.next_row), (start, len(seq))

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def rows(self, i: int) -> int:
        return len(self.sequences[i]) - self.starts[i] + int(self.next_row)


@dataclass
class JobResult:
    topk_logprobs: np.ndarray  # [N, k] float32
    topk_ids: np.ndarray  # [N, k] int32
    token_logprobs: np.ndarray  # [N] float32
    token_ids: np.ndarray  # [N] int64, the actual (or, for next rows, the greedy) token of each row
    ranks: np.ndarray | None  # [N] int64
    rows_per_sequence: list[int]


class TeacherEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, name: str, device: torch.device,
                 max_batch_tokens: int = 16384, batch_window_ms: float = 5.0):
        self.model, self.tokenizer, self.name, self.device = model, tokenizer, name, device
        self.parts = decoder_and_head(model)
        self.vocab_size = int(self.parts.head.weight.shape[0])
        self.context_length = context_length(model.config) or 10**9
        self.tokenizer_hash = tokenizer_hash(tokenizer.get_vocab())
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        if not 0 <= self.pad_id < self.vocab_size:
            self.pad_id = 0
        self.max_batch_tokens = int(max_batch_tokens)
        self.batch_window = float(batch_window_ms) / 1000.0
        self.queue: queue.Queue[ScoreJob | None] = queue.Queue()
        self.stats_lock = threading.Lock()
        self.stats = {"requests": 0, "batches": 0, "forwards": 0, "sequences": 0, "tokens": 0, "padded_tokens": 0,
                      "rows": 0, "errors": 0}
        self.worker = threading.Thread(target=self._loop, name="distillkit-teacher-worker", daemon=True)
        self.worker.start()

    @classmethod
    def load(cls, name: str, dtype: str, device: torch.device, trust_remote_code: bool = False,
             **kwargs) -> TeacherEngine:
        tokenizer = load_tokenizer(name, trust_remote_code)
        model = freeze(load_causal_lm(name, dtype, device, trust_remote_code))
        check_head_matches_model(model, decoder_and_head(model).hidden_states, f"The teacher {name}")
        return cls(model, tokenizer, name, device, **kwargs)

    # ---- the API side (any thread) ----

    def submit(self, job: ScoreJob) -> Future:
        self.queue.put(job)
        return job.future

    def snapshot(self) -> dict:
        with self.stats_lock:
            return dict(self.stats)

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join(timeout=10)

    # ---- the worker thread ----

    def _collect(self, first: ScoreJob) -> tuple[list[ScoreJob], ScoreJob | None, bool]:
        jobs, tokens, deadline = [first], first.tokens, time.monotonic() + self.batch_window
        while tokens < self.max_batch_tokens:
            wait = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, None, True
            if tokens + job.tokens > self.max_batch_tokens:
                return jobs, job, False  # it opens the next batch
            jobs.append(job)
            tokens += job.tokens
        return jobs, None, False

    def _loop(self) -> None:
        carry: ScoreJob | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else self.queue.get()
            if first is None:
                break
            jobs, carry, stop = self._collect(first)
            try:
                self._run(jobs)
            except BaseException as err:  # the worker must survive anything one batch does
                log.exception("teacher batch failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                with self.stats_lock:
                    self.stats["errors"] += 1

    @torch.inference_mode()
    def _run(self, jobs: list[ScoreJob]) -> None:
        # every (job, sequence) that needs at least one row, longest first, packed under the token budget
        items = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.sequences)) if job.rows(i) > 0]
        items.sort(key=lambda ji: -len(jobs[ji[0]].sequences[ji[1]]))
        hidden: dict[tuple[int, int], torch.Tensor] = {}
        forwards = padded = 0
        start = 0
        while start < len(items):
            width = len(jobs[items[start][0]].sequences[items[start][1]])
            end = start + 1
            while end < len(items) and (end - start + 1) * width <= self.max_batch_tokens:
                end += 1
            group = items[start:end]
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (j, i) in enumerate(group):
                seq = jobs[j].sequences[i]
                ids[row, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
                mask[row, : len(seq)] = 1
            out = self.parts.hidden_states(ids.to(self.device), mask.to(self.device))
            for row, (j, i) in enumerate(group):
                job, n = jobs[j], len(jobs[j].sequences[i])
                stop = n if job.next_row else n - 1
                hidden[(j, i)] = out[row, job.starts[i] - 1 : stop]
            forwards += 1
            padded += len(group) * width
            start = end
        for j, job in enumerate(jobs):
            try:
                result = self._project(job, [hidden.get((j, i)) for i in range(len(job.sequences))])
            except BaseException as err:
                log.exception("teacher projection failed")
                job.future.set_exception(err)
                continue
            job.future.set_result(result)
        with self.stats_lock:
            s = self.stats
            s["requests"] += len(jobs)
            s["batches"] += 1
            s["forwards"] += forwards
            s["sequences"] += sum(len(job.sequences) for job in jobs)
            s["tokens"] += sum(job.tokens for job in jobs)
            s["padded_tokens"] += padded
            s["rows"] += sum(job.rows(i) for job in jobs for i in range(len(job.sequences)))

    def _project(self, job: ScoreJob, rows: list[torch.Tensor | None]) -> JobResult:
        counts = [job.rows(i) for i in range(len(job.sequences))]
        targets = []
        for i, seq in enumerate(job.sequences):
            targets.extend(int(t) for t in seq[job.starts[i] :])
            if job.next_row:
                targets.append(-1)
        n, k = len(targets), job.k
        empty = JobResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64), np.zeros(0, np.int64) if job.want_rank else None, counts)
        if n == 0:
            return empty
        h = torch.cat([r for r in rows if r is not None])
        assert h.shape[0] == n, (h.shape, n)
        head = self.parts.lm_head(job.vocab_size)
        target = torch.tensor(targets, dtype=torch.long, device=h.device)
        chunk = auto_chunk_size(head.vocab_size)
        lp, ids, tok_lp, tok_ids, ranks = [], [], [], [], []
        for s in range(0, n, chunk):
            logp = torch.log_softmax(head.logits(h[s : s + chunk]) / job.temperature, dim=-1)
            values, top = logp.topk(k, dim=-1)
            t = target[s : s + chunk]
            t = torch.where(t < 0, top[:, 0], t)
            tl = logp.gather(-1, t[:, None]).squeeze(-1)
            lp.append(values.float())
            ids.append(top)
            tok_lp.append(tl.float())
            tok_ids.append(t)
            if job.want_rank:
                ranks.append((logp > tl[:, None]).sum(-1) + 1)
        return JobResult(
            torch.cat(lp).cpu().numpy(), torch.cat(ids).cpu().numpy().astype(np.int32),
            torch.cat(tok_lp).cpu().numpy(), torch.cat(tok_ids).cpu().numpy(),
            torch.cat(ranks).cpu().numpy() if job.want_rank else None, counts,
        )
