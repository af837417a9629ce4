"""Cross-process reductions that are no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(value: float, device: torch.device) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item()


def gather_lists(local: list) -> tuple[list, slice]:
    """Every process's items in rank order, and where this process's own items sit in that list."""
    if not is_distributed():
        return local, slice(0, len(local))
    parts: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    start = sum(len(p) for p in parts[: dist.get_rank()])
    return [item for part in parts for item in part], slice(start, start + len(local))
