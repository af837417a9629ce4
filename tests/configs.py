"""Composing a config as the `distillkit` command does (Hydra's compose of a config folder, distillkit's resolvers
registered): `distillkit.cli.compose_config`, which `distillkit cache-teacher` uses too."""

from distillkit.cli import compose_config

__all__ = ["compose_config"]
