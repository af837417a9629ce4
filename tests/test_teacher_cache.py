"""`distillkit cache-teacher` and `teacher=cache`: the format is lossless, the cached scores are the teacher's, a run
on the cache trains as the run on the live teacher does, and what a cache cannot answer is refused at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from configs import compose_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from distillkit.batch import collate
from distillkit.cache.format import Chunk, decode_chunk, encode_chunk, sequence_key
from distillkit.cache.record import main as cache_teacher
from distillkit.cache.store import MANIFEST, SETTINGS, chunk_name
from distillkit.cli import ASSETS_DIR
from distillkit.errors import ConfigError
from distillkit.losses.base import TeacherRequest
from distillkit.runner import build, prepare, run

TEACHER = ASSETS_DIR / "tiny" / "teacher"
DATA = ["data.num_train=96", "data.num_eval=32"]
OFF_POLICY = ["method.lmbda=0", "loss=topk", "loss.k=6", "train.batch_size=8", "train.gradient_accumulation_steps=2",
              "tracking.enabled=false", "train.eval_every=0", *DATA]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<f4").view("<i4")


def random_chunk(rng: np.random.Generator, tokens: int, k: int, vocab: int) -> Chunk:
    logits = rng.normal(size=(tokens, vocab)) * 3
    logp = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)
    ids = np.argsort(-logp, axis=1)[:, :k].astype(np.int32)
    targets = rng.integers(0, vocab, size=tokens).astype(np.int32)  # inside and outside the top-k
    lengths = [3, tokens - 3]
    keys = np.stack([np.frombuffer(sequence_key([i], [i]), np.uint8) for i in range(2)])
    return Chunk(keys, np.array(lengths, np.int32), np.take_along_axis(logp, ids, 1), ids,
                 logp[np.arange(tokens), targets], targets)


@pytest.mark.parametrize(("k", "vocab"), [(1, 50), (20, 300), (100, 70_000), (200, 300)])
def test_the_lossless_format_gives_back_every_bit(k, vocab):
    chunk = random_chunk(np.random.default_rng(k), 40, k, vocab)
    chunk.topk_logprobs[0, -1] = -np.inf  # a token the teacher gives no mass
    header, back = decode_chunk(encode_chunk(chunk, "lossless", vocab))
    assert header["id_dtype"] == ("<u2" if vocab <= 2**16 else "<u4")
    assert np.array_equal(back.keys, chunk.keys) and np.array_equal(back.rows, chunk.rows)
    assert np.array_equal(back.topk_ids, chunk.topk_ids)
    assert np.array_equal(bits(back.topk_logprobs), bits(chunk.topk_logprobs))
    assert np.array_equal(bits(back.token_logprobs), bits(chunk.token_logprobs))


def test_float16_is_within_its_stated_error():
    chunk = random_chunk(np.random.default_rng(0), 64, 20, 300)
    _, back = decode_chunk(encode_chunk(chunk, "float16", 300))
    error = np.abs(back.topk_logprobs - chunk.topk_logprobs) / np.maximum(np.abs(chunk.topk_logprobs), 1)
    assert error.max() <= 2**-11  # float16's half-ulp, relative (absolute below |logp| = 1)
    assert np.array_equal(back.topk_ids, chunk.topk_ids)


def record(out, *overrides, options=()):
    return cache_teacher([str(out), *options, f"teacher.model={TEACHER}", *overrides])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    assert record(out, *OFF_POLICY, options=["--chunk-sequences", "50"]) == 0
    return out


def float64_topk(rows, k):
    """log_softmax(model(input_ids).logits) of the live teacher in float64, at each row's completion positions."""
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float64).eval()
    out = []
    for row in rows:
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(row["prompt_ids"]) - 1 : -1], -1)
        out.append(logp)
    logp = torch.cat(out)
    targets = torch.tensor([t for r in rows for t in r["completion_ids"]])
    values, ids = logp.topk(k, -1)
    return values, ids, logp.gather(-1, targets[:, None]).squeeze(-1)


def test_cached_scores_are_the_teachers(cache):
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["k"] == 6 and len(manifest["chunks"]) == 3 and manifest["sequences"] == 128
    cfg = compose_config(["teacher=cache", f"teacher.path={cache}", *OFF_POLICY])
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:10] + prepared.eval_rows[:6]
    batch = collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], 0)
    got = parts.teacher.score(batch, TeacherRequest("topk", 1.0, k=4), rows)
    values, ids, token = float64_topk(rows, 4)
    torch.testing.assert_close(got.topk_logprobs.double(), values, atol=5e-5, rtol=1e-5)  # float32 forward vs float64
    assert torch.equal(got.topk_ids.long(), ids)
    torch.testing.assert_close(got.token_logprobs.double(), token, atol=5e-5, rtol=1e-5)  # float32 forward vs float64
    assert parts.teacher.metrics() == {"teacher/cache_hits": 16.0, "teacher/cache_misses": 0.0}


