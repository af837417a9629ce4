"""Peak memory and time of the full-vocabulary GKD loss (forward + backward) alone, one process per variant.

    python benchmarks/bench_loss_memory.py                       # V=151,936, N=4,096, H=896 (student and teacher)
    python benchmarks/bench_loss_memory.py --tokens 1024 --variants distillkit,naive

Variants (all: generalized JSD with the same beta and temperature, summed over N completion tokens, backward into
the student hidden states and the student LM head; the teacher side has no grad):
- distillkit:  distillkit.losses.FullDivergence on (hidden, head weight) pairs, as distillkit/runner.py calls it
               (row-chunked, backward fused into the forward, ~64 MiB of fp32 logits per chunk).
- naive:       full [N, V] logits of both models, log_softmax, the JSD mixture formula, .sum().backward().
- trl_gkd:     TRL's GKDTrainer.generalized_jsd_loss on the full [1, N, V] logits, with labels and
               num_items_in_batch as GKDTrainer.compute_loss passes them.
- trl_chunked: TRL's trl.kernels.chunked_divergence.ChunkedDivergenceFunction (the DistillationTrainer's loss), which
               runs its torch fallback off CUDA/XPU.

Memory: CPU: peak RSS growth over the RSS once the inputs exist (VmHWM reset via /proc/self/clear_refs); CUDA:
torch.cuda.max_memory_allocated growth. The head-weight gradient ([V, H] fp32, 545 MB at V=151,936, H=896) is part
of every variant's figure. Each child caps the address space it may add (--mem-limit-gib) so an oversized variant fails with
an out-of-memory error instead of waking the kernel's OOM killer. Every variant first runs at the smaller
--probe-tokens; a straight line through those peaks predicts the peak at --tokens, and a variant predicted over 80%
of the cap is reported as extrapolated (marked "fit") instead of being run.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, BENCH_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _common import PeakMemory, _status_kib, emit_result, mib, run_child, warn_if_busy  # noqa: E402

VARIANTS = ("distillkit", "naive", "trl_gkd", "trl_chunked")


def make_inputs(args, device):
    import torch

    g = torch.Generator().manual_seed(0)
    n, v = args.tokens, args.vocab

    def randn(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    # Scales that give logits with a std of ~2-3, like a trained LM head.
    h_s = randn(n, args.hidden, scale=1.0).requires_grad_(True)
    w_s = randn(v, args.hidden, scale=2.5 / math.sqrt(args.hidden)).requires_grad_(True)
    h_t = randn(n, args.teacher_hidden, scale=1.0)
    w_t = randn(v, args.teacher_hidden, scale=2.5 / math.sqrt(args.teacher_hidden))
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return h_s, w_s, h_t, w_t, targets


def loss_distillkit(h_s, w_s, h_t, w_t, targets, beta, temperature):
    from distillkit.lm_head import LMHead
    from distillkit.losses import FullDivergence, StudentTokens, TeacherTokens

    div = FullDivergence(beta=beta, temperature=temperature)
    out = div(StudentTokens(h_s, LMHead(w_s), targets), TeacherTokens(hidden=h_t, head=LMHead(w_t)))
    out.loss_sum.backward()
    return out.loss_sum


def loss_naive(h_s, w_s, h_t, w_t, targets, beta, temperature):
    import torch

    s_logp = torch.log_softmax((h_s @ w_s.T) / temperature, dim=-1)
    with torch.no_grad():
        t_logp = torch.log_softmax((h_t @ w_t.T) / temperature, dim=-1)
    if beta == 0.0:
        per_token = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    elif beta == 1.0:
        per_token = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    else:  # generalized JSD, TRL's formula: beta * KL(T||M) + (1 - beta) * KL(S||M), M = (1-beta) S + beta T
        log_m = torch.logsumexp(torch.stack([s_logp + math.log1p(-beta), t_logp + math.log(beta)]), dim=0)
        per_token = beta * (t_logp.exp() * (t_logp - log_m)).sum(-1) + (1 - beta) * (
            s_logp.exp() * (s_logp - log_m)).sum(-1)
    loss = per_token.sum()
    loss.backward()
    return loss


def loss_trl_gkd(h_s, w_s, h_t, w_t, targets, beta, temperature):
    import torch
    from trl.experimental.gkd import GKDTrainer

    student_logits = (h_s @ w_s.T)[None]  # [1, N, V], as the model's forward returns them
    with torch.no_grad():
        teacher_logits = (h_t @ w_t.T)[None]
    labels = targets[None]  # every position is a completion token (no -100)
    # GKDTrainer.compute_loss passes labels, beta and num_items_in_batch (and leaves temperature at 1.0).
    loss = GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels=labels, beta=beta,
                                           temperature=temperature, num_items_in_batch=labels.numel())
    loss = loss * labels.numel()  # back to a sum, like the other variants (does not change memory)
    loss.backward()
    return loss


def loss_trl_chunked(h_s, w_s, h_t, w_t, targets, beta, temperature):
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    divergence, _entropy = ChunkedDivergenceFunction.apply(h_s, w_s, None, h_t, w_t, None, beta, temperature)
    loss = divergence.sum()
    loss.backward()
    return loss


LOSSES = {"distillkit": loss_distillkit, "naive": loss_naive, "trl_gkd": loss_trl_gkd,
          "trl_chunked": loss_trl_chunked}


def worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fn = LOSSES[args.worker]
    if args.worker.startswith("trl"):  # import before the baseline, like distillkit's own modules
        import trl.experimental.gkd  # noqa: F401
        import trl.kernels.chunked_divergence  # noqa: F401
    import distillkit.losses  # noqa: F401

    h_s, w_s, h_t, w_t, targets = make_inputs(args, device)
    if args.mem_limit_gib > 0 and device.type == "cpu":  # cap the address space this run may add from here on
        mapped = (_status_kib("VmSize") or 0) * 1024
        limit = mapped + int(args.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    memory = PeakMemory(device)
    memory.start()
    times, losses = [], []
    try:
        for _ in range(args.iters):
            h_s.grad = w_s.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss = fn(h_s, w_s, h_t, w_t, targets, args.beta, args.temperature)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    except (MemoryError, RuntimeError) as err:  # RLIMIT_AS turns an oversized allocation into an exception
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        return {"variant": args.worker, "error": f"out of memory under the {args.mem_limit_gib} GiB cap: "
                f"{str(err).splitlines()[0][:160]}", "peak_mem_bytes": memory.peak_growth()}
    grad_w_norm = float(w_s.grad.norm()) if w_s.grad is not None else float("nan")
    return {"variant": args.worker, "peak_mem_bytes": memory.peak_growth(), "seconds": min(times),
            "times": times, "loss": losses[-1], "grad_w_norm": grad_w_norm,
            "memory_probe": memory.describe(), "threads": torch.get_num_threads()}


def mem_available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_variant(args, variant: str, tokens: int) -> dict:
    child = [str(Path(__file__).resolve()), "--worker", variant, "--tokens", str(tokens)]
    for key in ("vocab", "hidden", "teacher_hidden", "beta", "temperature", "iters", "device", "threads",
                "mem_limit_gib"):
        child += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return run_child(child, f"{variant} N={tokens}")


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares memory = a + b * N through the measured points."""
    xs, ys = zip(*sorted(points.items()), strict=True)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
    return my - b * mx, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="completion tokens N")
    p.add_argument("--probe-tokens", default="256,512",
                   help="smaller N run first for every variant; a line through them predicts the peak at --tokens, "
                        "and a variant predicted over the cap is reported as extrapolated instead of run ('' = off)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896, help="student hidden size")
    p.add_argument("--teacher-hidden", type=int, default=896)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--iters", type=int, default=1, help="forward+backward calls per run (fastest is reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--mem-limit-gib", type=float, default=None,
                   help="CPU: address space a child may add once its inputs exist (default: MemAvailable - 2 GiB; 0 = none)")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        emit_result(worker(args))
        return

    if args.mem_limit_gib is None:
        available = mem_available_gib()
        args.mem_limit_gib = round(available - 2.0, 1) if available else 0
    budget = (args.mem_limit_gib or float("inf")) * 2**30 * 0.8  # what a prediction must stay under to be run
    probes = sorted({int(x) for x in args.probe_tokens.split(",") if x.strip() and int(x) < args.tokens})
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    busy = warn_if_busy("bench_loss_memory")
    runs: dict[str, dict[int, dict]] = {v: {} for v in variants}
    predicted: dict[str, float] = {}
    for variant in variants:
        for n in probes:
            runs[variant][n] = run_variant(args, variant, n)
        points = {n: r["peak_mem_bytes"] for n, r in runs[variant].items() if "error" not in r}
        if len(points) >= 2:
            a, b = fit_line(points)
            predicted[variant] = a + b * args.tokens
        if predicted.get(variant, 0.0) <= budget:
            runs[variant][args.tokens] = run_variant(args, variant, args.tokens)
        else:
            print(f"\n--- {variant} N={args.tokens}: skipped, predicted peak {mib(predicted[variant]):,.0f} MiB is over "
                  f"80% of the {args.mem_limit_gib} GiB cap")
    busy_after = warn_if_busy("bench_loss_memory, after")

    logits_gib = args.tokens * args.vocab * 4 / 2**30
    print(f"\nV={args.vocab}, student H={args.hidden}, teacher H={args.teacher_hidden}, beta {args.beta}, "
          f"temperature {args.temperature}, fp32, device {args.device}; one [{args.tokens}, V] fp32 tensor = "
          f"{logits_gib:.2f} GiB; address-space cap {args.mem_limit_gib} GiB per child")
    sizes = [*probes, args.tokens]
    header = f"{'variant':<12} " + " ".join(f"{'MiB N=' + str(n):>13}" for n in sizes) + \
        f" {'s N=' + str(args.tokens):>9} {'loss/token':>11} {'|grad W|':>9}"
    print(header)
    print("-" * len(header))
    for variant in variants:
        cells = []
        for n in sizes:
            r = runs[variant].get(n)
            if r is None:
                cells.append(f"~{mib(predicted[variant]):,.0f} (fit)" if variant in predicted else "-")
            elif "error" in r:
                cells.append("OOM" if "out of memory" in r["error"] else "failed")
            else:
                cells.append(f"{mib(r['peak_mem_bytes']):,.0f}")
        last = runs[variant].get(args.tokens) or {}
        if "seconds" in last:
            tail = f" {last['seconds']:>9.1f} {last['loss'] / args.tokens:>11.5f} {last['grad_w_norm']:>9.4f}"
        else:
            tail = f" {'-':>9} {'-':>11} {'-':>9}"
        print(f"{variant:<12} " + " ".join(f"{c:>13}" for c in cells) + tail)

    print(f"{'seconds':<12} " + " ".join(f"{'s N=' + str(n):>13}" for n in sizes) + "   (forward + backward)")
    for variant in variants:
        cells = [f"{runs[variant][n]['seconds']:.1f}" if "seconds" in runs[variant].get(n, {}) else "-"
                 for n in sizes]
        print(f"{variant:<12} " + " ".join(f"{c:>13}" for c in cells))

    def peak(variant: str, n: int) -> tuple[float | None, bool]:
        r = runs.get(variant, {}).get(n)
        if r is not None and "error" not in r:
            return r["peak_mem_bytes"], False
        if n == args.tokens and variant in predicted:
            return predicted[variant], True
        return None, False

    print()
    for n in sizes:
        base, _ = peak("distillkit", n)
        if not base:
            continue
        for other in ("trl_gkd", "trl_chunked", "naive"):
            value, fitted = peak(other, n)
            if value:
                note = " (the other side extrapolated from the smaller N)" if fitted else ""
                print(f"N={n}: distillkit / {other} peak memory = {base / value:.3f} (1/{value / base:.1f}){note}")
    probe = next((r["memory_probe"] for rs in runs.values() for r in rs.values() if "memory_probe" in r), "")
    print(f"memory: {probe}, each run in its own process, relative to after the inputs exist")
    for variant in variants:
        r = runs[variant].get(args.tokens, {})
        if r.get("error"):
            print(f"{variant} N={args.tokens}: {r['error']}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()},
                                         "cpu_busy_before": busy, "cpu_busy_after": busy_after,
                                         "predicted_peak_bytes": predicted,
                                         "runs": {v: {str(n): r for n, r in rs.items()} for v, rs in runs.items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
