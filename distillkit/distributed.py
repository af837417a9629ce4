"""Multi-process training: start-up through accelerate, and cross-process reductions that are no-ops in one process.

The strategies (`distillkit.strategies`) build on these: data parallelism sums the gradients with
`all_reduce_gradients`, and every strategy normalizes the loss by the step's token count from `all_reduce_sum`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(on_cpu: bool = False) -> ProcessInfo:
    """Join the process group that `accelerate launch`, `torchrun` or a multi-task SLURM job set up; one process
    otherwise. accelerate's PartialState picks the backend (nccl on GPUs, gloo on CPU) and the local device."""
    if is_distributed():
        return ProcessInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    in_submitit = "SUBMITIT_EXECUTOR" in os.environ
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "WORLD_SIZE" not in os.environ and in_submitit:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR/PORT from SLURM
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessInfo()
    from accelerate import PartialState

    state = PartialState(cpu=on_cpu)  # without it, accelerate takes a CPU process group for a single process
    if not is_distributed():  # a state left from an earlier, destroyed process group in this process
        PartialState._reset_state()
        state = PartialState(cpu=on_cpu)
    return ProcessInfo(state.process_index, state.num_processes, state.local_process_index)


def all_reduce_sum(value: float, device: torch.device) -> float:
    return all_reduce_sums([value], device)[0]


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over processes, in one collective."""
    if not is_distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients over processes, one flat buffer per dtype (one collective, not one per tensor)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def gather_lists(local: list) -> tuple[list, slice]:
    """Every process's items in rank order, and where this process's own items sit in that list."""
    if not is_distributed():
        return local, slice(0, len(local))
    parts: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    start = sum(len(p) for p in parts[: dist.get_rank()])
    return [item for part in parts for item in part], slice(start, start + len(local))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_across_processes(values: dict[str, float]) -> dict[str, float]:
    """Per-key sums over processes; a key missing on some process counts as 0 there (one all_gather_object)."""
    if not is_distributed():
        return values
    everyone, _ = gather_lists([values])
    return {k: sum(d.get(k, 0.0) for d in everyone) for k in sorted({k for d in everyone for k in d})}


def same_on_every_process(value):
    """The main process's value everywhere: e.g. the output folder, which `${now:...}` can name differently when
    the processes start a second apart."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
