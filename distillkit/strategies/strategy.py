"""The seam between the loop and how the student is spread over processes: one `Strategy` per
`distributed.strategy` (ddp, fsdp2, deepspeed).

The loop, the teachers and the checkpoints call these methods and never ask which strategy runs. What differs:
whether a module is wrapped (FSDP shards it), who reduces the gradients and where (an all-reduce after the
backward, FSDP's reduce-scatter inside it, DeepSpeed's engine), what a checkpoint holds (whole tensors gathered
from shards, or DeepSpeed's partitions beside them), and whether parameters read outside a forward are local.
The defaults are what a process that holds whole weights does (ddp, and DeepSpeed ZeRO 1-2).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig

from distillkit.distributed import ProcessInfo
from distillkit.lm_head import LMHead
from distillkit.models import DecoderAndHead, decoder_and_head
from distillkit.precision import MixedPrecision


class Strategy(ABC):
    name: ClassVar[str]
    collective_forwards: ClassVar[bool] = False  # each forward or backward is a collective: same micro-batches everywhere
    gathers_collectively: ClassVar[bool] = False  # whole tensors (checkpoints, the final model) need every process
    runs_loss_scaler: ClassVar[bool] = True  # fp16's GradScaler can wrap its backward and step
    holds_whole_weights: ClassVar[bool] = True  # each process holds the student's whole weights (vLLM can take them)

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: DictConfig, process: ProcessInfo) -> Strategy:
        """The strategy for a run of `process.world_size` processes."""

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Refuse at start-up, before anything loads, a config this strategy cannot run."""

    # ---- building
    def wrap_module(self, module: torch.nn.Module) -> None:
        """Distribute a model: the student, or an in-process teacher that is a separate module."""

    def decoder_and_head(self, model: torch.nn.Module) -> DecoderAndHead:
        """How the loss and the teachers reach a (wrapped) model's last hidden states and head."""
        return decoder_and_head(model)

    def attach_optimizer(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once the optimizer over the (wrapped) student's parameters exists."""

    # ---- the step
    def backward(self, loss: torch.Tensor, precision: MixedPrecision, last_of_step: bool) -> None:
        """`loss` is already divided by the whole step's token count (all micro-batches, all processes)."""
        precision.scale(loss).backward()

    @abstractmethod
    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Make each process's gradient the sum over processes: the single-process gradient of the global batch."""

    def step(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, precision: MixedPrecision,
             max_grad_norm: float, has_loss: bool) -> float:
        """Reduce, clip, update and zero the gradients. The global gradient norm before clipping."""
        self.reduce_gradients(params)
        precision.unscale(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    # ---- parameters outside a forward
    @contextlib.contextmanager
    def local_parameters(self, *modules: torch.nn.Module) -> Iterator[None]:
        """Inside, `modules`' parameters are this process's own tensors, so reading or changing them in place (an
        EMA update, swapping an adapter, a state dict) acts on what the next forward uses."""
        yield

    def whole_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole CPU copies. Collective when `gathers_collectively`: every process calls it in the same order."""
        return {name: t.detach().cpu().clone() for name, t in tensors.items()}

    @torch.no_grad()
    def copy_whole_into(self, target: torch.Tensor, whole: torch.Tensor) -> None:
        """Copy a whole tensor into a parameter or buffer of a wrapped module (a shard takes its slice)."""
        target.copy_(whole)

    def head_outliving_forward(self, head: LMHead) -> LMHead:
        """A head that stays valid after the module that gave it is put back in place."""
        return head

    # ---- checkpoints and the final model
    def model_state(self, student: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The whole state dict."""
        return student.state_dict()

    def optimizer_state(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """The optimizer's state as plain data, or None where the strategy writes it itself (`save_partitions`)."""
        return optimizer.state_dict()

    def save_partitions(self, staged: Path | None) -> None:
        """Write what each process holds alone into the staged checkpoint (given on the main process only)."""

    def load(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, folder: Path,
             strict: bool) -> None:
        """Restore the weights and the optimizer from a checkpoint's `state` (and its `folder`)."""
        student.load_state_dict(state["model"], strict=strict)
        optimizer.load_state_dict(state["optimizer"])

    def save_final(self, student: torch.nn.Module, tokenizer, folder: Path, is_main: bool) -> None:
        """A folder `from_pretrained` loads: the main process writes it."""
        if is_main:
            student.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
