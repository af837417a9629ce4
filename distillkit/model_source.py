"""Is `model.student` / `teacher.model` something `from_pretrained` can load? Checked before anything loads.

A path that does not exist otherwise reaches the hub client, which answers `OSError: Repo id must be in the form
...` and names neither the config key nor the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

from distillkit.errors import ConfigError

# What the hub accepts as a repo id: `name` or `namespace/name`, of letters, digits, `-`, `_` and `.`.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def check_model_source(key: str, name: str) -> None:
    """Refuse a local folder that is missing or is not a model, and a string that is neither a folder nor a hub id.

    A string that could be a hub id (`Qwen/Qwen3-0.6B`) and is not a local folder is left to the hub."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}={name} is a folder but not a model: it has no config.json. Point it at a "
                              "folder written by save_pretrained (or `distillkit make-student`).")
        return
    if path.exists():
        raise ConfigError(f"{key}={name} is a file; it must be a model folder (with config.json) or a hub name.")
    if HUB_ID.fullmatch(name) and ".." not in name and "--" not in name:
        return
    raise ConfigError(f"{key}={name}: no such model folder (and not a hub name such as Qwen/Qwen3-0.6B). Check the "
                      "path, or make the folder first: `distillkit fetch-model ...`, `distillkit make-student ...`.")
