"""DeepSpeed ZeRO stages 1 and 2 (`distributed.strategy=deepspeed`): AdamW's state (stage 1) and the gradients
(stage 2) partitioned over the processes, through a DeepSpeed engine.

The weights stay whole on every process, so the rollouts, the teachers and the chunked loss read them as without
DeepSpeed; only the backward, the gradient reduction, the clipping and the optimizer step go through the engine.
DeepSpeed averages gradients over processes and the loss is already divided by the whole step's token count, so
the loss is multiplied by the number of processes: the update is the single-process one of the global batch.
ZeRO-3 shards the weights as FSDP2 does; it is refused with that fix (`distributed.strategy=fsdp2`), because the
loss reads the head weight outside its module's forward, where ZeRO-3 holds only a partition.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from distillkit.errors import ConfigError

CHECKPOINT_FOLDER = "deepspeed"  # inside a distillkit checkpoint: the engine's partitioned optimizer state
CHECKPOINT_TAG = "state"


def require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(
            'distributed.strategy=deepspeed needs DeepSpeed: pip install "distillkit[deepspeed]" (or '
            "distributed.strategy=fsdp2, which needs nothing more)."
        ) from None


def zero_config(cfg: DictConfig) -> dict:
    """The engine's config: a DeepSpeed JSON (accelerate's `deepspeed_config_file`, or `distributed.deepspeed_config`)
    for anything DeepSpeed-specific (offload, buckets), with the batch, clipping and precision taken from distillkit's
    own keys so the two never disagree."""
    dist_cfg = cfg.get("distributed") or {}
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or dist_cfg.get("deepspeed_config")
    config = json.loads(Path(path).read_text()) if path and path != "none" else {}
    zero = dict(config.get("zero_optimization") or {})
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or zero.get("stage") or dist_cfg.get("zero_stage", 2)
    if str(stage) not in ("1", "2"):
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage} is not supported: distillkit runs ZeRO stages 1 and 2. For sharded weights "
            "(what stage 3 does), use FSDP2: distributed.strategy=fsdp2, or `accelerate launch --config_file "
            "conf/accelerate/fsdp2.yaml`."
        )
    zero["stage"] = int(stage)
    offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
    if offload and offload != "none":
        zero["offload_optimizer"] = {"device": offload}
    train = cfg.train
    config.update({
        "train_micro_batch_size_per_gpu": int(train.batch_size),
        "gradient_accumulation_steps": int(train.gradient_accumulation_steps),
        "gradient_clipping": float(train.max_grad_norm),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # distillkit's torch AdamW, with its own scheduler
        "zero_force_ds_cpu_optimizer": False,  # ... also when its state is offloaded to host memory
        "steps_per_print": 10**9,
    })
    config.pop("train_batch_size", None)  # DeepSpeed derives it from the two above and the number of processes
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    dtype = cfg.model.dtype
    config["bf16"] = {"enabled": dtype == "bfloat16"}  # fp32 master weights for a bf16 model
    config["fp16"] = {"enabled": dtype == "float16"}
    return config


class ZeroEngine:
    """The DeepSpeed engine around the student and its AdamW; the student's own modules run the forwards."""

    def __init__(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict, world_size: int):
        import deepspeed

        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, config=config)
        self.world_size = world_size

    def backward(self, loss: torch.Tensor, last_of_step: bool) -> None:
        """`loss` is already normalized by the step's tokens; the engine reduces gradients at the step's last one."""
        self.engine.set_gradient_accumulation_boundary(last_of_step)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> float:
        """Clip (`train.max_grad_norm`), update, zero the gradients. The global gradient norm before clipping."""
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def save(self, folder: Path) -> None:
        """Every process writes its partition (collective)."""
        self.engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder), tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                    load_lr_scheduler_states=False, load_module_strict=False)
