"""`distillkit compare` on runs the test itself makes: the table shows what differs, the PNG is written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distillkit.runner import run


@pytest.mark.slow
def test_compare_tables_the_differing_settings_and_plots(compose_cfg, tmp_path):
    for loss in ("topk", "sampled"):
        cfg = compose_cfg(f"loss={loss}", "train.steps=2", "train.eval_every=0", "data.num_eval=8",
                          *(["loss.k=8"] if loss == "topk" else []))
        run(cfg, tmp_path / loss)
    uri = cfg.tracking.tracking_uri
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "-m", "distillkit.cli", "compare", "--tracking-uri", uri, "--plot", str(png),
                          "--metric", "eval/accuracy", "--metric", "train/loss"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = lines[0]
    assert "loss._target_" in header and "method.beta" in header  # they differ (topk: 0.5, sampled: 1)
    assert "train.steps" not in header  # the same in both runs
    assert any("gkd-live-topk-hf-" in line and "TopKDivergence" in line for line in lines[1:3])
    assert any("gkd-live-sampled-hf-" in line and "SampledDivergence" in line for line in lines[1:3])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    missing = subprocess.run([sys.executable, "-m", "distillkit.cli", "compare", "--tracking-uri", uri,
                              "--experiment", "nope"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no experiment 'nope'" in missing.stderr
