"""What each process holds under ddp, fsdp2 and deepspeed (ZeRO-2): weights, gradients and AdamW state, and the
step time, with the same global batch. Every strategy runs as its own `torchrun` of this script.

    python benchmarks/bench_sharding.py                                  # 2 processes, hidden 512 x 8 layers, V=32k
    python benchmarks/bench_sharding.py --processes 2 --hidden 256 --layers 4 --strategies ddp,fsdp2

Bytes are counted from the tensors each process holds after the last step (a sharded tensor counts its local
shard; DeepSpeed's flat fp32 partitions and their AdamW state count as optimizer state), so they do not depend on
the allocator. The peak RSS of each process is reported beside them. Off-policy GKD (the data set's completions),
a live teacher of the same shape, full-vocabulary JSD.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

STRATEGIES = ("ddp", "fsdp2", "deepspeed")


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if key not in seen:  # tied weights count once
            seen.add(key)
            total += local.numel() * local.element_size()
    return total


def optimizer_bytes(parts) -> int:
    """AdamW's state; under DeepSpeed also its fp32 partitions of the weights (what ZeRO splits)."""
    from distillkit.strategies import DeepSpeedZero

    if not isinstance(parts.strategy, DeepSpeedZero):
        return local_bytes(v for state in parts.optimizer.state.values() for v in state.values() if hasattr(v, "numel"))
    zero = parts.strategy.optimizer
    inner = zero.optimizer
    state = local_bytes(v for s in inner.state.values() for v in s.values() if hasattr(v, "numel"))
    return state + local_bytes(zero.single_partition_of_fp32_groups)


def gradient_bytes(parts) -> int:
    """Gradients held between the backward and the step; under ZeRO-2, the process's partition of them."""
    from distillkit.strategies import DeepSpeedZero

    if not isinstance(parts.strategy, DeepSpeedZero):
        return local_bytes(p.grad for p in parts.params)
    zero = parts.strategy.optimizer
    return local_bytes(g for group in zero.averaged_gradients.values() for g in group) if zero.averaged_gradients \
        else local_bytes(p.grad for p in zero.single_partition_of_fp32_groups)


def worker(args) -> None:
    """One process of one strategy: build the run as `distillkit.runner` does, time `--steps` optimizer steps."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from distillkit.cli import CONF_DIR, register_resolvers
    from distillkit.distributed import barrier, init_distributed
    from distillkit.runner import StepClock, build, optimizer_step, prepare

    torch.set_num_threads(1)
    register_resolvers()
    overrides = [f"model.student={args.student}", f"teacher.model={args.teacher}", "method.lmbda=0",
                 f"train.batch_size={args.batch_size // args.processes}", "train.gradient_accumulation_steps=1",
                 "train.max_completion_length=5", "data.num_train=512", "data.num_eval=8",
                 "tracking.enabled=false", f"distributed.strategy={args.strategy}", "device=cpu"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    process = init_distributed(on_cpu=True)
    prepared = prepare(cfg)
    parts = build(cfg, prepared, process)
    rows = prepared.train_rows
    share = len(rows) // process.world_size
    mine = rows[process.rank * share : (process.rank + 1) * share]
    per_step = args.batch_size // args.processes
    clock, times, grads = StepClock(), [], 0
    for step in range(args.steps):
        barrier()
        start = time.perf_counter()
        batch = [dict(r) for r in mine[step * per_step : (step + 1) * per_step]]
        if step == args.steps - 1:  # the gradients just before the last update
            from distillkit.methods import RolloutContext
            from distillkit.runner import accumulate_gradients

            ctx = RolloutContext(parts.generator, parts.teacher_generator, parts.tokenizer, 1, 0)
            accumulate_gradients(parts, parts.method.micro_batches(step, batch, ctx), clock)
            grads = gradient_bytes(parts)
            parts.strategy.step(parts.params, parts.optimizer, parts.precision, cfg.train.max_grad_norm, has_loss=True)
        else:
            optimizer_step(parts, batch, step, clock)
        barrier()
        times.append(time.perf_counter() - start)
    result = {
        "strategy": args.strategy, "rank": process.rank,
        "weights_bytes": local_bytes(parts.student.parameters()),
        "gradient_bytes": grads, "optimizer_bytes": optimizer_bytes(parts),
        "teacher_bytes": local_bytes(parts.teacher.model.parameters()),
        "step_s": sorted(times[1:-1])[len(times[1:-1]) // 2] if len(times) > 2 else times[-1],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    Path(args.out_dir, f"{args.strategy}_{process.rank}.json").write_text(json.dumps(result))


def launch(args, strategy: str, student: Path, teacher: Path, out_dir: Path) -> list[dict]:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), f"--nproc-per-node={args.processes}", __file__, "--worker", "--strategy", strategy,
           "--student", str(student), "--teacher", str(teacher), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--processes", str(args.processes), "--out-dir", str(out_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise SystemExit(f"{strategy} failed:\n{out.stderr[-3000:]}")
    return [json.loads((out_dir / f"{strategy}_{rank}.json").read_text()) for rank in range(args.processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--student")
    parser.add_argument("--teacher")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=16, help="global prompts per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="write the per-process results here")
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from tiny_models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        pad = max(0, args.vocab - 18)
        student = make_tiny_model(Path(tmp) / "student", hidden=args.hidden, layers=args.layers, vocab_pad=pad)
        teacher = make_tiny_model(Path(tmp) / "teacher", hidden=args.hidden, layers=args.layers, vocab_pad=pad, seed=1)
        results = [r for s in args.strategies.split(",") for r in launch(args, s, student, teacher, Path(tmp))]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    mib = 2**20
    print(f"{args.processes} processes, hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, "
          f"global batch {args.batch_size}; per process (rank 0), MiB:")
    print(f"{'strategy':<10} {'weights':>8} {'grads':>8} {'AdamW':>8} {'teacher':>8} {'peak RSS':>9} {'step s':>7}")
    for r in results:
        if r["rank"] == 0:
            print(f"{r['strategy']:<10} {r['weights_bytes'] / mib:8.1f} {r['gradient_bytes'] / mib:8.1f} "
                  f"{r['optimizer_bytes'] / mib:8.1f} {r['teacher_bytes'] / mib:8.1f} "
                  f"{r['peak_rss_bytes'] / mib:9.0f} {r['step_s']:7.3f}")


if __name__ == "__main__":
    main()
