"""TRL's teacher protocol up to TRL 1.9.2: `POST /get_sequence_logprobs/`, served by `trl vllm-serve`.

The format, read from TRL v1.9.0 (trl/scripts/vllm_serve.py: `SequenceLogprobsRequest`, `SequenceLogprobsResponse`,
`_format_logprob_response`; trl/generation/vllm_client.py: `VLLMClient.get_sequence_logprobs`,
`_decode_binary_logprobs`):

request   {"sequences": [[ids]], "prompt_lengths": [p], "top_logprobs": 100, "temperature": 1.0,
           "response_format": "json" | "binary"}
json      {"logprobs": [seq][position][entry], "logprob_token_ids": [seq][position][entry], the binary keys: null}
          per completion position, vLLM's prompt_logprobs sorted by rank: the top-k, then the actual token when it
          is not among them (k or k + 1 entries)
binary    {"logprobs_b64", "token_ids_b64", "actual_logprobs_b64", "actual_token_ids_b64": base64 of C-order
           float32 / int32 arrays of shape [B, L, k] (top-k) and [B, L, 1] (actual token), L = the longest completion,
           padded with -inf and id 0; "shape": [B, L, k], "completion_lengths": [len - p]}

TRL's server passed `temperature` to vLLM, whose prompt log-probs ignore it; this server applies it
(log_softmax(logits / T)), like /v1/score.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import numpy as np

from distillkit.serve.checks import Limits, rule_error, schema_error

if TYPE_CHECKING:
    from distillkit.serve.engine import JobResult

PATH = "/get_sequence_logprobs/"
FORMATS = ("json", "binary")
BINARY_KEYS = ("logprobs_b64", "token_ids_b64", "actual_logprobs_b64", "actual_token_ids_b64")
DEFAULT_TOP_LOGPROBS = 100  # TRL's default


def default_top_logprobs(limits: Limits) -> int:
    """TRL's default of 100, cut to what this server gives, so a request that leaves it out is answered."""
    return min(DEFAULT_TOP_LOGPROBS, limits.max_k)


def parse_request(body, limits: Limits) -> tuple[list[list[int]], list[int], int, float, str]:
    """(sequences, prompt_lengths, top_logprobs, temperature, response_format); 400 for schema breaks, 422 for
    rules."""
    if not isinstance(body, dict):
        raise schema_error("the JSON body must be an object with sequences and prompt_lengths")
    for key in ("sequences", "prompt_lengths"):
        if key not in body:
            raise schema_error(f"the JSON body lacks {key!r}")
    sequences = limits.token_lists(body["sequences"], "sequences")
    prompt_lengths = limits.int_list(body["prompt_lengths"], "prompt_lengths", 0, limits.context_length)
    k = limits.int_in(body.get("top_logprobs", default_top_logprobs(limits)), "top_logprobs", 0, limits.max_k,
                      "this server's --max-k")
    temperature = limits.temperature(body.get("temperature", 1.0))
    response_format = body.get("response_format", "json")
    if response_format not in FORMATS:
        raise schema_error(f"response_format={response_format!r} must be one of {list(FORMATS)}")
    if len(prompt_lengths) != len(sequences):
        raise rule_error(f"sequences has {len(sequences)} entries but prompt_lengths has {len(prompt_lengths)}: "
                         "one each")
    for i, (seq, p) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        if p > len(seq):
            raise rule_error(f"Sequence {i} has prompt_length={p} which is out of range [0, {len(seq)}].")
        if p == 0 and seq:
            raise rule_error(f"Sequence {i} has prompt_length=0: its first token has no prefix to be scored from "
                             "(vLLM gave that position no log-probs); send prompt_lengths >= 1")
    return sequences, prompt_lengths, min(k, limits.vocab_size), temperature, response_format


