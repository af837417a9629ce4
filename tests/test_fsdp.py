"""FSDP2 (`distributed.strategy=fsdp2`): two real gloo processes with the student sharded, against one process
with the same global batch.

- One optimizer step's loss and gradients match for every loss mode, with a separate live teacher (sharded too),
  the EMA teacher (a sharded copy) and a LoRA student.
- `accelerate launch --config_file conf/accelerate/fsdp2.yaml` of the CLI trains to the single-process weights, writes whole (gathered) checkpoints, resumes from
  one exactly, and saves a loadable final model; under torchrun with `distributed.strategy=fsdp2`, SDPO and SDFT
  (with its EMA teacher: a sharded copy, or the LoRA student's averaged adapter) train sharded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from launch import assert_same_weights, cli, free_port, reference_args, rerun_resumes_to_the_same_weights
from test_multi_process import LOSSES, each_loss, resolved

from distillkit.checkpoint import load_checkpoint


def assert_same_step(single: dict, multi: dict, cases: list[str]) -> None:
    for i, case in enumerate(cases):
        whole, two = single[(i, 0)], {r: multi[(i, r)] for r in (0, 1)}
        assert two[0]["strategy"] == two[1]["strategy"] == "fsdp2" and whole["strategy"] == "ddp"
        # abs: at step 0 an EMA teacher is the student, and its loss (~1e-9) is rounding noise
        assert two[0]["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-8) == two[1]["loss"], case
        assert two[0]["tokens"] == two[1]["tokens"] == whole["tokens"]
        assert set(two[0]["grads"]) == set(whole["grads"]) and whole["grads"], case
        for name, grad in whole["grads"].items():
            torch.testing.assert_close(two[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"{case} {name}")
            torch.testing.assert_close(two[1]["grads"][name], two[0]["grads"][name], rtol=0, atol=0)


def run_cases(compose_cfg, cases: dict[str, list[str]]) -> None:
    def configs(batch: int, *extra: str) -> list[dict]:
        return [resolved(compose_cfg, *overrides, f"train.batch_size={batch}", "train.gradient_accumulation_steps=2",
                         *extra) for overrides in cases.values()]

    manager = mp.Manager()
    single, multi = manager.dict(), manager.dict()
    each_loss(0, 1, 0, configs(4), 8, single)
    mp.spawn(each_loss, args=(2, free_port(), configs(2, "distributed.strategy=fsdp2"), 8, multi), nprocs=2,
             join=True)
    assert_same_step(dict(single), dict(multi), list(cases))


@pytest.mark.slow
def test_sharded_processes_give_the_single_process_loss_and_gradients(compose_cfg):
    cases = {loss: ["method.lmbda=0", f"loss={loss}", *(["loss.k=8"] if loss == "topk" else [])] for loss in LOSSES}
    cases["ema"] = ["method.lmbda=0", "teacher=ema", "teacher.teacher_update_rate=0.5"]
    cases["lora"] = ["method.lmbda=0", "model.lora={r: 4, lora_alpha: 8, target_modules: all-linear}",
                     "teacher=base"]
    run_cases(compose_cfg, cases)


@pytest.mark.slow
def test_accelerate_launch_with_fsdp2_trains_to_the_single_process_weights_and_resumes_exactly(tiny_pair, reference_weights,
                                                                                   tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    student, _ = tiny_pair
    args = [*reference_args(*tiny_pair), "train.batch_size=2"]  # distributed.strategy=auto: the accelerate config
    cli(args, tmp_path, processes=2, accelerate_config="fsdp2")
    assert_same_weights(tmp_path / "final_model", reference_weights)
    saved = AutoConfig.from_pretrained(tmp_path / "final_model")
    assert saved.architectures == AutoConfig.from_pretrained(student).architectures  # not the FSDP class
    AutoModelForCausalLM.from_pretrained(tmp_path / "final_model")
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000002")
    assert state["strategy"] == "fsdp2" and set(reference_weights) <= set(state["model"])  # gathered, whole
    assert all(state["model"][name].shape == w.shape for name, w in reference_weights.items())
    rerun_resumes_to_the_same_weights(args, tmp_path, 2, "fsdp2")  # optimizer state scattered back to the shards


def test_the_strategy_follows_accelerates_fsdp_config_and_bad_settings_are_refused(compose_cfg, monkeypatch):
    from distillkit.models import ConfigError
    from distillkit.runner import prepare
    from distillkit.strategies import DataParallel, FullySharded, strategy_class
    from distillkit.strategies.fully_sharded import reshard_after_forward

    cfg = compose_cfg()
    assert strategy_class(cfg) is DataParallel
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp2.yaml` sets
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert strategy_class(cfg) is FullySharded and reshard_after_forward(cfg) is False
    assert strategy_class(compose_cfg("distributed.strategy=ddp")) is DataParallel  # an explicit choice wins
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        prepare(compose_cfg())
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(ConfigError, match="distributed.strategy='zero3' is not one of"):
        prepare(compose_cfg("distributed.strategy=zero3"))


def test_vllm_generation_under_fsdp2_is_refused_before_loading(compose_cfg):
    from distillkit.models import ConfigError
    from distillkit.validation import validate

    with pytest.raises(ConfigError, match="generation=hf, or distributed.strategy=ddp"):
        validate(compose_cfg("generation=vllm", "distributed.strategy=fsdp2"))


@pytest.mark.slow
def test_sdpo_and_sdft_train_sharded(tmp_path):
    """Rewards gathered across processes, masked micro-batches and the self-teacher, all through FSDP's collectives
    (a micro-batch that distills on one process and not on the other must not hang the step)."""
    student = Path(__file__).parents[1] / "distillkit" / "assets" / "tiny" / "self"  # reads hints
    common = [f"model.student={student}", "train.steps=2", "train.eval_every=0", "train.save_every=1",
              "data.num_eval=8", "data.num_train=64", "train.max_completion_length=4", "tracking.enabled=false",
              "distributed.strategy=fsdp2", "train.batch_size=4", "train.gradient_accumulation_steps=2"]
    sdpo = cli([*common, "method=sdpo", "method.num_generations=2", "method.distillation_weight=0.5",
                "teacher=live", "teacher.model=null"], tmp_path / "sdpo", processes=2)
    assert sdpo.stdout.count("student accuracy") == 1
    sdft = [*common, "method=sdft", "data.train=subtraction", "data.eval=subtraction",
            "method.teacher_prompt_template='{privileged_context}|{prompt}'"]
    cli(sdft, tmp_path / "sdft", processes=2)
    # The EMA teacher (the method's default) is a sharded copy; its checkpointed average is whole.
    state = load_checkpoint(tmp_path / "sdft" / "checkpoints" / "step_00000001")
    average = state["teacher"]["average"]
    assert average and all(average[n].shape == state["model"][n].shape for n in average)
    # Under LoRA the EMA teacher is the student's own (sharded) module with the averaged adapter swapped in.
    cli([*sdft, "model.lora={r: 4, lora_alpha: 8, target_modules: all-linear}"], tmp_path / "lora", processes=2)
    assert (tmp_path / "lora" / "final_model" / "adapter_model.safetensors").exists()
