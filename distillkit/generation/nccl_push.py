"""`generation.weight_transfer=nccl`: vLLM's own NCCL weight-transfer backend, trainer side.

The trainer process (rank 0) and each server's workers form one NCCL group per server, set up once through the
server's `/init_weight_transfer_engine`; every push is vLLM's `send_weights()` round trip (`/start_weight_update`,
`/update_weights` beside the packed broadcast, `/finish_weight_update`) driven by vLLM's HTTP client. Nothing here
speaks a protocol of its own. The servers are started with `--weight-transfer-config '{"backend": "nccl"}'` and
`VLLM_SERVER_DEV_MODE=1`, on GPUs other than the trainer's. Needs vLLM in the training environment and CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo
from vllm.utils.network_utils import get_ip, get_open_port

from distillkit.generation.rollout_server import RolloutServer
from distillkit.generation.vllm import merged_weights, weight_metadata


class StudentWeights(WeightSource):
    """The bound module's weights as vLLM names them (LoRA merged), read afresh on every push."""

    def __init__(self, model: torch.nn.Module):
        self.model = model  # rebinding the generator (asynchronous rollouts: a copy of the student) moves it

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, dtype, shape) for name, dtype, shape in weight_metadata(self.model)]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in merged_weights(self.model):
            yield name, tensor.detach()


class NCCLPush:
    """One NCCL trainer engine per server, each in its own group (trainer rank 0, the server's workers after)."""

    def __init__(self, servers: list[RolloutServer], model: torch.nn.Module, master_address: str | None,
                 timeout: float):
        self.source = StudentWeights(model)
        address = master_address or get_ip()
        self.engines = []
        for server in servers:
            init = NCCLTrainerInitInfo(master_address=address, master_port=get_open_port(),
                                       world_size=server.world_size() + 1, rank=0)
            client = HTTPVLLMWeightSyncClient(server.url, timeout=timeout)
            self.engines.append(WeightTransferTrainerFactory.trainer_init(init, client=client, source=self.source))

    def push(self, model: torch.nn.Module) -> None:
        self.source.model = model
        for engine in self.engines:
            engine.send_weights()

    def close(self) -> None:
        for engine in self.engines:
            engine.shutdown()