def test_a_run_on_the_cache_trains_as_the_run_on_the_live_teacher(cache, tmp_path):
    steps = ["train.steps=4", "train.save_every=0"]
    run(compose_config(["teacher=cache", f"teacher.path={cache}", *OFF_POLICY, *steps]), tmp_path / "cache")
    run(compose_config([f"teacher.model={TEACHER}", *OFF_POLICY, *steps]), tmp_path / "live")
    cached = load_file(tmp_path / "cache" / "final_model" / "model.safetensors")
    live = load_file(tmp_path / "live" / "final_model" / "model.safetensors")
    assert cached.keys() == live.keys()
    for name in live:
        torch.testing.assert_close(cached[name], live[name], atol=2e-6, rtol=1e-5, msg=name)


def test_on_policy_rollouts_go_to_the_fallback(cache):
    cfg = compose_config(["teacher=cache", f"teacher.path={cache}",
                          f"+teacher.fallback={{kind: live, model: {TEACHER}}}",
                          *[o for o in OFF_POLICY if o != "method.lmbda=0"]])
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:3]
    completions = [[5, 6, 1], [7, 1], [5, 5, 5, 1]]  # as a student might sample: not in the cache
    batch = collate([r["prompt_ids"] for r in rows], completions, 0)
    got = parts.teacher.score(batch, TeacherRequest("topk", 1.0, k=6), rows)
    values, ids, token = float64_topk([{**r, "completion_ids": c} for r, c in zip(rows, completions, strict=True)], 6)
    torch.testing.assert_close(got.topk_logprobs.double(), values, atol=5e-5, rtol=1e-5)  # float32 forward vs float64
    torch.testing.assert_close(got.token_logprobs.double(), token, atol=5e-5, rtol=1e-5)  # float32 forward vs float64
    assert parts.teacher.metrics() == {"teacher/cache_hits": 0.0, "teacher/cache_misses": 3.0}


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.lmbda=0.5"], "asks the teacher about the student's own rollouts.*teacher.fallback"),
    (["method.temperature=2"], "recorded at temperature 1.0 but the loss asks for 2"),
    (["loss.k=8"], "loss.k=8 but teacher.path=.* recorded the top 6"),
    (["loss=full"], "not hidden states"),
    (["data.seed=5"], r"96 of the 96 training rows are not in the cache"),
    ([f"model.student={ASSETS_DIR / 'tiny' / 'self_v3'}"], "another tokenizer"),
])
def test_what_the_cache_cannot_answer_is_refused_at_start_up(cache, overrides, message):
    base = [o for o in OFF_POLICY if not any(o.split("=")[0] == x.split("=")[0] for x in overrides)]
    if "loss=full" in overrides:
        base = [o for o in base if not o.startswith("loss.")]
    with pytest.raises(ConfigError, match=message):
        prepare(compose_config(["teacher=cache", f"teacher.path={cache}", *base, *overrides]))


def test_a_killed_recording_resumes_to_the_same_cache(cache, tmp_path):
    out = tmp_path / "c"
    assert record(out, *OFF_POLICY, options=["--chunk-sequences", "50"]) == 0
    (out / MANIFEST).unlink()
    (out / chunk_name(2)).unlink()  # killed while writing the last chunk, before the manifest
    settings = {k: v for k, v in json.loads((cache / MANIFEST).read_text()).items()
                if k in ("teacher", "k", "temperature", "encoding", "data", "teacher_samples", "chunk_sequences",
                         "student")}
    (out / SETTINGS).write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="the recording did not finish"):
        prepare(compose_config(["teacher=cache", f"teacher.path={out}", *OFF_POLICY]))
    assert record(out, *OFF_POLICY, options=["--chunk-sequences", "50"]) == 0
    for index in range(3):
        assert (out / chunk_name(index)).read_bytes() == (cache / chunk_name(index)).read_bytes()
    assert record(out, *OFF_POLICY) == 2  # a finished cache is not overwritten


def test_teacher_samples_are_written_as_data_and_scored(tmp_path):
    out = tmp_path / "s"
    assert record(out, *OFF_POLICY, options=["--teacher-samples", "2"]) == 0
    samples = [json.loads(line) for line in (out / "teacher_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 192 and {"prompt", "completion"} <= samples[0].keys()
    right = sum(int(s["prompt"][:3]) + int(s["prompt"][4:7]) == int(s["completion"] or -1) for s in samples)
    assert right / len(samples) > 0.8  # the tiny teacher's own answers (96% greedy), sampled at temperature 1
    data = [f"data.train={out / 'teacher_samples.jsonl'}", "data.num_train=null"]
    prepare(compose_config(["teacher=cache", f"teacher.path={out}",
                            *[o for o in OFF_POLICY if not o.startswith("data.num_train")], *data]))


@pytest.mark.slow
def test_a_sweep_reads_one_recording(cache, tmp_path):
    """`distillkit -m ... method.beta=0,1` on the cache: each job trains and none loads the teacher's weights."""
    cmd = [sys.executable, "-m", "distillkit.cli", "-m", "teacher=cache", f"teacher.path={cache}", *OFF_POLICY,
           "method.beta=0,1", "train.steps=3", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "final_model").exists()) == ["0", "1"]
