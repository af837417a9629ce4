"""The wire format of `/v1/score`, shared by the server and the client (see docs/serve-teacher.md).

A binary message is a 4-byte magic, a little-endian uint32 header size, a UTF-8 JSON header padded with spaces
to a multiple of 4 bytes, then raw little-endian arrays, back to back, with no padding between rows:

    request  b"DKQ1" | H | header {num_sequences S, num_tokens T, k, temperature, vocab_size?}
             | int32 lengths[S] | int32 prompt_lengths[S] | int32 token_ids[T]
    response b"DKR1" | H | header {rows N, k, temperature, vocab_size, rows_per_sequence[S], fields}
             | float32 topk_logprobs[N*k] | int32 topk_ids[N*k] | float32 token_logprobs[N]

The JSON form carries the same fields: `{"sequences": [[...]], "prompt_lengths", "k", "temperature",
"vocab_size"}` in, `{"rows", "k", "temperature", "vocab_size", "rows_per_sequence", "topk_logprobs" [[...]],
"topk_ids" [[...]], "token_logprobs" [...]}` out.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

REQUEST_MAGIC = b"DKQ1"
RESPONSE_MAGIC = b"DKR1"
BINARY_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"
FIELDS = ("topk_logprobs", "topk_ids", "token_logprobs")
FIELD_DTYPES = {"topk_logprobs": "<f4", "topk_ids": "<i4", "token_logprobs": "<f4"}


class ProtocolError(ValueError):
    """A message that does not follow the format; the text names what is wrong."""


def tokenizer_hash(vocab: dict[str, int]) -> str:
    """sha256 of the sorted (token, id) pairs as compact JSON: equal iff two tokenizers map tokens to ids alike."""
    items = sorted((str(token), int(index)) for token, index in vocab.items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def _frame(magic: bytes, header: dict, arrays: list[np.ndarray]) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    return b"".join([magic, struct.pack("<I", len(text)), text, *(a.tobytes() for a in arrays)])


def _unframe(body: bytes, magic: bytes, what: str) -> tuple[dict, int]:
    if len(body) < 8 or body[:4] != magic:
        raise ProtocolError(f"the {what} does not start with the magic {magic!r}; see docs/serve-teacher.md")
    (size,) = struct.unpack_from("<I", body, 4)
    if 8 + size > len(body):
        raise ProtocolError(f"the {what} header claims {size} bytes but the body has only {len(body) - 8} after it")
    try:
        header = json.loads(body[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the {what} header is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise ProtocolError(f"the {what} header must be a JSON object")
    return header, 8 + size


def _header_int(header: dict, key: str, what: str, optional: bool = False) -> int | None:
    value = header.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"the {what} header needs an integer {key!r} (got {value!r})")
    return value


@dataclass
class ScoreRequest:
    """Sequences as one flat int array plus lengths (no padding), and what to score."""

    tokens: np.ndarray  # [T] int64
    lengths: np.ndarray  # [S] int64
    prompt_lengths: np.ndarray  # [S] int64
    k: int
    temperature: float
    vocab_size: int | None = None  # normalize over the first vocab_size rows of the LM head; None = all

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def sequences(self) -> list[np.ndarray]:
        o = self.offsets
        return [self.tokens[o[i] : o[i + 1]] for i in range(len(self.lengths))]

    @classmethod
    def from_lists(cls, sequences, prompt_lengths, k, temperature, vocab_size=None) -> ScoreRequest:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        flat = [t for s in sequences for t in s]
        return cls(np.array(flat, dtype=np.int64), lengths, np.asarray(prompt_lengths, dtype=np.int64).reshape(-1),
                   k, temperature, vocab_size)


def encode_request(req: ScoreRequest) -> bytes:
    header = {"num_sequences": int(len(req.lengths)), "num_tokens": int(len(req.tokens)), "k": int(req.k),
              "temperature": float(req.temperature)}
    if req.vocab_size is not None:
        header["vocab_size"] = int(req.vocab_size)
    arrays = [np.asarray(a).astype("<i4") for a in (req.lengths, req.prompt_lengths, req.tokens)]
    return _frame(REQUEST_MAGIC, header, arrays)


def decode_request(body: bytes) -> ScoreRequest:
    header, offset = _unframe(body, REQUEST_MAGIC, "request")
    s = _header_int(header, "num_sequences", "request")
    t = _header_int(header, "num_tokens", "request")
    k = _header_int(header, "k", "request")
    vocab_size = _header_int(header, "vocab_size", "request", optional=True)
    temperature = header.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ProtocolError(f"the request header needs a number 'temperature' (got {temperature!r})")
    try:
        temperature = float(temperature)
    except OverflowError as err:
        raise ProtocolError(f"the request header's temperature {temperature!r} is not a finite number") from err
    if s < 0 or t < 0:
        raise ProtocolError(f"num_sequences={s} and num_tokens={t} must be >= 0")
    expected = offset + 4 * (2 * s + t)
    if len(body) != expected:
        raise ProtocolError(
            f"the request body has {len(body)} bytes but its header (num_sequences={s}, num_tokens={t}) "
            f"announces {expected}: lengths[{s}], prompt_lengths[{s}] and token_ids[{t}] as int32"
        )
    arrays = np.frombuffer(body, dtype="<i4", offset=offset).astype(np.int64)
    lengths, prompt_lengths, tokens = arrays[:s], arrays[s : 2 * s], arrays[2 * s :]
    if (lengths < 0).any():
        raise ProtocolError(f"lengths[{int(np.argmax(lengths < 0))}] is negative")
    if int(lengths.sum()) != t:
        raise ProtocolError(f"the lengths sum to {int(lengths.sum())} tokens but num_tokens={t}")
    return ScoreRequest(tokens, lengths, prompt_lengths, k, temperature, vocab_size)


def request_to_json(req: ScoreRequest) -> dict:
    body = {"sequences": [s.tolist() for s in req.sequences()], "prompt_lengths": req.prompt_lengths.tolist(),
            "k": int(req.k), "temperature": float(req.temperature)}
    if req.vocab_size is not None:
        body["vocab_size"] = int(req.vocab_size)
    return body


@dataclass
class ScoreResult:
    """N rows, one per completion position, sequences in order."""

    topk_logprobs: np.ndarray  # [N, k] float32
    topk_ids: np.ndarray  # [N, k] int32
    token_logprobs: np.ndarray  # [N] float32
    rows_per_sequence: list[int]
    k: int
    temperature: float
    vocab_size: int

    def header(self) -> dict:
        n = int(self.token_logprobs.shape[0])
        return {
            "rows": n, "k": int(self.k), "temperature": float(self.temperature), "vocab_size": int(self.vocab_size),
            "rows_per_sequence": [int(r) for r in self.rows_per_sequence],
            "fields": [["topk_logprobs", "float32", [n, self.k]], ["topk_ids", "int32", [n, self.k]],
                       ["token_logprobs", "float32", [n]]],
        }


def encode_response(res: ScoreResult) -> bytes:
    return _frame(RESPONSE_MAGIC, res.header(), [
        np.ascontiguousarray(res.topk_logprobs, dtype="<f4"), np.ascontiguousarray(res.topk_ids, dtype="<i4"),
        np.ascontiguousarray(res.token_logprobs, dtype="<f4"),
    ])


def response_to_json(res: ScoreResult) -> dict:
    header = res.header()
    del header["fields"]
    return {**header, "topk_logprobs": res.topk_logprobs.tolist(), "topk_ids": res.topk_ids.tolist(),
            "token_logprobs": res.token_logprobs.tolist()}


def decode_response(body: bytes) -> dict:
    """The header's keys plus the arrays that are present (missing fields stay missing, for the strict merge)."""
    header, offset = _unframe(body, RESPONSE_MAGIC, "response")
    out = dict(header)
    for entry in header.get("fields", []):
        name, dtype, shape = entry
        if name not in FIELD_DTYPES:
            raise ProtocolError(f"the response carries an unknown field {name!r}")
        count = int(np.prod(shape)) if shape else 1
        size = 4 * count
        if offset + size > len(body):
            raise ProtocolError(f"the response is truncated in field {name!r} ({len(body)} bytes)")
        out[name] = np.frombuffer(body, dtype=FIELD_DTYPES[name], count=count, offset=offset).reshape(shape)
        offset += size
    if offset != len(body):
        raise ProtocolError(f"the response has {len(body) - offset} bytes after its last field")
    return out


def response_from_json(body: dict) -> dict:
    out = dict(body)
    for name in FIELDS:
        if name in body and body[name] is not None:
            out[name] = np.asarray(body[name], dtype=FIELD_DTYPES[name].replace("<", ""))
    if "topk_logprobs" in out and out["topk_logprobs"].size == 0:  # [] loses the k columns
        k = int(body.get("k", 0))
        out["topk_logprobs"] = out["topk_logprobs"].reshape(0, k)
        if "topk_ids" in out:
            out["topk_ids"] = out["topk_ids"].reshape(0, k)
    return out
