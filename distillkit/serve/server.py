"""`distillkit serve-teacher`: serve a causal LM's log-probs over HTTP for `teacher=remote`.

Endpoints (docs/serve-teacher.md has the formats):
  GET  /health          {"status": "ok"}, never behind the API key
  GET  /info            model, vocabulary sizes and hash, max_k, context length, batching counters
  GET  /metrics         the batching counters alone (forwards run vs requests served)
  GET  /v1/models       the served model, OpenAI style
  POST /v1/score        the compact path: top-k log-probs, their ids and the actual tokens' log-probs of the
                        completion positions, binary (little-endian arrays) or JSON
  POST /v1/completions  an OpenAI/vLLM-compatible subset: `prompt_logprobs` as vLLM returns them
  POST /get_sequence_logprobs/  TRL's teacher endpoint (`trl vllm-serve` up to TRL 1.9.2), JSON or base64 arrays
  GET  /openapi.json    the schema of all of these, with this server's limits (docs/serve-teacher.md)
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from distillkit.serve import trl
from distillkit.serve.checks import (
    MAX_K,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    ApiError,
    Limits,
    check_score_request,
    integer,
    rule_error,
    schema_error,
    score_request_from_json,
)
from distillkit.serve.openapi import openapi_document
from distillkit.serve.protocol import (
    BINARY_TYPE,
    JSON_TYPE,
    ProtocolError,
    ScoreResult,
    decode_request,
    encode_response,
    response_to_json,
)

log = logging.getLogger("distillkit.serve")
API_KEY_ENV = "DISTILLKIT_API_KEY"
OPEN_PATHS = {"/health", "/openapi.json"}

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
    p.add_argument("--max-sequences", type=int, default=16384,
                   help="sequences (prompts) per request; more get 400")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take from arrival to answer, else 503 (the rest of its work is dropped)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client may take to send a request body, else 408 and the connection is closed")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = p.parse_args(argv)
    for name in ("max_k", "max_batch_tokens", "max_body_bytes", "max_sequences"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_window_ms < 0:
        p.error("--batch-window-ms must be >= 0")
    if not (args.request_timeout > 0 and args.body_timeout > 0):
        p.error("--request-timeout and --body-timeout must be > 0")
    return args


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"distillkit serve-teacher: error: --device {name} but this machine has no CUDA GPU")
    return torch.device(name)


# ---------------------------------------------------------------- the app


def create_app(engine, max_k: int = 100, api_key: str | None = None, max_body_bytes: int = 256 * 2**20,
               max_sequences: int = 16384, request_timeout: float = 600.0, body_timeout: float = 30.0):
    from contextlib import asynccontextmanager

    from distillkit.serve.engine import DeadlineExceeded, NonFiniteLogprobs, ScoreJob

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="distillkit teacher", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {api_key}".encode() if api_key else None
    limits = Limits(max_k=max_k, max_sequences=max_sequences, context_length=engine.context_length,
                    vocab_size=engine.vocab_size)
    schema = openapi_document(limits, secured=api_key is not None)

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
        response = error_response(err.status, err.message, err.kind)
        if err.status in (408, 413):  # the rest of the body may never come: do not keep the connection
            response.headers["Connection"] = "close"
        return response

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise ApiError(413, f"the request body has {length} bytes, more than this server's --max-body-bytes="
                                f"{max_body_bytes}; send fewer tokens per request", "request_too_large")
        chunks, size = [], 0

        async def receive_all() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:
                    raise ApiError(413, f"the request body exceeds this server's --max-body-bytes={max_body_bytes}; "
                                        "send fewer tokens per request", "request_too_large")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(receive_all(), body_timeout)
        except asyncio.TimeoutError as err:
            raise ApiError(408, f"the request body did not arrive within this server's --body-timeout="
                                f"{body_timeout:g} s ({size} bytes came)", "request_timeout") from err
        return b"".join(chunks)

    async def read_json(request: Request):
        body = await read_body(request)
        try:  # in a thread: a large body must not stall the other clients' requests
            return await asyncio.to_thread(json.loads, body)
        except RecursionError as err:
            raise schema_error("the body nests JSON arrays or objects too deeply") from err
        except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, and integers of over 4,300 digits
            raise schema_error(f"the body is not valid JSON: {err}") from err

    async def run(job: ScoreJob):
        job.deadline = time.monotonic() + request_timeout
        try:
            return await asyncio.wrap_future(engine.submit(job))
        except DeadlineExceeded as err:
            raise ApiError(503, f"{err}: this server answers within --request-timeout={request_timeout:g} s; send "
                                "fewer tokens per request, or retry when the server is less busy",
                           "timeout_error") from err
        except NonFiniteLogprobs as err:
            raise rule_error(str(err)) from err
        except Exception as err:
            raise ApiError(500, f"the teacher failed on this batch: {type(err).__name__}: {err}",
                           "internal_error") from err

    async def answer_json(obj) -> Response:
        text = await asyncio.to_thread(json.dumps, obj, allow_nan=True, separators=(",", ":"))
        return Response(text, media_type=JSON_TYPE)

    def info() -> dict:
        return {
            "model": engine.name, "vocab_size": engine.vocab_size, "tokenizer_vocab_size": len(engine.tokenizer),
            "tokenizer_hash": engine.tokenizer_hash, "max_k": max_k, "context_length": engine.context_length,
            "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."), "device": str(engine.device),
            "max_batch_tokens": engine.max_batch_tokens, "batch_window_ms": engine.batch_window * 1000,
            "max_body_bytes": max_body_bytes, "max_sequences": max_sequences, "request_timeout": request_timeout,
            "body_timeout": body_timeout, "temperature_range": [MIN_TEMPERATURE, MAX_TEMPERATURE],
            "protocols": ["binary", "json", "openai", "trl"], "stats": engine.snapshot(),
        }

    @app.get("/health")
    async def health():
        return json_response({"status": "ok"})

    @app.get("/openapi.json")
    async def get_openapi():
        return json_response(schema)

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
        content_type = request.headers.get("content-type", "")
        is_json = content_type.startswith(JSON_TYPE)
        try:
            req = (score_request_from_json(await read_json(request), limits) if is_json
                   else decode_request(await read_body(request)))
        except ProtocolError as err:
            raise schema_error(str(err)) from err
        vocab = check_score_request(req, limits)
        sequences = req.sequences()
        starts = [int(p) for p in req.prompt_lengths]
        out = await run(ScoreJob(sequences, starts, req.k, req.temperature, vocab))
        result = ScoreResult(out.topk_logprobs, out.topk_ids, out.token_logprobs, out.rows_per_sequence, req.k,
                             req.temperature, vocab)
        accept = request.headers.get("accept", "")
        if JSON_TYPE in accept or (is_json and BINARY_TYPE not in accept):
            return await answer_json(response_to_json(result))
        return Response(await asyncio.to_thread(encode_response, result), media_type=BINARY_TYPE)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise schema_error("the body must be a JSON object")
        return await answer_json(await openai_completions(body, engine, limits, run))

    @app.post(trl.PATH)
    async def sequence_logprobs(request: Request):
        sequences, prompt_lengths, k, temperature, response_format = trl.parse_request(await read_json(request),
                                                                                         limits)
        out = await run(ScoreJob([np.asarray(seq, dtype=np.int64) for seq in sequences], prompt_lengths, max(k, 1),
                                 temperature, engine.vocab_size))
        if k == 0:  # top_logprobs=0: the actual tokens only
            out.topk_logprobs, out.topk_ids = out.topk_logprobs[:, :0], out.topk_ids[:, :0]
        return await answer_json(await asyncio.to_thread(trl.format_response, out, sequences, k, response_format))

    return app


# ---------------------------------------------------------------- /v1/completions


def _optional(body: dict, key: str, check, default=None):
    """body[key] checked, or `default` when it is missing or null (as OpenAI and vLLM read null)."""
    value = body.get(key)
    return default if value is None else check(value, key)


def _prompts(prompt, tokenizer, limits: Limits) -> list[list[int]]:
    """The schema's four prompt forms: a string, strings, token ids, lists of token ids; none may be empty."""
    if isinstance(prompt, str) and prompt:
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(integer(t) is not None for t in prompt):
            return [limits.token_list(prompt, "prompt", min_length=1)]
        if len(prompt) <= limits.max_sequences:
            if all(isinstance(p, str) and p for p in prompt):
                return [tokenizer.encode(p) for p in prompt]
            if all(isinstance(p, list) for p in prompt):
                return limits.token_lists(prompt, "prompt", min_length=1)
    raise schema_error(f"prompt must be a non-empty string, a list of 1 to {limits.max_sequences} non-empty strings, "
                       f"a list of 1 to {limits.context_length} token ids or a list of 1 to {limits.max_sequences} "
                       "such lists")


