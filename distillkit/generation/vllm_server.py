"""`generation=vllm_server`: rollouts from one or more running vLLM servers, fed the student's weights.

Each prompt's `n` completions are one `/v1/completions` request (token ids in, `return_token_ids` out), so a
`num_generations` group is sampled whole by one server; the prompts of a call are split over the servers in
contiguous blocks of whole groups. Sampling is the run's generation config, with every sampling key of the request
set (a server's generation-config defaults never apply) and a seed per request drawn from torch's generator, which
`train.seed` seeds and a checkpoint restores.

After every `sync_every` optimizer steps the weights are marked stale, and pushed before the next generation: so a
server that dies during a push fails the next step before its update, which the runner checkpoints as it was and
exits with code 3 (as for a teacher server). The push pauses each server, moves the weights (vLLM's NCCL backend,
or a checkpoint folder the servers reload), resets its prefix cache and resumes it. See docs/generation.md.

Under several training processes (ddp, or DeepSpeed ZeRO-2: each holds the whole student) the first process pushes
and every process then samples its own prompts. The rollout generator is called at the same points on every process
(once per step that samples, from a plan drawn from (seed, step)), so each push and each generation ends with one
collective: every process learns whether any of them met a failed server and raises the same error together,
which lets the runner's checkpoint (itself collective) be written instead of leaving the others waiting.
"""

from __future__ import annotations

import contextlib
import importlib.util
from concurrent.futures import ThreadPoolExecutor

import requests
import torch

from distillkit.distributed import all_reduce_sum, is_distributed
from distillkit.errors import ConfigError
from distillkit.generation.generator import Generator
from distillkit.generation.hf import cut_at_eos, end_token_ids
from distillkit.generation.rollout_server import RESTART_HINT, RolloutServer, RolloutServerError
from distillkit.generation.weight_push import CheckpointPush

WEIGHT_TRANSFERS = ("auto", "nccl", "checkpoint")
NCCL_NEEDS_VLLM = ("generation.weight_transfer=nccl runs vLLM's NCCL weight-transfer engine in the training process "
                   "too, and vLLM is not installed here: pip install \"distillkit[vllm]\".")


def transfer_backend(weight_transfer: str, on_cuda: bool) -> str:
    """`auto` is NCCL when the student is on a GPU and the checkpoint folder on CPU; NCCL on CPU is refused."""
    if weight_transfer not in WEIGHT_TRANSFERS:
        raise ConfigError(f"generation.weight_transfer={weight_transfer!r} is not one of {list(WEIGHT_TRANSFERS)}.")
    if weight_transfer == "auto":
        return "nccl" if on_cuda else "checkpoint"
    if weight_transfer == "nccl" and not on_cuda:
        raise ConfigError(
            "generation.weight_transfer=nccl broadcasts the student's weights from a CUDA GPU with NCCL, and this "
            "run's student is on CPU. Use generation.weight_transfer=checkpoint (the servers reload the weights from "
            "generation.weights_dir, a folder they can read), or train on a GPU."
        )
    return weight_transfer


