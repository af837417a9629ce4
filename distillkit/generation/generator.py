"""The generator interface: token-id completions from the current student weights."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Generator(ABC):
    @abstractmethod
    def bind(self, model: torch.nn.Module, tokenizer) -> Generator:
        """Attach the module whose weights generate (the student); returns self."""

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], n: int = 1, greedy: bool = False) -> list[list[int]]:
        """`n` completions per prompt, adjacent, each cut after its end token (kept)."""

    def sync(self, model: torch.nn.Module, force: bool = False) -> None:
        """After an optimizer step: a generator with its own copy of the weights (vLLM) takes the new ones."""

    def close(self) -> None:
        """Free what the generator holds outside the training module (a colocated engine's memory)."""
