"""Checkpoints that make a killed run resume exactly: weights (or adapter), optimizer, scheduler, RNG, step.

A checkpoint is two files: every tensor in `tensors.safetensors`, and the rest of the state as plain data
(dicts, lists, tuples, numbers, strings) in `state.pt`, where each tensor is a `{"__tensor__": key}` reference.
`state.pt` loads with `torch.load(weights_only=True)`: no Python object is pickled, so a renamed class never
breaks a resume and loading someone else's checkpoint runs no code.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.pt"
TENSORS_FILE = "tensors.safetensors"
TENSOR_REF = "__tensor__"


def trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full weights for a full fine-tune; only the trainable (adapter) tensors under LoRA. `state`: the model's
    state dict when it is already at hand (gathered from FSDP shards)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict() if state is None else state
    if len(names) == sum(1 for _ in model.parameters()):
        return state
    return {k: v for k, v in state.items() if k in names}


def rng_state() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple_tree(state["python"]))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tuple_tree(value):
    """`random.setstate` wants the nested tuples that `getstate` gave."""
    return tuple(tuple_tree(v) for v in value) if isinstance(value, (list, tuple)) else value


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """`value` with each tensor replaced by a reference into `tensors` (one entry per distinct storage view)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensors[path] = tensor
        return {TENSOR_REF: path}
    if isinstance(value, dict):
        return {k: split_tensors(v, tensors, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"A checkpoint holds plain data and tensors only, not {type(value).__name__}.")


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR_REF}:
            return tensors[value[TENSOR_REF]]
        return {k: join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(join_tensors(v, tensors) for v in value)
    return value


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, str]:
    """safetensors refuses tensors that share memory (a tied head): each shared view is written once, and the
    returned aliases map the other names to it."""
    unique, aliases, seen = {}, {}, {}
    for name, tensor in tensors.items():
        if tensor.numel() and tensor.layout == torch.strided:
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                   tuple(tensor.stride()), tensor.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        unique[name] = tensor.contiguous()
    save_file(unique, str(path))
    return aliases


def save_checkpoint(root: Path, step: int, state: dict, keep_last: int = 2, rng: dict | None = None) -> Path:
    """Write into a temporary folder and rename it, so a kill mid-write never leaves a half checkpoint."""
    stage_checkpoint(root, step)
    return commit_checkpoint(root, step, state, keep_last, rng)


def stage_checkpoint(root: Path, step: int) -> Path:
    """The empty temporary folder of a checkpoint; other writers (every process's DeepSpeed partition) go first."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit_checkpoint(root: Path, step: int, state: dict, keep_last: int = 2, rng: dict | None = None) -> Path:
    """Add the state to the staged folder, rename it into place and keep the newest `keep_last`."""
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    tensors: dict[str, torch.Tensor] = {}
    plain = split_tensors({**state, "step": step, "rng": rng or rng_state()}, tensors)
    aliases = save_tensors(tensors, tmp / TENSORS_FILE)
    torch.save({"state": plain, "aliases": aliases}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load_checkpoint(path: Path) -> dict:
    saved = torch.load(path / STATE_FILE, weights_only=True)
    tensors = load_file(str(path / TENSORS_FILE))
    for name, target in saved["aliases"].items():
        tensors[name] = tensors[target]
    return join_tensors(saved["state"], tensors)
