"""GKD optimizer-step throughput and peak memory: distillkit vs TRL's two trainers (the experimental GKDTrainer and
the stable DistillationTrainer), same run.

    python benchmarks/bench_gkd_step.py                      # tiny char-vocab models (vocab 16)
    python benchmarks/bench_gkd_step.py --setting vocab      # vocab 32,000, student hidden 256, teacher 512
    python benchmarks/bench_gkd_step.py --setting real       # SmolLM2-135M teacher, 4-layer derived student

Every framework gets the same student and teacher (random Qwen2 models built from a config in a temp dir, or the
real pair; nothing downloaded from a hub), the same addition prompts, batch size, max completion length, beta, temperature, fp32,
full-vocabulary generalized JSD, fully on-policy (lmbda=1), AdamW lr 1e-3, grad-norm clip 1.0, one micro-batch per
optimizer step. Each framework runs in its own subprocess (so peak memory is its own); `--repeats` alternates them.

Figures, per framework, over the timed steps (after `--warmup` steps):
- tokens/s (step): completion tokens / wall time of the optimizer steps themselves (generation, teacher forward,
  student forward+backward, clip, AdamW, zero_grad). distillkit: the `optimizer_step` call. TRL: the Trainer's
  `on_step_begin` -> `on_step_end` callbacks (its collator runs before `on_step_begin`, so is excluded).
- tokens/s (loop): completion tokens / wall time of whole loop iterations (data fetch/collation and the Trainer's
  log/save checks included), measured end to end.
- tokens/CPU-s: completion tokens / CPU time (user+sys, all threads) of the steps: less sensitive than wall time to
  other processes competing for the cores (run with --threads 1 on a shared machine to make it cleaner).
- peak memory: growth of the peak over the memory held once models are loaded (CPU: peak RSS, VmHWM reset via
  /proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from _common import PeakMemory, emit_result, mib, run_child, warn_if_busy  # noqa: E402

SETTINGS = {
    # student hidden / layers, teacher hidden / layers, vocabulary rows (16 = the char tokenizer, no padding)
    # and the default number of timed steps (a tiny step takes ~0.1 s on CPU, a "vocab" step ~4 s)
    "tiny": {"student_hidden": 64, "student_layers": 2, "teacher_hidden": 128, "teacher_layers": 2, "vocab": 16,
             "steps": 20},
    "vocab": {"student_hidden": 256, "student_layers": 2, "teacher_hidden": 512, "teacher_layers": 2,
              "vocab": 32000, "steps": 6},
    # SmolLM2-135M-Instruct (from PyPI, `distillkit fetch-model`) teaching a student made of 4 of its 30 layers
    "real": {"student_hidden": 576, "student_layers": 4, "teacher_hidden": 576, "teacher_layers": 30,
             "vocab": 49152, "steps": 4, "max_completion_length": 32},
}
REAL_STUDENT_LAYERS = [0, 10, 20, 29]
FRAMEWORKS = ("distillkit", "distillkit_async", "trl", "trl_distillation")
LR = 1e-3
MAX_GRAD_NORM = 1.0
SEED = 0


# ------------------------------------------------------------------------------------------ models
def load_make_tiny_model():
    spec = importlib.util.spec_from_file_location("tiny_models", REPO_ROOT / "tests" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_model


def build_models(folder: Path, args) -> None:
    if args.setting == "real":
        from distillkit.make_student import make_student
        from distillkit.real_models import smollm2_folder

        teacher = smollm2_folder()  # converted from the PyPI wheel on first use, then cached
        (folder / "teacher").symlink_to(teacher)
        make_student(teacher, REAL_STUDENT_LAYERS, folder / "student")
        return
    make_tiny_model = load_make_tiny_model()
    from distillkit.data.addition import ALPHABET
    from distillkit.data.char_tokenizer import build_char_tokenizer

    base_vocab = len(build_char_tokenizer(ALPHABET + "-"))
    pad = max(args.vocab - base_vocab, 0)
    make_tiny_model(folder / "student", hidden=args.student_hidden, layers=args.student_layers, seed=1,
                    vocab_pad=pad)
    make_tiny_model(folder / "teacher", hidden=args.teacher_hidden, layers=args.teacher_layers, seed=2,
                    vocab_pad=pad)


def num_rows(args) -> int:
    return (args.warmup + args.steps) * args.batch_size


def summarize(step_times, loop_times, cpu_times, tokens, args, memory: PeakMemory, extra: dict) -> dict:
    timed = slice(args.warmup, None)
    step_s, loop_s, toks = sum(step_times[timed]), sum(loop_times[timed]), sum(tokens[timed])
    return {
        "tokens_per_s_step": toks / step_s,
        "tokens_per_s_loop": toks / loop_s,
        "tokens_per_cpu_s": toks / max(sum(cpu_times[timed]), 1e-9),
        "s_per_step": step_s / len(step_times[timed]),
        "tokens_per_step": toks / len(tokens[timed]),
        "step_times": step_times,
        "tokens": tokens,
        "peak_mem_bytes": memory.peak_growth(),
        "memory_probe": memory.describe(),
        **extra,
    }


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ distillkit
def step_timer(device, counters):
    """A TRL TrainerCallback that times each optimizer step (wall, loop-to-loop, CPU) and records the per-step
    increase of `counters()`: the trainer's cumulative (completion tokens, generation seconds)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_times, self.loop_times, self.cpu_times, self.tokens, self.generate = [], [], [], [], []

        def on_train_begin(self, *a, **k):
            sync(device)
            self.t_prev_end = time.perf_counter()

        def on_step_begin(self, *a, **k):
            sync(device)
            self.t_begin, self.c_begin = time.perf_counter(), time.process_time()
            self.counted = counters()

        def on_step_end(self, *a, **k):
            sync(device)
            t = time.perf_counter()
            self.cpu_times.append(time.process_time() - self.c_begin)
            self.step_times.append(t - self.t_begin)
            self.loop_times.append(t - self.t_prev_end)
            self.t_prev_end = t
            tokens, generate_s = counters()
            self.tokens.append(tokens - self.counted[0])
            self.generate.append(generate_s - self.counted[1])

    return StepTimer()


