"""`distillkit cache-teacher OUT [options] [overrides...]`: score a data set with a teacher once and keep the top-k
and actual-token log-probs on disk, for `teacher=cache teacher.path=OUT`.

The overrides are the training run's own (`teacher=live teacher.model=...`, `data.*`, `method.temperature`,
`loss.k`), composed from the same conf/, so the cache holds exactly the sequences that run will ask about: the
training split's completions and the held-out ones (evaluation compares the student with the teacher on them).
With `--teacher-samples N` the teacher first samples N completions per training prompt; they are written to
OUT/teacher_samples.jsonl (train on them with data.train=OUT/teacher_samples.jsonl method.lmbda=0) and scored.
A killed recording resumes: run the same command again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from distillkit.batch import collate
from distillkit.cache.format import ENCODINGS, Chunk, encode_chunk, sequence_key
from distillkit.cache.store import FORMAT, MANIFEST, SETTINGS, chunk_name, write_atomically
from distillkit.data.loading import encode_completion, encode_prompt, load_split, require_columns, tokenize
from distillkit.errors import ConfigError
from distillkit.losses.base import TeacherRequest
from distillkit.models import load_model_config, load_tokenizer
from distillkit.serve.protocol import tokenizer_hash
from distillkit.teachers.members import member_identity
from distillkit.validation import choice, resolve_device

SCORING_TEACHERS = ("live", "remote")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distillkit cache-teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the cache folder to write (teacher=cache teacher.path=OUT)")
    parser.add_argument("overrides", nargs="*", help="the training run's config overrides (teacher=..., data.*=...)")
    parser.add_argument("--k", type=int, default=None, help="top-k to keep (default: loss.k with loss=topk, else 20)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="lossless",
                        help="lossless (float32 bit for bit) or float16 log-probs (smaller; docs give the error)")
    parser.add_argument("--teacher-samples", type=int, default=0, metavar="N",
                        help="score N teacher samples per training prompt instead of the data set's completions")
    parser.add_argument("--chunk-sequences", type=int, default=4096, help="sequences per chunk file")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per teacher forward")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        summary = record(args)
    except ConfigError as err:
        print(f"distillkit cache-teacher: error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def recording_settings(cfg, args, k: int) -> dict:
    """What the cache's contents depend on: a resumed recording must match it."""
    teacher = member_identity({"kind": choice(cfg, "teacher"), **OmegaConf.to_container(cfg.teacher, resolve=True)})
    return {"teacher": teacher, "k": k, "temperature": float(cfg.method.temperature), "encoding": args.encoding,
            "data": data_description(cfg), "teacher_samples": args.teacher_samples,
            "chunk_sequences": args.chunk_sequences, "student": str(cfg.model.student)}


def data_description(cfg) -> dict:
    keys = ("train", "num_train", "seed", "subset", "eval", "num_eval", "eval_seed", "eval_subset")
    return {key: cfg.data.get(key) for key in keys}