def format_response(result: JobResult, sequences: list[list[int]], k: int, response_format: str) -> dict:
    """TRL's answer from the engine's rows (`result` scored with `want_rank` off, k columns)."""
    counts = [int(n) for n in result.rows_per_sequence]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if response_format == "binary":
        b, width = len(counts), max(counts, default=0)
        top_lp = np.full((b, width, k), -np.inf, dtype=np.float32)
        top_ids = np.zeros((b, width, k), dtype=np.int32)
        actual_lp = np.full((b, width, 1), -np.inf, dtype=np.float32)
        actual_ids = np.zeros((b, width, 1), dtype=np.int32)
        for i, n in enumerate(counts):
            rows = slice(int(offsets[i]), int(offsets[i + 1]))
            top_lp[i, :n] = result.topk_logprobs[rows]
            top_ids[i, :n] = result.topk_ids[rows]
            actual_lp[i, :n, 0] = result.token_logprobs[rows]
            actual_ids[i, :n, 0] = result.token_ids[rows]
        return {
            "logprobs_b64": b64(top_lp), "token_ids_b64": b64(top_ids), "actual_logprobs_b64": b64(actual_lp),
            "actual_token_ids_b64": b64(actual_ids), "shape": [b, width, k], "completion_lengths": counts,
        }
    logprobs, token_ids = [], []
    for i, n in enumerate(counts):
        seq_lp, seq_ids = [], []
        for row in range(int(offsets[i]), int(offsets[i]) + n):
            ids = result.topk_ids[row].tolist()
            lps = result.topk_logprobs[row].tolist()
            actual = int(result.token_ids[row])
            if actual not in ids:  # vLLM adds the actual token, ranked after the top-k
                ids.append(actual)
                lps.append(float(result.token_logprobs[row]))
            seq_lp.append(lps)
            seq_ids.append(ids)
        logprobs.append(seq_lp)
        token_ids.append(seq_ids)
    return {"logprobs": logprobs, "logprob_token_ids": token_ids, **dict.fromkeys(BINARY_KEYS),
            "shape": None, "completion_lengths": None}


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def request_body(sequences: list[list[int]], prompt_lengths: list[int], k: int, temperature: float) -> dict:
    """What TRL 1.9's `VLLMClient.get_sequence_logprobs(use_binary=True)` posts."""
    return {"sequences": sequences, "prompt_lengths": prompt_lengths, "top_logprobs": k, "temperature": temperature,
            "response_format": "binary"}


class TrlAnswerError(ValueError):
    """A binary answer that does not match what was asked; the client turns it into TeacherProtocolError."""


def decode_binary(body, sequences: list[list[int]], prompt_lengths: list[int], k: int) -> dict:
    """Rows of a binary answer as the client's fields, after checking every shape, every completion length and
    that the actual-token ids are the sequences' own tokens (so no row can be shifted)."""
    if not isinstance(body, dict):
        raise TrlAnswerError(f"the answer is not a JSON object ({type(body).__name__})")
    missing = [key for key in (*BINARY_KEYS, "shape", "completion_lengths") if body.get(key) is None]
    if missing:
        raise TrlAnswerError(f"the answer lacks {missing} (was response_format=binary ignored?)")
    rows = [len(s) - p for s, p in zip(sequences, prompt_lengths, strict=True)]
    width = max(rows, default=0)
    if body["completion_lengths"] != rows:
        raise TrlAnswerError(f"completion_lengths={body['completion_lengths']} but {rows} were asked for")
    if list(body["shape"]) != [len(rows), width, k]:
        raise TrlAnswerError(f"shape={body['shape']} but [{len(rows)}, {width}, {k}] was asked for")
    arrays = {}
    for key, dtype, last in (("logprobs_b64", np.float32, k), ("token_ids_b64", np.int32, k),
                             ("actual_logprobs_b64", np.float32, 1), ("actual_token_ids_b64", np.int32, 1)):
        raw = base64.b64decode(body[key], validate=True)
        expected = len(rows) * width * last * 4
        if len(raw) != expected:
            raise TrlAnswerError(f"{key} holds {len(raw)} bytes but [{len(rows)}, {width}, {last}] needs {expected}")
        arrays[key] = np.frombuffer(raw, dtype=dtype).reshape(len(rows), width, last)
    top_lp, top_ids, token_lp, token_ids = [], [], [], []
    for i, (seq, p, n) in enumerate(zip(sequences, prompt_lengths, rows, strict=True)):
        ids = arrays["actual_token_ids_b64"][i, :n, 0]
        if not np.array_equal(ids, np.asarray(seq[p:], dtype=np.int32)):
            raise TrlAnswerError(f"sequence {i}: the answer's actual token ids are not the sequence's completion")
        top_lp.append(arrays["logprobs_b64"][i, :n])
        top_ids.append(arrays["token_ids_b64"][i, :n])
        token_lp.append(arrays["actual_logprobs_b64"][i, :n, 0])
        token_ids.append(ids)
    lp = np.concatenate(token_lp) if token_lp else np.zeros(0, np.float32)
    if np.isneginf(lp).any():
        raise TrlAnswerError("an actual token's log-prob is -inf: the server did not return it")
    return {"topk_logprobs": np.concatenate(top_lp) if top_lp else np.zeros((0, k), np.float32),
            "topk_ids": np.concatenate(top_ids) if top_ids else np.zeros((0, k), np.int32),
            "token_logprobs": lp}
