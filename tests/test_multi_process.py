"""Two real gloo processes against one process with the same global batch.

- One optimizer step's loss and gradients match (off-policy rows, so both see the same tokens).
- `accelerate launch --config_file conf/accelerate/ddp.yaml` (it starts torchrun) of the CLI trains to the same
  final weights as one process.
- On-policy draws agree across processes, each process rolls out its own prompts, and SDPO's rewards are the same
  on every process (they are computed on the gathered batch).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from launch import assert_same_weights, cli, free_port, reference_args
from omegaconf import OmegaConf

from distillkit.checkpoint import load_checkpoint


def one_step(rank: int, world: int, port: int, cfg_dict: dict, num_rows: int, out: dict) -> None:
    """Build the run's parts, give this process its share of `num_rows` rows, and run one step's backward."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from distillkit.distributed import init_distributed
    from distillkit.methods import RolloutContext
    from distillkit.runner import accumulate_gradients, build, prepare, seed_everything

    try:
        cfg = OmegaConf.create(cfg_dict)
        process = init_distributed(on_cpu=True)
        assert (process.rank, process.world_size) == (rank, world)
        parts = build(cfg, prepare(cfg), process)
        seed_everything(cfg.train.seed + 1_000_003 * rank)
        share = num_rows // world
        rows = parts.method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)
        assert rows == share
        mine = [dict(r) for r in parts_rows(cfg, parts, num_rows)[rank * share : (rank + 1) * share]]
        ctx = RolloutContext(parts.generator, parts.teacher_generator, parts.tokenizer,
                             cfg.train.gradient_accumulation_steps, cfg.train.seed)
        micros = parts.method.micro_batches(0, mine, ctx)
        metrics = accumulate_gradients(parts, micros)
        parts.strategy.reduce_gradients(parts.params)  # what the step does before clipping
        grads = parts.strategy.whole_tensors({n: p.grad for n, p in parts.student.named_parameters()
                                              if p.grad is not None})
        out[rank] = {
            "loss": metrics["train/loss"], "tokens": metrics["train/tokens"],
            "grads": grads, "strategy": parts.strategy.name,
            "plan": [m.on_policy for m in micros],
            "prompts": [tuple(r["prompt_ids"]) for m in micros for r in m.rows],
            "method_metrics": parts.method.metrics(),
        }
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def parts_rows(cfg, parts, num_rows: int) -> list[dict]:
    from distillkit.data.loading import load_examples, tokenize

    data = load_examples(cfg.data.train, cfg.data.split, num_rows, cfg.data.seed)
    return tokenize(data, parts.tokenizer, 64, True, "training")


def run_both(cfg_single: dict | None, cfg_multi: dict, num_rows: int) -> tuple[dict, dict]:
    manager = mp.Manager()
    single, multi = manager.dict(), manager.dict()
    if cfg_single is not None:
        one_step(0, 1, 0, cfg_single, num_rows, single)
    mp.spawn(one_step, args=(2, free_port(), cfg_multi, num_rows, multi), nprocs=2, join=True)
    return dict(single), dict(multi)


def resolved(compose_cfg, *overrides: str) -> dict:
    return OmegaConf.to_container(compose_cfg(*overrides, "tracking.enabled=false", "data.num_train=64"),
                                  resolve=True)


LOSSES = ["full", "topk", "sampled"]


def each_loss(rank: int, world: int, port: int, cfgs: list[dict], num_rows: int, out: dict) -> None:
    """`one_step` for every loss in one pair of processes (a process group each), to pay the start-up once."""
    for i, cfg in enumerate(cfgs):
        result: dict = {}
        one_step(rank, world, port + i, cfg, num_rows, result)
        out[(i, rank)] = result[rank]


@pytest.mark.slow
def test_two_processes_give_the_single_process_loss_and_gradients(compose_cfg):
    def configs(batch: int) -> list[dict]:
        return [resolved(compose_cfg, "method.lmbda=0", f"loss={loss}", *(["loss.k=8"] if loss == "topk" else []),
                         f"train.batch_size={batch}", "train.gradient_accumulation_steps=2") for loss in LOSSES]

    manager = mp.Manager()
    single, multi = manager.dict(), manager.dict()
    each_loss(0, 1, 0, configs(4), 8, single)  # off-policy rows (the data set's completions): the same tokens
    mp.spawn(each_loss, args=(2, free_port(), configs(2), 8, multi), nprocs=2, join=True)
    for i, loss in enumerate(LOSSES):
        whole, two = single[(i, 0)], {r: multi[(i, r)] for r in (0, 1)}
        assert two[0]["loss"] == pytest.approx(whole["loss"], rel=1e-5) == two[1]["loss"], loss
        assert two[0]["tokens"] == two[1]["tokens"] == whole["tokens"]
        assert set(two[0]["grads"]) == set(whole["grads"])
        for name, grad in whole["grads"].items():
            torch.testing.assert_close(two[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"{loss} {name}")
            torch.testing.assert_close(two[1]["grads"][name], two[0]["grads"][name], rtol=0, atol=0)


@pytest.mark.slow
def test_on_policy_draws_rollouts_and_sdpo_rewards_agree_across_processes(compose_cfg):
    gkd = resolved(compose_cfg, "method.lmbda=0.5", "train.batch_size=2", "train.gradient_accumulation_steps=4")
    _, two = run_both(None, gkd, 16)
    assert two[0]["plan"] == two[1]["plan"] and len(set(two[0]["plan"])) == 2  # same draws, both kinds
    assert not set(two[0]["prompts"]) & set(two[1]["prompts"])  # each process rolls out its own prompts

    sdpo = resolved(compose_cfg, "method=sdpo", "method.num_generations=4", "train.batch_size=4",
                    "train.gradient_accumulation_steps=2")
    _, two = run_both(None, sdpo, 4)
    assert two[0]["method_metrics"] == two[1]["method_metrics"]  # rewards of the gathered batch, not the local one
    assert "rewards/mean" in two[0]["method_metrics"]
    assert len(two[0]["prompts"]) == len(two[1]["prompts"]) == 8 and len(set(two[0]["prompts"])) == 2


@pytest.mark.slow
def test_accelerate_launch_trains_to_the_single_process_weights(tiny_pair, reference_weights, tmp_path):
    cli([*reference_args(*tiny_pair), "train.batch_size=2"], tmp_path, processes=2, accelerate_config="ddp")
    assert_same_weights(tmp_path / "final_model", reference_weights)
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000002")
    assert len(state["rng_per_process"]) == 2 and state["rng_per_process"][0]["torch"].ne(
        state["rng_per_process"][1]["torch"]).any()
    assert state["strategy"] == "ddp"