def split_groups(num_prompts: int, num_servers: int) -> list[range]:
    """Contiguous blocks of prompts, one per server, sizes differing by at most one."""
    size, extra = divmod(num_prompts, num_servers)
    starts = [i * size + min(i, extra) for i in range(num_servers + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(num_servers)]


def check_rollout_servers(gen_cfg, on_cuda: bool) -> None:
    """Start-up, before any weights load: the options make sense and every server answers with the weight routes."""
    urls = list(gen_cfg.urls or [])
    if not urls:
        raise ConfigError("generation=vllm_server needs generation.urls: the running vLLM servers, e.g. "
                          "'generation.urls=[http://127.0.0.1:8000]'.")
    if int(gen_cfg.sync_every) < 1:
        raise ConfigError(f"generation.sync_every={gen_cfg.sync_every} must be >= 1.")
    if transfer_backend(gen_cfg.weight_transfer, on_cuda) == "nccl" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(NCCL_NEEDS_VLLM)
    for url in urls:
        server = RolloutServer(url, connect_timeout=gen_cfg.connect_timeout)
        try:
            server.connect()
        finally:
            server.close()


class VLLMServerGenerator(Generator):
    """Samples on the servers of `urls`; holds no weights of its own, only the module it pushes from."""

    def __init__(
        self,
        urls: list[str],
        weight_transfer: str = "auto",
        weights_dir: str | None = None,
        nccl_master_address: str | None = None,
        sync_every: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 16,
        max_concurrency: int = 32,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 1.0,
    ):
        self.urls = list(urls or [])
        if not self.urls:
            raise ConfigError("generation=vllm_server needs generation.urls (the running vLLM servers).")
        self.weight_transfer, self.weights_dir = weight_transfer, weights_dir
        self.nccl_master_address = nccl_master_address
        self.sync_every = int(sync_every)
        if self.sync_every < 1:
            raise ConfigError(f"generation.sync_every={sync_every} must be >= 1.")
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.max_completion_length = int(max_completion_length)
        self.max_concurrency, self.timeout = int(max_concurrency), float(timeout)
        self.servers = [RolloutServer(url, timeout, connect_timeout, retries, backoff, pool_size=self.max_concurrency)
                        for url in self.urls]
        self.pools: list[ThreadPoolExecutor] = []
        self.transfer = None  # CheckpointPush or NCCLPush, made at the first bind (on the pushing process only)
        self.pushes = True  # this process pushes the weights: the first of the run's processes
        self.model = None
        self.stale = False  # the bound module's weights changed since the servers last took them
        self._updates = 0

    def bind(self, model: torch.nn.Module, tokenizer) -> VLLMServerGenerator:
        """Connect (once) and push the bound module's weights now, so a server that cannot take them (another
        architecture, a folder it cannot read, no weight-transfer config) is a ConfigError at start-up."""
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = end_token_ids(model, tokenizer)  # the same stops as generation=hf
        if not self.pools:
            for server in self.servers:
                server.connect()
            self.pools = [ThreadPoolExecutor(self.max_concurrency) for _ in self.servers]
            self.pushes = not is_distributed() or torch.distributed.get_rank() == 0
            if self.pushes:
                self.transfer = self.start_transfer(next(model.parameters()).is_cuda)
        try:
            self.push_weights()
        except RolloutServerError as err:
            raise ConfigError(f"generation=vllm_server: the first weight push failed: {err}. "
                              f"{self.push_hint()}") from err
        return self

    def start_transfer(self, on_cuda: bool):
        backend = transfer_backend(self.weight_transfer, on_cuda)
        if backend == "checkpoint":
            return CheckpointPush(self.servers, self.weights_dir)
        try:
            from distillkit.generation.nccl_push import NCCLPush
        except ImportError as err:
            raise ConfigError(NCCL_NEEDS_VLLM) from err
        try:
            return NCCLPush(self.servers, self.model, self.nccl_master_address, self.timeout)
        except (requests.RequestException, RuntimeError) as err:
            raise ConfigError(f"generation.weight_transfer=nccl: the NCCL group with the servers could not be set up "
                              f"({err}). {self.push_hint()}") from err

    def push_hint(self) -> str:
        if isinstance(self.transfer, CheckpointPush) or self.transfer is None:
            return (f"Every server must serve the student's architecture and read generation.weights_dir "
                    f"({self.transfer.folder if self.transfer else 'a temporary folder'}): a folder on storage the "
                    "servers share with this machine.")
        return ("Start each server with --weight-transfer-config '{\"backend\": \"nccl\"}' and "
                "VLLM_SERVER_DEV_MODE=1 on GPUs this process can reach over NCCL (generation.nccl_master_address).")

    def push_weights(self) -> None:
        """The first process pushes; all of them return together, each raising if the push failed."""
        failure = None
        if self.pushes:
            try:
                self.push_from_here()
            except RolloutServerError as err:
                failure = err
        self.raise_together(failure, "the weight push from the first training process")
        self.stale = False

    def raise_together(self, failure: RolloutServerError | None, what: str) -> None:
        """One collective under several processes: if any process failed, every process raises."""
        failed = all_reduce_sum(float(failure is not None), next(self.model.parameters()).device) > 0
        if failure is not None:
            raise failure
        if failed:
            raise RolloutServerError(f"{what} failed on another training process (its log has the reason). "
                                     f"{RESTART_HINT}")

    def push_from_here(self) -> None:
        """Pause every server, move the weights, drop the prefix cache (KV blocks of the old weights), resume."""
        for server in self.servers:
            server.post("/pause", params={"mode": "wait"})
        try:
            try:
                self.transfer.push(self.model)
            except requests.RequestException as err:  # vLLM's own HTTP client, in the NCCL round trip
                raise RolloutServerError(f"the weight push to the rollout servers failed: {err}. "
                                         f"{RESTART_HINT}") from err
        except BaseException:
            with contextlib.suppress(RolloutServerError):  # the push's error is the one to report
                self.resume_servers()
            raise
        self.resume_servers()

    def resume_servers(self) -> None:
        for server in self.servers:
            server.post("/reset_prefix_cache")
            server.post("/resume")

    def sync(self, model: torch.nn.Module, force: bool = False) -> None:
        """After an optimizer step: every `sync_every` of them (or now, if forced) the servers' weights are stale,
        and the next `generate` pushes them first."""
        self._updates += 1
        if force or self._updates % self.sync_every == 0:
            self.model, self.stale = model, True

    def sampling(self, greedy: bool) -> dict:
        return {
            "max_tokens": self.max_completion_length, "temperature": 0.0 if greedy else self.temperature,
            "top_p": 1.0 if greedy else self.top_p, "top_k": 0 if greedy else self.top_k, "min_p": 0.0,
            "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "stop_token_ids": sorted(self.eos_ids),
        }

    def generate(self, prompt_ids: list[list[int]], n: int = 1, greedy: bool = False) -> list[list[int]]:
        """`n` completions per prompt, grouped by prompt: [p0c0, p0c1, ..., p1c0, ...]."""
        if self.stale:
            self.push_weights()
        seeds = [None] * len(prompt_ids) if greedy else torch.randint(0, 2**31 - 1, (len(prompt_ids),)).tolist()
        sampling = self.sampling(greedy)
        futures = [self.pools[s].submit(self.servers[s].complete, prompt_ids[i], n, sampling, seeds[i])
                   for s, block in enumerate(split_groups(len(prompt_ids), len(self.servers))) for i in block]
        failure = None
        try:
            completions = [cut_at_eos(c, self.eos_ids) for f in futures for c in f.result()]
        except RolloutServerError as err:
            failure = err
        finally:
            for f in futures:
                f.cancel()
        self.raise_together(failure, "sampling on the rollout servers")
        return completions

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools = []
        if self.transfer is not None:
            self.transfer.close()
            self.transfer = None
        for server in self.servers:
            server.close()
