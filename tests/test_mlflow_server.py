"""Tracking to a real `mlflow server` over HTTP (`tracking.tracking_uri=http://...`): the run, its metrics, its
params and its `config.yaml` artifact arrive at the server, and the artifact is stored where the server keeps them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from launch import free_port
from mlflow.tracking import MlflowClient

from distillkit.runner import run


@pytest.fixture
def mlflow_server(tmp_path, request):
    """`mlflow server` on a free local port, SQLite backend and proxied artifacts under tmp_path; stopped at the end."""
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # no store leaked from other tests
    # No job-execution workers (a huey consumer pool for GenAI jobs, ~8 processes): half the start-up time.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = open(tmp_path / "server.log", "wb")  # closed by the finalizer
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/db.sqlite", "--artifacts-destination", str(artifacts)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server and the uvicorn worker it starts stop together
    )
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri keeps it in the environment

    def stop():
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the group: a worker may outlive the server process
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        mlflow.set_tracking_uri(previous_uri)  # the run pointed the process-wide URI at this server (None: unset)

    request.addfinalizer(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # it starts in 10-30 s; a busy machine can take longer
    while True:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.returncode}):\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                break
        except requests.RequestException:  # not listening yet, or listening before the app is up
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server not healthy after 120 s:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        time.sleep(0.3)
    return url, artifacts


@pytest.mark.slow
def test_a_run_tracks_to_an_mlflow_server(mlflow_server, compose_cfg, tmp_path):
    url, artifacts = mlflow_server
    cfg = compose_cfg(f"tracking.tracking_uri={url}", "train.steps=2", "train.eval_every=0", "data.num_eval=8")
    summary = run(cfg, tmp_path / "run")
    assert summary.run_id and summary.ui_command == f"mlflow ui --backend-store-uri {url}"

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == summary.run_id and found.info.status == "FINISHED"
    assert found.info.run_name.startswith("gkd-live-full-hf-")

    assert {"train/loss", "eval/accuracy", "eval/teacher_kl", "summary/tokens_per_s"} <= set(found.data.metrics)
    assert [m.step for m in client.get_metric_history(summary.run_id, "train/loss")] == [1, 2]
    accuracy = sorted(client.get_metric_history(summary.run_id, "eval/accuracy"), key=lambda m: m.step)
    assert [m.step for m in accuracy] == [0, 2]
    assert accuracy[-1].value == pytest.approx(summary.student_accuracy[-1])

    params = found.data.params
    assert params["train.steps"] == "2" and params["data.num_eval"] == "8"
    assert params["loss._target_"] == "distillkit.losses.FullDivergence"
    assert params["tracking.tracking_uri"] == url
    assert found.data.tags["method"] == "gkd" and found.data.tags["loss"] == "full"

    assert "config.yaml" in [a.path for a in client.list_artifacts(summary.run_id)]
    config = yaml.safe_load(Path(client.download_artifacts(summary.run_id, "config.yaml", str(tmp_path))).read_text())
    assert config["train"]["steps"] == 2 and config["tracking"]["tracking_uri"] == url
    stored = list(artifacts.rglob("config.yaml"))  # uploaded through the server, kept under its destination
    assert len(stored) == 1 and summary.run_id in str(stored[0])
