"""Reward functions for SDPO, named in config with `_target_`, and the built-in exact-match reward.

A reward function is any callable `f(prompts, completions, **columns) -> list[float | None]`, as in TRL:
`prompts` and `completions` are the decoded texts (chat messages for chat prompts), `completion_ids` the
sampled token ids, and every other data set column arrives as a keyword argument. `None` means "no opinion on
this sample"; a sample's reward is the weighted sum over the functions that gave one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from distillkit.models import ConfigError


@dataclass
class RewardFunction:
    name: str
    fn: Callable
    weight: float


def load_reward_functions(entries: Sequence) -> list[RewardFunction]:
    """Import every `_target_` now, so a typo is refused at start-up and not after the first rollouts."""
    if not entries:
        raise ConfigError("method.reward_funcs is empty; SDPO needs at least one, e.g. "
                          "[{_target_: distillkit.rewards.exact_match}].")
    out = []
    for entry in entries:
        spec = OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else dict(entry)
        if "_target_" not in spec:
            raise ConfigError(f"A reward function entry needs `_target_` (a dotted path); got {spec}.")
        weight = float(spec.pop("weight", 1.0))
        try:
            target = get_object(spec["_target_"])
        except Exception as err:
            raise ConfigError(f"Reward function {spec['_target_']!r} cannot be imported: {err}") from err
        fn = instantiate(spec) if inspect.isclass(target) else instantiate(spec, _partial_=True)
        if not callable(fn):
            raise ConfigError(f"Reward function {spec['_target_']!r} is not callable.")
        out.append(RewardFunction(spec["_target_"].rsplit(".", 1)[-1], fn, weight))
    return out


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)


def exact_match(prompts, completions, answer=None, completion=None, **_) -> list[float | None]:
    """1.0 when the completion equals the reference (column `answer`, else `completion`), stripped; else 0.0."""
    references = answer if answer is not None else completion
    if references is None:
        return [None] * len(completions)
    return [None if ref is None else float(completion_text(c).strip() == completion_text(ref).strip())
            for c, ref in zip(completions, references, strict=True)]
