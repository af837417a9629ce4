"""The on-disk format of a teacher cache: chunks of scored sequences, each a small binary file.

A chunk holds S sequences and their T completion tokens:

    b"DKC1" | uint32 H | JSON header {sequences, tokens, k, encoding, id_bytes} padded to 4 bytes
    | zlib( byte planes of: keys uint8[S,16] | rows int32[S] | topk_ids uint{16,32}[T,k]
                            | topk_logprobs (lossless: float32 bits, delta-coded along k; float16: float16)[T,k]
                            | token_rank int8[T] | off_topk_logprobs float32[M] )

- `keys` name each sequence by its tokens (`sequence_key`), so a training row finds its scores whatever the order.
- The actual token's log-prob is stored only when the token is outside the top-k (M of the T tokens); otherwise
  `token_rank` says where in the top-k it is. Its id is the completion token itself, known from the row.
- Lossless: the top-k log-probs sorted descending are kept as float32 bit patterns, each the difference from its
  left neighbour (small integers), then every array is split into byte planes before zlib: the high bytes of ids and
  deltas are mostly zero and compress away. Decoding gives back the scorer's float32 values bit for bit.
- `float16`: the top-k log-probs as float16 (lossy; docs/teacher-cache.md gives the measured error).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"DKC1"
ENCODINGS = ("lossless", "float16")


def sequence_key(prompt_ids: list[int], completion_ids: list[int]) -> bytes:
    """16 bytes naming a scored sequence by its prompt and completion tokens."""
    tokens = np.asarray([len(prompt_ids), *prompt_ids, *completion_ids], dtype="<i8")
    return hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()


@dataclass
class Chunk:
    """S scored sequences: per sequence its key and completion length; per token the top-k and the actual token."""

    keys: np.ndarray  # uint8 [S, 16]
    rows: np.ndarray  # int32 [S] completion tokens per sequence
    topk_logprobs: np.ndarray  # float32 [T, k], descending along k
    topk_ids: np.ndarray  # int32 [T, k]
    token_logprobs: np.ndarray  # float32 [T]
    targets: np.ndarray  # int32 [T] the completion tokens (not stored: the rows give them back)


def _planes(array: np.ndarray) -> bytes:
    """The array's bytes regrouped by position in each element: all first bytes, then all second bytes, ..."""
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1, array.dtype.itemsize)
    return raw.T.tobytes()


def _from_planes(data: bytes, dtype: str, count: int) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    planes = np.frombuffer(data, dtype=np.uint8, count=count * width).reshape(width, count)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(count)


def encode_chunk(chunk: Chunk, encoding: str = "lossless", vocab_size: int = 2**31) -> bytes:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: one of {ENCODINGS}")
    num_tokens, k = chunk.topk_logprobs.shape
    id_dtype = "<u2" if vocab_size <= 2**16 else "<u4"
    lp = np.ascontiguousarray(chunk.topk_logprobs, dtype="<f4")
    if encoding == "lossless":
        bits = lp.view("<i4").astype("<i8")
        stored = np.concatenate([bits[:, :1], np.diff(bits, axis=1)], axis=1).astype("<i4")  # exact: |diff| < 2**31
    else:
        stored = lp.astype("<f2")
    match = chunk.topk_ids == chunk.targets[:, None]
    where = match.argmax(1)
    same = lp[np.arange(num_tokens), where].view("<i4") == np.asarray(chunk.token_logprobs, "<f4").view("<i4")
    in_topk = match.any(1) & same & (where <= 127)  # the stored top-k value is the actual token's, bit for bit
    rank = np.where(in_topk, where, -1).astype("i1")
    off = np.ascontiguousarray(chunk.token_logprobs[rank < 0], dtype="<f4")
    arrays = [chunk.keys.astype(np.uint8), chunk.rows.astype("<i4"), chunk.topk_ids.astype(id_dtype),
              stored, rank, off]
    payload = zlib.compress(b"".join(_planes(a.reshape(-1)) for a in arrays), 6)
    header = {"sequences": int(len(chunk.rows)), "tokens": int(num_tokens), "k": int(k), "encoding": encoding,
              "id_dtype": id_dtype, "off_topk": int(len(off))}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    return MAGIC + struct.pack("<I", len(text)) + text + payload


def decode_chunk(body: bytes, targets: np.ndarray | None = None) -> tuple[dict, Chunk]:
    """The chunk's header and arrays. `targets` (the completion tokens, in order) rebuild `token_logprobs` of the
    tokens inside the top-k; without them those come from the top-k by rank."""
    if body[:4] != MAGIC:
        raise ValueError("not a teacher-cache chunk (bad magic); was it written by `distillkit cache-teacher`?")
    (size,) = struct.unpack_from("<I", body, 4)
    header = json.loads(body[8 : 8 + size])
    data = zlib.decompress(body[8 + size :])
    s, t, k, off_count = header["sequences"], header["tokens"], header["k"], header["off_topk"]
    lp_dtype = "<i4" if header["encoding"] == "lossless" else "<f2"
    layout = [("keys", "u1", s * 16), ("rows", "<i4", s), ("ids", header["id_dtype"], t * k),
              ("lp", lp_dtype, t * k), ("rank", "i1", t), ("off", "<f4", off_count)]
    parts, offset = {}, 0
    for name, dtype, count in layout:
        width = np.dtype(dtype).itemsize
        parts[name] = _from_planes(data[offset : offset + count * width], dtype, count)
        offset += count * width
    stored = parts["lp"].reshape(t, k)
    if header["encoding"] == "lossless":
        topk = np.cumsum(stored.astype("<i8"), axis=1).astype("<i4").view("<f4")
    else:
        topk = stored.astype("<f4")
    ids = parts["ids"].reshape(t, k).astype("<i4")
    rank = parts["rank"].astype(np.int64)
    token_lp = np.empty(t, dtype="<f4")
    inside = rank >= 0
    token_lp[inside] = topk[np.nonzero(inside)[0], rank[inside]]
    token_lp[~inside] = parts["off"]
    chunk = Chunk(parts["keys"].reshape(s, 16), parts["rows"], topk, ids, token_lp,
                  targets if targets is not None else ids[np.arange(t), np.maximum(rank, 0)])
    return header, chunk
