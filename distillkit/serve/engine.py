"""The teacher model behind the server, and the scheduler that feeds it.

Requests become `ScoreJob`s in a queue. One worker thread (the only one that touches the model) keeps the jobs it
has accepted in a list and runs them in batches of at most `max_batch_tokens` tokens. A batch takes whole sequences
from the jobs that have been served the fewest tokens so far, so a large request is split into many batches and a
small one that arrives meanwhile runs in the next batch instead of waiting behind it. Each batch sorts its
sequences by length, packs them into right-padded forwards, applies the LM head to the rows each job asked for
only, and keeps each job's rows until the job is complete. A job past its deadline, or whose client went away, is
dropped at the next batch boundary.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
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


class DeadlineExceeded(TimeoutError):
    """A job that was not finished by its deadline; its client gets a 503 naming the limit."""


class NonFiniteLogprobs(ArithmeticError):
    """The model gave NaN log-probs (e.g. overflowing logits at a tiny temperature): never sent as an answer."""


@dataclass
class ScoreJob:
    """Score positions `starts[i]..len-1` of each sequence (each predicted from its prefix).

    `next_row` adds one row per sequence predicted from the whole sequence; its "actual token" is its argmax (the
    greedy continuation). `want_rank` also returns each actual token's 1-based rank in the distribution.
    `deadline` (time.monotonic()) drops the job if it has not finished by then.
    """

    sequences: list[np.ndarray]
    starts: list[int]
    k: int
    temperature: float
    vocab_size: int
    next_row: bool = False
    want_rank: bool = False
    deadline: float | None = None
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


@dataclass
class Progress:
    """A job the worker has accepted: how far it got and the rows computed so far, piece by piece."""

    job: ScoreJob
    order: int  # arrival, to break ties
    cursor: int = 0  # the next sequence to run
    served: int = 0  # tokens run so far
    pieces: list[JobResult] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.cursor >= len(self.job.sequences)


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
                      "rows": 0, "errors": 0, "expired": 0, "cancelled": 0, "batch_seconds": 0.0}
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

    def _count(self, **increments) -> None:
        with self.stats_lock:
            for key, value in increments.items():
                self.stats[key] += value

    def _accept(self, active: list[Progress], arrivals: int) -> tuple[int, bool]:
        """Move queued jobs into `active`: block for the first when idle, then wait `batch_window` for more (so
        simultaneous requests share a forward). Returns the arrival counter and whether to stop."""
        waited = bool(active)
        deadline = time.monotonic() + self.batch_window
        while True:
            try:
                if not active:
                    job = self.queue.get()
                    deadline = time.monotonic() + self.batch_window
                elif waited:
                    job = self.queue.get_nowait()
                else:
                    wait = deadline - time.monotonic()
                    job = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except queue.Empty:
                return arrivals, False
            if job is None:
                return arrivals, True
            active.append(Progress(job, arrivals))
            arrivals += 1
            if sum(len(p.job.sequences[i]) for p in active for i in range(p.cursor, len(p.job.sequences))
                   ) >= self.max_batch_tokens:
                waited = True  # a full batch is waiting: take what else is queued, but do not linger

    def _drop_stale(self, active: list[Progress]) -> None:
        now = time.monotonic()
        for p in list(active):
            if p.job.future.cancelled():  # the client went away
                active.remove(p)
                self._count(cancelled=1)
            elif p.job.deadline is not None and now > p.job.deadline:
                active.remove(p)
                settle(p.job.future, error=DeadlineExceeded(
                    f"the request was not finished within its deadline ({p.served} of {p.job.tokens} tokens done)"))
                self._count(expired=1)

    def _loop(self) -> None:
        active: list[Progress] = []
        arrivals, stop = 0, False
        while not stop or active:
            if not stop:
                arrivals, stop = self._accept(active, arrivals)
            self._drop_stale(active)
            if not active:
                continue
            batch = self._plan(active)
            started = time.monotonic()
            try:
                self._run(batch)
            except BaseException as err:  # the worker must survive anything one batch does
                log.exception("teacher batch failed")
                for p, _, _ in batch:
                    if p in active:
                        active.remove(p)
                    settle(p.job.future, error=err)
                self._count(errors=1)
            self._count(batch_seconds=time.monotonic() - started)
            for p in [p for p in active if p.done]:
                active.remove(p)
                self._finish(p)

    def _plan(self, active: list[Progress]) -> list[tuple[Progress, int, int]]:
        """Sequences [a, b) of each job for the next batch: least-served jobs first, whole sequences, at most
        `max_batch_tokens` tokens (a longer sequence goes alone)."""
        batch, tokens = [], 0
        for p in sorted(active, key=lambda p: (p.served, p.order)):
            a = b = p.cursor
            while b < len(p.job.sequences):
                n = len(p.job.sequences[b])
                if tokens + n > self.max_batch_tokens and (tokens or b > a):
                    break
                tokens += n
                b += 1
            if b > a:
                batch.append((p, a, b))
            if tokens >= self.max_batch_tokens:
                break
        return batch

    def _finish(self, p: Progress) -> None:
        job = p.job
        if job.future.done():  # failed, or cancelled by its client meanwhile
            return
        counts = [job.rows(i) for i in range(len(job.sequences))]
        pieces = p.pieces
        result = JobResult(
            np.concatenate([x.topk_logprobs for x in pieces]) if pieces else np.zeros((0, job.k), np.float32),
            np.concatenate([x.topk_ids for x in pieces]) if pieces else np.zeros((0, job.k), np.int32),
            np.concatenate([x.token_logprobs for x in pieces]) if pieces else np.zeros(0, np.float32),
            np.concatenate([x.token_ids for x in pieces]) if pieces else np.zeros(0, np.int64),
            (np.concatenate([x.ranks for x in pieces]) if pieces else np.zeros(0, np.int64)) if job.want_rank
            else None,
            counts,
        )
        settle(job.future, result=result)
        self._count(requests=1, sequences=len(job.sequences), tokens=job.tokens, rows=sum(counts))

    @torch.inference_mode()
    def _run(self, batch: list[tuple[Progress, int, int]]) -> None:
        # every (piece, sequence) that needs at least one row, longest first, packed under the token budget
        items = [(j, i) for j, (p, a, b) in enumerate(batch) for i in range(a, b) if p.job.rows(i) > 0]
        items.sort(key=lambda ji: -len(batch[ji[0]][0].job.sequences[ji[1]]))
        hidden: dict[tuple[int, int], torch.Tensor] = {}
        forwards = padded = 0
        start = 0
        while start < len(items):
            width = len(batch[items[start][0]][0].job.sequences[items[start][1]])
            end = start + 1
            while end < len(items) and (end - start + 1) * width <= self.max_batch_tokens:
                end += 1
            group = items[start:end]
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (j, i) in enumerate(group):
                seq = batch[j][0].job.sequences[i]
                ids[row, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
                mask[row, : len(seq)] = 1
            out = self.parts.hidden_states(ids.to(self.device), mask.to(self.device))
            for row, (j, i) in enumerate(group):
                job = batch[j][0].job
                n = len(job.sequences[i])
                stop = n if job.next_row else n - 1
                hidden[(j, i)] = out[row, job.starts[i] - 1 : stop]
            forwards += 1
            padded += len(group) * width
            start = end
        for j, (p, a, b) in enumerate(batch):
            try:
                p.pieces.append(self._project(p.job, range(a, b), [hidden.get((j, i)) for i in range(a, b)]))
            except Exception as err:  # this job's answer only (e.g. NaN at its temperature); the others go on
                log.warning("teacher projection failed: %s", err)
                settle(p.job.future, error=err)
                b = len(p.job.sequences)
            p.cursor = b
            p.served += sum(len(p.job.sequences[i]) for i in range(a, b))
        self._count(batches=1, forwards=forwards, padded_tokens=padded)

    def _project(self, job: ScoreJob, which: range, rows: list[torch.Tensor | None]) -> JobResult:
        counts = [job.rows(i) for i in which]
        targets = []
        for i in which:
            targets.extend(int(t) for t in job.sequences[i][job.starts[i] :])
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
            if torch.isnan(values).any() or torch.isnan(tl).any():
                raise NonFiniteLogprobs(
                    f"the teacher's log-probs at temperature {job.temperature} hold NaN (its logits divided by the "
                    "temperature overflow); use a larger temperature")
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


def settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Resolve a job's future unless it is already resolved or cancelled (its client went away)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
