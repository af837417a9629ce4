"""The client of a teacher server: `distillkit serve-teacher` (binary or JSON), a stock vLLM server (openai), or
TRL's `trl vllm-serve` up to TRL 1.9.2 (trl, `/get_sequence_logprobs/`).

`TeacherClient.score` splits a request into chunks under a token budget, sends them concurrently, and merges the
answers strictly: every chunk must carry every field with exactly the rows it was asked for, or it raises. The
whole call has a deadline: a server that accepts and never answers costs at most `deadline` seconds.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import torch

from distillkit.errors import ServerFailure
from distillkit.serve import trl
from distillkit.serve.protocol import (
    BINARY_TYPE,
    FIELDS,
    JSON_TYPE,
    ProtocolError,
    ScoreRequest,
    decode_response,
    encode_request,
    request_to_json,
    response_from_json,
)

PROTOCOLS = ("binary", "json", "openai", "trl")
SERVER_HINT = (
    "Start it with `distillkit serve-teacher --model MODEL --port PORT` (protocol binary/json/trl) or "
    "`vllm serve MODEL --max-logprobs K` (protocol openai), check the URL (teacher.url) and the network, or raise "
    "teacher.deadline (and the timeout/retries) if the server is only slow."
)


class TeacherError(ServerFailure):
    """Anything that went wrong talking to a teacher server."""


class TeacherUnavailableError(TeacherError):
    """The server did not answer (connection refused, timeouts, 5xx) after every retry."""


class TeacherRequestError(TeacherError):
    """The server refused the request (4xx); it is not retried. The message is the server's."""

    def __init__(self, url: str, status: int, message: str):
        super().__init__(f"the teacher server at {url} refused the request (HTTP {status}): {message}")
        self.url, self.status, self.server_message = url, status, message


class TeacherProtocolError(TeacherError):
    """An answer that lacks a field or has the wrong number of rows or columns: never merged, never shifted."""


class TeacherDeadlineError(TeacherUnavailableError):
    """The server did not answer one `score` call within the client's deadline (a frozen or overloaded server)."""


def server_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason or ""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)
    return str(body)[:500]


