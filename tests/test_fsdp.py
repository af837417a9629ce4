"""FSDP2 (`distributed.strategy=fsdp2`): two real gloo processes with the student sharded, against one process
with the same global batch.

- One optimizer step's loss and gradients match for every loss mode, with a separate live teacher (sharded too),
  the EMA teacher (a sharded copy) and a LoRA student.
- `torchrun` of the CLI trains to the single-process weights, writes whole (gathered) checkpoints, resumes from
  one, and saves a loadable final model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_multi_process import LOSSES, TORCHRUN, each_loss, free_port, resolved


def assert_same_step(single: dict, multi: dict, cases: list[str]) -> None:
    for i, case in enumerate(cases):
        whole, two = single[(i, 0)], {r: multi[(i, r)] for r in (0, 1)}
        assert two[0]["sharded"] and two[1]["sharded"] and not whole["sharded"]
        assert two[0]["loss"] == pytest.approx(whole["loss"], rel=1e-5) == two[1]["loss"], case
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


def test_sharded_processes_give_the_single_process_loss_and_gradients(compose_cfg):
    cases = {loss: ["method.lmbda=0", f"loss={loss}", *(["loss.k=8"] if loss == "topk" else [])] for loss in LOSSES}
    cases["ema"] = ["method.lmbda=0", "teacher=ema", "teacher.teacher_update_rate=0.5"]
    cases["lora"] = ["method.lmbda=0", "model.lora={r: 4, lora_alpha: 8, target_modules: all-linear}",
                     "teacher=base"]
    run_cases(compose_cfg, cases)


def cli(args: list[str], out_dir, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = [TORCHRUN, f"--nproc-per-node={processes}", "--master-port", str(free_port())] if processes > 1 else [
        sys.executable]
    done = subprocess.run([*launcher, "-m", "distillkit.cli", *args, f"hydra.run.dir={out_dir}"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_sharded_torchrun_trains_to_the_single_process_weights_and_resumes_exactly(tiny_pair, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    student, teacher = tiny_pair
    common = [f"model.student={student}", "train.steps=3", "train.eval_every=0", "train.save_every=2",
              "data.num_eval=8", "data.num_train=64", "train.max_completion_length=5", "tracking.enabled=false",
              "train.gradient_accumulation_steps=2"]
    off_policy = [*common, f"teacher.model={teacher}", "method.lmbda=0"]
    cli([*off_policy, "train.batch_size=4"], tmp_path / "one")
    cli([*off_policy, "train.batch_size=2", "distributed.strategy=fsdp2"], tmp_path / "two", processes=2)
    a = load_file(tmp_path / "one" / "final_model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final_model" / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    saved = AutoConfig.from_pretrained(tmp_path / "two" / "final_model")
    assert saved.architectures == AutoConfig.from_pretrained(student).architectures  # not the FSDP class
    AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final_model")
    state = torch.load(tmp_path / "two" / "checkpoints" / "step_00000002" / "state.pt", weights_only=False)
    assert state["strategy"] == "fsdp2" and set(a) <= set(state["model"])  # whole tensors, gathered from the shards
    assert all(state["model"][name].shape == a[name].shape for name in a)

    # On-policy with the EMA teacher (a sharded copy): rerunning after the final model is gone resumes from the
    # step-2 checkpoint (weights, optimizer, EMA average, every process's RNG) and ends on the same weights.
    on_policy = [*common, "teacher=ema", "teacher.teacher_update_rate=0.5", "train.batch_size=2",
                 "distributed.strategy=fsdp2"]
    first = tmp_path / "ema"
    cli(on_policy, first, processes=2)
    whole = load_file(first / "final_model" / "model.safetensors")
    shutil.rmtree(first / "final_model")
    resumed = cli(on_policy, first, processes=2)
    assert "Resumed from" in resumed.stdout and "step 2" in resumed.stdout
    again = load_file(first / "final_model" / "model.safetensors")
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], rtol=0, atol=0, msg=name)


def test_the_strategy_follows_accelerates_fsdp_config_and_bad_settings_are_refused(compose_cfg, monkeypatch):
    from distillkit.models import ConfigError
    from distillkit.runner import prepare
    from distillkit.sharding import reshard_after_forward, sharding_strategy

    cfg = compose_cfg()
    assert sharding_strategy(cfg) == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp2.yaml` sets
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert sharding_strategy(cfg) == "fsdp2" and reshard_after_forward(cfg) is False
    assert sharding_strategy(compose_cfg("distributed.strategy=ddp")) == "ddp"  # an explicit choice wins
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
    common = [f"model.student={student}", "train.steps=2", "train.eval_every=0", "train.save_every=0",
              "data.num_eval=8", "data.num_train=64", "train.max_completion_length=4", "tracking.enabled=false",
              "distributed.strategy=fsdp2", "train.batch_size=4", "train.gradient_accumulation_steps=2"]
    sdpo = cli([*common, "method=sdpo", "method.num_generations=2", "method.distillation_weight=0.5",
                "teacher=live", "teacher.model=null"], tmp_path / "sdpo", processes=2)
    assert sdpo.stdout.count("student accuracy") == 1
    cli([*common, "method=sdft", "data.train=subtraction", "data.eval=subtraction",
         "method.teacher_prompt_template='{privileged_context}|{prompt}'"], tmp_path / "sdft", processes=2)
