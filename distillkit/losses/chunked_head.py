"""Apply the LM head in chunks of token rows, with the backward pass fused into the forward.

Only completion hidden states come in. Each chunk's fp32 logits ([chunk, V]) exist for the time it takes to
compute that chunk's loss and its gradient; the full [N, V] logits of neither model are ever held. This is
the same trick as Liger's fused linear losses and torchtune's chunked KD loss, in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distillkit.lm_head import LMHead, LogitTransform, at_least_fp32, project

__all__ = ["ChunkLoss", "at_least_fp32", "auto_chunk_size", "chunked_head_loss", "project"]

# (student fp32 logits for rows [start, end), start, end) -> summed loss of those rows
ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]

LOGITS_BYTES_PER_CHUNK = 64 * 2**20


def auto_chunk_size(vocab_size: int) -> int:
    """Rows per chunk such that one fp32 [rows, V] tile is about 64 MiB."""
    return max(1, LOGITS_BYTES_PER_CHUNK // (4 * vocab_size))


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, transform: LogitTransform, chunk_loss: ChunkLoss,  # type: ignore[override]
                chunk_size: int):
        wants = [t is not None and t.requires_grad for t in (hidden, weight, bias)]
        accum = torch.promote_types(weight.dtype, torch.float32)
        grad_h = torch.zeros_like(hidden) if wants[0] else None
        grad_w = torch.zeros(weight.shape, dtype=accum, device=weight.device) if wants[1] else None
        grad_b = torch.zeros(bias.shape, dtype=accum, device=bias.device) if wants[2] else None
        total = torch.zeros((), dtype=accum, device=hidden.device)
        w = weight.detach().requires_grad_(wants[1])
        b = None if bias is None else bias.detach().requires_grad_(wants[2])
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end].detach().requires_grad_(wants[0])
            with torch.enable_grad():
                loss = chunk_loss(project(h, w, b, transform), start, end)
            inputs = [t for t in (h, w, b) if t is not None and t.requires_grad]
            if inputs:
                grads = iter(torch.autograd.grad(loss, inputs))
                if wants[0]:
                    grad_h[start:end] = next(grads)
                if wants[1]:
                    grad_w += next(grads)
                if wants[2]:
                    grad_b += next(grads)
            total += loss.detach()
        saved = [grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                 None if grad_b is None else grad_b.to(bias.dtype)]
        ctx.save_for_backward(*[torch.empty(0) if g is None else g for g in saved])
        ctx.wants = wants
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grads = [g * grad_out if want else None for g, want in zip(ctx.saved_tensors, ctx.wants, strict=True)]
        return (*grads, None, None, None)


def chunked_head_loss(
    hidden: torch.Tensor, head: LMHead, chunk_loss: ChunkLoss, chunk_size: int | None = None
) -> torch.Tensor:
    """Sum of `chunk_loss` over row chunks of `head.logits(hidden)`, differentiable in `hidden` and the head."""
    if hidden.shape[0] == 0:
        zero = hidden.sum() + head.weight.sum() + (0.0 if head.bias is None else head.bias.sum())
        return zero * 0.0
    return _ChunkedHeadLoss.apply(hidden, head.weight, head.bias, head.transform, chunk_loss,
                                  chunk_size or auto_chunk_size(head.vocab_size))