def record(args: argparse.Namespace) -> str:
    from distillkit.assembly import build_object, prompt_budget
    from distillkit.cli import compose_config
    from distillkit.validation import validate

    cfg = compose_config(args.overrides)
    validate(cfg)
    kind = choice(cfg, "teacher")
    if kind not in SCORING_TEACHERS or (kind == "live" and cfg.teacher.model is None):
        raise ConfigError(f"cache-teacher records a separate teacher: teacher=live with teacher.model=PATH, or "
                          f"teacher=remote with teacher.url=URL (got teacher={kind}).")
    if args.chunk_sequences < 1 or args.batch_size < 1 or args.teacher_samples < 0:
        raise ConfigError("--chunk-sequences and --batch-size must be >= 1, --teacher-samples >= 0.")
    k = args.k or (int(cfg.loss.k) if choice(cfg, "loss") == "topk" else 20)
    request = TeacherRequest("topk", float(cfg.method.temperature), k=k)
    settings = recording_settings(cfg, args, k)
    out = args.out
    if (out / MANIFEST).exists():
        raise ConfigError(f"{out} already holds a finished teacher cache. Write to another folder, or delete it.")
    if (out / SETTINGS).exists() and json.loads((out / SETTINGS).read_text()) != settings:
        raise ConfigError(f"{out} holds an unfinished recording with other settings ({out / SETTINGS}). Resume it "
                          "with the same command, or write to another folder.")
    teacher = build_object(cfg.teacher)
    tokenizer = load_tokenizer(cfg.model.student, cfg.model.trust_remote_code)
    student_config = load_model_config(cfg.model.student, cfg.model.trust_remote_code)
    vocab_size = teacher.shared_vocab_size(tokenizer, student_config)
    teacher.check_request(request)
    max_prompt = prompt_budget(cfg, teacher, student_config)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / SETTINGS, json.dumps(settings, indent=1).encode())
    start = time.perf_counter()
    teacher.setup(resolve_device(cfg.device), vocab_size, None)
    if args.teacher_samples:
        train_rows = teacher_sample_rows(cfg, teacher, tokenizer, max_prompt, args.teacher_samples, out)
    else:
        train_set = load_split(cfg.data, "train")
        require_columns(train_set, True, "training")
        train_rows = tokenize(train_set, tokenizer, max_prompt, True, "training")
    eval_rows = tokenize(load_split(cfg.data, "eval"), tokenizer, max_prompt, True, "evaluation")
    sequences = unique_sequences(train_rows + eval_rows)
    chunks = []
    for index, first in enumerate(range(0, len(sequences), args.chunk_sequences)):
        path = out / chunk_name(index)
        part = sequences[first : first + args.chunk_sequences]
        if not path.exists():  # written by an earlier, killed recording with the same settings
            write_atomically(path, encode_chunk(score_chunk(teacher, part, request, tokenizer.pad_token_id,
                                                            args.batch_size), args.encoding, vocab_size))
        chunks.append({"file": path.name, "sequences": len(part),
                       "tokens": sum(len(c) for _, c in part), "bytes": path.stat().st_size})
    tokens = sum(c["tokens"] for c in chunks)
    stored = sum(c["bytes"] for c in chunks)
    manifest = {"format": FORMAT, **settings, "tokenizer_hash": tokenizer_hash(tokenizer.get_vocab()),
                "vocab_size": vocab_size, "sequences": len(sequences), "tokens": tokens, "bytes": stored,
                "bytes_per_token": stored / max(tokens, 1), "trl_binary_bytes_per_token": 8 * k + 8,
                "seconds": time.perf_counter() - start, "chunks": chunks}
    write_atomically(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    (out / SETTINGS).unlink()
    return (f"{out}: {len(sequences):,} sequences, {tokens:,} completion tokens, top-{k} at temperature "
            f"{request.temperature}, {args.encoding}: {stored:,} bytes ({stored / max(tokens, 1):.1f} per token; "
            f"TRL's binary arrays take {8 * k + 8}), {manifest['seconds']:.1f} s")


def unique_sequences(rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of every row with a completion, each sequence once, in order."""
    seen, out = set(), []
    for row in rows:
        if "completion_ids" not in row:
            continue
        key = sequence_key(row["prompt_ids"], row["completion_ids"])
        if key not in seen:
            seen.add(key)
            out.append((row["prompt_ids"], row["completion_ids"]))
    return out


@torch.no_grad()
def score_chunk(teacher, sequences: list[tuple[list[int], list[int]]], request: TeacherRequest, pad_id: int,
                batch_size: int) -> Chunk:
    topk_lp, topk_ids, token_lp = [], [], []
    for first in range(0, len(sequences), batch_size):
        part = sequences[first : first + batch_size]
        batch = collate([p for p, _ in part], [c for _, c in part], pad_id)
        scored = teacher.score(batch, request)
        topk_lp.append(scored.topk_logprobs.float().cpu())
        topk_ids.append(scored.topk_ids.int().cpu())
        token_lp.append(scored.token_logprobs.float().cpu())
    keys = np.stack([np.frombuffer(sequence_key(p, c), dtype=np.uint8) for p, c in sequences])
    return Chunk(keys, np.array([len(c) for _, c in sequences], dtype=np.int32), torch.cat(topk_lp).numpy(),
                 torch.cat(topk_ids).numpy(), torch.cat(token_lp).numpy(),
                 np.array([t for _, c in sequences for t in c], dtype=np.int32))


def teacher_sample_rows(cfg, teacher, tokenizer, max_prompt: int, samples: int, out: Path) -> list[dict]:
    """N teacher samples per training prompt, written as a data file (prompt + completion text) and tokenized
    back as the training run will tokenize that file."""
    from distillkit.assembly import teacher_generator

    rows = tokenize(load_split(cfg.data, "train"), tokenizer, max_prompt, False, "training")
    sampler = teacher_generator(cfg, teacher, tokenizer)
    if sampler is None:
        raise ConfigError("--teacher-samples needs a teacher that samples in this process: teacher=live.")
    torch.manual_seed(cfg.train.seed)
    completions = sampler.generate([r["prompt_ids"] for r in rows], n=samples)
    eos = tokenizer.eos_token_id
    written = []
    for i, completion in enumerate(completions):
        row = rows[i // samples]
        text = tokenizer.decode([t for t in completion if t != eos], skip_special_tokens=True)
        written.append({"prompt": row["prompt"], "completion": text})
    path = out / "teacher_samples.jsonl"
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in written).encode())
    for row in written:
        row["prompt_ids"] = encode_prompt(row["prompt"], tokenizer)
        row["completion_ids"] = encode_completion(row["completion"], tokenizer)
    return written

