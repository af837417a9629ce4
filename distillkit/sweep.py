"""A Hydra multirun as one MLflow parent run with a child run per job.

The launching process (`distillkit -m ...`) creates the MLflow store, the experiment and the parent run once, in
`on_multirun_start`, before any job starts: jobs that created the same sqlite store at the same moment race
("duplicate column name"). The parent's id reaches the jobs through an environment variable (inherited by the
basic, submitit-local and SLURM launchers alike) and a file in the sweep folder (for a job requeued later).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PARENT_ENV = "DISTILLKIT_MLFLOW_PARENT_RUN_ID"
PARENT_FILE = "mlflow_parent_run_id"
SWEEP_KIND, JOB_KIND, SINGLE_KIND = "sweep", "sweep_job", "single"


@dataclass
class SweepJob:
    """Where a job sits in its sweep: what its MLflow run is tagged with."""

    sweep_dir: str
    job_num: int
    parent_run_id: str | None


def current_sweep_job(hydra_cfg) -> SweepJob | None:
    """The running job's place in a multirun, or None for a single run."""
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = str(hydra_cfg.sweep.dir)
    parent = os.environ.get(PARENT_ENV)
    parent_file = Path(sweep_dir) / PARENT_FILE
    if not parent and parent_file.exists():
        parent = parent_file.read_text().strip()
    return SweepJob(sweep_dir=os.path.abspath(sweep_dir), job_num=int(hydra_cfg.job.num), parent_run_id=parent)


class MLflowSweepCallback(Callback):
    """Registered in conf/config.yaml under `hydra.callbacks`; does nothing for single runs or with tracking off."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.tracking.enabled:
            return
        from mlflow.tracking import MlflowClient

        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(config.tracking.tracking_uri)
        experiment = client.get_experiment_by_name(config.tracking.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(config.tracking.experiment))
        overrides = " ".join(config.hydra.overrides.task) or "(none)"
        run = client.create_run(experiment_id, run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}", tags={
            "distillkit.kind": SWEEP_KIND, "distillkit.sweep_dir": str(sweep_dir.resolve()),
            "distillkit.sweep_overrides": overrides,
            "distillkit.launcher": str(config.hydra.runtime.choices.get("hydra/launcher", "basic")),
            "distillkit.sweeper": str(config.hydra.runtime.choices.get("hydra/sweeper", "basic")),
        })
        self.parent_run_id = run.info.run_id
        (sweep_dir / PARENT_FILE).write_text(self.parent_run_id)
        os.environ[PARENT_ENV] = self.parent_run_id
        print(f"MLflow parent run of this sweep: {self.parent_run_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        from mlflow.tracking import MlflowClient

        MlflowClient(config.tracking.tracking_uri).set_terminated(self.parent_run_id, status="FINISHED")
        os.environ.pop(PARENT_ENV, None)
