"""Setting a run up: `prepare` does the cheap checks (config, tokenizers, vocabularies, data, prompt lengths) before
any weights load; `build` loads the models and puts them under the run's strategy."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import get_scheduler

from distillkit.data.loading import load_split, require_columns, tokenize
from distillkit.distributed import ProcessInfo
from distillkit.generation import Generator, HFGenerator
from distillkit.generation.vllm import check_servable
from distillkit.generation.vllm_server import check_rollout_servers
from distillkit.lm_head import check_head_matches_model
from distillkit.losses.base import Divergence
from distillkit.methods.method import Method
from distillkit.methods.micro_batch import RolloutContext
from distillkit.models import (
    ConfigError,
    DecoderAndHead,
    apply_lora,
    context_length,
    decoder_and_head,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
)
from distillkit.precision import MixedPrecision
from distillkit.rollouts import AsyncRollouts, Rollouts
from distillkit.strategies import Strategy, make_strategy
from distillkit.teachers.in_process import TeacherGenerator
from distillkit.teachers.teacher import Teacher
from distillkit.validation import choice, loss_mode, resolve_device, validate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def check_composition(cfg: DictConfig, method: Method, teacher: Teacher) -> Divergence:
    """Refuse a method x teacher x loss combination that cannot work, before anything loads."""
    divergence = build_object(cfg.loss, beta=method.beta, temperature=method.temperature)
    if divergence.signal not in teacher.signals:
        teacher.check_request(divergence.teacher_request())  # the teacher's own reason first, if it has one
        raise ConfigError(
            f"teacher={choice(cfg, 'teacher')} cannot give what loss={loss_mode(cfg)} needs ({divergence.signal}): "
            f"it returns only {' / '.join(teacher.signals)} (a server sends top-k and token log-probs, not "
            "hidden states or full logits). Use loss=topk or loss=sampled."
        )
    description = teacher.describe()
    if method.scores_student_samples() and not description.scores_unseen:
        raise ConfigError(
            f"teacher={choice(cfg, 'teacher')} answers only for the sequences it recorded, but method="
            f"{choice(cfg, 'method')} asks the teacher about the student's own rollouts. Train off-policy "
            "(method=gkd method.lmbda=0), or set teacher.fallback={kind: live, model: TEACHER} (or kind: remote) to "
            "score them."
        )
    method.check_teacher(description, choice(cfg, "teacher"))
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
    if cfg.train.get("async_generation", False):
        method.check_async_rollouts(choice(cfg, "method"))
    tokenizer = load_tokenizer(cfg.model.student, cfg.model.trust_remote_code)
    student_config = load_model_config(cfg.model.student, cfg.model.trust_remote_code)
    if choice(cfg, "generation") == "vllm":
        check_servable(student_config, on_cuda=resolve_device(cfg.device).type == "cuda")
    if choice(cfg, "generation") == "vllm_server":  # every server answers, before the student loads
        check_rollout_servers(cfg.generation, on_cuda=resolve_device(cfg.device).type == "cuda")
    teacher.check_request(request)
    vocab_size = teacher.shared_vocab_size(tokenizer, student_config)  # a server is asked; a model's config read
    max_prompt_length = prompt_budget(cfg, teacher, student_config)
    method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)  # whole groups only
    train_rows, eval_rows = prepare_data(cfg, tokenizer, max_prompt_length, method)
    teacher.check_rows(train_rows, "training")
    teacher.check_rows(eval_rows, "evaluation")
    return Prepared(method, teacher, tokenizer, vocab_size, train_rows, eval_rows)


def prompt_budget(cfg: DictConfig, teacher: Teacher, student_config) -> int:
    """The longest prompt that leaves room for `train.max_completion_length` in both models' contexts."""
    contexts = [c for c in (teacher.context_length, context_length(student_config)) if c]
    max_prompt_length = (min(contexts) if contexts else 10**9) - cfg.train.max_completion_length
    if max_prompt_length < 1:
        raise ConfigError(
            f"train.max_completion_length={cfg.train.max_completion_length} leaves no room for a prompt in a "
            f"{min(contexts)}-token context. Lower it."
        )
    return max_prompt_length


