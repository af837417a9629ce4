"""The training loop, top to bottom: load, roll out, score, step, track, checkpoint, evaluate.

Every method runs this one loop. The method builds the micro-batches of an optimizer step, the teacher scores
their completion tokens, the divergence compares the two, and the loss is normalized by the number of
completion tokens in the whole optimizer step (all micro-batches, all processes).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import get_scheduler

from distillkit.batch import completion_hidden
from distillkit.checkpoint import (
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    set_rng_state,
    stage_checkpoint,
    trainable_state,
)
from distillkit.data.loading import load_split, require_columns, tokenize
from distillkit.distributed import (
    ProcessInfo,
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    gather_lists,
    init_distributed,
    same_on_every_process,
    sum_across_processes,
)
from distillkit.evaluation import exact_match, teacher_forced_kl
from distillkit.generation import Generator, HFGenerator
from distillkit.generation.vllm import check_servable
from distillkit.lm_head import check_head_matches_model
from distillkit.losses import StudentTokens
from distillkit.methods import RolloutContext
from distillkit.methods.method import Method
from distillkit.models import (
    ConfigError,
    apply_lora,
    context_length,
    decoder_and_head,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
)
from distillkit.precision import MixedPrecision
from distillkit.preemption import PreemptionGuard
from distillkit.serve.client import TeacherError
from distillkit.sharding import (
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    reshard_after_forward,
    shard,
    sharding_strategy,
)
from distillkit.sweep import SweepJob
from distillkit.teachers.in_process import TeacherGenerator
from distillkit.teachers.teacher import Teacher
from distillkit.tracking import Tracker
from distillkit.validation import SUFFIXES, choice, loss_mode, resolve_device, validate
from distillkit.zero import CHECKPOINT_FOLDER, ZeroEngine, zero_config


@dataclass
class Summary:
    """What the run prints at the end (and what tests read)."""

    student_accuracy: list[float] = field(default_factory=list)  # [before, after]
    teacher_accuracy: float = float("nan")
    teacher_kl: list[float] = field(default_factory=list)  # [before, after]
    tokens_per_s: float = 0.0
    steps: int = 0  # optimizer steps taken, counted (a resumed run counts the steps before the kill too)
    run_id: str | None = None
    ui_command: str = ""
    final_model_dir: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StepSampler:
    """Which data set rows an optimizer step uses: a function of (seed, step) alone, so resuming needs no state."""

    def __init__(self, num_rows: int, rows_per_step: int, seed: int):
        self.num_rows, self.rows_per_step, self.seed = num_rows, rows_per_step, seed
        self._epoch, self._order = -1, []

    def indices(self, step: int) -> list[int]:
        out = []
        for position in range(step * self.rows_per_step, (step + 1) * self.rows_per_step):
            epoch, offset = divmod(position, self.num_rows)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._order[offset]))
        return out


def prepare_data(cfg: DictConfig, tokenizer, max_prompt_length: int, method):
    needs_completions = method.needs_dataset_completions
    train_set = load_split(cfg.data, "train")
    require_columns(train_set, needs_completions, "training", method.required_columns())
    eval_set = load_split(cfg.data, "eval")
    require_columns(eval_set, False, "evaluation")
    train_rows = tokenize(train_set, tokenizer, max_prompt_length, needs_completions, "training")
    eval_rows = tokenize(eval_set, tokenizer, max_prompt_length, True, "evaluation")
    method.prepare_rows(train_rows, tokenizer, max_prompt_length, max_prompt_length, "training")
    return train_rows, eval_rows


def build_object(node, **kwargs):
    """`hydra.utils.instantiate`, with a constructor's ConfigError passed on as is (not wrapped by Hydra)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unknown:  # a key added with `+group.key=...` or in a YAML that the class does not take
            target = node._target_.rsplit(".", 1)[-1]
            raise ConfigError(f"{unknown.group(1)!r} is not a setting of {target}: check its spelling against "
                              "`distillkit --cfg job`, or remove it.") from None
        raise


def check_composition(cfg: DictConfig, method: Method, teacher: Teacher):
    """Refuse a method x teacher x loss combination that cannot work, before anything loads."""
    divergence = build_object(cfg.loss, beta=method.beta, temperature=method.temperature)
    if divergence.signal not in teacher.signals:
        raise ConfigError(
            f"teacher={choice(cfg, 'teacher')} cannot give what loss={loss_mode(cfg)} needs ({divergence.signal}): "
            f"it returns only {' / '.join(teacher.signals)} (a server sends top-k and token log-probs, not "
            "hidden states or full logits). Use loss=topk or loss=sampled."
        )
    method.check_teacher(teacher.describe(), choice(cfg, "teacher"))
    return divergence


