"""Stand-ins for the tests: a generator that records what it was asked and answers as told."""

from __future__ import annotations

from distillkit.data.loading import encode_completion


class SpyGenerator:
    """`generate(prompt_ids, n, greedy)` as a real generator has it. Each call's prompts and n are recorded in
    `calls`; the answer is `inner`'s (a real generator, wrapped) or the fixed `completions`, in the layout
    `generate` returns (the n completions of a prompt adjacent)."""

    def __init__(self, inner=None, completions: list[list[int]] | None = None):
        if (inner is None) == (completions is None):
            raise ValueError("SpyGenerator wraps a generator or answers with fixed completions, one of the two.")
        self.inner, self.completions = inner, completions
        self.calls: list[tuple[list[list[int]], int]] = []

    @classmethod
    def answering(cls, tokenizer, texts: list[str]) -> SpyGenerator:
        """Fixed completions given as text: each one tokenized and ended with EOS, as a sampled one would be."""
        return cls(completions=[encode_completion(text, tokenizer) for text in texts])

    def generate(self, prompt_ids, n=1, greedy=False):
        self.calls.append(([list(p) for p in prompt_ids], n))
        if self.inner is not None:
            return self.inner.generate(prompt_ids, n=n, greedy=greedy)
        assert len(self.completions) == len(prompt_ids) * n, (
            f"asked for {len(prompt_ids)} prompts x {n}, holds {len(self.completions)} completions")
        return [list(c) for c in self.completions]
