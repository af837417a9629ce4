"""The teacher's prompt for self-distillation: the student's prompt rewritten around privileged context.

String prompts are formatted whole. For chat prompts only the last user turn is rewritten; the system turn and
earlier turns stay as they are. The result is tokenized like any prompt (chat template included).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from distillkit.errors import ConfigError


def context_text(context: Any) -> str:
    """Privileged context as text: a string as is, chat messages joined by their text content."""
    if context is None:
        raise ConfigError("A row has privileged_context=None; every row needs a demonstration or feedback text.")
    if isinstance(context, str):
        return context
    if isinstance(context, list) and context and isinstance(context[0], dict):
        return "\n".join(text for text in (message_text(m) for m in context) if text)
    return str(context)


def message_text(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content)


def rewrite_prompt(prompt: Any, render: Callable[[str], str]) -> Any:
    """`render(question_text)` gives the teacher's text for the question; chat prompts keep their other turns."""
    if isinstance(prompt, str):
        return render(prompt)
    last = prompt[-1]
    if last.get("role") != "user":
        raise ConfigError(
            f"A chat prompt ends with a {last.get('role')!r} turn; self-distillation rewrites the last user turn "
            "into the teacher's prompt, so prompts must end with a user turn."
        )
    return [*prompt[:-1], {"role": "user", "content": render(message_text(last))}]


def check_template(name: str, template: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """Refuse a template that misses a required field or names an unknown one, before anything loads."""
    try:
        named = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as err:
        raise ConfigError(f"method.{name}={template!r} is not a valid format string: {err}") from err
    unknown = sorted(named - set(allowed))
    missing = [f"{{{f}}}" for f in required if f not in named]
    if unknown:
        raise ConfigError(f"method.{name}={template!r} uses unknown fields {unknown}; it may use {list(allowed)}.")
    if missing:
        raise ConfigError(f"method.{name}={template!r} must contain {', '.join(missing)}.")
