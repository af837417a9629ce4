"""Generation backends: `generate(prompt_ids, n)` gives token-id completions from the current weights."""

from distillkit.generation.hf import HFGenerator

__all__ = ["HFGenerator"]
