"""A real SLURM sweep: `distillkit -m ... hydra/launcher=slurm` on the one-node cluster that `.ci/slurm-up.sh`
starts. Two jobs run as a job array; one is preempted (SIGUSR2, what SLURM sends before preemption), checkpoints,
requeues itself, resumes and keeps its MLflow run. Both child runs end in MLflow with their metrics. A job with
two tasks trains as two processes of one process group.

Skipped where no SLURM controller answers; `.ci/run` brings one up and runs `pytest -m slurm`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_sweeps import DISTILLKIT, TINY, parent_and_children, runs_of, start_until_tracked


def controller_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("is UP") > 0


pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not controller_up(), reason="no SLURM controller (run .ci/slurm-up.sh)")]


def array_tasks() -> dict[str, str]:
    """Running or pending tasks of this cluster's jobs: `<array id>_<index>` -> state."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, check=True)
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def test_slurm_sweep_with_a_preempted_job_lands_both_child_runs_in_mlflow(tmp_path):
    steps = 40
    sweep_dir = tmp_path / "sweep"
    deadline = time.time() + 240  # the same start as the wait for tracking: the later bound stays as it was
    proc = start_until_tracked(
        ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=4", "hydra.launcher.timeout_min=30", "train.seed=0,1", f"train.steps={steps}", *TINY,
         f"hydra.sweep.dir={sweep_dir}"], tmp_path, sweep_dir / "0", timeout=240)
    try:
        job = next(task for task in array_tasks() if task.endswith("_0"))
        run_id = (sweep_dir / "0" / "mlflow_run_id").read_text()
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        while True:  # a requeued job waits ~120 s for its begin time; release it as soon as it is pending
            assert proc.poll() is None and time.time() < deadline + 240, proc.communicate()[0][-3000:]
            info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
            if "Restarts=1" in info and "JobState=PENDING" in info:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            elif "Restarts=1" in info and ("JobState=RUNNING" in info or "JobState=COMPLETED" in info):
                break
            time.sleep(0.5)
        output, _ = proc.communicate(timeout=480)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]

    logs = "".join(p.read_text() for p in Path(sweep_dir).glob(".submitit/*/*_log.*"))
    assert "requeueing through submitit" in logs and "Resumed from" in logs, logs[-3000:]
    client, runs = runs_of(tmp_path)
    parent, children = parent_and_children(runs)
    assert parent.data.tags["distillkit.launcher"] == "slurm" and parent.info.status == "FINISHED"
    assert len(children) == 2 and run_id in {c.info.run_id for c in children}
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"train/loss", "eval/accuracy", "summary/tokens_per_s"} <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))
        assert (child.data.tags.get("distillkit.resumed") == "true") == (child.info.run_id == run_id)


def test_two_task_slurm_jobs_train_as_two_processes_ddp_and_fsdp2_and_track_once(tmp_path):
    from distillkit.checkpoint import load_checkpoint

    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(
        [DISTILLKIT, "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=4", "method.lmbda=0", "train.steps=3",
         *TINY, "train.batch_size=4", "train.save_every=2", "distributed.strategy=ddp,fsdp2",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    for job, strategy in enumerate(["ddp", "fsdp2"]):
        state = load_checkpoint(sweep_dir / str(job) / "checkpoints" / "step_00000002")
        assert len(state["rng_per_process"]) == 2  # submitit's two tasks joined one process group
        assert state["strategy"] == strategy
    client, runs = runs_of(tmp_path)
    _, children = parent_and_children(runs)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)  # rank 0 alone tracks
    for child in children:
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [1, 2, 3]
