"""Checkpoints that make a killed run resume exactly: weights (or adapter), optimizer, scheduler, RNG, step."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


def trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full weights for a full fine-tune; only the trainable (adapter) tensors under LoRA. `state`: the model's
    state dict when it is already at hand (gathered from FSDP shards)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict() if state is None else state
    if len(names) == sum(1 for _ in model.parameters()):
        return state
    return {k: v for k, v in state.items() if k in names}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    torch.save({**state, "step": step, "rng": rng or rng_state()}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load_checkpoint(path: Path) -> dict:
    return torch.load(path / STATE_FILE, weights_only=False)
