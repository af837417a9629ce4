"""DeepSpeed ZeRO-2 (`distributed.strategy=deepspeed`) with two real gloo processes on CPU.

- `torchrun` of the CLI trains to the weights of one process with the same global batch (the engine's averaging
  undone, its clipping the same as ours).
- A checkpoint holds every process's optimizer partition; rerunning resumes from it and ends on the same weights.
- ZeRO-3 and a missing DeepSpeed are refused before any model loads, with the fix.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_fsdp import cli


@pytest.mark.slow
def test_zero2_torchrun_trains_to_the_single_process_weights_and_resumes_exactly(tiny_pair, tmp_path):
    pytest.importorskip("deepspeed")
    student, teacher = tiny_pair
    common = [f"model.student={student}", "train.steps=3", "train.eval_every=0", "train.save_every=2",
              "data.num_eval=8", "data.num_train=64", "train.max_completion_length=5", "tracking.enabled=false",
              "train.gradient_accumulation_steps=2", "train.max_grad_norm=0.05"]  # the clip is active
    off_policy = [*common, f"teacher.model={teacher}", "method.lmbda=0"]
    cli([*off_policy, "train.batch_size=4"], tmp_path / "one")
    cli([*off_policy, "train.batch_size=2", "distributed.strategy=deepspeed"], tmp_path / "two", processes=2)
    a = load_file(tmp_path / "one" / "final_model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final_model" / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    step2 = tmp_path / "two" / "checkpoints" / "step_00000002"
    state = torch.load(step2 / "state.pt", weights_only=False)
    assert state["strategy"] == "deepspeed" and state["optimizer"] is None
    assert len(list((step2 / "deepspeed" / "state").glob("*optim_states.pt"))) == 2  # one partition per process

    on_policy = [*common, "teacher=ema", "teacher.teacher_update_rate=0.5", "train.batch_size=2",
                 "distributed.strategy=deepspeed", "distributed.zero_stage=1"]
    run = tmp_path / "ema"
    cli(on_policy, run, processes=2)
    whole = load_file(run / "final_model" / "model.safetensors")
    shutil.rmtree(run / "final_model")
    resumed = cli(on_policy, run, processes=2)
    assert "Resumed from" in resumed.stdout and "step 2" in resumed.stdout
    again = load_file(run / "final_model" / "model.safetensors")
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], rtol=0, atol=0, msg=name)


def test_zero3_is_refused_with_the_fix(compose_cfg, monkeypatch):
    pytest.importorskip("deepspeed")
    from distillkit.models import ConfigError
    from distillkit.validation import validate

    with pytest.raises(ConfigError, match="distributed.strategy=fsdp2"):
        validate(compose_cfg("distributed.strategy=deepspeed", "distributed.zero_stage=3"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a DeepSpeed config sets
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ConfigError, match="ZeRO stage 3 is not supported"):
        validate(compose_cfg())


def test_a_missing_deepspeed_is_refused_with_the_install_command(compose_cfg, monkeypatch):
    import sys

    from distillkit.models import ConfigError
    from distillkit.validation import validate

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "distillkit\[deepspeed\]"'):
        validate(compose_cfg("distributed.strategy=deepspeed"))
