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
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    completion = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[row, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention[row, : len(p) + len(c)] = 1
        completion[row, len(p) : len(p) + len(c)] = True
    return SequenceBatch(input_ids, attention, completion)


def completion_hidden(hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Hidden states that predict the completion tokens ([N, H]): position t-1 predicts token t.

    Slicing here, before the LM head, is what keeps the prompt positions out of the vocabulary projection.
    """
    return hidden[:, :-1][batch.completion_mask[:, 1:]]
