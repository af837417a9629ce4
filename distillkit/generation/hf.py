"""`generation=hf`: transformers `generate` with the KV cache, on the model being trained."""

from __future__ import annotations

import torch

from distillkit.generation.generator import Generator


def end_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """The tokenizer's end token and any the model's generation config adds (chat models often have several)."""
    ids = set()
    for eos in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if eos is not None:
            ids |= set(eos if isinstance(eos, list) else [eos])
    return ids


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Keep the tokens up to and including the first end token; drop what follows (padding)."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1]
    return tokens


class HFGenerator(Generator):
    """Batched sampling with `model.generate`. Prompts go in as token ids, completions come out as token ids."""

    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 16,
        batch_size: int = 512,
    ):
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.max_completion_length = int(max_completion_length)
        self.batch_size = int(batch_size)
        self.model = None

    def bind(self, model: torch.nn.Module, tokenizer) -> HFGenerator:
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = end_token_ids(model, tokenizer)
        return self

    def sync(self, model: torch.nn.Module, force: bool = False) -> None:
        """The HF backend samples from the training module itself, so there is nothing to copy."""

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int = 1, greedy: bool = False) -> list[list[int]]:
        """`n` completions per prompt, grouped by prompt: [p0c0, p0c1, ..., p1c0, ...]."""
        out: list[list[int]] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            out += self._generate(prompt_ids[start : start + self.batch_size], n, greedy)
        return out

    def _generate(self, prompt_ids: list[list[int]], n: int, greedy: bool) -> list[list[int]]:
        model = self.model
        device = next(model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        pad = self.tokenizer.pad_token_id
        # left padding, so every prompt ends where generation starts; one tensor, not one per row
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], dtype=torch.long)
        mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompt_ids])[:, None]).long()
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        was_training = model.training
        model.eval()
        try:
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=not greedy,
                num_return_sequences=n,
                max_new_tokens=self.max_completion_length,
                pad_token_id=pad,
                eos_token_id=sorted(self.eos_ids),
                use_cache=True,
                **sampling,
            )
        finally:
            model.train(was_training)
        new_tokens = generated[:, width:].tolist()
        return [cut_at_eos(row, self.eos_ids) for row in new_tokens]
