"""`distributed.strategy=ddp`: data parallelism without a DDP wrapper.

Every process runs the whole step on its share of the rows; the loss is divided by the completion-token count of
the whole step across processes, and the gradients are summed, which is exactly the single-process gradient of the
same global batch. A wrapper would average instead, and it needs its own forward to register the backward hooks,
which the chunked loss bypasses (it reads hidden states and the LM head directly). One process is this strategy
too: its reduction is a no-op.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from distillkit.distributed import ProcessInfo, all_reduce_gradients
from distillkit.strategies.strategy import Strategy


class DataParallel(Strategy):
    name = "ddp"

    @classmethod
    def from_config(cls, cfg: DictConfig, process: ProcessInfo) -> DataParallel:
        return cls()

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        all_reduce_gradients(params)
