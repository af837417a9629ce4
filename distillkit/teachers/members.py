"""A teacher named inside another teacher's settings (the router's entries, the cache's fallback): `kind` plus that
kind's settings over its defaults in conf/teacher/<kind>.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from distillkit.errors import ConfigError

if TYPE_CHECKING:
    from distillkit.teachers.teacher import Teacher

CONF_TEACHERS = Path(__file__).resolve().parents[2] / "conf" / "teacher"
MEMBER_KINDS = ("live", "remote", "cache")
SOURCE_KEYS = {"live": "model", "remote": "url", "cache": "path"}


def member_config(teacher_id: str, entry: Mapping, where: str = "teacher.teachers") -> dict:
    """The entry's settings over its kind's defaults (conf/teacher/<kind>.yaml), resolved."""
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in MEMBER_KINDS:
        raise ConfigError(f"{where}.{teacher_id}.kind={kind!r}: a teacher named here is one of "
                          f"{', '.join(MEMBER_KINDS)}, e.g. {where}.{teacher_id}={{kind: live, model: PATH}}.")
    defaults = OmegaConf.load(CONF_TEACHERS / f"{kind}.yaml")
    unknown = set(entry) - set(defaults)
    if unknown:
        raise ConfigError(f"{where}.{teacher_id}: {sorted(unknown)} are not settings of teacher={kind}.")
    return {"kind": kind, **OmegaConf.to_container(OmegaConf.merge(defaults, entry), resolve=True)}


def member_identity(config: dict) -> dict:
    """What a checkpoint records of a named teacher: its kind, where its scores come from, and its dtype."""
    kind = config["kind"]
    return {"kind": kind, "source": str(config.get(SOURCE_KEYS[kind])), "dtype": str(config.get("dtype", ""))}


def build_member(name: str, config: dict) -> Teacher:
    """The teacher a `member_config` describes; its ConfigError prefixed with `name` (the setting it came from)."""
    from distillkit.assembly import build_object  # the assembly imports the teachers package

    try:
        return build_object(OmegaConf.create({k: v for k, v in config.items() if k != "kind"}))
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None
