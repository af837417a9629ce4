"""The acceptance test: `distillkit` with no arguments distills the shipped teacher into the shipped student.

It runs the real command in a fresh process, on CPU, on the embedded default, and checks the table it prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient


def percent(text: str, label: str) -> list[float]:
    line = next(line for line in text.splitlines() if label in line)
    return [float(x) for x in re.findall(r"([\d.]+)%", line)]


@pytest.mark.slow
def test_default_run_raises_accuracy_by_20_points(tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "distillkit.cli"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    elapsed = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    before, after = percent(out, "student accuracy")
    (teacher,) = percent(out, "teacher accuracy")
    assert after - before >= 20, out
    assert teacher >= before + 40, out
    kl_before, kl_after = map(float, re.search(r"KL\(T\|\|S\) per token\s+([\d.]+) -> ([\d.]+)", out).groups())
    assert kl_after < kl_before
    assert "tokens/s" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert "%|" in result.stderr  # the progress bar
    run_id = re.search(r"MLflow run id\s+(\w+)", out).group(1)
    run = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db").get_run(run_id)
    assert run.data.metrics["eval/accuracy"] * 100 == pytest.approx(after, abs=0.06)
    print(f"default run: {before}% -> {after}% (teacher {teacher}%) in {elapsed:.0f}s")
