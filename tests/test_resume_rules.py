"""What a resume may and may not do: the rows a step reads, checkpoint pruning, a half-written checkpoint, and
refusals after a change of process count or strategy."""

from __future__ import annotations

import pytest

from distillkit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, stage_checkpoint
from distillkit.distributed import ProcessInfo
from distillkit.errors import ConfigError
from distillkit.runner import StepSampler, check_same_strategy, own_share


def test_step_sampler_is_a_permutation_per_epoch_and_a_function_of_the_step():
    sampler = StepSampler(num_rows=10, rows_per_step=4, seed=3)
    rows = [i for step in range(5) for i in sampler.indices(step)]  # 20 rows: epochs 0 and 1
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # each epoch has its own order
    fresh = StepSampler(num_rows=10, rows_per_step=4, seed=3)
    assert fresh.indices(3) == sampler.indices(3)  # a resumed run reads the same rows, with no state
    assert StepSampler(10, 4, seed=4).indices(0) != sampler.indices(0)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"x": step}, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["x"] == 4


def test_a_checkpoint_killed_mid_write_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 2, {"x": 2})
    half = stage_checkpoint(tmp_path, 3)  # a kill after staging, before the rename
    (half / "tensors.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert load_checkpoint(latest_checkpoint(tmp_path))["x"] == 2


def test_resume_with_another_process_count_or_strategy_is_refused():
    state = {"rng_per_process": [{"a": 1}, {"a": 2}], "strategy": "fsdp2"}
    assert own_share(state, "rng", ProcessInfo(rank=1, world_size=2, local_rank=1)) == {"a": 2}
    with pytest.raises(ConfigError, match="written by 2 process"):
        own_share(state, "rng", ProcessInfo())
    with pytest.raises(ConfigError, match="distributed.strategy=fsdp2"):
        check_same_strategy(state, "ddp")
    check_same_strategy(state, "fsdp2")
