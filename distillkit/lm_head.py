"""The one LM-head projection: hidden states to the logits the model itself would return.

The loss, the in-process teacher, the teacher server and evaluation all read hidden states and apply the head
themselves (only completion rows, in chunks), so they must apply it exactly as the model's own `forward` does:
the head's bias, then the family's logit transform. Known transforms, as transformers applies them:
- Cohere, Cohere2: `logits * config.logit_scale`;
- Granite (and its MoE variants): `logits / config.logits_scaling`;
- Gemma 2, Gemma 3 (and any config with `final_logit_softcapping`): `cap * tanh(logits / cap)`.
`check_head_matches_model` compares this projection with `model(input_ids).logits` once at start-up, so a
family with a transform not listed here is refused instead of trained on the wrong logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distillkit.errors import ConfigError


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Low-precision log-probs make the softmax tails (and the KL) noisy; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass(frozen=True)
class LogitTransform:
    """What a model family does to `hidden @ W.T + b` before returning it: a scale, then a soft cap."""

    scale: float = 1.0
    softcap: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def backward(self, logits: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. the projection `hidden @ W.T + b`, from this transform's output `logits` and the
        gradient w.r.t. them (changed in place). The soft cap's derivative is 1 - tanh^2, and tanh = logits / cap."""
        if self.softcap is not None:
            grad.mul_(1.0 - (logits / self.softcap).square())
        if self.scale != 1.0:
            grad.mul_(self.scale)
        return grad


def logit_transform(config) -> LogitTransform:
    """The transform a transformers config asks for (the text config of a multimodal one)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    if getattr(text, "logit_scale", None) is not None:  # Cohere: a multiplier
        scale *= float(text.logit_scale)
    if getattr(text, "logits_scaling", None) is not None:  # Granite: a divisor
        scale /= float(text.logits_scaling)
    softcap = getattr(text, "final_logit_softcapping", None)
    return LogitTransform(scale, float(softcap) if softcap else None)


@dataclass
class LMHead:
    """An LM head cut to the vocabulary shared with the other model: weight [V, H], optional bias [V]."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    transform: LogitTransform = field(default_factory=LogitTransform)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 (at least) logits of `hidden` rows, exactly the model's own up to the vocabulary cut."""
        return project(hidden, self.weight, self.bias, self.transform)

    def detached(self) -> LMHead:
        bias = None if self.bias is None else self.bias.detach()
        return LMHead(self.weight.detach(), bias, self.transform)

    def cloned(self) -> LMHead:
        """A copy that outlives the module's storage (a gathered FSDP head is freed when the module reshards)."""
        bias = None if self.bias is None else self.bias.clone()
        return LMHead(self.weight.clone(), bias, self.transform)


def project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            transform: LogitTransform | None = None) -> torch.Tensor:
    logits = at_least_fp32(hidden @ weight.T)
    if bias is not None:
        logits = logits + at_least_fp32(bias)
    return logits if transform is None or transform.is_identity else transform(logits)


def lm_head(model: torch.nn.Module, vocab_size: int | None = None) -> LMHead:
    """The head of a causal LM (PEFT-wrapped or not), cut to the first `vocab_size` rows."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = base.get_output_embeddings()
    rows = slice(None, vocab_size)
    bias = module.bias[rows] if isinstance(module, torch.nn.Linear) and module.bias is not None else None
    return LMHead(module.weight[rows], bias, logit_transform(base.config))


@torch.no_grad()
def check_head_matches_model(model: torch.nn.Module, hidden_states, name: str, tokens: int = 8) -> None:
    """One short forward: the head applied by hand must give `model(input_ids).logits`.

    `hidden_states(input_ids, attention_mask)` is how distillkit reads the decoder's output for this model.
    """
    head = lm_head(model)
    device = next(model.parameters()).device
    ids = torch.randint(0, head.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        theirs = at_least_fp32(model(input_ids=ids, attention_mask=mask, use_cache=False).logits[0])
        ours = head.logits(hidden_states(ids, mask)[0])
    finally:
        model.train(was_training)
    error = (ours - theirs).abs().max().item()
    atol = 1e-3 if head.weight.dtype in (torch.float32, torch.float64) else 3e-2
    scale = max(theirs.abs().max().item(), 1.0)
    if not error <= atol * scale:  # also catches NaN
        raise ConfigError(
            f"{name} ({type(model).__name__}) changes its logits in a way distillkit does not apply: hidden states "
            f"through its LM head (bias, logit scale, softcap) differ from the model's own logits by {error:.3g}. "
            "Its family needs support in distillkit/lm_head.py; use a model of another family meanwhile."
        )
