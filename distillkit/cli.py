"""The `distillkit` command: compose the Hydra config, run the loop, print the summary table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distillkit import ASSETS_DIR, PACKAGE_DIR
from distillkit.errors import ConfigError, ServerFailure
from distillkit.schema import register_schema

CONF_DIR = PACKAGE_DIR.parent / "conf"


def register_resolvers() -> None:
    """`${dk.asset:tiny/student}` finds a shipped checkpoint; `${dk.abspath:outputs}` pins a path to the cwd."""
    if not OmegaConf.has_resolver("dk.asset"):
        OmegaConf.register_new_resolver("dk.asset", lambda name: str(ASSETS_DIR / name))
        OmegaConf.register_new_resolver("dk.abspath", lambda path: os.path.abspath(path))


def compose_config(overrides=(), config_dir: Path = CONF_DIR, config_name: str = "config") -> DictConfig:
    """`config_name` in `config_dir` with command-line `overrides`, composed as the `distillkit` command does (for
    the subcommands that read a training run's config, and the tests)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def format_summary(summary) -> str:
    acc, kl = summary.student_accuracy, summary.teacher_kl
    rows = [
        ("student accuracy (held-out exact match)", f"{acc[0]:.1%} -> {acc[-1]:.1%}"),
        ("teacher accuracy", "n/a (not sampled in process)" if summary.teacher_accuracy != summary.teacher_accuracy
         else f"{summary.teacher_accuracy:.1%}"),
        ("teacher-student KL(T||S) per token", f"{kl[0]:.4f} -> {kl[-1]:.4f}"),
        ("training tokens/s", f"{summary.tokens_per_s:,.0f}"),
        ("final student", summary.final_model_dir),
        ("MLflow run id", summary.run_id or "(tracking off)"),
    ]
    if summary.run_id:
        rows.append(("look at it", summary.ui_command))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def train(cfg: DictConfig) -> float:
    """The Hydra task. Returns the final held-out accuracy: the objective a sweeper (Optuna) maximizes."""
    from hydra.core.hydra_config import HydraConfig

    from distillkit.runner import run
    from distillkit.sweep import current_sweep_job

    hand_back_hydra_errors()  # composition is over: errors from here on get Hydra's own report
    hydra_cfg = HydraConfig.get()
    try:
        summary = run(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task),
                      current_sweep_job(hydra_cfg))
    except ConfigError as err:
        print(f"distillkit: error: {err}", file=sys.stderr)
        sys.exit(2)
    except ServerFailure as err:
        if err.checkpoint_step is not None:
            after = f"A checkpoint was written at step {err.checkpoint_step}; rerun the same command to resume."
        else:
            after = ("No checkpoint was written: the server failed before the first training step (in the starting "
                     "evaluation). Rerun the same command once it answers.")
        print(f"distillkit: error: {err}\n{after}", file=sys.stderr)
        sys.exit(3)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not one per process
        print("\n" + format_summary(summary))
    return summary.student_accuracy[-1]


register_resolvers()  # at import: a submitit job unpickles `train` and composes its config in a fresh process
register_schema()  # the same: conf/config.yaml's defaults name the typed schema

SUBCOMMANDS = {"serve-teacher": "distillkit.serve.server", "cache-teacher": "distillkit.cache.record", "compare": "distillkit.compare",
               "fetch-model": "distillkit.real_models", "make-student": "distillkit.make_student"}


# Hydra plugins that come with an extra: without them Hydra only says it cannot find the config group option.
PLUGIN_EXTRAS = {
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}


def missing_plugin(argv: list[str], extras: dict[str, tuple[str, str]] = PLUGIN_EXTRAS) -> str | None:
    """The install command for a launcher or sweeper named on the command line but not installed."""
    import importlib.util

    for arg in argv:
        if arg in extras:
            module, extra = extras[arg]
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return f"{arg} needs a Hydra plugin that is not installed: pip install \"distillkit[{extra}]\""
    return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:  # `distillkit serve-teacher|compare ...`: argparse, not Hydra
        import importlib

        sys.exit(importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    problem = missing_plugin(sys.argv[1:])
    if problem:
        print(f"distillkit: error: {problem}", file=sys.stderr)
        sys.exit(2)
    import hydra
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the training bar
    run_hydra(hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(train))


# Set by `run_hydra` (not by the user): Hydra re-raises composition errors instead of printing them.
_OWN_FULL_ERROR = "_DISTILLKIT_SET_HYDRA_FULL_ERROR"


def run_hydra(entry) -> None:
    """Run Hydra's entry point, with a composition error (`train.lr=abc`, `method.max_new_tokens=5`, a misspelt
    key or option) as one `distillkit: error:` line and exit 2, like every other config error.

    Hydra prints composition errors itself unless HYDRA_FULL_ERROR is set, so it is set here for the composition
    only (`train` unsets it first thing) and the error is caught; a user's own HYDRA_FULL_ERROR keeps Hydra's
    full traceback.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from distillkit.composition_errors import composition_message

    if "HYDRA_FULL_ERROR" in os.environ:
        entry()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ[_OWN_FULL_ERROR] = "1"
    try:
        entry()
    except (HydraException, OmegaConfBaseException) as err:
        print(f"distillkit: error: {composition_message(err)}", file=sys.stderr)
        sys.exit(2)
    finally:
        hand_back_hydra_errors()


def hand_back_hydra_errors() -> None:
    """Unset the HYDRA_FULL_ERROR that `run_hydra` set, so that errors in the run get Hydra's usual report."""
    if os.environ.pop(_OWN_FULL_ERROR, None):
        os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
