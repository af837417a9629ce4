"""`distributed.strategy`: which `Strategy` spreads the student over the processes."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from distillkit.distributed import ProcessInfo
from distillkit.errors import ConfigError
from distillkit.strategies.data_parallel import DataParallel
from distillkit.strategies.fully_sharded import FullySharded
from distillkit.strategies.strategy import Strategy
from distillkit.strategies.zero import DeepSpeedZero

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (DataParallel, FullySharded, DeepSpeedZero)}

__all__ = ["STRATEGIES", "DataParallel", "DeepSpeedZero", "FullySharded", "Strategy", "make_strategy",
           "strategy_class"]


def strategy_class(cfg: DictConfig) -> type[Strategy]:
    """`distributed.strategy`; `auto` follows `accelerate launch`'s config: FSDP (version 2) or DeepSpeed when it
    names one, data parallel otherwise."""
    dist_cfg = cfg.get("distributed") or {}
    name = dist_cfg.get("strategy", "auto")
    if name != "auto" and name not in STRATEGIES:
        raise ConfigError(f"distributed.strategy={name!r} is not one of {['auto', *STRATEGIES]}.")
    launched_with_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if launched_with_fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError(
            "`accelerate launch` with FSDP version 1 is not supported: distillkit shards with FSDP2 (fully_shard). "
            "Set `fsdp_version: 2` in the accelerate config (conf/accelerate/fsdp2.yaml has it)."
        )
    if name == "auto":
        if launched_with_fsdp:
            return FullySharded
        return DeepSpeedZero if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" else DataParallel
    return STRATEGIES[name]


def make_strategy(cfg: DictConfig, process: ProcessInfo) -> Strategy:
    """One process holds whole weights and needs no reduction: it runs as data parallel whatever the config says."""
    cls = strategy_class(cfg) if process.world_size > 1 else DataParallel
    return cls.from_config(cfg, process)
