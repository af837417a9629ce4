"""The self-distillation recipes run as a user runs them: the CLI with `--config-dir recipes/...` (2 steps here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHORT = ["train.steps=2", "train.eval_every=0", "data.num_eval=16", "data.num_train=256", "tracking.enabled=false"]


@pytest.mark.parametrize(("recipe", "name", "extra", "method"), [
    ("sdft_continual", "sdft", [], "SDFT"),
    ("sdpo_vs_grpo", "sdpo", [], "SDPO"),
    ("sdpo_vs_grpo", "sdpo", ["method.distillation_weight=0"], "SDPO"),
])
@pytest.mark.slow
def test_recipe_composes_and_runs(tmp_path, recipe, name, extra, method):
    base = [sys.executable, "-m", "distillkit.cli", "--config-dir", str(RECIPES / recipe), "--config-name", name]
    shown = subprocess.run([*base, "--cfg", "job"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"distillkit.methods.{method}" in shown.stdout and "tiny/self" in shown.stdout
    done = subprocess.run([*base, *SHORT, *extra, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "final_model" / "model.safetensors").exists()
