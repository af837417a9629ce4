"""Generation backends: `generate(prompt_ids, n)` gives token-id completions from the current weights."""

from distillkit.generation.generator import Generator
from distillkit.generation.hf import HFGenerator
from distillkit.generation.vllm import VLLMGenerator
from distillkit.generation.vllm_server import VLLMServerGenerator

__all__ = ["Generator", "HFGenerator", "VLLMGenerator", "VLLMServerGenerator"]
