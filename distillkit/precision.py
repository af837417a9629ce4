"""`train.mixed_precision`: autocast over the student's forward, fp32 master weights and optimizer state.

This is what accelerate and the HF Trainer call mixed precision: the weights and AdamW state stay fp32, matmuls
run in bf16 or fp16 inside `torch.autocast`, and fp16 adds a dynamic loss scaler against underflow. Pure
low-precision weights are a different thing and stay available as `model.dtype=bfloat16`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from distillkit.errors import ConfigError

if TYPE_CHECKING:
    from distillkit.strategies import Strategy

AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def mode_name(mode) -> str:
    """YAML reads a bare `no` as false."""
    return "no" if mode in (False, None) else str(mode)


def check_mixed_precision(mode, model_dtype: str, strategy: type[Strategy], lora: bool = False) -> None:
    """Refused before anything loads: an unknown mode, low-precision trained weights, or fp16 with sharding. Under
    LoRA only the adapter trains, and peft keeps it fp32 over a low-precision base: that is allowed."""
    mode = mode_name(mode)
    if mode not in AUTOCAST_DTYPES:
        raise ConfigError(f"train.mixed_precision={mode!r} must be one of {list(AUTOCAST_DTYPES)}.")
    if mode == "no":
        return
    if model_dtype != "float32" and not lora:
        raise ConfigError(
            f"train.mixed_precision={mode} keeps fp32 master weights, but model.dtype={model_dtype}. Set "
            "model.dtype=float32 (mixed precision), train.mixed_precision=no (pure low-precision weights), or train a "
            "LoRA adapter (model.lora), which stays fp32 over a low-precision base."
        )
    if mode == "fp16" and not strategy.runs_loss_scaler:
        raise ConfigError(
            f"train.mixed_precision=fp16 needs a loss scaler that distillkit runs only without sharding; with "
            f"distributed.strategy={strategy.name} use train.mixed_precision=bf16."
        )


class MixedPrecision:
    """The autocast context and, for fp16, the loss scaler around backward and the optimizer step."""

    def __init__(self, mode, device: torch.device):
        mode = mode_name(mode)
        self.dtype = AUTOCAST_DTYPES[mode]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping: the gradient norm is taken of the true gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """An fp16 step with inf/NaN gradients is skipped and the scale lowered (torch's GradScaler)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
