"""notebooks/compare_runs.ipynb, executed in a real kernel on runs the test itself makes: no errors, the table
names both runs and what differs between them, the plots are there."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from distillkit.compare import label
from distillkit.runner import run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


@pytest.mark.slow
def test_compare_notebook_runs_on_a_store(compose_cfg, tmp_path, monkeypatch):
    run_ids = []
    for loss in ("topk", "sampled"):
        cfg = compose_cfg(f"loss={loss}", "train.steps=2", "train.eval_every=0", "data.num_eval=8",
                          *(["loss.k=8"] if loss == "topk" else []))
        run_ids.append(run(cfg, tmp_path / loss).run_id)
    uri = cfg.tracking.tracking_uri
    labels = [label(MlflowClient(tracking_uri=uri).get_run(run_id)) for run_id in run_ids]

    saved = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in saved.cells if c.cell_type == "code")

    # The kernel inherits this process's environment: the parameters cell reads the store from it.
    monkeypatch.setenv("DISTILLKIT_TRACKING_URI", uri)
    monkeypatch.setenv("DISTILLKIT_EXPERIMENT", cfg.tracking.experiment)
    monkeypatch.setenv("DISTILLKIT_FILTER", "")
    # kernel "python3": jupyter_client starts a kernelspec whose argv is `python` with sys.executable (this venv)
    client = NotebookClient(saved, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    executed = client.execute()

    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{e.ename}: {e.evalue}" for e in errors)
    text = "\n".join(
        o.get("text", "") if o.output_type == "stream" else "\n".join(
            v for k, v in o.get("data", {}).items() if k.startswith("text/"))
        for o in outputs)
    assert "2 runs in 'distillkit'" in text
    for name in labels:  # e.g. gkd-live-topk-hf-20261125-141503 [1a2b3c]
        assert name in text
    assert "loss._target_" in text and "method.beta" in text  # they differ (topk: 0.5, sampled: 1)
    assert "TopKDivergence" in text and "SampledDivergence" in text
    assert "train.steps" not in text  # the same in both runs
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # the curves and the bar chart