def worker_distillkit(args, async_generation: bool = False) -> dict:
    from hydra import compose, initialize_config_dir

    from distillkit.cli import register_resolvers
    from distillkit.runner import StepClock, StepSampler, build, optimizer_step, prepare

    register_resolvers()
    model_dir = Path(args.model_dir)
    overrides = [
        f"model.student={model_dir / 'student'}",
        f"teacher.model={model_dir / 'teacher'}",
        "tracking.enabled=false",
        f"device={args.device}",
        "model.dtype=float32",
        "teacher.dtype=float32",
        "loss=full",
        "method.lmbda=1.0",
        f"method.beta={args.beta}",
        f"method.temperature={args.temperature}",
        f"train.steps={args.warmup + args.steps}",
        f"train.batch_size={args.batch_size}",
        "train.gradient_accumulation_steps=1",
        f"train.max_completion_length={args.max_completion_length}",
        f"train.lr={LR}",
        "train.lr_scheduler=constant_with_warmup",
        "train.warmup_steps=0",
        "train.weight_decay=0.0",
        f"train.max_grad_norm={MAX_GRAD_NORM}",
        f"train.seed={SEED}",
        f"data.num_train={num_rows(args)}",
        *(["train.async_generation=true", f"train.async_generation_threads={args.async_generation_threads}"]
          if async_generation else []),
        "data.num_eval=8",
    ]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    device = parts.device
    rows = prepared.train_rows
    sampler = StepSampler(len(rows), cfg.train.batch_size * cfg.train.gradient_accumulation_steps, cfg.data.seed)
    clock = StepClock()

    memory = PeakMemory(device)
    memory.start()
    step_times, loop_times, cpu_times, tokens, losses = [], [], [], [], []
    phase_at_warmup = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            phase_at_warmup = dict(clock.totals)
        sync(device)
        t_loop = time.perf_counter()
        batch_rows = [rows[i] for i in sampler.indices(step)]
        t_step, c_step = time.perf_counter(), time.process_time()
        next_rows = ([rows[i] for i in sampler.indices(step + 1)]
                     if async_generation and step + 1 < args.warmup + args.steps else None)
        metrics = optimizer_step(parts, batch_rows, step, clock, next_rows)
        sync(device)
        t_end = time.perf_counter()
        cpu_times.append(time.process_time() - c_step)
        step_times.append(t_end - t_step)
        loop_times.append(t_end - t_loop)
        tokens.append(int(metrics["train/tokens"]))
        losses.append(metrics["train/loss"])
    phases = {k: clock.totals[k] - (phase_at_warmup or {}).get(k, 0.0) for k in clock.totals}
    return summarize(step_times, loop_times, cpu_times, tokens, args, memory, {
        "framework": "distillkit (async)" if async_generation else "distillkit", "phase_seconds": phases, "losses": losses,
        "device": str(device),
    })