@dataclass
class Prepared:
    """Everything settled before a model loads: the parsed objects, the shared vocabulary and the token ids."""

    method: Method
    teacher: Teacher
    tokenizer: object
    vocab_size: int
    train_rows: list[dict]
    eval_rows: list[dict]


def prepare(cfg: DictConfig) -> Prepared:
    """The cheap checks: config, tokenizers, vocabularies, data and prompt lengths. No weights are loaded."""
    validate(cfg)
    method = build_object(cfg.method)
    teacher = build_object(cfg.teacher)
    request = check_composition(cfg, method, teacher).teacher_request()
    tokenizer = load_tokenizer(cfg.model.student, cfg.model.trust_remote_code)
    student_config = load_model_config(cfg.model.student, cfg.model.trust_remote_code)
    if choice(cfg, "generation") == "vllm":
        check_servable(student_config, on_cuda=resolve_device(cfg.device).type == "cuda")
    teacher.check_request(request)
    vocab_size = teacher.shared_vocab_size(tokenizer, student_config)  # a server is asked; a model's config read
    contexts = [c for c in (teacher.context_length, context_length(student_config)) if c]
    max_prompt_length = (min(contexts) if contexts else 10**9) - cfg.train.max_completion_length
    if max_prompt_length < 1:
        raise ConfigError(
            f"train.max_completion_length={cfg.train.max_completion_length} leaves no room for a prompt in a "
            f"{min(contexts)}-token context. Lower it."
        )
    method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)  # whole groups only
    train_rows, eval_rows = prepare_data(cfg, tokenizer, max_prompt_length, method)
    return Prepared(method, teacher, tokenizer, vocab_size, train_rows, eval_rows)


@dataclass
class Parts:
    """The live objects of a run: one from each config group, plus the student and its optimizer."""

    cfg: DictConfig
    device: torch.device
    method: Method
    teacher: Teacher
    tokenizer: object
    vocab_size: int
    student: torch.nn.Module
    student_parts: object
    divergence: object
    generator: Generator
    teacher_generator: TeacherGenerator | None
    params: list
    process: ProcessInfo
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: MixedPrecision
    strategy: str = "ddp"  # several processes: ddp, fsdp2 (student and separate teachers sharded) or deepspeed
    engine: ZeroEngine | None = None  # deepspeed: backward, reduction, clipping and step go through it

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp2"


def build(cfg: DictConfig, prepared: Prepared, process: ProcessInfo | None = None) -> Parts:
    process = process or ProcessInfo()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and process.world_size > 1:
        device = torch.device("cuda", process.local_rank)
    seed_everything(cfg.train.seed)  # the same on every process: the LoRA initialization must agree
    tokenizer, method, teacher = prepared.tokenizer, prepared.method, prepared.teacher
    student = load_causal_lm(cfg.model.student, cfg.model.dtype, device, cfg.model.trust_remote_code,
                             cfg.model.get("attn_implementation"))
    check_head_matches_model(student, decoder_and_head(student).hidden_states, f"The student {cfg.model.student}")
    if cfg.model.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.lora:
        student = apply_lora(student, dict(cfg.model.lora))
    student.train()
    teacher.setup(device, prepared.vocab_size, student)  # before sharding: a frozen or EMA copy is made whole
    strategy = sharding_strategy(cfg) if process.world_size > 1 else "ddp"
    if strategy == "fsdp2":
        shard(student, reshard_after_forward(cfg))
        teacher.shard(student, reshard_after_forward(cfg))
    params = [p for p in student.parameters() if p.requires_grad]  # after sharding: the sharded parameters
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  betas=tuple(cfg.train.adam_betas))
    engine = ZeroEngine(student, optimizer, zero_config(cfg), process.world_size) if strategy == "deepspeed" else None
    return Parts(
        cfg=cfg, device=device, method=method, teacher=teacher, tokenizer=tokenizer,
        vocab_size=prepared.vocab_size, student=student, student_parts=decoder_and_head(student),
        divergence=instantiate(cfg.loss, beta=method.beta, temperature=method.temperature),
        generator=instantiate(cfg.generation).bind(student, tokenizer),
        teacher_generator=teacher_generator(cfg, teacher, tokenizer),
        params=params, process=process, optimizer=optimizer,
        scheduler=get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                                num_training_steps=cfg.train.steps),
        precision=MixedPrecision(cfg.train.get("mixed_precision", "no"), device), strategy=strategy, engine=engine,
    )


