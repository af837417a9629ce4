"""Token-id batches: prompts and their completions, padded on the right, with a completion mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    """B sequences `prompt + completion`, right-padded. `completion_mask[b, t]` marks completion tokens."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    completion_mask: torch.Tensor  # [B, L] bool

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def completion_targets(self) -> torch.Tensor:
        """The completion tokens, flattened row by row: [N]."""
        return self.input_ids[self.completion_mask]

    def to(self, device: torch.device) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask)))


def collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> SequenceBatch:
    """Right-padded prompt+completion rows, built with one tensor per field (not one per row)."""
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    lengths = prompt_lengths + torch.tensor([len(c) for c in completions])
    width = int(lengths.max())
    input_ids = torch.tensor([p + c + [pad_id] * (width - len(p) - len(c))
                              for p, c in zip(prompts, completions, strict=True)], dtype=torch.long)
    position = torch.arange(width)
    attention = position < lengths[:, None]
    completion = attention & (position >= prompt_lengths[:, None])
    return SequenceBatch(input_ids, attention.long(), completion)


def completion_hidden(hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Hidden states that predict the completion tokens ([N, H]): position t-1 predicts token t.

    Slicing here, before the LM head, is what keeps the prompt positions out of the vocabulary projection.
    """
    return hidden[:, :-1][batch.completion_mask[:, 1:]]
