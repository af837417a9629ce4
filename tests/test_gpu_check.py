"""benchmarks/gpu_check.py's own logic, on CPU: statuses, exit codes, selection, and the no-GPU refusal."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)
Result = gpu_check.Result


def test_status_and_exit_code():
    ok = Result("liger")
    assert ok.expect("loss", 1e-4, 1e-3) and ok.expect("cos", 0.99, 0.98, ">=")
    failing = Result("mp")
    failing.expect("loss", 2e-3, 1e-3)
    nan = Result("mp")
    nan.expect("cos", math.nan, 0.98, ">=")
    assert [r.status for r in (ok, failing, nan)] == ["pass", "fail", "fail"]
    assert Result("trl").status == "fail"  # asserted nothing: not a pass
    assert Result("vllm", error="boom").status == "error"
    missing = Result("vllm", unavailable="no vllm")
    assert missing.status == "unavailable"
    assert gpu_check.exit_code([ok]) == 0
    assert gpu_check.exit_code([ok, missing]) == 3
    assert gpu_check.exit_code([ok, missing, failing]) == 1
    assert gpu_check.exit_code([]) == 1
    again = Result.from_dict(json.loads(json.dumps(failing.to_dict())))
    assert again.status == "fail" and again.assertions == failing.assertions


def test_rel_diff_and_selection():
    assert gpu_check.rel_diff(1.001, 1.0) == pytest.approx(1e-3)
    assert gpu_check.rel_diff(0.0, 0.0) == 0.0 and gpu_check.rel_diff(1.0, 0.0) == math.inf
    assert gpu_check.parse_selection(None, None) == list(gpu_check.CHECKS)
    assert gpu_check.parse_selection("trl,liger", None) == ["liger", "trl"]
    assert gpu_check.parse_selection(None, "vllm") == ["liger", "mp", "vllm_server", "trl", "trlserve"]
    assert gpu_check.parse_selection("vllm_server", None) == ["vllm_server"]
    with pytest.raises(SystemExit, match="unknown check"):
        gpu_check.parse_selection("liger,flash", None)


def test_grad_comparison():
    a = [torch.tensor([1.0, 0.0]), None, torch.tensor([2.0])]
    cosine, rel = gpu_check.grad_comparison(a, [torch.tensor([1.0, 0.0]), torch.ones(3), torch.tensor([2.0])])
    assert cosine == pytest.approx(1.0) and rel == 0.0
    cosine, _ = gpu_check.grad_comparison([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])])
    assert cosine == pytest.approx(0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would run the checks")
def test_without_cuda_every_check_fails_with_a_clear_message(tmp_path, capsys):
    code = gpu_check.main(["--only", "liger,mp", "--out", str(tmp_path)])
    assert code == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["name"], r["status"]) for r in report["results"]] == [("liger", "error"), ("mp", "error")]
    assert all("needs a CUDA GPU" in r["error"] for r in report["results"])
    assert "needs a CUDA GPU" in (tmp_path / "gpu_check.txt").read_text()
