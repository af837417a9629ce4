"""FSDP2: the student's weights, gradients and optimizer state sharded over the processes (`fully_shard`).

Each decoder layer is its own FSDP unit; the root unit (embeddings, final norm, LM head) is the causal LM
itself, PEFT-wrapped or not. The chunked loss reads the last hidden states and the LM head's weight outside the
model's `forward`, so under FSDP the hidden states are taken from a real root forward (a hook on the decoder):
the root's parameters are then gathered, and FSDP keeps the root gathered until its backward, so the head weight
the loss reads is the whole matrix and its gradient goes through FSDP's reduce-scatter like any other.

The reduce-scatter sums (divide factor 1): the loss is already divided by the whole step's token count, so the
sum over processes is the single-process gradient of the global batch, as with data parallelism.
Every in-process teacher that is a separate module (a live teacher model, the frozen `base` copy, the `ema`
copy) is sharded the same way, so an EMA update is a local, shard-by-shard lerp.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig

from distillkit.distributed import ProcessInfo
from distillkit.errors import ConfigError
from distillkit.lm_head import LMHead
from distillkit.models import DecoderAndHead, decoder_and_head
from distillkit.strategies.strategy import Strategy


def reshard_after_forward(cfg: DictConfig) -> bool:
    """accelerate's `fsdp_reshard_after_forward` wins over `distributed.reshard_after_forward` when it is set."""
    from_accelerate = os.environ.get("FSDP_RESHARD_AFTER_FORWARD")
    if from_accelerate is not None:
        return from_accelerate.lower() not in ("false", "no_shard", "shard_grad_op")
    return bool((cfg.get("distributed") or {}).get("reshard_after_forward", True))


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (the FSDP root: every forward, generate included, runs it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks, found by transformers' `_no_split_modules` (the classes FSDP should wrap)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} declares no `_no_split_modules`, so distillkit cannot tell its decoder layers "
            "to shard with FSDP2. Use distributed.strategy=ddp."
        )
    return layers


def shard(model: torch.nn.Module, reshard: bool = True) -> None:
    """`fully_shard` every decoder layer, then the causal LM as the root unit; gradients are summed, not averaged."""
    from torch.distributed.fsdp import fully_shard

    root = causal_lm(model)
    layers = decoder_layers(root)  # before sharding, which renames their classes (FSDPQwen2DecoderLayer)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard)
    # The root (embeddings, final norm, head) stays gathered after its forward: the loss reads the head there.
    fully_shard(root, reshard_after_forward=False)
    for unit in [*layers, root]:  # each unit reduces its own gradients
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM; on NCCL a sum is as fast
    root._is_fsdp_managed_module = True  # transformers' generate then keeps all processes in step (synced_gpus)


def reshard(model: torch.nn.Module) -> None:
    """Put the sharded parameters back in place. A forward without grad leaves the root gathered; reading or
    changing parameters (state dicts, an EMA update, swapping an adapter) must act on the shards, not on a
    gathered copy that the next gather would overwrite. A no-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_tensors(tensors: dict[str, torch.Tensor], aliases: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Whole CPU copies of (possibly sharded) tensors. Collective: every process must call it, in the same order.
    `aliases` (name -> the first name of the same parameter) keeps tied weights one tensor, as save_pretrained
    expects of the embeddings and the head."""
    from torch.distributed.tensor import DTensor

    aliases = aliases or {}
    whole: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        first = aliases.get(name, name)
        if first in whole:
            whole[name] = whole[first]
        else:
            whole[name] = (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()
    return whole


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Each parameter name -> the first name under which the same parameter appears."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}


@torch.no_grad()
def copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into a (possibly sharded) tensor: a shard takes its own slice of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        full = distribute_tensor(full.to(target.device, target.dtype), target.device_mesh, target.placements)
    target.copy_(full)


class FullySharded(Strategy):
    """`distributed.strategy=fsdp2`: each process holds a shard of every weight, gradient and AdamW state."""

    name = "fsdp2"
    collective_forwards = True
    gathers_collectively = True
    runs_loss_scaler = False  # torch's GradScaler does not see FSDP's sharded gradients
    holds_whole_weights = False  # a colocated engine or a push to rollout servers would gather them every step

    def __init__(self, reshard: bool = True):
        self.reshard = reshard

    @classmethod
    def from_config(cls, cfg: DictConfig, process: ProcessInfo) -> FullySharded:
        return cls(reshard_after_forward(cfg))

    def wrap_module(self, module: torch.nn.Module) -> None:
        shard(module, self.reshard)

    def decoder_and_head(self, model: torch.nn.Module) -> DecoderAndHead:
        parts = decoder_and_head(model)
        parts.forward_through_root = True  # only the root's forward gathers the embeddings, final norm and head
        return parts

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """FSDP's reduce-scatter already summed them, in the backward."""

    @contextlib.contextmanager
    def local_parameters(self, *modules: torch.nn.Module) -> Iterator[None]:
        for module in modules:
            reshard(module)
        yield

    def whole_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return full_tensors(tensors)

    def copy_whole_into(self, target: torch.Tensor, whole: torch.Tensor) -> None:
        copy_full_into(target, whole)

    def head_outliving_forward(self, head: LMHead) -> LMHead:
        return head.cloned()  # a gathered head is freed when its module is resharded

    def model_state(self, student: torch.nn.Module) -> dict[str, torch.Tensor]:
        reshard(student)
        return full_tensors(student.state_dict(), tied_aliases(student))

    def optimizer_state(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Whole tensors, keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(student, optimizer, options=StateDictOptions(full_state_dict=True))

    def load(self, student: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, folder: Path,
             strict: bool) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        reshard(student)
        set_model_state_dict(student, state["model"], options=StateDictOptions(full_state_dict=True, strict=strict))
        set_optimizer_state_dict(student, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))

    def save_final(self, student: torch.nn.Module, tokenizer, folder: Path, is_main: bool) -> None:
        whole = self.model_state(student)  # gathered by every process
        if is_main:
            student.save_pretrained(folder, state_dict=whole)
            tokenizer.save_pretrained(folder)
