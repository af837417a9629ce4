"""Composing a config as the `distillkit` command does: Hydra's compose of a config folder, distillkit's
resolvers registered."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from distillkit.cli import CONF_DIR, register_resolvers


def compose_config(overrides: Iterable[str] = (), config_dir: Path = CONF_DIR, config_name: str = "config"
                   ) -> DictConfig:
    """`config_name` in `config_dir` (the shipped conf/ unless told) with the command-line `overrides`."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
