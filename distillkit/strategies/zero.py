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

from distillkit.distributed import ProcessInfo, barrier, same_on_every_process
from distillkit.errors import ConfigError
from distillkit.precision import MixedPrecision
from distillkit.strategies.strategy import Strategy

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


class DeepSpeedZero(Strategy):
    """`distributed.strategy=deepspeed`: a DeepSpeed engine around the student and its AdamW; the student's own
    modules run the forwards."""

    name = "deepspeed"
    collective_forwards = True  # each backward is a collective
    runs_loss_scaler = False  # DeepSpeed scales fp16 losses itself

    def __init__(self, config: dict, world_size: int):
        self.config, self.world_size = config, world_size
        self.engine = None  # made by `attach_optimizer`

    @classmethod
    def from_config(cls, cfg: DictConfig, process: ProcessInfo) -> DeepSpeedZero:
        return cls(zero_config(cfg), process.world_size)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        require_deepspeed()
        zero_config(cfg)  # ZeRO-3 and an unreadable DeepSpeed config are refused here

    def attach_optimizer(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        import deepspeed

        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, config=self.config)

    def backward(self, loss: torch.Tensor, precision: MixedPrecision, last_of_step: bool) -> None:
        """The engine averages over processes, so the loss is multiplied by their number; it reduces the gradients
        at the step's last backward."""
        self.engine.set_gradient_accumulation_boundary(last_of_step)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """The engine reduced them into its partitions, in the step's last backward."""

    def step(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, precision: MixedPrecision,
             max_grad_norm: float, has_loss: bool) -> float:
        """The engine clips (`gradient_clipping`, set from train.max_grad_norm), updates and zeroes; a step with no
        backward has nothing to reduce and is skipped."""
        if not has_loss:
            return 0.0
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def optimizer_state(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        return None  # partitioned: each process writes its own (`save_partitions`)

    def save_partitions(self, staged: Path | None) -> None:
        """Every process writes its partition of the optimizer state into the staged checkpoint (collective)."""
        barrier()
        folder = Path(same_on_every_process(str(staged))) / CHECKPOINT_FOLDER
        self.engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG, save_latest=False)
        barrier()

    def load(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, folder: Path,
             strict: bool) -> None:
        student.load_state_dict(state["model"], strict=strict)
        self.engine.load_checkpoint(str(folder / CHECKPOINT_FOLDER), tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                    load_lr_scheduler_states=False, load_module_strict=False)
