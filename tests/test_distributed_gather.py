"""SDPO gathers rollouts across processes before advantages and reprompting: two real gloo processes, each with its
own rows and fixed completions, build exactly what one process builds from the concatenated batch."""

from __future__ import annotations

import os
import statistics

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from launch import free_port
from test_sdpo_options import char_tokenizer, distilled, make_rows, per_rollout, rollout, sdpo, teacher_texts

# (prompt, answer, feedback) and the 2 rollouts of each: rank 0 holds the first two groups, rank 1 the last two
RANKS = [
    (make_rows(char_tokenizer(), ("2+2=", "4", "A"), ("1+1=", "2", "B")), ["4", "5", "3", "2"]),
    (make_rows(char_tokenizer(), ("3+3=", "6", "C"), ("4+4=", "8", "D")), ["7", "6", "9", "9"]),
]
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
# the policy term on (advantages), the rewards scaled three ways; feedback in one, teacher prompts cut in one
OPTIONS = {
    "batch": {"scale_rewards": "batch"},
    "group+feedback": {"scale_rewards": "group", "include_environment_feedback": True},
    "none+cut": {"scale_rewards": "none", "max_reprompt_len": 9},
}


def build(rows: list[dict], completions: list[str]) -> dict:
    """What SDPO builds for each of OPTIONS from these rows: per rollout its teacher prompt, distillation weight and
    advantage, and the step's metrics."""
    out = {}
    for name, options in OPTIONS.items():
        method = sdpo(distillation_weight=0.5, **options)
        micros = rollout(method, char_tokenizer(), rows, completions)
        out[name] = {"teacher": teacher_texts(micros, char_tokenizer()), "distilled": distilled(micros),
                     "advantages": per_rollout(micros, "advantages"), "metrics": method.metrics()}
    return out


def worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = build(*RANKS[rank])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_build_what_one_builds_from_the_whole_batch():
    out = mp.Manager().dict()
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [out[0], out[1]]
    whole = build(RANKS[0][0] + RANKS[1][0], RANKS[0][1] + RANKS[1][1])  # one process, no process group

    for name in OPTIONS:
        for key in ("teacher", "distilled", "advantages"):
            assert ranks[0][name][key] + ranks[1][name][key] == pytest.approx(whole[name][key]), (name, key)
        for metrics in (ranks[0][name]["metrics"], ranks[1][name]["metrics"]):  # every rank logs the whole step's
            assert metrics == pytest.approx(whole[name]["metrics"], nan_ok=True), name

    # rank 1's rollouts are reprompted with their own groups' successes, found in the gathered batch
    assert ranks[1]["batch"]["teacher"] == ["3+3=[S:6]|", None, None, None]
    assert ranks[1]["group+feedback"]["teacher"] == ["3+3=[S:6][F:C]|", "3+3=[F:C]|", "4+4=[F:D]|", "4+4=[F:D]|"]
    assert ranks[0]["batch"]["teacher"] == [None, "2+2=[S:4]|", "1+1=[S:2]|", None]

    # scale_rewards=batch divides by the std of all 8 rewards, which neither rank holds alone
    batch_std = statistics.stdev(REWARDS)
    assert batch_std not in (statistics.stdev(REWARDS[:4]), statistics.stdev(REWARDS[4:]))
    means = [sum(REWARDS[i - i % 2: i - i % 2 + 2]) / 2 for i in range(8)]
    by_hand = [(r - m) / (batch_std + 1e-4) for r, m in zip(REWARDS, means, strict=True)]
    assert ranks[0]["batch"]["advantages"] + ranks[1]["batch"]["advantages"] == pytest.approx(by_hand, rel=1e-6)
    assert ranks[1]["batch"]["metrics"]["rewards/std"] == pytest.approx(batch_std)