def scoring_temperature(body: dict, limits: Limits) -> float:
    """The temperature of the returned log-probs: `distillkit_temperature` if given, else `temperature` when it is
    > 0 (TRL sends its scoring temperature there), else 1 (0 means greedy sampling, and vLLM's log-probs are then
    the model's own). vLLM itself ignores `temperature` for prompt log-probs: see docs/serve-teacher.md."""
    own = body.get("distillkit_temperature")
    if own is not None:
        return limits.temperature(own, "distillkit_temperature")
    value = body.get("temperature")
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
        return 1.0
    return limits.temperature(value)


async def openai_completions(body: dict, engine, limits: Limits, run) -> dict:
    """vLLM's answer shape: choices[i].prompt_logprobs = [None, {"id": {logprob, rank, decoded_token}}, ...]."""
    from distillkit.serve.engine import ScoreJob

    model = body.get("model")
    if model is not None and model != engine.name:
        raise ApiError(404, f"The model `{short_text(model)}` does not exist; this server serves `{engine.name}`",
                       "not_found_error")
    if "prompt" not in body:
        raise schema_error("the body lacks 'prompt'")
    max_tokens = _optional(body, "max_tokens", lambda v, key: limits.int_in(v, key, 0, limits.context_length), 16)
    logprobs = _optional(body, "logprobs", lambda v, key: limits.int_in(v, key, 0, limits.max_k, MAX_K))
    prompt_logprobs = _optional(body, "prompt_logprobs", lambda v, key: limits.int_in(v, key, 0, limits.max_k, MAX_K))
    _optional(body, "n", lambda v, key: limits.int_in(v, key, 1, 1))
    _optional(body, "best_of", lambda v, key: limits.int_in(v, key, 1, 1))
    if body.get("stream") not in (None, False) or not isinstance(body.get("echo", False), (bool, type(None))):
        raise schema_error("stream must be false (this server answers n=1, best_of=1, stream=false only) and echo "
                           "a boolean")
    temperature = scoring_temperature(body, limits)
    echo = bool(body.get("echo"))
    prompts = _prompts(body["prompt"], engine.tokenizer, limits)
    for i, ids in enumerate(prompts):
        if not ids:
            raise rule_error(f"prompt {i} is empty after tokenization")
        bad = [t for t in ids if not 0 <= t < engine.vocab_size]
        if bad:
            raise schema_error(f"prompt {i}: token id {bad[0]} lies outside the vocabulary [0, {engine.vocab_size})")
        if len(ids) + max_tokens > engine.context_length:
            raise rule_error(f"This model's maximum context length is {engine.context_length} tokens. However, "
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


def short_text(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    app = create_app(engine, max_k=args.max_k, api_key=api_key, max_body_bytes=args.max_body_bytes,
                     max_sequences=args.max_sequences, request_timeout=args.request_timeout,
                     body_timeout=args.body_timeout)
    print(f"distillkit serve-teacher: {args.model} on {device} ({engine.vocab_size} vocabulary rows, context "
          f"{engine.context_length}) at http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
