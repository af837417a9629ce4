"""Reward functions for SDPO, named in config with `_target_`, and the built-in exact-match reward.

A reward function is any callable `f(prompts, completions, **columns) -> list[float | None]`, as in TRL:
`prompts` and `completions` are the decoded texts (chat messages for chat prompts), `completion_ids` the
sampled token ids, and every other data set column arrives as a keyword argument. `None` means "no opinion on
this sample"; a sample's reward is the weighted sum over the functions that gave one.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from distillkit.errors import ConfigError


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


# A number as people write it: 1,234.5 (commas only in groups of three), -3, .5. A minus sign right after a word
# character is a hyphen (2020-2021, 10-2), not a sign.
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_FRACTION = re.compile(r"^(-?)\\d?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}$|^(-?[\d.]+)\s*/\s*(-?[\d.]+)$")


def _to_fraction(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def parse_number(text: str, last: bool = True) -> Fraction | None:
    """The number an answer segment states: a whole-segment fraction (`3/4`, `\\frac{3}{4}`), else its last (or
    first) number.

    `$1,234.50` -> 1234.5, `18 apples` -> 18, `x = -2` -> -2; None when there is no number.
    """
    text = text.replace("\u2212", "-").replace("$", "").replace("\\!", "").strip().rstrip(".")
    text = re.sub(r"\\(?:text|mathrm|mbox)\{[^{}]*\}", " ", text)  # units: \text{ dollars}
    whole = _FRACTION.match(text.strip())
    if whole:
        sign, num, den = (whole.group(1), whole.group(2), whole.group(3)) if whole.group(2) else \
            ("", whole.group(4), whole.group(5))
        a, b = _to_fraction(num), _to_fraction(den)
        if a is not None and b:
            return -(a / b) if sign else a / b
    numbers = _NUMBER.findall(text)
    return _to_fraction(numbers[-1 if last else 0]) if numbers else None


def after_hashes(text: str) -> Fraction | None:
    """GSM8K's answer line: the first number on the line after the last `####`."""
    tail = text.rsplit("####", 1)[1].strip()
    return parse_number(tail.splitlines()[0], last=False) if tail else None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin : i - 1] if depth == 0 else None


def reference_number(reference: str) -> Fraction | None:
    """A GSM8K reference's answer (the first number after the last `####`), a `\\boxed{}` answer, or a reference that
    is a bare number or fraction (`72`, `$1,000`, `3/4`). Anything else (prose) is None: it cannot be judged."""
    if "####" in reference:
        return after_hashes(reference)
    boxed = last_boxed(reference)
    if boxed is not None:
        return parse_number(boxed)
    bare = reference.replace("$", "").strip().rstrip(".")
    return parse_number(bare) if _NUMBER.fullmatch(bare) or _FRACTION.match(bare) else None


def completion_number(completion: str) -> Fraction | None:
    """What a completion answers: its last `\\boxed{}`, else the first number after its last `####`, else its last
    number."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return parse_number(boxed)
    if "####" in completion:
        return after_hashes(completion)
    numbers = _NUMBER.findall(completion.replace("\u2212", "-"))
    return _to_fraction(numbers[-1]) if numbers else None


def numeric_answer_match(prompts, completions, answer=None, completion=None, **_) -> list[float | None]:
    """GSM8K-style verifiable reward: 1.0 when the completion's final number equals the reference's, else 0.0.

    The reference is the `answer` column (else `completion`): GSM8K's `... #### 72`, a bare number, or a
    `\\boxed{}` answer. The completion's final number is its last `\\boxed{}`, else the first number after its
    last `####`, else its last number; numbers compare exactly (`72.0` = `72`, `1,000` = `1000`). None (no
    opinion) for a reference without a number; 0.0 for a completion without one.
    """
    references = answer if answer is not None else completion
    if references is None:
        return [None] * len(completions)
    rewards: list[float | None] = []
    for sample, ref in zip(completions, references, strict=True):
        expected = None if ref is None else reference_number(completion_text(ref))
        if expected is None:
            rewards.append(None)
            continue
        got = completion_number(completion_text(sample))
        rewards.append(float(got is not None and got == expected))
    return rewards
