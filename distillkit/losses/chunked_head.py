"""Apply the LM head in chunks of token rows, with the backward pass written out in the forward.

Only completion hidden states come in. Each chunk's fp32 logits ([chunk, V]) exist for the time it takes to
compute that chunk's loss and its gradient w.r.t. the logits; the full [N, V] logits of neither model are ever
held. The chunk's loss gives that gradient itself (a divergence writes it out; `Divergence` falls back on autograd
over the log-probs), and the head's gradients are then two matmuls per chunk, the weight's accumulated in place
(`addmm_`): no autograd graph through the projection and no fresh [V, H] gradient per chunk. This is the same
trick as Liger's fused linear losses and torchtune's chunked KD loss, in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distillkit.lm_head import LMHead, LogitTransform, at_least_fp32, project

__all__ = ["ChunkLoss", "at_least_fp32", "auto_chunk_size", "chunked_head_loss", "project"]

# (student fp32 logits for rows [start, end), start, end) -> (summed loss of those rows, its gradient w.r.t. the
# logits, or None where the rows have no loss)
ChunkLoss = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor | None]]

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
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]
            logits = project(h, weight, bias, transform)
            loss, grad_logits = chunk_loss(logits, start, end)
            total += loss.detach()
            if grad_logits is None or not any(wants):
                continue
            grad_raw = transform.backward(logits, grad_logits)  # w.r.t. h @ W.T + b
            del logits
            if wants[0]:
                grad_h[start:end] = grad_raw.to(weight.dtype) @ weight
            if wants[1]:
                grad_w.addmm_(grad_raw.T.to(accum), h.to(accum))
            if wants[2]:
                grad_b += grad_raw.sum(0)
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
