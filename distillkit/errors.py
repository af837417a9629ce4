"""The error a user can fix. Its own module, so that the CLI (`--help`, `--cfg job`, `compare`) starts without
importing torch and transformers."""


class ConfigError(ValueError):
    """A bad option, found before any expensive work starts. The message names the fix."""