def prepare_data(cfg: DictConfig, tokenizer, max_prompt_length: int, method: Method):
    needs_completions = method.needs_dataset_completions
    train_set = load_split(cfg.data, "train")
    require_columns(train_set, needs_completions, "training", method.required_columns())
    eval_set = load_split(cfg.data, "eval")
    require_columns(eval_set, False, "evaluation")
    train_rows = tokenize(train_set, tokenizer, max_prompt_length, needs_completions, "training")
    eval_rows = tokenize(eval_set, tokenizer, max_prompt_length, True, "evaluation")
    method.prepare_rows(train_rows, tokenizer, max_prompt_length, max_prompt_length, "training")
    return train_rows, eval_rows


@dataclass
class Parts:
    """The live objects of a run: one from each config group, plus the student, its optimizer and its strategy."""

    cfg: DictConfig
    device: torch.device
    method: Method
    teacher: Teacher
    tokenizer: object
    vocab_size: int
    student: torch.nn.Module
    student_parts: DecoderAndHead
    divergence: Divergence
    generator: Generator
    teacher_generator: TeacherGenerator | None
    params: list[torch.nn.Parameter]
    process: ProcessInfo
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: MixedPrecision
    strategy: Strategy
    rollouts: Rollouts


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
    teacher.setup(device, prepared.vocab_size, student)  # before wrapping: a frozen or EMA copy is made whole
    strategy = make_strategy(cfg, process)
    strategy.wrap_module(student)
    teacher.place(strategy, student)
    params = [p for p in student.parameters() if p.requires_grad]  # after wrapping: FSDP's sharded parameters
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  betas=tuple(cfg.train.adam_betas))
    strategy.attach_optimizer(student, optimizer)
    generator = instantiate(cfg.generation).bind(student, tokenizer)
    precision = MixedPrecision(cfg.train.get("mixed_precision", "no"), device)
    teacher_sampler = teacher_generator(cfg, teacher, tokenizer)
    rollouts = make_rollouts(cfg, method, generator, teacher_sampler, tokenizer, student, prepared.vocab_size,
                             precision, process)
    return Parts(
        cfg=cfg, device=device, method=method, teacher=teacher, tokenizer=tokenizer,
        vocab_size=prepared.vocab_size, student=student, student_parts=strategy.decoder_and_head(student),
        divergence=instantiate(cfg.loss, beta=method.beta, temperature=method.temperature),
        generator=generator, teacher_generator=teacher_sampler,
        params=params, process=process, optimizer=optimizer,
        scheduler=get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                                num_training_steps=cfg.train.steps),
        precision=precision, strategy=strategy, rollouts=rollouts,
    )


def make_rollouts(cfg: DictConfig, method: Method, generator: Generator, teacher_sampler: TeacherGenerator | None,
                  tokenizer, student: torch.nn.Module, vocab_size: int, precision: MixedPrecision,
                  process: ProcessInfo) -> Rollouts:
    """The step's rollouts made when it starts, or (`train.async_generation`) one step ahead from a copy."""
    context = RolloutContext(generator, teacher_sampler, tokenizer, cfg.train.gradient_accumulation_steps,
                             cfg.train.seed)
    if not cfg.train.get("async_generation", False):
        return Rollouts(method, context)
    seed = (cfg.train.seed + 1_000_003 * process.rank) * 1_000_033
    return AsyncRollouts.around(student, generator, method, context, vocab_size, precision, seed,
                                cfg.train.async_generation_threads, cfg.train.async_is_clip)


def teacher_generator(cfg: DictConfig, teacher: Teacher, tokenizer, greedy: bool = False) -> TeacherGenerator | None:
    """Sampling (seq_kd) or greedy decoding (the teacher's accuracy) with the teacher's weights; None if remote."""
    if not teacher.can_generate:
        return None
    kwargs = {"max_completion_length": cfg.train.max_completion_length} if greedy else generation_kwargs(cfg)
    return TeacherGenerator(HFGenerator(**kwargs).bind(teacher.model, tokenizer), teacher)


def generation_kwargs(cfg: DictConfig) -> dict:
    keys = ("temperature", "top_p", "top_k", "max_completion_length", "batch_size")
    return {k: cfg.generation[k] for k in keys if k in cfg.generation}