# ------------------------------------------------------------------------------------------ TRL
def trl_training_args(args, device) -> dict:
    """The Trainer arguments both TRL trainers get: distillkit's batch, steps, optimizer, schedule and clip, fp32,
    no logging, saving or evaluation in the timed loop."""
    return dict(
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, num_train_epochs=1,
        learning_rate=LR, lr_scheduler_type="constant_with_warmup", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=MAX_GRAD_NORM, optim="adamw_torch",
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=device.type == "cpu",
        report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=SEED, data_seed=SEED,
    )


def worker_trl(args) -> dict:
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distillkit.data.addition import addition_dataset

    model_dir = Path(args.model_dir)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "student")
    student = AutoModelForCausalLM.from_pretrained(model_dir / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir / "teacher", dtype=torch.float32)

    # The same prompts distillkit tokenizes (data.seed=0), as ids; the collator left-pads them for generate().
    dataset = addition_dataset(num_rows(args), seed=0)
    dataset = dataset.map(lambda ex: {"prompt_ids": tokenizer(ex["prompt"], add_special_tokens=True)["input_ids"]})
    pad_id = tokenizer.pad_token_id

    def collate(features):
        width = max(len(f["prompt_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, f in enumerate(features):
            p = f["prompt_ids"]
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        # No "labels": lmbda=1 replaces the batch with the student's samples, and without labels the Trainer does
        # not precompute num_items_in_batch from them, so the loss is the mean over the generated tokens.
        return {"prompts": ids, "prompt_attention_mask": mask, "input_ids": ids, "attention_mask": mask}

    class BenchGKD(GKDTrainer):
        """GKDTrainer as is; only counts the completion tokens each step trains on and times generation."""

        bench_tokens = 0
        bench_generate_s = 0.0
        bench_losses: list[float] = []

        def generate_on_policy_outputs(self, model, inputs, generation_config):  # noqa: D102
            sync(device)
            t0 = time.perf_counter()
            out = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            sync(device)
            self.bench_generate_s += time.perf_counter() - t0
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.bench_tokens += int((inputs["labels"][:, 1:] != -100).sum())
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.bench_losses.append(float((loss[0] if return_outputs else loss).detach()))
            return loss

    out_dir = tempfile.mkdtemp(prefix="trl_gkd_bench_")
    config = GKDConfig(
        output_dir=out_dir,
        lmbda=1.0, beta=args.beta, temperature=args.temperature, max_new_tokens=args.max_completion_length,
        seq_kd=False, disable_dropout=True,
        **trl_training_args(args, device), remove_unused_columns=False,
    )
    timer = step_timer(device, lambda: (trainer.bench_tokens, trainer.bench_generate_s))
    trainer = BenchGKD(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                       processing_class=tokenizer, data_collator=collate, callbacks=[timer])
    memory = PeakMemory(device)
    memory.start()
    trainer.train()
    gen = sum(timer.generate[args.warmup:])
    step_s = sum(timer.step_times[args.warmup:])
    return summarize(timer.step_times, timer.loop_times, timer.cpu_times, timer.tokens, args, memory, {
        "framework": f"trl {trl.__version__} GKDTrainer", "phase_seconds": {"generate": gen, "rest": step_s - gen},
        "losses": trainer.bench_losses, "device": str(trainer.args.device),
    })


# ------------------------------------------------------------------------------------------ driver
def worker_trl_distillation(args) -> dict:
    """TRL's stable DistillationTrainer (the one TRL tells GKD users to move to), same models, prompts, batch."""
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    from distillkit.data.addition import addition_dataset

    model_dir = Path(args.model_dir)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "student")
    tokenizer.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(model_dir / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir / "teacher", dtype=torch.float32)
    dataset = addition_dataset(num_rows(args), seed=0)  # the prompts distillkit's run uses (data.seed=0)

    class Counted(DistillationTrainer):
        bench_tokens = 0
        bench_losses: list[float] = []

        def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
            self.bench_tokens += int(inputs["completion_mask"].sum())
            out = super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
            self.bench_losses.append(float(out[0].detach()))
            return out

    config = DistillationConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_distill_"),
        beta=args.beta, temperature=args.temperature, max_completion_length=args.max_completion_length,
        top_p=1.0, top_k=0, disable_dropout=True,
        **trl_training_args(args, device),
    )
    timer = step_timer(device, lambda: (trainer.bench_tokens, 0.0))
    trainer = Counted(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[timer])
    memory = PeakMemory(device)
    memory.start()
    trainer.train()
    return summarize(timer.step_times, timer.loop_times, timer.cpu_times, timer.tokens, args, memory, {
        "framework": f"trl {trl.__version__} DistillationTrainer", "losses": trainer.bench_losses,
        "phase_seconds": {}, "device": str(trainer.args.device),
    })


def child_args(args, framework: str, model_dir: Path) -> list[str]:
    keys = ("batch_size", "steps", "warmup", "max_completion_length", "beta", "temperature", "device", "threads",
            "async_generation_threads")
    out = [str(Path(__file__).resolve()), "--worker", framework, "--model-dir", str(model_dir)]
    for k in keys:
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return out


def fmt_phases(r: dict) -> str:
    total = sum(r["phase_seconds"].values()) or 1.0
    return ", ".join(f"{k} {v / total:.0%}" for k, v in r["phase_seconds"].items())


def compare(results: dict[str, list[dict]]) -> dict:
    """Each distillkit variant over each TRL trainer (and async over sync), run by run (the runs alternate, so run i
    of each saw the same machine): min / median / max of the ratios of throughput (step, per CPU-second) and of peak
    memory, and against the faster TRL trainer by median step throughput."""
    lines, table = ["", "ratios per alternating run (min / median / max):"], {}
    ok = {fw: [r for r in runs if "error" not in r] for fw, runs in results.items()}
    ok = {fw: runs for fw, runs in ok.items() if runs}
    trls = [fw for fw in ok if fw.startswith("trl")]
    faster = max(trls, key=lambda fw: statistics.median(r["tokens_per_s_step"] for r in ok[fw])) if trls else None
    ours = [fw for fw in ok if fw.startswith("distillkit")]
    pairs = [(a, b) for a in ours for b in trls] + ([("distillkit_async", "distillkit")] if len(ours) == 2 else [])
    for a, b in pairs:
        row = {}
        for key, label in (("tokens_per_s_step", "throughput (step)"), ("tokens_per_cpu_s", "per CPU-second"),
                           ("peak_mem_bytes", "peak memory")):
            values = sorted(x[key] / max(y[key], 1e-9) for x, y in zip(ok[a], ok[b], strict=False))
            row[key] = {"min": values[0], "median": statistics.median(values), "max": values[-1]}
            lines.append(f"  {ok[a][0]['framework']} vs {ok[b][0]['framework']}: {label} x{values[0]:.2f} / "
                         f"x{row[key]['median']:.2f} / x{values[-1]:.2f}")
        table[f"{a}/{b}"] = row
    for a in ours:
        if faster:
            median = table[f"{a}/{faster}"]["tokens_per_s_step"]["median"]
            lines.append(f"  {ok[a][0]['framework']} against the faster TRL trainer ({ok[faster][0]['framework']}): "
                         f"x{median:.2f} step throughput (median)")
    table["faster_trl"] = faster
    return {"lines": lines, "table": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="tiny",
                   help="model sizes; --student-hidden etc. override single fields")
    p.add_argument("--student-hidden", type=int)
    p.add_argument("--student-layers", type=int)
    p.add_argument("--teacher-hidden", type=int)
    p.add_argument("--teacher-layers", type=int)
    p.add_argument("--vocab", type=int, help="embedding rows (the char tokenizer has 16; more rows are unused ids)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per optimizer step")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default: 20 tiny, 6 vocab)")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--max-completion-length", type=int, help="default: 16 (32 for the real pair)")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling and loss temperature (TRL's GKD loss ignores it: keep 1.0 for a fair run)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads in each worker (0 = default)")
    p.add_argument("--frameworks", default="distillkit,trl,trl_distillation",
                   help="also distillkit_async (train.async_generation=true); trl: the experimental GKDTrainer; "
                        "trl_distillation: the stable DistillationTrainer")
    p.add_argument("--async-generation-threads", type=int, default=1,
                   help="distillkit_async: torch threads of the background sampler")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs per framework; medians are reported")
    p.add_argument("--json", type=Path, help="also write all results here")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        workers = {"distillkit": worker_distillkit, "distillkit_async": lambda a: worker_distillkit(a, True),
                   "trl": worker_trl, "trl_distillation": worker_trl_distillation}
        result = workers[args.worker](args)
        result["threads"] = torch.get_num_threads()
        emit_result(result)
        return

    for key, value in {"max_completion_length": 16, **SETTINGS[args.setting]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.temperature != 1.0:
        print("note: TRL's GKDTrainer.compute_loss does not pass its temperature to the loss (it only samples at "
              "it); distillkit applies it to both. The runs are not equivalent at temperature != 1.")
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    busy = warn_if_busy("bench_gkd_step")
    results: dict[str, list[dict]] = {f: [] for f in frameworks}
    with tempfile.TemporaryDirectory(prefix="gkd_bench_models_") as tmp:
        model_dir = Path(tmp)
        build_models(model_dir, args)
        for rep in range(args.repeats):
            for fw in frameworks:
                r = run_child(child_args(args, fw, model_dir), f"{fw} (run {rep + 1}/{args.repeats})")
                results[fw].append(r)
    busy_after = warn_if_busy("bench_gkd_step, after")

    print(f"\nsetting={args.setting}: student hidden {args.student_hidden} x {args.student_layers} layers, teacher "
          f"hidden {args.teacher_hidden} x {args.teacher_layers}, vocab {args.vocab}; batch {args.batch_size}, "
          f"max completion {args.max_completion_length}, beta {args.beta}, temperature {args.temperature}, "
          f"lmbda 1, fp32, device {args.device}; {args.warmup} warm-up + {args.steps} timed steps, "
          f"{args.repeats} run(s) each")
    keys = ("tokens_per_s_step", "tokens_per_s_loop", "tokens_per_cpu_s", "s_per_step", "tokens_per_step",
            "peak_mem_bytes")
    header = (f"{'framework':<12} {'tok/s step':>11} {'tok/s loop':>11} {'tok/CPU-s':>10} {'s/step':>8} "
              f"{'tok/step':>9} {'peak MiB':>9}  time split (last run)")
    print(header)
    print("-" * len(header))
    medians = {}
    for fw, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"{fw:<12} FAILED: {runs[0].get('error') if runs else 'no run'}")
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in keys}
        medians[fw] = med
        name = ok[0]["framework"]
        print(f"{name:<12} {med['tokens_per_s_step']:>11,.0f} {med['tokens_per_s_loop']:>11,.0f} "
              f"{med['tokens_per_cpu_s']:>10,.0f} {med['s_per_step']:>8.3f} {med['tokens_per_step']:>9.0f} "
              f"{mib(med['peak_mem_bytes']):>9.1f}  {fmt_phases(ok[-1])}")
        if len(ok) > 1:
            print(f"{'':<12} per run tok/s step: " + ", ".join(f"{r['tokens_per_s_step']:,.0f}" for r in ok))
    ratios = compare(results)
    for line in ratios["lines"]:
        print(line)
    for fw, runs in results.items():
        first = [r["losses"][0] for r in runs if r.get("losses")]
        if first:
            print(f"{fw}: loss of the first step (sanity check, same models; samples differ) "
                  + ", ".join(f"{x:.4f}" for x in first))
    probe = next((r["memory_probe"] for runs in results.values() for r in runs if "memory_probe" in r), "")
    print(f"memory: {probe}, per framework in its own process, relative to after models load")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()},
                                         "cpu_busy_before": busy, "cpu_busy_after": busy_after,
                                         "ratios": ratios["table"], "results": results}, indent=2))


if __name__ == "__main__":
    main()
