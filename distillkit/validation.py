"""Start-up checks on the composed config: everything that can be refused before a model loads."""

from __future__ import annotations

import os
import re

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, open_dict

from distillkit.generation.vllm import require_vllm
from distillkit.model_source import check_model_source
from distillkit.models import DTYPES, ConfigError
from distillkit.precision import check_mixed_precision
from distillkit.schema import check_no_missing_values, check_plain_keys
from distillkit.strategies import strategy_class
from distillkit.trl_keys import check_trl_keys

SUFFIXES = {"method": "", "teacher": "Teacher", "loss": "Divergence", "generation": "Generator"}


def choice(cfg: DictConfig, group: str) -> str:
    """The short name of a group's choice, from its class: `FullDivergence` -> `full`, `TopKDivergence` -> `topk`,
    `HFGenerator` -> `hf`; an acronym before a word is one word: `VLLMServerGenerator` -> `vllm_server`."""
    name = cfg[group]._target_.rsplit(".", 1)[-1].removesuffix(SUFFIXES[group])
    return re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def loss_mode(cfg: DictConfig) -> str:
    return choice(cfg, "loss")


def resolve_beta(cfg: DictConfig) -> None:
    """`method.beta: null` means the loss's natural default: 0.5 (JSD) for full/topk, 1 (reverse KL) for sampled.
    A method without a `beta` key (sft) has no divergence to resolve it for."""
    if "beta" in cfg.method and cfg.method.beta is None:
        with open_dict(cfg):
            cfg.method.beta = get_class(cfg.loss._target_).default_beta


def check_unit_interval(name: str, value) -> None:
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name}={value} must lie in [0, 1].")


def validate(cfg: DictConfig) -> None:
    check_no_missing_values(cfg)  # a recipe's `model.student: ???`
    check_plain_keys(cfg)  # `+train.key=...` gets past the typed schema
    check_trl_keys(cfg)  # `+method.max_new_tokens=...` would reach the method's constructor
    check_model_source("model.student", str(cfg.model.student))
    if choice(cfg, "teacher") == "live" and cfg.teacher.get("model") is not None:  # remote's `model` is a name
        check_model_source("teacher.model", str(cfg.teacher.model))
    resolve_beta(cfg)
    method = cfg.method
    for key in ("lmbda", "beta"):
        if key in method:
            check_unit_interval(f"method.{key}", method[key])
    if float(method.temperature) <= 0:
        raise ConfigError(f"method.temperature={method.temperature} must be > 0.")
    if "beta" in method:
        get_class(cfg.loss._target_).check_options(method.beta, cfg.loss)
    train = cfg.train
    for key in ("steps", "batch_size", "gradient_accumulation_steps", "max_completion_length"):
        if int(train[key]) < 1:
            raise ConfigError(f"train.{key}={train[key]} must be >= 1.")
    for key, dtype in (("model.dtype", cfg.model.dtype), ("teacher.dtype", cfg.teacher.get("dtype", "float32"))):
        if dtype not in DTYPES:
            raise ConfigError(f"{key}={dtype!r} is not one of {sorted(DTYPES)}.")
    strategy = strategy_class(cfg)  # an unknown strategy, or FSDP version 1, is refused here
    check_mixed_precision(train.get("mixed_precision", "no"), cfg.model.dtype, strategy, lora=bool(cfg.model.lora))
    if train.get("async_generation", False):
        check_async_generation(cfg, strategy)
    check_device(cfg)
    check_liger(cfg)
    generation = choice(cfg, "generation")
    if generation == "vllm":
        if not strategy.holds_whole_weights:
            raise ConfigError(
                f"generation=vllm with distributed.strategy={strategy.name} is not supported yet: the colocated engine "
                "needs the student's whole weights after every step. Use generation=hf, or distributed.strategy=ddp."
            )
        require_vllm()
    if generation == "vllm_server" and not strategy.holds_whole_weights:
        raise ConfigError(
            f"generation=vllm_server with distributed.strategy={strategy.name} is not supported yet: the first process "
            "pushes the student's whole weights to the servers, and this strategy shards them over the processes. "
            "Use distributed.strategy=ddp (or deepspeed at ZeRO stage 2), or generation=hf."
        )
    strategy.check_config(cfg)


def check_async_generation(cfg: DictConfig, strategy) -> None:
    """The background sampler is a copy of the student: transformers' `generate` on it, or rollout servers that
    hold its weights (the copy then gives the rollout log-probs)."""
    generation = choice(cfg, "generation")
    if generation not in ("hf", "vllm_server"):
        raise ConfigError(
            f"train.async_generation=true samples with generation=hf from a copy of the student, or with "
            f"generation=vllm_server; generation={generation} is an engine in this process that does not overlap "
            "with the step yet. Use generation=hf or generation=vllm_server, or train.async_generation=false."
        )
    if generation == "vllm_server" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "train.async_generation=true with generation=vllm_server and several training processes: each push and "
            "each generation ends with a collective (so every process stops together on a failed server), which a "
            "background sampler would interleave with the step's. Use one process, or train.async_generation=false."
        )
    if generation == "vllm_server" and int(cfg.generation.sync_every) != 1:
        raise ConfigError(
            f"train.async_generation=true with generation.sync_every={cfg.generation.sync_every}: the rollout "
            "log-probs of the importance ratio come from a copy of the student that takes every step's weights, so "
            "the servers must take them too. Use generation.sync_every=1."
        )
    if strategy.collective_forwards:
        raise ConfigError(
            f"train.async_generation=true with distributed.strategy={strategy.name}: every forward there is a "
            "collective, which a background sampler would interleave. Use distributed.strategy=ddp, or "
            "train.async_generation=false."
        )
    if int(cfg.train.async_generation_threads) < 1:
        raise ConfigError(f"train.async_generation_threads={cfg.train.async_generation_threads} must be >= 1.")
    clip = cfg.train.async_is_clip
    if clip is not None and float(clip) < 1:
        raise ConfigError(f"train.async_is_clip={clip} must be >= 1 (or null for no clip).")


def check_device(cfg: DictConfig) -> None:
    """CUDA-only options on a machine without CUDA are refused here, not after minutes of loading."""
    if torch.cuda.is_available():
        return
    if str(cfg.device).startswith("cuda"):
        raise ConfigError(f"device={cfg.device} but this machine has no CUDA GPU. Use device=cpu or device=auto.")
    if cfg.model.get("attn_implementation") in ("flash_attention_2", "flash_attention_3"):
        raise ConfigError(
            f"model.attn_implementation={cfg.model.attn_implementation} needs a CUDA GPU. Use sdpa or eager."
        )
    if cfg.generation.get("enable_sleep_mode", False):
        raise ConfigError("generation.enable_sleep_mode=true needs a CUDA GPU (vLLM refuses it on CPU). Set it to false.")
    if cfg.loss.get("kernel", "torch") == "liger":
        raise ConfigError("loss.kernel=liger runs Triton kernels on CUDA only. Use loss.kernel=torch on CPU.")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_liger(cfg: DictConfig) -> None:
    """The fused kernel computes the plain generalized JSD: the loss must have one, the method must need nothing
    more, and liger-kernel must be importable."""
    if cfg.loss.get("kernel", "torch") != "liger":
        return
    if not get_class(cfg.method._target_).plain_divergence:
        raise ConfigError(
            f"loss.kernel=liger computes the plain generalized JSD; method={choice(cfg, 'method')} needs token masks, "
            "importance weights or a token term, which the fused kernel lacks. Use loss.kernel=torch."
        )
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError('loss.kernel=liger needs liger-kernel: pip install "distillkit[liger]".')
