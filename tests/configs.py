"""Composing a config as the `distillkit` command does (Hydra's compose of a config folder, distillkit's resolvers
registered): `distillkit.cli.compose_config`, which `distillkit cache-teacher` uses too."""

from distillkit.cli import CONF_DIR, compose_config

__all__ = ["CONF_DIR", "compose_config"]
