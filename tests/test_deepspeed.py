"""DeepSpeed ZeRO-2 (`distributed.strategy=deepspeed`) with two real gloo processes on CPU.

- `accelerate launch --config_file conf/accelerate/deepspeed.yaml` of the CLI trains to the weights of one process with the same global batch (the engine's averaging
  undone, its clipping the same as ours).
- A checkpoint holds every process's optimizer partition; rerunning resumes from it and ends on the same weights.
- ZeRO-3 and a missing DeepSpeed are refused before any model loads, with the fix.
"""

from __future__ import annotations

import pytest
from launch import assert_same_weights, cli, reference_args, rerun_resumes_to_the_same_weights

from distillkit.checkpoint import load_checkpoint


@pytest.mark.slow
def test_accelerate_launch_with_zero2_trains_to_the_single_process_weights_and_resumes_exactly(tiny_pair, reference_weights,
                                                                                  tmp_path):
    pytest.importorskip("deepspeed")
    args = [*reference_args(*tiny_pair), "train.batch_size=2"]  # distributed.strategy=auto: the accelerate config
    cli(args, tmp_path, processes=2, accelerate_config="deepspeed")
    assert_same_weights(tmp_path / "final_model", reference_weights)  # with the clip active in both
    step2 = tmp_path / "checkpoints" / "step_00000002"
    state = load_checkpoint(step2)
    assert state["strategy"] == "deepspeed" and state["optimizer"] is None
    assert len(list((step2 / "deepspeed" / "state").glob("*optim_states.pt"))) == 2  # one partition per process
    rerun_resumes_to_the_same_weights(args, tmp_path, 2, "deepspeed")  # each process reloads its own partition


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


def test_the_engine_config_takes_distillkits_keys_over_a_deepspeed_json(compose_cfg, monkeypatch, tmp_path):
    import json

    from distillkit.strategies.zero import zero_config

    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_batch_size": 999, "gradient_clipping": 5.0, "optimizer": {"type": "Adam"},
                                   "zero_optimization": {"stage": 1, "reduce_bucket_size": 12345}}))
    cfg = compose_cfg("distributed.strategy=deepspeed", f"distributed.deepspeed_config={ds_json}",
                      "train.batch_size=3", "train.gradient_accumulation_steps=5", "train.max_grad_norm=0.5",
                      "model.dtype=bfloat16")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    config = zero_config(cfg)
    assert config["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 12345, "offload_optimizer": {"device": "cpu"}}
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 5)
    assert config["gradient_clipping"] == 0.5 and "train_batch_size" not in config and "optimizer" not in config
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
