"""Hydra's composition errors as one line that names the fix.

Hydra prints a bad override over several lines (the OmegaConf node, its object type, the search path) and exits
with 1. distillkit's convention for a config the user can fix is one `distillkit: error: ...` line and exit 2,
the same as the checks in `validation.py`. No torch import here: `--cfg job` errors stay fast.
"""

from __future__ import annotations

import re

from distillkit.schema import field_type
from distillkit.trl_keys import trl_hint

SEE_KEYS = "`distillkit --cfg job` prints every key and its value"


def composition_message(err: BaseException) -> str:
    """One line for a Hydra/OmegaConf error raised while composing the config."""
    cause = err.__cause__ or err
    text = str(err)
    key = getattr(cause, "full_key", None) or _key_in(text)
    both = f"{text}\n{cause}"
    not_a_key = "not in struct" in both or re.search(r"Key '[^']+' not in '", both)
    if key and not_a_key:
        return trl_hint(key) or f"{key} is not a distillkit key; {SEE_KEYS}."
    if key and "Error merging override" in text:
        override = text.split("Error merging override", 1)[1].strip()
        expected = field_type(key)
        if expected:
            return f"{override}: {key} takes {_article(expected)}; {SEE_KEYS}."
        return f"{override}: {_first_line(str(cause))}."
    if type(err).__name__ == "OverrideParseException":
        return (f"cannot parse an override ({_first_line(text)}); quote a value with spaces or brackets, e.g. "
                "\"data.system_prompt='You are terse.'\" (https://hydra.cc/docs/advanced/override_grammar/basic).")
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path", 1)[0], flags=re.M)
        listed = f"; {group} has {', '.join(options)}" if options else ""
        return f"{group}={option}: no such {group} option{listed}."
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and "See https" not in line)


def _key_in(text: str) -> str | None:
    match = re.search(r"full_key: (\S+)", text) or re.search(r"Could not override '([^']+)'", text)
    return match.group(1) if match else None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].rstrip(".") if text.strip() else text


def _article(type_words: str) -> str:
    if type_words.startswith(("a ", "an ")):
        return type_words
    article = "an" if type_words[0] in "aeiou" else "a"
    return f"{article} {type_words}"
