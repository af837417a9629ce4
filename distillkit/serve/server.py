"""`distillkit serve-teacher`: serve a causal LM's log-probs over HTTP for `teacher=remote`.

Endpoints (docs/serve-teacher.md has the formats):
  GET  /health          {"status": "ok"}, never behind the API key
  GET  /info            model, vocabulary sizes and hash, max_k, context length, batching counters
  GET  /metrics         the batching counters alone (forwards run vs requests served)
  GET  /v1/models       the served model, OpenAI style
  POST /v1/score        the compact path: top-k log-probs, their ids and the actual tokens' log-probs of the
                        completion positions, binary (little-endian arrays) or JSON
  POST /v1/completions  an OpenAI/vLLM-compatible subset: `prompt_logprobs` as vLLM returns them
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import os
import sys
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from distillkit.serve.protocol import (
    BINARY_TYPE,
    JSON_TYPE,
    ProtocolError,
    ScoreRequest,
    ScoreResult,
    decode_request,
    encode_response,
    request_from_json,
    response_to_json,
)

log = logging.getLogger("distillkit.serve")
API_KEY_ENV = "DISTILLKIT_API_KEY"
OPEN_PATHS = {"/health"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def json_response(obj, status: int = 200):
    # allow_nan: a log-prob of -inf is a legal answer (vLLM writes it the same way)
    return Response(json.dumps(obj, allow_nan=True, separators=(",", ":")), status_code=status,
                    media_type=JSON_TYPE)


def error_response(status: int, message: str, kind: str = "invalid_request_error"):
    return json_response({"error": {"message": message, "type": kind, "code": status}}, status)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="distillkit serve-teacher",
        description="Serve a teacher model's log-probs over HTTP (for teacher=remote). See docs/serve-teacher.md.",
    )
    p.add_argument("--model", required=True, help="a local folder or a hub name of any HF causal LM")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="default loopback; 0.0.0.0 serves every interface")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-k", type=int, default=100, help="the largest k (top-k log-probs) a request may ask for")
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_ENV}, else no key)")
    p.add_argument("--max-batch-tokens", type=int, default=16384,
                   help="padded tokens of one dynamically batched forward (and of one collected batch)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long the worker waits for more requests to batch with the first one")
    p.add_argument("--max-body-bytes", type=int, default=256 * 2**20, help="larger request bodies get 413")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = p.parse_args(argv)
    for name in ("max_k", "max_batch_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_window_ms < 0:
        p.error("--batch-window-ms must be >= 0")
    return args


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"distillkit serve-teacher: error: --device {name} but this machine has no CUDA GPU")
    return torch.device(name)


# ---------------------------------------------------------------- validation


def check_score_request(req: ScoreRequest, engine, max_k: int) -> int:
    """Refuse anything the model cannot answer exactly as asked. Returns the vocabulary size to normalize over."""
    s = len(req.lengths)
    if len(req.prompt_lengths) != s:
        raise ApiError(400, f"lengths has {s} entries but prompt_lengths has {len(req.prompt_lengths)}: one each")
    if req.k < 1 or req.k > max_k:
        raise ApiError(400, f"k={req.k} must lie in [1, {max_k}] (this server's --max-k is {max_k})")
    vocab = engine.vocab_size if req.vocab_size is None else req.vocab_size
    if not 1 <= vocab <= engine.vocab_size:
        raise ApiError(400, f"vocab_size={req.vocab_size} must lie in [1, {engine.vocab_size}] (the LM head's rows)")
    if req.k > vocab:
        raise ApiError(400, f"k={req.k} exceeds the vocabulary of {vocab} tokens")
    if not (math.isfinite(req.temperature) and req.temperature > 0):
        raise ApiError(400, f"temperature={req.temperature} must be a finite number > 0")
    lengths, prompts = req.lengths, req.prompt_lengths
    if s:
        long = np.nonzero(lengths > engine.context_length)[0]
        if len(long):
            i = int(long[0])
            raise ApiError(400, f"sequence {i} has {int(lengths[i])} tokens, more than the model's context of "
                                f"{engine.context_length}")
        bad = np.nonzero((prompts < 0) | (prompts > lengths))[0]
        if len(bad):
            i = int(bad[0])
            raise ApiError(400, f"prompt_lengths[{i}]={int(prompts[i])} lies outside [0, {int(lengths[i])}] "
                                f"(sequence {i} has {int(lengths[i])} tokens)")
        zero = np.nonzero((prompts == 0) & (lengths > 0))[0]
        if len(zero):
            i = int(zero[0])
            raise ApiError(400, f"prompt_lengths[{i}]=0 but sequence {i} is not empty: its first token has no prefix "
                                "to be predicted from, so a prompt length must be >= 1 (0 only for an empty sequence)")
    if len(req.tokens):
        starts = np.repeat(req.offsets[:-1], lengths)
        position = np.arange(len(req.tokens)) - starts
        completion = position >= np.repeat(prompts, lengths)
        bad = (req.tokens < 0) | (req.tokens >= engine.vocab_size) | (completion & (req.tokens >= vocab))
        if bad.any():
            t = int(np.argmax(bad))
            i = int(np.searchsorted(req.offsets, t, side="right") - 1)
            limit = vocab if completion[t] else engine.vocab_size
            raise ApiError(400, f"sequence {i}, position {int(position[t])}: token id {int(req.tokens[t])} lies "
                                f"outside the vocabulary [0, {limit})")
    return vocab


# ---------------------------------------------------------------- the app


def create_app(engine, max_k: int = 100, api_key: str | None = None, max_body_bytes: int = 256 * 2**20):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="distillkit teacher", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if expected is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                why = "missing" if not given else "wrong"
                return error_response(401, f"{why} API key: send the header `Authorization: Bearer KEY` with the "
                                           "key the server was started with (--api-key or $DISTILLKIT_API_KEY)",
                                      "authentication_error")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return error_response(err.status, err.message, err.kind)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise ApiError(413, f"the request body has {length} bytes, more than this server's --max-body-bytes="
                                f"{max_body_bytes}; send fewer tokens per request", "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ApiError(413, f"the request body exceeds this server's --max-body-bytes={max_body_bytes}; "
                                    "send fewer tokens per request", "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request):
        try:
            return json.loads(await read_body(request))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(400, f"the body is not valid JSON: {err}") from err

    async def run(job):
        try:
            return await asyncio.wrap_future(engine.submit(job))
        except Exception as err:
            raise ApiError(500, f"the teacher failed on this batch: {type(err).__name__}: {err}",
                           "internal_error") from err

    def info() -> dict:
        return {
            "model": engine.name, "vocab_size": engine.vocab_size, "tokenizer_vocab_size": len(engine.tokenizer),
            "tokenizer_hash": engine.tokenizer_hash, "max_k": max_k, "context_length": engine.context_length,
            "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."), "device": str(engine.device),
            "max_batch_tokens": engine.max_batch_tokens, "batch_window_ms": engine.batch_window * 1000,
            "max_body_bytes": max_body_bytes, "protocols": ["binary", "json", "openai"], "stats": engine.snapshot(),
        }

    @app.get("/health")
    async def health():
        return json_response({"status": "ok"})

    @app.get("/info")
    async def get_info():
        return json_response(info())

    @app.get("/metrics")
    async def metrics():
        return json_response(engine.snapshot())

    @app.get("/v1/models")
    async def models():
        return json_response({"object": "list", "data": [{
            "id": engine.name, "object": "model", "created": int(time.time()), "owned_by": "distillkit",
            "max_model_len": engine.context_length,
        }]})

    @app.post("/v1/score")
    async def score(request: Request):
        from distillkit.serve.engine import ScoreJob

        content_type = request.headers.get("content-type", "")
        is_json = content_type.startswith(JSON_TYPE)
        try:
            req = request_from_json(await read_json(request)) if is_json else decode_request(await read_body(request))
        except ProtocolError as err:
            raise ApiError(400, str(err)) from err
        vocab = check_score_request(req, engine, max_k)
        sequences = req.sequences()
        starts = [int(p) for p in req.prompt_lengths]
        out = await run(ScoreJob(sequences, starts, req.k, req.temperature, vocab))
        result = ScoreResult(out.topk_logprobs, out.topk_ids, out.token_logprobs, out.rows_per_sequence, req.k,
                             req.temperature, vocab)
        accept = request.headers.get("accept", "")
        if JSON_TYPE in accept or (is_json and BINARY_TYPE not in accept):
            return json_response(response_to_json(result))
        return Response(encode_response(result), media_type=BINARY_TYPE)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return json_response(await openai_completions(body, engine, max_k, run))

    return app


# ---------------------------------------------------------------- /v1/completions


def _opt_int(body: dict, key: str, default, low: int, high: int | None):
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ApiError(400, f"{key}={value!r} must be an integer in [{low}, {high if high is not None else 'inf'}]")
    return value


def _prompts(prompt, tokenizer) -> list[list[int]]:
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [tokenizer.encode(p) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
               for p in prompt):
            return [list(p) for p in prompt]
    raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                        "token ids, and not empty")


async def openai_completions(body: dict, engine, max_k: int, run) -> dict:
    """vLLM's answer shape: choices[i].prompt_logprobs = [None, {"id": {logprob, rank, decoded_token}}, ...]."""
    from distillkit.serve.engine import ScoreJob

    model = body.get("model")
    if model is not None and model != engine.name:
        raise ApiError(404, f"The model `{model}` does not exist; this server serves `{engine.name}`",
                       "not_found_error")
    if "prompt" not in body:
        raise ApiError(400, "the body lacks 'prompt'")
    prompts = _prompts(body["prompt"], engine.tokenizer)
    max_tokens = _opt_int(body, "max_tokens", 16, 0, None)
    max_tokens = 16 if max_tokens is None else max_tokens  # OpenAI's default
    logprobs = _opt_int(body, "logprobs", None, 0, max_k)
    prompt_logprobs = _opt_int(body, "prompt_logprobs", None, 0, max_k)
    if _opt_int(body, "n", 1, 1, 1) != 1 or body.get("best_of") not in (None, 1) or body.get("stream"):
        raise ApiError(400, "this server answers n=1, best_of=1, stream=false only")
    temperature = body.get("distillkit_temperature", 1.0)  # vLLM ignores `temperature` for prompt_logprobs too
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ApiError(400, f"distillkit_temperature={temperature!r} must be a finite number > 0")
    echo = bool(body.get("echo", False))
    for i, ids in enumerate(prompts):
        if not ids:
            raise ApiError(400, f"prompt {i} is empty")
        bad = [t for t in ids if not 0 <= t < engine.vocab_size]
        if bad:
            raise ApiError(400, f"prompt {i}: token id {bad[0]} lies outside the vocabulary [0, {engine.vocab_size})")
        if len(ids) + max_tokens > engine.context_length:
            raise ApiError(400, f"This model's maximum context length is {engine.context_length} tokens. However, "
                                f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in prompt {i}, "
                                f"{max_tokens} in the completion).")
    vocab = engine.vocab_size
    k_prompt = min(prompt_logprobs or 0, vocab)
    k_top = min(logprobs or 0, vocab)
    k = max(k_prompt, k_top, 1)
    seqs = [np.asarray(p, dtype=np.int64) for p in prompts]
    first = await run(ScoreJob(seqs, [1] * len(seqs), k, float(temperature), vocab, next_row=max_tokens > 0,
                               want_rank=True))
    decode = _Decoder(engine.tokenizer)
    eos = engine.tokenizer.eos_token_id
    offsets = np.concatenate([[0], np.cumsum(first.rows_per_sequence)])
    prompt_rows = [range(int(offsets[i]), int(offsets[i + 1]) - int(max_tokens > 0)) for i in range(len(seqs))]
    # generated[i]: (token, logprob, top ids, top logprobs) per greedy step
    generated: list[list[tuple]] = [[] for _ in seqs]
    finished = [max_tokens == 0] * len(seqs)

    def take(res, row_of, live):
        for i, row in zip(live, row_of, strict=True):
            token = int(res.token_ids[row])
            generated[i].append((token, float(res.token_logprobs[row]), res.topk_ids[row], res.topk_logprobs[row]))
            if token == eos or len(generated[i]) >= max_tokens:
                finished[i] = True

    if max_tokens > 0:
        take(first, [int(offsets[i + 1]) - 1 for i in range(len(seqs))], list(range(len(seqs))))
    while not all(finished):  # greedy, one full forward per token (no KV cache): a scoring server, not a generator
        live = [i for i in range(len(seqs)) if not finished[i]]
        grown = [np.concatenate([seqs[i], np.array([g[0] for g in generated[i]], dtype=np.int64)]) for i in live]
        res = await run(ScoreJob(grown, [len(g) for g in grown], max(k_top, 1), float(temperature), vocab,
                                 next_row=True))
        take(res, list(range(len(live))), live)

    choices = []
    for i, ids in enumerate(prompts):
        rows = prompt_rows[i]
        choice = {"index": i, "text": "", "logprobs": None, "finish_reason": "length", "stop_reason": None}
        gen = generated[i]
        if gen and gen[-1][0] == eos:
            choice["finish_reason"] = "stop"
        gen_ids = [g[0] for g in gen]
        choice["text"] = (decode.text(ids) if echo else "") + decode.text(gen_ids, skip_special=True)
        if prompt_logprobs is not None:
            entries = [None]
            for row in rows:
                entry = {}
                for j in range(k_prompt):
                    tid = int(first.topk_ids[row, j])
                    entry[str(tid)] = {"logprob": float(first.topk_logprobs[row, j]), "rank": j + 1,
                                       "decoded_token": decode.token(tid)}
                actual = int(first.token_ids[row])
                if str(actual) not in entry:
                    entry[str(actual)] = {"logprob": float(first.token_logprobs[row]), "rank": int(first.ranks[row]),
                                          "decoded_token": decode.token(actual)}
                entries.append(entry)
            choice["prompt_logprobs"] = entries
        if logprobs is not None:
            tokens, token_lps, tops = [], [], []
            if echo:
                tokens += [decode.token(t) for t in ids]
                token_lps += [None] + [float(first.token_logprobs[row]) for row in rows]
                tops += [None] + [_top_by_text(first.topk_ids[row], first.topk_logprobs[row], k_top,
                                               int(first.token_ids[row]), float(first.token_logprobs[row]), decode)
                                  for row in rows]
            for token, lp, top_ids, top_lps in gen:
                tokens.append(decode.token(token))
                token_lps.append(lp)
                tops.append(_top_by_text(top_ids, top_lps, k_top, token, lp, decode))
            offsets_text, at = [], 0
            for t in tokens:
                offsets_text.append(at)
                at += len(t)
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
                                  "text_offset": offsets_text}
        choices.append(choice)
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(g) for g in generated)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": engine.name, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _top_by_text(ids, lps, k: int, actual: int, actual_lp: float, decode) -> dict:
    """OpenAI's `top_logprobs`: keyed by decoded text, so distinct tokens with the same text collide."""
    top = {decode.token(int(ids[j])): float(lps[j]) for j in range(k)}
    top.setdefault(decode.token(actual), actual_lp)
    return top


class _Decoder:
    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def token(self, tid: int) -> str:
        if tid not in self.cache:
            self.cache[tid] = self.tokenizer.decode([tid])
        return self.cache[tid]

    def text(self, ids, skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    import uvicorn
    from transformers.utils import logging as hf_logging

    from distillkit.errors import ConfigError
    from distillkit.serve.engine import TeacherEngine

    hf_logging.disable_progress_bar()
    device = resolve_device(args.device)
    try:
        engine = TeacherEngine.load(args.model, args.dtype, device, args.trust_remote_code,
                                    max_batch_tokens=args.max_batch_tokens, batch_window_ms=args.batch_window_ms)
    except (ConfigError, OSError, ValueError) as err:
        print(f"distillkit serve-teacher: error: cannot load {args.model!r}: {err}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who reaches this port can use the teacher "
                    "(set --api-key or $%s)", args.host, API_KEY_ENV)
    app = create_app(engine, max_k=args.max_k, api_key=api_key, max_body_bytes=args.max_body_bytes)
    print(f"distillkit serve-teacher: {args.model} on {device} ({engine.vocab_size} vocabulary rows, context "
          f"{engine.context_length}) at http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