def plan_chunks(lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of sequences with at most `max_tokens` tokens each (a longer one alone)."""
    chunks, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > max_tokens:
            chunks.append((start, i))
            start, total = i, 0
        total += n
    if start < len(lengths):
        chunks.append((start, len(lengths)))
    return chunks


def merge_chunks(chunks: list[dict], expected_rows: list[int], k: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate chunk answers in order, after checking each has every field with exactly its rows and k columns.

    Returns (topk_logprobs [N, k] float32, topk_ids [N, k] int64, token_logprobs [N] float32).
    """
    if len(chunks) != len(expected_rows):
        raise TeacherProtocolError(f"{len(chunks)} chunk answers for {len(expected_rows)} chunks sent")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
    for i, (chunk, rows) in enumerate(zip(chunks, expected_rows, strict=True)):
        where = f"chunk {i + 1} of {len(chunks)}"
        if not isinstance(chunk, dict):
            raise TeacherProtocolError(f"{where} is not a field mapping ({type(chunk).__name__})")
        for name in FIELDS:
            if name not in chunk or chunk[name] is None:
                raise TeacherProtocolError(f"{where} lacks the field {name!r}; refusing to merge a partial answer")
            arr = np.asarray(chunk[name])
            shape = (rows, k) if name != "token_logprobs" else (rows,)
            if arr.shape != shape:
                raise TeacherProtocolError(
                    f"{where}: {name} has shape {tuple(arr.shape)} but {shape} was asked for ({rows} completion "
                    f"rows, k={k}); refusing to shift rows"
                )
            if name != "topk_ids" and np.isnan(arr).any():
                raise TeacherProtocolError(f"{where}: {name} holds NaN")
            parts[name].append(arr)
    cat = {name: np.concatenate(v) if v else np.zeros((0, k) if name != "token_logprobs" else (0,))
           for name, v in parts.items()}
    return (torch.from_numpy(np.ascontiguousarray(cat["topk_logprobs"], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(cat["topk_ids"], dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(cat["token_logprobs"], dtype=np.float32)))


def parse_prompt_logprobs(choices: list, sequences: list[list[int]], prompt_lengths: list[int], k: int,
                          temperature: float = 1.0) -> dict:
    """Top-k arrays from vLLM-style `prompt_logprobs` (dicts keyed by token id as a string).

    Rows are positions prompt_length..len-1 of each sequence. At temperature != 1 the log-probs are divided by the
    temperature and renormalized over the returned entries (the top-k and the actual token): an approximation that
    drops the tail's mass (see docs/serve-teacher.md).
    """
    if not isinstance(choices, list) or len(choices) != len(sequences):
        raise TeacherProtocolError(f"{len(choices) if isinstance(choices, list) else choices!r} choices for "
                                   f"{len(sequences)} prompts")
    ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    if [c.get("index") if isinstance(c, dict) else None for c in ordered] != list(range(len(sequences))):
        raise TeacherProtocolError("the choices' indices are not 0..n-1, one per prompt")
    top_lp, top_ids, token_lp = [], [], []
    for i, (choice, seq, p) in enumerate(zip(ordered, sequences, prompt_lengths, strict=True)):
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) != len(seq):
            raise TeacherProtocolError(
                f"prompt {i}: prompt_logprobs has {len(entries) if isinstance(entries, list) else entries!r} entries "
                f"for {len(seq)} tokens (does the server support prompt_logprobs?)"
            )
        for t in range(p, len(seq)):
            entry = entries[t]
            if not isinstance(entry, dict):
                raise TeacherProtocolError(f"prompt {i}, position {t}: prompt_logprobs entry is {entry!r}")
            items = []
            for key, value in entry.items():
                lp = value.get("logprob") if isinstance(value, dict) else value
                rank = value.get("rank") if isinstance(value, dict) else None
                items.append((int(key), float(lp), rank if isinstance(rank, int) else math.inf))
            actual = [lp for tid, lp, _ in items if tid == seq[t]]
            if not actual:
                raise TeacherProtocolError(f"prompt {i}, position {t}: the actual token {seq[t]} is missing")
            if len(items) < k:
                raise TeacherProtocolError(
                    f"prompt {i}, position {t}: {len(items)} log-probs for k={k}; start vLLM with --max-logprobs >= "
                    f"{k} (and ask for prompt_logprobs={k})"
                )
            items.sort(key=lambda x: (-x[1], x[2]))
            lps = np.array([x[1] for x in items], dtype=np.float64)
            tok = actual[0]
            if temperature != 1.0:
                scaled = lps / temperature
                norm = np.logaddexp.reduce(scaled)
                lps, tok = scaled - norm, tok / temperature - norm
            top_lp.append(lps[:k])
            top_ids.append([x[0] for x in items[:k]])
            token_lp.append(tok)
    n = len(token_lp)
    return {"topk_logprobs": np.array(top_lp, dtype=np.float32).reshape(n, k),
            "topk_ids": np.array(top_ids, dtype=np.int64).reshape(n, k),
            "token_logprobs": np.array(token_lp, dtype=np.float32)}


def rescale(top_lp: np.ndarray, top_ids: np.ndarray, token_lp: np.ndarray, token_ids: np.ndarray,
            temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Temperature-1 top-k log-probs taken to `temperature`, renormalized over the returned entries only (the top-k,
    plus the actual token when it is not among them): the approximation of `approximate_temperature`."""
    top = top_lp.astype(np.float64) / temperature
    token = token_lp.astype(np.float64) / temperature
    outside = ~(top_ids == token_ids[:, None]).any(-1)
    norm = np.logaddexp.reduce(top, axis=-1) if top.shape[-1] else np.full(len(token), -np.inf)
    norm = np.where(outside, np.logaddexp(norm, token), norm)
    return top - norm[:, None], token - norm


class TeacherClient:
    """Scores completion positions on a teacher server; thread-safe.

    protocol: "binary" (distillkit serve-teacher, compact arrays), "json" (the same fields as JSON), "openai"
    (a stock `vllm serve`, or this server's /v1/completions, via `prompt_logprobs`), or "trl" (TRL <= 1.9.2's
    `/get_sequence_logprobs/`, base64 arrays). `deadline`: seconds one `score` call may take, retries included.
    `exact_temperature`: whether the server applies the temperature itself (False for vLLM and TRL's own server,
    whose prompt log-probs are at temperature 1).
    """

    def __init__(self, url: str, api_key: str | None = None, protocol: str = "binary", model: str | None = None,
                 max_tokens_per_request: int = 32768, max_concurrency: int = 4, connect_timeout: float = 5.0,
                 read_timeout: float = 300.0, retries: int = 3, backoff: float = 0.5,
                 approximate_temperature: bool = False, deadline: float = 120.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r} is not one of {PROTOCOLS}")
        if max_tokens_per_request < 1 or max_concurrency < 1 or retries < 0:
            raise ValueError("max_tokens_per_request and max_concurrency must be >= 1, retries >= 0")
        if not deadline > 0:
            raise ValueError(f"deadline={deadline} must be > 0 (seconds)")
        self.url = url.rstrip("/").removesuffix("/v1")  # an OpenAI base_url names the same server
        self.api_key, self.protocol, self.model = api_key, protocol, model
        self.max_tokens_per_request, self.max_concurrency = int(max_tokens_per_request), int(max_concurrency)
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.retries, self.backoff = int(retries), float(backoff)
        self.approximate_temperature = approximate_temperature
        self.deadline = float(deadline)
        # whether the server applies the temperature; "trl": known once /info is read (only serve-teacher has one)
        self.exact_temperature: bool | None = {"binary": True, "json": True, "openai": False}.get(protocol)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ---- plumbing

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self.api_key:
                session.headers["Authorization"] = f"Bearer {self.api_key}"
        return session

    def request(self, method: str, path: str, until: float | None = None, **kwargs) -> requests.Response:
        """One HTTP call with the retry policy: connection errors, timeouts and 5xx are retried with exponential
        backoff (backoff, 2*backoff, ...); a 4xx raises TeacherRequestError at once; when the retries are spent,
        TeacherUnavailableError names the URL and the fix. `until` (time.monotonic()): no attempt, wait or read
        goes past it (TeacherDeadlineError)."""
        url = self.url + path
        started, last, out_of_time = time.monotonic(), "no attempt", False
        for attempt in range(self.retries + 1):
            if attempt:
                pause = self.backoff * 2 ** (attempt - 1)
                if until is not None and time.monotonic() + pause >= until:
                    out_of_time = True
                    break
                time.sleep(pause)
            timeout = self.timeout
            if until is not None:
                left = until - time.monotonic()
                if left <= 0.01:
                    out_of_time = True
                    break
                timeout = (min(self.timeout[0], left), min(self.timeout[1], left))
            try:
                resp = self._session().request(method, url, timeout=timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {server_message(resp)}"
                continue
            if resp.status_code >= 400:
                raise TeacherRequestError(url, resp.status_code, server_message(resp))
            return resp
        if not out_of_time and (until is None or time.monotonic() < until - 0.01):  # the retries ran out first
            raise TeacherUnavailableError(
                f"The teacher server at {url} is unavailable after {self.retries + 1} attempts over "
                f"{time.monotonic() - started:.1f}s (last: {last}). {SERVER_HINT}"
            )
        raise TeacherDeadlineError(
            f"The teacher server at {url} did not answer within the client's deadline of {self.deadline:g}s "
            f"(teacher.deadline; last: {last}). {SERVER_HINT}"
        )

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.max_concurrency == 1:
            return [fn(x) for x in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="distillkit-teacher")
            pool = self._pool
        return list(pool.map(fn, items))  # answers in the order asked, whatever order they arrive in

    # ---- endpoints

    def health(self) -> bool:
        self.request("GET", "/health")
        return True

    def info(self) -> dict | None:
        """The server's /info, or None when it has none (a vLLM server)."""
        try:
            return self.request("GET", "/info").json()
        except TeacherRequestError as err:
            if err.status == 404:
                return None
            raise

    def served_model(self) -> str:
        if self.model is None:
            data = self.request("GET", "/v1/models").json().get("data") or []
            if not data:
                raise TeacherProtocolError(f"{self.url}/v1/models lists no model")
            self.model = data[0]["id"]
        return self.model

    # ---- scoring

    def score(self, sequences: list[list[int]], prompt_lengths: list[int], k: int, temperature: float,
              vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k log-probs [N, k], their ids [N, k] and the actual tokens' log-probs [N] of every completion
        position (prompt_length..len-1 of each sequence, in order), at `temperature`, normalized over the first
        `vocab_size` rows of the teacher's LM head (all rows if None; the openai protocol always uses all)."""
        if len(sequences) != len(prompt_lengths):
            raise ValueError(f"{len(sequences)} sequences but {len(prompt_lengths)} prompt lengths")
        for i, (seq, p) in enumerate(zip(sequences, prompt_lengths, strict=True)):
            if not (1 <= p <= len(seq) or p == len(seq) == 0):
                raise ValueError(f"prompt_lengths[{i}]={p} must lie in [1, {len(seq)}] (sequence {i})")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature={temperature} must be > 0")
        if self.exact_temperature is None:
            self.exact_temperature = self.info() is not None
        if not self.exact_temperature and temperature != 1.0 and not self.approximate_temperature:
            raise ValueError(
                f"protocol={self.protocol} against this server gives prompt log-probs at temperature 1 only (vLLM "
                f"ignores `temperature` for prompt_logprobs) and only the top-k, so temperature={temperature} cannot "
                "be applied exactly. Use `distillkit serve-teacher` (which applies it), a temperature of 1, or "
                "approximate_temperature=true (scale and renormalize over the top-k; see docs/serve-teacher.md)."
            )
        # sequences with no completion position cost a forward and give nothing: they are not sent
        keep = [i for i, (s, p) in enumerate(zip(sequences, prompt_lengths, strict=True)) if len(s) > p]
        seqs = [list(map(int, sequences[i])) for i in keep]
        prompts = [int(prompt_lengths[i]) for i in keep]
        plan = plan_chunks([len(s) for s in seqs], self.max_tokens_per_request)
        expected = [sum(len(seqs[i]) - prompts[i] for i in range(a, b)) for a, b in plan]

        until = time.monotonic() + self.deadline

        def send(span: tuple[int, int]) -> dict:
            a, b = span
            return self._score_chunk(seqs[a:b], prompts[a:b], k, temperature, vocab_size, until)

        return merge_chunks(self._map(send, plan), expected, k)

    def _score_chunk(self, seqs, prompts, k, temperature, vocab_size, until) -> dict:
        if self.protocol == "openai":
            return self._score_openai(seqs, prompts, k, temperature, until)
        if self.protocol == "trl":
            return self._score_trl(seqs, prompts, k, temperature, until)
        req = ScoreRequest.from_lists(seqs, prompts, k, temperature, vocab_size)
        if self.protocol == "binary":
            resp = self.request("POST", "/v1/score", until, data=encode_request(req),
                                headers={"Content-Type": BINARY_TYPE, "Accept": BINARY_TYPE})
            try:
                out = decode_response(resp.content)
            except ProtocolError as err:
                raise TeacherProtocolError(f"{self.url}/v1/score: {err}") from err
        else:
            resp = self.request("POST", "/v1/score", until, json=request_to_json(req),
                                headers={"Accept": JSON_TYPE})
            try:
                out = response_from_json(resp.json())
            except (ValueError, TypeError) as err:
                raise TeacherProtocolError(f"{self.url}/v1/score: malformed JSON answer: {err}") from err
        rows = [len(s) - p for s, p in zip(seqs, prompts, strict=True)]
        if out.get("rows_per_sequence") != rows:
            raise TeacherProtocolError(
                f"{self.url}/v1/score answered rows_per_sequence={out.get('rows_per_sequence')} for {rows}"
            )
        return out

    def _score_openai(self, seqs, prompts, k, temperature, until) -> dict:
        body = {"model": self.served_model(), "prompt": seqs, "max_tokens": 1, "echo": True,
                "prompt_logprobs": k, "temperature": 0.0}
        choices = self.request("POST", "/v1/completions", until, json=body).json().get("choices")
        return parse_prompt_logprobs(choices, seqs, prompts, k, temperature)

    def _score_trl(self, seqs, prompts, k, temperature, until) -> dict:
        """TRL 1.9's request, base64 answer; a server that does not apply the temperature is asked at 1 and the
        answer rescaled (approximate_temperature)."""
        asked = temperature if self.exact_temperature else 1.0
        resp = self.request("POST", trl.PATH, until, json=trl.request_body(seqs, prompts, k, asked))
        try:
            out = trl.decode_binary(resp.json(), seqs, prompts, k)
        except (ValueError, TypeError) as err:  # TrlAnswerError, malformed JSON or base64
            raise TeacherProtocolError(f"{self.url}{trl.PATH}: {err}; refusing to merge") from err
        if asked != temperature:
            actual = np.concatenate([np.asarray(s[p:], dtype=np.int64) for s, p in zip(seqs, prompts, strict=True)])
            out["topk_logprobs"], out["token_logprobs"] = rescale(out["topk_logprobs"], out["topk_ids"],
                                                                  out["token_logprobs"], actual, temperature)
        return out