def teacher_generator(cfg: DictConfig, teacher, tokenizer, greedy: bool = False) -> TeacherGenerator | None:
    """Sampling (seq_kd) or greedy decoding (the teacher's accuracy) with the teacher's weights; None if remote."""
    if not teacher.can_generate:
        return None
    kwargs = {"max_completion_length": cfg.train.max_completion_length} if greedy else _generation_kwargs(cfg)
    return TeacherGenerator(HFGenerator(**kwargs).bind(teacher.model, tokenizer), teacher)


def accumulate_gradients(parts: Parts, micros: list, clock: StepClock | None = None) -> dict[str, float]:
    """Forward and backward over an optimizer step's micro-batches.

    Each micro-batch's summed loss is divided by the loss-token count of the whole step (all micro-batches,
    all processes), so the gradient does not depend on how the step is split.
    """
    clock = clock or StepClock()
    method = parts.method
    if parts.strategy != "ddp":  # each backward (and each FSDP forward) is a collective
        same_forwards_on_every_process(micros)
    terms = [method.token_term(m, parts.device) for m in micros]  # SDPO's PPO-clip term, SFT's cross-entropy
    has_loss = [m.teacher is not None or term is not None for m, term in zip(micros, terms, strict=True)]
    last = max((i for i, loses in enumerate(has_loss) if loses), default=-1)
    step_tokens = all_reduce_sum(sum(m.loss_tokens for m in micros), parts.device)
    norm = max(step_tokens, 1)
    completion_tokens = sum(m.student.num_completion_tokens for m in micros)
    sums: dict[str, float] = {}
    metrics = {"train/loss": 0.0, "train/loss_on_policy": 0.0, "train/loss_off_policy": 0.0,
               "train/tokens": all_reduce_sum(completion_tokens, parts.device),
               "train/micro_batches_with_loss": float(sum(has_loss))}
    for i, (micro, term) in enumerate(zip(micros, terms, strict=True)):
        if not has_loss[i]:  # e.g. SDPO w=1 and no rollout in it was reprompted: nothing to learn from
            continue
        batch = micro.student.to(parts.device)
        teacher_tokens = None
        if micro.teacher is not None:
            with clock("teacher"):
                teacher_tokens = parts.teacher.score(micro.teacher.to(parts.device), parts.divergence.teacher_request())
        with clock("update"), parts.precision.autocast():
            hidden = parts.student_parts.hidden_states(batch.input_ids, batch.attention_mask)
            student_tokens = StudentTokens(
                completion_hidden(hidden, batch), parts.student_parts.lm_head(parts.vocab_size),
                batch.completion_targets(),
                weights=to_device(micro.distill_weights, parts.device),
                old_logprobs=to_device(micro.old_logprobs, parts.device), is_clip=method.distillation_is_clip,
            )
            out = parts.divergence(student_tokens, teacher_tokens, term, method.distillation_weight)
        with clock("update"):
            if parts.engine is not None:
                parts.engine.backward(out.loss_sum / norm, last_of_step=i == last)
            else:
                parts.precision.scale(out.loss_sum / norm).backward()
        if method.num_iterations > 1:  # the first step's become pi_old of the reuse steps to come
            micro.token_logprobs = out.token_logprobs.cpu()
        loss = out.loss_sum.item() / norm
        metrics["train/loss"] += loss
        metrics["train/loss_on_policy" if micro.on_policy else "train/loss_off_policy"] += loss
        for key, value in out.stats.items():
            sums[key] = sums.get(key, 0.0) + value
    loss_keys = ("train/loss", "train/loss_on_policy", "train/loss_off_policy")
    sums = sum_across_processes({**{k: metrics[k] for k in loss_keys}, **sums})  # one collective for all
    metrics.update({k: sums.pop(k) for k in loss_keys})
    token_norm = max(metrics["train/tokens"], 1)
    metrics["train/kl"] = sums.get("kl", 0.0) / max(sums.get("kl_tokens", 0.0), 1)  # over distilled tokens only
    metrics["train/entropy"] = sums.get("entropy", 0.0) / token_norm
    if "distillation" in sums:
        metrics["train/distillation_loss"] = sums["distillation"] / norm
    if "policy" in sums:  # the method's token term (SDPO's PPO-clip term, SFT's cross-entropy)
        metrics["train/policy_loss"] = sums["policy"] / norm
    if "policy_clipped" in sums:
        metrics["train/policy_clipped_fraction"] = sums["policy_clipped"] / token_norm
        metrics["train/policy_ratio_mean"] = sums["policy_ratio"] / token_norm
    if "is_ratio" in sums:
        metrics["train/is_ratio_mean"] = sums["is_ratio"] / token_norm
        metrics["train/is_clipped_fraction"] = sums["is_clipped"] / token_norm
    return metrics


