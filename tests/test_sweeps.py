"""Hydra multirun sweeps as a user runs them: `distillkit -m ...` with the basic launcher and with submitit's
local launcher, one MLflow parent run per sweep with a child run per job, and preemption (SIGUSR2 / SIGTERM)
answered by a checkpoint, a requeue and a resume that keeps the job's MLflow run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from distillkit import compare
from distillkit.runner import run

DISTILLKIT = shutil.which("distillkit") or str(Path(sys.executable).parent / "distillkit")
TINY = ["train.batch_size=8", "train.eval_every=0", "data.num_eval=16", "data.num_train=64", "train.save_every=0"]


def distillkit(args: list[str], cwd: Path, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([DISTILLKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)


def start_until_tracked(args: list[str], cwd: Path, run_dir: Path, timeout: float) -> subprocess.Popen:
    """Start `distillkit args` and return once the run in `run_dir` has opened its MLflow run (training is next)."""
    proc = subprocess.Popen([DISTILLKIT, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while not (run_dir / "mlflow_run_id").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[0][-3000:])
        time.sleep(0.2)
    return proc


def runs_of(cwd: Path) -> tuple[object, list]:
    client = MlflowClient(f"sqlite:///{cwd}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name("distillkit")
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def parent_and_children(runs: list) -> tuple[object, list]:
    parents = [r for r in runs if r.data.tags.get("distillkit.kind") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


@pytest.mark.slow
def test_a_multirun_is_one_parent_run_with_a_tagged_child_per_job(tmp_path, compose_cfg, capsys):
    cfg = compose_cfg("train.steps=2", *TINY, f"tracking.tracking_uri=sqlite:///{tmp_path}/outputs/mlflow.db")
    run(cfg, tmp_path / "single")  # a single run in the same store (in process: no second start-up)
    out = distillkit(["-m", "loss=topk,sampled", "train.steps=2", *TINY], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    client, runs = runs_of(tmp_path)
    parent, children = parent_and_children(runs)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["distillkit.sweep_overrides"].startswith("loss=topk,sampled")
    assert len(children) == 2
    assert sorted(c.data.tags["loss"] for c in children) == ["sampled", "topk"]
    for child in children:
        tags = child.data.tags
        assert tags["distillkit.kind"] == "sweep_job" and tags["method"] == "gkd" and tags["teacher"] == "live"
        assert tags["generation"] == "hf" and tags["override.loss"] == tags["loss"]
        assert tags["distillkit.sweep_dir"] == parent.data.tags["distillkit.sweep_dir"]
        assert {"train/loss", "eval/accuracy"} <= set(child.data.metrics)
    singles = [r for r in runs if r.data.tags.get("distillkit.kind") == "single"]
    assert len(singles) == 1 and "mlflow.parentRunId" not in singles[0].data.tags  # told apart from sweep jobs

    assert compare.main(["--tracking-uri", f"sqlite:///{tmp_path}/outputs/mlflow.db", "--sweep", "latest",
                         "--plot", str(tmp_path / "c.png")]) == 0
    table = capsys.readouterr().out
    assert all(child.info.run_id[:6] in table for child in children) and "loss._target_" in table
    assert singles[0].info.run_id[:6] not in table and parent.info.run_id[:6] not in table


def job_processes(sweep_root: Path) -> list[int]:
    """The pids of submitit's local job processes of this test's sweep (not their controllers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmdline and str(sweep_root) in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_submitit_local_jobs_requeue_on_preemption_and_resume_their_mlflow_run(tmp_path):
    steps = 40
    sweep_dir = tmp_path / "sweep"
    proc = start_until_tracked(["-m", "hydra/launcher=local", "train.seed=0", f"train.steps={steps}", *TINY,
                                f"hydra.sweep.dir={sweep_dir}"], tmp_path, sweep_dir / "0", timeout=180)
    try:
        pids = job_processes(sweep_dir)
        assert len(pids) == 1, pids
        run_id = (sweep_dir / "0" / "mlflow_run_id").read_text()
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)  # what SLURM sends signal_delay_s before preemption or the time limit
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]

    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert logs.count("requeueing through submitit") == 1, logs[-3000:]
    assert logs.count("Resumed from") == 1, logs[-3000:]
    client, runs = runs_of(tmp_path)
    _, children = parent_and_children(runs)
    assert [c.info.run_id for c in children] == [run_id]  # the requeued job kept its run
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["distillkit.resumed"] == "true"
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))  # every step logged exactly once


@pytest.mark.slow
def test_sigterm_outside_submitit_checkpoints_exits_and_the_rerun_resumes_the_same_mlflow_run(tmp_path):
    steps = 40
    out_dir = tmp_path / "run"
    args = [f"train.steps={steps}", *TINY, f"hydra.run.dir={out_dir}"]
    proc = start_until_tracked(args, tmp_path, out_dir, timeout=120)
    try:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "rerun the same command to resume" in output
    assert list((out_dir / "checkpoints").glob("step_*"))
    run_id = (out_dir / "mlflow_run_id").read_text()

    again = distillkit(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed from" in again.stdout and run_id in again.stdout
    client, runs = runs_of(tmp_path)
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))


@pytest.mark.slow
def test_optuna_search_recipe_runs_trials_as_child_runs_and_maximizes_the_returned_accuracy(tmp_path):
    recipe = Path(__file__).parents[1] / "recipes" / "gkd_optuna"
    sweep_dir = tmp_path / "search"
    out = distillkit(["--config-dir", str(recipe), "--config-name", "search", "-m", "hydra.sweeper.n_trials=2",
                      "train.steps=2", *TINY, f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    import yaml

    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"method.beta", "method.lmbda", "train.lr"}

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name("gkd_optuna")
    parent, children = parent_and_children(client.search_runs([experiment.experiment_id]))
    assert parent.data.tags["distillkit.sweeper"] == "optuna" and len(children) == 2
    finals = [c.data.metrics["eval/accuracy"] for c in children]
    assert best["best_value"] == pytest.approx(max(finals))
    betas = {float(c.data.params["method.beta"]) for c in children}
    assert len(betas) == 2 and all(0.0 <= b <= 1.0 for b in betas)  # sampled from the search space


def test_a_launcher_or_sweeper_whose_plugin_is_missing_names_the_extra_to_install():
    from distillkit.cli import PLUGIN_EXTRAS, missing_plugin

    assert missing_plugin(["-m", "hydra/launcher=slurm", "train.seed=0,1"]) is None  # installed with [test]
    assert missing_plugin(["hydra/sweeper=optuna"]) is None
    absent = {**PLUGIN_EXTRAS, "hydra/launcher=slurm": ("hydra_plugins.not_installed_launcher", "slurm")}
    message = missing_plugin(["-m", "hydra/launcher=slurm"], absent)
    assert message is not None and 'pip install "distillkit[slurm]"' in message
