"""A run killed with SIGKILL resumes from its checkpoint and ends with the same weights; metrics reach MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file


def cli(tiny_pair, run_dir: Path, db: Path, *extra: str) -> list[str]:
    student, teacher = tiny_pair
    return [
        sys.executable, "-m", "distillkit.cli", f"model.student={student}", f"teacher.model={teacher}",
        "data.num_train=256", "data.num_eval=16", "train.batch_size=8", "train.gradient_accumulation_steps=2",
        "train.steps=16", "train.save_every=4", "train.eval_every=0", "method.lmbda=0.5",
        f"tracking.tracking_uri=sqlite:///{db}", f"hydra.run.dir={run_dir}", *extra,
    ]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final_model" / "model.safetensors")


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_final_weights(tiny_pair, tmp_path):
    db = tmp_path / "mlflow.db"
    straight = tmp_path / "straight"
    subprocess.run(cli(tiny_pair, straight, db), check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(tiny_pair, killed, db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed / "checkpoints").glob("step_*")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final_model").exists(), "the run finished before it could be killed"
    run_id = (killed / "mlflow_run_id").read_text()

    resumed = subprocess.run(cli(tiny_pair, killed, db), check=True, capture_output=True, text=True, timeout=300)
    assert "Resumed from" in resumed.stdout
    assert (killed / "mlflow_run_id").read_text() == run_id  # the same MLflow run goes on

    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)

    client = MlflowClient(f"sqlite:///{db}")
    history = client.get_metric_history(run_id, "train/loss")
    assert max(m.step for m in history) == 16
    assert client.get_run(run_id).data.tags["distillkit.resumed"] == "true"


def test_every_metric_the_loop_computes_reaches_mlflow(compose_cfg, tmp_path):
    from distillkit.runner import StepClock, build, optimizer_step, prepare, run

    cfg = compose_cfg("train.steps=3", "train.eval_every=2", "train.save_every=0", "method.lmbda=0.5",
                      "train.gradient_accumulation_steps=2")
    summary = run(cfg, tmp_path / "run", ["train.steps=3"])

    parts = build(cfg, prepared := prepare(cfg))
    computed = set(optimizer_step(parts, prepared.train_rows[:8], 0, StepClock()))
    computed |= {"eval/accuracy", "eval/teacher_kl", "eval/teacher_accuracy", "summary/tokens_per_s"}

    client = MlflowClient(cfg.tracking.tracking_uri)
    run_data = client.get_run(summary.run_id).data
    assert computed <= set(run_data.metrics), computed - set(run_data.metrics)
    assert {"train/loss", "train/kl", "train/entropy", "train/tokens_per_s", "completions/mean_length",
            "train/grad_norm", "train/lr", "time/generate_fraction", "time/teacher_fraction",
            "time/update_fraction", "train/loss_on_policy", "train/loss_off_policy"} <= computed
    assert len(client.get_metric_history(summary.run_id, "eval/accuracy")) == 3  # before, step 2, after
    assert run_data.params["method.lmbda"] == "0.5"
    assert run_data.tags["override.train.steps"] == "3"
    assert run_data.tags["method"] == "gkd" and run_data.tags["loss"] == "full"
    assert Path(run_data.tags["distillkit.final_model"]).joinpath("config.json").exists()
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert "config.yaml" in artifacts