def same_forwards_on_every_process(micros: list) -> None:
    """Under FSDP every forward, and under DeepSpeed every backward, is a collective, so every process must run the
    same micro-batches with the same terms. A micro-batch that has no teacher batch here (e.g. SDPO: no rollout in
    it was reprompted) but has one on another process gets the student's own view with every token masked out: a
    forward with no loss."""
    everyone, _ = gather_lists([[m.teacher is not None for m in micros]])
    for i, micro in enumerate(micros):
        if micro.teacher is None and any(flags[i] for flags in everyone):
            micro.teacher = micro.student
            micro.distill_weights = torch.zeros(micro.student.num_completion_tokens)


def to_device(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def optimizer_step(parts: Parts, rows: list[dict], step: int, clock: StepClock) -> dict[str, float]:
    """One optimizer step: buffered rollouts for all micro-batches, accumulation, update, teacher update."""
    cfg = parts.cfg
    context = RolloutContext(parts.generator, parts.teacher_generator, parts.tokenizer,
                             cfg.train.gradient_accumulation_steps, cfg.train.seed)
    with clock("generate"), parts.precision.autocast():
        micros = parts.method.micro_batches(step, rows, context)
    metrics = accumulate_gradients(parts, micros, clock)
    with clock("update"):
        if parts.engine is not None:  # reduced in the backward; the engine clips, steps and zeroes
            grad_norm = parts.engine.step() if metrics["train/micro_batches_with_loss"] else 0.0
        else:
            if not parts.sharded:  # FSDP's reduce-scatter already summed them
                all_reduce_gradients(parts.params)  # the sum over processes is the whole step's gradient
            parts.precision.unscale(parts.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(parts.params, cfg.train.max_grad_norm)
            parts.precision.step(parts.optimizer)
            parts.optimizer.zero_grad(set_to_none=True)
        parts.scheduler.step()
    parts.teacher.after_optimizer_step(step + 1)
    parts.generator.sync(parts.student)
    clock.tokens += metrics["train/tokens"]
    lengths = torch.cat([m.student.completion_mask.sum(1).float() for m in micros])
    metrics.update({
        "train/grad_norm": float(grad_norm), "train/lr": parts.scheduler.get_last_lr()[0],
        "train/on_policy_fraction": sum(m.on_policy for m in micros) / len(micros),
        "completions/mean_length": float(lengths.mean()), "completions/max_length": float(lengths.max()),
        "completions/min_length": float(lengths.min()),
        **parts.method.metrics(), **clock.metrics(),
    })
    return metrics


def run(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None, sweep: SweepJob | None = None
        ) -> Summary:
    process = init_distributed(on_cpu=resolve_device(cfg.device).type == "cpu")
    output_dir = Path(same_on_every_process(str(output_dir)))  # one folder: the checkpoints to resume from
    prepared = prepare(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    parts = build(cfg, prepared, process)
    if process.rank:  # each process samples its own rollouts
        seed_everything(cfg.train.seed + 1_000_003 * process.rank)
    try:
        with PreemptionGuard() as guard:
            return train(cfg, output_dir, overrides, prepared, parts, sweep, guard)
    finally:
        parts.generator.close()  # a colocated vLLM engine holds memory until shut down


def train(cfg: DictConfig, output_dir: Path, overrides: list[str] | None, prepared: Prepared, parts: Parts,
          sweep: SweepJob | None = None, guard: PreemptionGuard | None = None) -> Summary:
    eval_rows = prepared.eval_rows
    greedy_student = HFGenerator(max_completion_length=cfg.train.max_completion_length).bind(
        parts.student, parts.tokenizer)

    def evaluate_student() -> dict[str, float]:
        return evaluate(parts, greedy_student, eval_rows)

    # ---- resume
    checkpoints = output_dir / "checkpoints"
    start_step = 0
    resume_from = latest_checkpoint(checkpoints) if cfg.train.resume else None
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        check_same_strategy(state, parts)
        load_model_state(parts.student, state["model"], strict=not cfg.model.lora)
        if parts.engine is not None:
            parts.engine.load(resume_from / CHECKPOINT_FOLDER)
        else:
            load_optimizer_state(parts.student, parts.optimizer, state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        parts.precision.load_state_dict(state.get("precision", {}))
        parts.teacher.load_state_dict(state["teacher"])
        parts.method.load_state_dict(own_share(state, "method", parts.process) or {})
        parts.generator.sync(parts.student, force=True)  # a separate engine (vLLM) gets the resumed weights
        start_step = state["step"]
    main = parts.process.is_main  # one process tracks, checkpoints and saves; all of them train and evaluate
    tracker = Tracker(cfg.tracking.enabled and main, cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.run_name)
    tracker.start(cfg, overrides or [], output_dir, run_tags(cfg), sweep)
    if resume_from is not None:
        summary = Summary(**state["summary"])
        set_rng_state(own_share(state, "rng", parts.process))  # last: nothing before the loop draws from them
        print(f"Resumed from {resume_from} (step {start_step}).")
    else:
        summary = Summary()
        teacher_greedy = teacher_generator(cfg, parts.teacher, parts.tokenizer, greedy=True)
        summary.teacher_accuracy = exact_match(teacher_greedy, eval_rows) if teacher_greedy else float("nan")
        before = evaluate_student()
        summary.student_accuracy.append(before["eval/accuracy"])
        summary.teacher_kl.append(before["eval/teacher_kl"])
        tracker.log({**before, "eval/teacher_accuracy": summary.teacher_accuracy}, step=0)
    summary.run_id, summary.ui_command = tracker.run_id, tracker.ui_command()

    # ---- train
    train_rows = prepared.train_rows
    # Rows per step: prompts, each sampled num_generations times; a rollout batch serves num_iterations steps.
    prompts_per_step = parts.method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)
    world, rank = parts.process.world_size, parts.process.rank
    sampler = StepSampler(len(train_rows), prompts_per_step * world, cfg.data.seed)  # each process takes a share
    iterations = parts.method.num_iterations
    clock = StepClock()
    progress = tqdm(range(start_step, cfg.train.steps), initial=start_step, total=cfg.train.steps,
                    desc=f"{choice(cfg, 'method')} {loss_mode(cfg)}", dynamic_ncols=True, disable=not main)
    def checkpoint(step: int, rng: dict | None = None, method_state: dict | None = None) -> None:
        # Every process's RNG streams and method state (its rollout buffer), so each one resumes exactly.
        rngs, _ = gather_lists([rng or rng_state()])
        methods, _ = gather_lists([parts.method.state_dict() if method_state is None else method_state])
        # Whole tensors, gathered from the shards under FSDP (collectives: every process takes part; otherwise only
        # the main process needs them). Under DeepSpeed the optimizer state stays partitioned: every process writes
        # its own into the staged folder.
        if main or parts.sharded:
            model, teacher = trainable_state(parts.student, model_state(parts.student)), parts.teacher.state_dict()
            optimizer = None if parts.engine else optimizer_state(parts.student, parts.optimizer)
        staged = stage_checkpoint(checkpoints, step) if main else None
        if parts.engine is not None:
            barrier()
            parts.engine.save(Path(same_on_every_process(str(staged))) / CHECKPOINT_FOLDER)
            barrier()
        if main:
            commit_checkpoint(checkpoints, step, {
                "model": model, "optimizer": optimizer, "scheduler": parts.scheduler.state_dict(), "precision": parts.precision.state_dict(),
                "teacher": teacher, "summary": asdict(summary), "strategy": parts.strategy,
                "method": methods[0], "method_per_process": methods, "rng_per_process": rngs,
            }, keep_last=cfg.train.keep_checkpoints, rng=rngs[0])
        barrier()

    for step in progress:
        step_rng, step_method = rng_state(), dict(parts.method.state_dict())
        try:
            indices = sampler.indices(step // iterations)[rank * prompts_per_step : (rank + 1) * prompts_per_step]
            rows = [train_rows[i] for i in indices]
            metrics = optimizer_step(parts, rows, step, clock)
        except TeacherError:
            parts.optimizer.zero_grad(set_to_none=True)
            checkpoint(step, rng=step_rng, method_state=step_method)  # the state before this step: redone exactly
            tracker.end(status="FAILED")
            raise
        done = step + 1
        summary.steps += 1
        progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            tracker.log(metrics, step=done)
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != cfg.train.steps:
            tracker.log(evaluate_student(), step=done)
        if cfg.train.save_every and done % cfg.train.save_every == 0 and done != cfg.train.steps:
            checkpoint(done)
        stop = guard is not None and all_reduce_sum(float(guard.requested), parts.device) > 0
        if stop and done != cfg.train.steps:  # SLURM preemption or timeout; every process stops at the same step
            checkpoint(done)
            tracker.end(status="KILLED")  # reopened (same run id) by the resumed job
            progress.close()
            barrier()
            guard.hand_over(done)
    progress.close()

    # ---- finish
    after = evaluate_student()
    tracker.log(after, step=cfg.train.steps)
    summary.student_accuracy.append(after["eval/accuracy"])
    summary.teacher_kl.append(after["eval/teacher_kl"])
    summary.tokens_per_s = clock.tokens_per_s()
    final_dir = output_dir / "final_model"
    final_state = model_state(parts.student) if parts.sharded else None  # gathered by every process
    if main:
        parts.student.save_pretrained(final_dir, **({"state_dict": final_state} if parts.sharded else {}))
        parts.tokenizer.save_pretrained(final_dir)
    barrier()
    summary.final_model_dir = str(final_dir)
    tracker.set_tags({"distillkit.final_model": str(final_dir.resolve())})
    tracker.log({"summary/tokens_per_s": summary.tokens_per_s}, step=cfg.train.steps)
    tracker.end()
    return summary


def check_same_strategy(state: dict, parts: Parts) -> None:
    """Each strategy keeps the optimizer state its own way: by position (ddp), by parameter name (fsdp2), in
    DeepSpeed's partitions (deepspeed)."""
    was, now = state.get("strategy", "ddp"), parts.strategy
    if was != now:
        raise ConfigError(
            f"The checkpoint was written with distributed.strategy={was} and this run uses {now}. Resume with "
            f"distributed.strategy={was}, or start a fresh run (train.resume=false or another output folder)."
        )


def own_share(state: dict, key: str, process: ProcessInfo):
    """This process's entry of a checkpoint's per-process `key` (rng, method). A checkpoint from another number
    of processes cannot hand each one its own streams: refuse rather than resume inexactly."""
    shares = state.get(f"{key}_per_process")
    if shares is None:  # written by one process
        shares = [state.get(key)]
    if len(shares) != process.world_size:
        raise ConfigError(
            f"The checkpoint was written by {len(shares)} process(es) and this run has {process.world_size}. Resume "
            "with the same number of processes, or start a fresh run (train.resume=false or another output folder)."
        )
    return shares[process.rank]


def evaluate(parts: Parts, greedy_student, eval_rows: list[dict]) -> dict[str, float]:
    was_training = parts.student.training
    parts.student.eval()
    try:
        return {
            "eval/accuracy": exact_match(greedy_student, eval_rows),
            "eval/teacher_kl": teacher_forced_kl(parts.student_parts, parts.teacher, eval_rows,
                                                 parts.vocab_size, parts.tokenizer.pad_token_id, parts.device),
        }
    finally:
        parts.student.train(was_training)


def _generation_kwargs(cfg: DictConfig) -> dict:
    keys = ("temperature", "top_p", "top_k", "max_completion_length", "batch_size")
    return {k: cfg.generation[k] for k in keys if k in cfg.generation}


def run_tags(cfg: DictConfig) -> dict[str, str]:
    return {group: choice(cfg, group) for group in SUFFIXES}


class StepClock:
    """Wall time per phase (generation, teacher scoring, update) and completion tokens per second."""

    def __init__(self):
        self.totals = {"generate": 0.0, "teacher": 0.0, "update": 0.0}
        self.tokens = 0.0
        self._phase = None

    def __call__(self, phase: str):
        self._phase = phase
        return self

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.totals[self._phase] += time.perf_counter() - self._start

    def tokens_per_s(self) -> float:
        return self.tokens / max(sum(self.totals.values()), 1e-9)

    def metrics(self) -> dict[str, float]:
        total = max(sum(self.totals.values()), 1e-9)
        return {"train/tokens_per_s": self.tokens_per_s(),
                **{f"time/{k}_fraction": v / total for k, v in self.totals.items()}}
