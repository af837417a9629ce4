"""MLflow tracking: one run per training job, resumed (same run id) when the job resumes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillkit.sweep import JOB_KIND, SINGLE_KIND, SweepJob

MAX_PARAM_CHARS = 6000


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`: the resolved config as MLflow params."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(tree)[:MAX_PARAM_CHARS]}


class Tracker:
    """A thin wrapper so the loop reads `tracker.log(...)` whether MLflow is on or off."""

    def __init__(self, enabled: bool, tracking_uri: str, experiment: str, run_name: str | None = None):
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None

    def start(self, cfg: DictConfig, overrides: list[str], output_dir: Path, tags: dict[str, str],
              sweep: SweepJob | None = None) -> None:
        """Open (or, after a resume or a requeue, reopen) the job's run; a sweep's job nests under its parent."""
        if not self.enabled:
            return
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        id_file = output_dir / "mlflow_run_id"
        resumed = id_file.exists()
        run_name = self.run_name or default_run_name(tags)
        parent = sweep.parent_run_id if sweep is not None and not resumed else None
        run = mlflow.start_run(run_id=id_file.read_text().strip() if resumed else None, run_name=run_name,
                               parent_run_id=parent)
        self.run_id = run.info.run_id
        if resumed:
            mlflow.set_tag("distillkit.resumed", "true")
            return
        id_file.write_text(self.run_id)
        if sweep is None:
            tags = {**tags, "distillkit.kind": SINGLE_KIND}
        else:
            tags = {**tags, "distillkit.kind": JOB_KIND, "distillkit.sweep_dir": sweep.sweep_dir,
                    "distillkit.job_num": str(sweep.job_num)}
        resolved = OmegaConf.to_container(cfg, resolve=True)
        params = list(flatten(resolved).items())
        for start in range(0, len(params), 100):
            mlflow.log_params(dict(params[start : start + 100]))
        mlflow.log_dict(resolved, "config.yaml")
        mlflow.set_tags({**tags, "distillkit.overrides": " ".join(overrides) or "(none)"})
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            mlflow.set_tag(f"override.{key}", value)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags(tags)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status=status)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


def default_tracking_uri(output_root: str) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(output_root, 'mlflow.db'))}"


def default_run_name(tags: dict[str, str]) -> str:
    """`sdpo-ema-full-hf-20261125-141503`: what ran and when. MLflow's own random names repeat here, because
    its generator draws from Python's `random`, which the run has seeded."""
    import time

    parts = [tags[k] for k in ("method", "teacher", "loss", "generation") if k in tags]
    return "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")])
