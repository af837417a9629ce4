"""SDPO gathers rollouts across processes before advantages and reprompting: two real gloo processes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distillkit.distributed import gather_lists
from distillkit.methods.sdpo import demonstration_indices, group_advantages


def worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # rank 0 holds group 0 (4 rollouts), rank 1 holds group 1: local lists of different contents
        local = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]][rank]
        everything, mine = gather_lists(local)
        advantages, _ = group_advantages(torch.tensor(everything), 4, "batch")  # the batch std needs every rank
        demos = demonstration_indices(everything, 4, 1.0, exclude_self=True)
        out[rank] = (everything, (mine.start, mine.stop), advantages[mine].tolist(), demos[mine])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_see_the_same_gathered_batch():
    manager = mp.Manager()
    out = manager.dict()
    port = 29500 + os.getpid() % 1000
    mp.spawn(worker, args=(2, port, out), nprocs=2, join=True)
    everything = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    expected, _ = group_advantages(torch.tensor(everything), 4, "batch")
    assert out[0][0] == out[1][0] == everything
    assert out[0][1] == (0, 4) and out[1][1] == (4, 8)
    assert out[0][2] + out[1][2] == expected.tolist()
    # global indices: rank 1's rollouts point at demonstrations 5 and 6 in the gathered batch
    assert out[0][3] == [None, 0, 0, 0] and out[1][3] == [5, 6, 5, 5]
