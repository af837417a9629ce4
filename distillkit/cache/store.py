"""A teacher cache folder: `manifest.json` (what was scored, by which teacher, how) and its chunk files.

Chunks are written one at a time, each under a temporary name then renamed, and the manifest last: a folder without a
manifest is an unfinished recording (which `distillkit cache-teacher` resumes), never read as a cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillkit.cache.format import Chunk, decode_chunk

FORMAT = "distillkit-teacher-cache/1"
MANIFEST = "manifest.json"
SETTINGS = "recording.json"  # the settings of an unfinished recording: a resume must use the same


def chunk_name(index: int) -> str:
    return f"chunk_{index:05d}.dkc"


def write_atomically(path: Path, data: bytes) -> None:
    staged = path.with_name(path.name + ".tmp")
    staged.write_bytes(data)
    os.replace(staged, path)


@dataclass
class CachedScores:
    """Every sequence of a cache, decoded into host memory, found by its key."""

    manifest: dict
    where: dict[bytes, tuple[int, int]]  # key -> (first token row, completion tokens)
    topk_logprobs: np.ndarray  # float32 [T, k]
    topk_ids: np.ndarray  # int32 [T, k]
    token_logprobs: np.ndarray  # float32 [T]

    @property
    def k(self) -> int:
        return int(self.manifest["k"])


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        hint = (" It holds chunks but no manifest: the recording did not finish; run the same `distillkit "
                "cache-teacher` command again to complete it.") if any(Path(folder).glob("chunk_*.dkc")) else ""
        raise FileNotFoundError(f"{folder} is not a teacher cache (no {MANIFEST}).{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_cache(folder: Path) -> CachedScores:
    folder = Path(folder)
    manifest = read_manifest(folder)
    chunks: list[Chunk] = [decode_chunk((folder / c["file"]).read_bytes())[1] for c in manifest["chunks"]]
    where: dict[bytes, tuple[int, int]] = {}
    offset = 0
    for chunk in chunks:
        for key, rows in zip(chunk.keys, chunk.rows.tolist(), strict=True):
            where[key.tobytes()] = (offset, rows)
            offset += rows
    k = int(manifest["k"])
    empty = np.zeros((0, k))
    return CachedScores(
        manifest, where,
        np.concatenate([c.topk_logprobs for c in chunks]) if chunks else empty.astype(np.float32),
        np.concatenate([c.topk_ids for c in chunks]) if chunks else empty.astype(np.int32),
        np.concatenate([c.token_logprobs for c in chunks]) if chunks else np.zeros(0, np.float32),
    )
