"""The errors a user can act on. Their own module, so that the CLI (`--help`, `--cfg job`, `compare`) starts without
importing torch and transformers."""


class ConfigError(ValueError):
    """A bad option, found before any expensive work starts. The message names the fix."""


class ServerFailure(RuntimeError):
    """A server the run depends on (a teacher, a rollout server) stopped answering during training. The run
    checkpoints and the command exits with code 3.

    `checkpoint_step`: set by the training loop when it saved a checkpoint before re-raising, so the message the
    user reads says whether one exists."""

    checkpoint_step: int | None = None
