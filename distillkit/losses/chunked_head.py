"""Apply the LM head in chunks of token rows, with the backward pass fused into the forward.

Only completion hidden states come in. Each chunk's fp32 logits ([chunk, V]) exist for the time it takes to
compute that chunk's loss and its gradient; the full [N, V] logits of neither model are ever held. This is
the same trick as Liger's fused linear losses and torchtune's chunked KD loss, in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (student fp32 logits for rows [start, end), start, end) -> summed loss of those rows
ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]

LOGITS_BYTES_PER_CHUNK = 64 * 2**20


def auto_chunk_size(vocab_size: int) -> int:
    """Rows per chunk such that one fp32 [rows, V] tile is about 64 MiB."""
    return max(1, LOGITS_BYTES_PER_CHUNK // (4 * vocab_size))


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Low-precision log-probs make the softmax tails (and the KL) noisy; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def project(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return at_least_fp32(hidden @ weight.T)


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, chunk_loss: ChunkLoss, chunk_size: int):  # type: ignore[override]
        want_h, want_w = hidden.requires_grad, weight.requires_grad
        grad_h = torch.zeros_like(hidden) if want_h else None
        accum = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=accum, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=accum, device=hidden.device)
        w = weight.detach().requires_grad_(want_w)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end].detach().requires_grad_(want_h)
            with torch.enable_grad():
                loss = chunk_loss(project(h, w), start, end)
            inputs = [t for t in (h, w) if t.requires_grad]
            if inputs:
                grads = iter(torch.autograd.grad(loss, inputs))
                if want_h:
                    grad_h[start:end] = next(grads)
                if want_w:
                    grad_w += next(grads)
            total += loss.detach()
        ctx.save_for_backward(
            grad_h if want_h else torch.empty(0), grad_w.to(weight.dtype) if want_w else torch.empty(0)
        )
        ctx.wants = (want_h, want_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        want_h, want_w = ctx.wants
        return (grad_h * grad_out if want_h else None, grad_w * grad_out if want_w else None, None, None)


def chunked_head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, chunk_loss: ChunkLoss, chunk_size: int | None = None
) -> torch.Tensor:
    """Sum of `chunk_loss` over row chunks of `hidden @ weight.T`, differentiable in `hidden` and `weight`."""
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0
    return _ChunkedHeadLoss.apply(hidden, weight, chunk_loss, chunk_size or auto_chunk_size(weight.shape[0]))
