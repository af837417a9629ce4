"""`generation.weight_transfer=checkpoint`: the student's weights go to the rollout servers through a folder.

The weights (LoRA merged, vLLM's names) are written as one safetensors file into a folder that every server can
read, and each server reloads them in place with `collective_rpc("reload_weights", weights_path=FOLDER)`. It
works wherever vLLM runs, CPU included (vLLM's NCCL and IPC backends need CUDA), at the cost of a disk write and a
read per push. The NCCL backend is `distillkit.generation.nccl_push`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

from distillkit.generation.rollout_server import RolloutServer
from distillkit.generation.vllm import merged_weights

WEIGHTS_FILE = "model.safetensors"


def cpu_tensors(weights: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One CPU tensor per name, tied ones included: vLLM's in-place reload needs the LM head of a tied model too
    (without it, it kept the old head), and safetensors refuses two names on one storage, so a repeat is copied."""
    seen, out = set(), {}
    for name, tensor in weights:
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


class CheckpointPush:
    """Write the weights, then have every server reload them."""

    def __init__(self, servers: list[RolloutServer], folder: str | None):
        self.servers = servers
        self.owned = folder is None  # a temporary folder is removed at close; a user's folder is kept
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="distillkit-rollout-weights-"))
        self.folder.mkdir(parents=True, exist_ok=True)

    def push(self, model: torch.nn.Module) -> None:
        partial = self.folder / (WEIGHTS_FILE + ".partial")  # not *.safetensors: never read half-written
        save_file(cpu_tensors(merged_weights(model)), str(partial))
        os.replace(partial, self.folder / WEIGHTS_FILE)
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(self.folder.resolve())}}
        with ThreadPoolExecutor(len(self.servers)) as pool:
            for done in [pool.submit(server.post, "/collective_rpc", body) for server in self.servers]:
                done.result()

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)
