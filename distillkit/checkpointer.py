"""A run's checkpoints: what goes in one (gathered from every process), and restoring a run from the newest.

The file format is `distillkit.checkpoint`'s; this object knows the run: the student and its optimizer through the
strategy, the scheduler, the loss scaler, the teacher, each process's method state and RNG streams. A resume
is refused when the process count or the strategy changed, since neither could continue exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillkit.assembly import Parts
from distillkit.checkpoint import (
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    stage_checkpoint,
    trainable_state,
)
from distillkit.distributed import ProcessInfo, barrier, gather_lists
from distillkit.errors import ConfigError
from distillkit.strategies import DataParallel


@dataclass
class ProcessState:
    """What one process alone holds: its RNG streams and its method's state (e.g. SDFT's rollout buffer)."""

    rng: dict
    method: dict


@dataclass
class Restored:
    path: Path
    step: int
    summary: dict
    rng: dict  # this process's streams: set last, once nothing else will draw before the loop


class Checkpointer:
    def __init__(self, parts: Parts, folder: Path, keep_last: int):
        self.parts, self.folder, self.keep_last = parts, folder, keep_last

    def process_state(self) -> ProcessState:
        """Taken before a step, so a step that fails can be checkpointed as if it had not started."""
        return ProcessState(rng_state(), dict(self.parts.method.state_dict()))

    def save(self, step: int, summary: Any, before: ProcessState | None = None) -> None:
        """Collective: every process calls it. `before`: this process's state to record instead of the current."""
        parts, strategy, main = self.parts, self.parts.strategy, self.parts.process.is_main
        mine = before or self.process_state()
        rngs, _ = gather_lists([mine.rng])
        methods, _ = gather_lists([mine.method])
        rollouts, _ = gather_lists([parts.rollouts.state_dict(step)])  # sampled ahead for `step`, if any
        if main or strategy.gathers_collectively:
            model = trainable_state(parts.student, strategy.model_state(parts.student))
            teacher = parts.teacher.state_dict()
            optimizer = strategy.optimizer_state(parts.student, parts.optimizer)
        staged = stage_checkpoint(self.folder, step) if main else None
        strategy.save_partitions(staged)
        if main:
            commit_checkpoint(self.folder, step, {
                "model": model, "optimizer": optimizer, "scheduler": parts.scheduler.state_dict(),
                "precision": parts.precision.state_dict(), "teacher": teacher, "summary": asdict(summary),
                "strategy": strategy.name, "method": methods[0], "method_per_process": methods,
                "rng_per_process": rngs, "rollouts_per_process": rollouts,
            }, keep_last=self.keep_last, rng=rngs[0])
        barrier()

    def restore(self) -> Restored | None:
        """Load the newest checkpoint into the run's objects; None when there is none."""
        path = latest_checkpoint(self.folder)
        if path is None:
            return None
        parts = self.parts
        state = load_checkpoint(path)
        check_same_strategy(state, parts.strategy.name)
        rng = own_share(state, "rng", parts.process)  # refuses another process count before anything loads
        parts.strategy.load(parts.student, parts.optimizer, state, path, strict=not parts.cfg.model.lora)
        parts.scheduler.load_state_dict(state["scheduler"])
        parts.precision.load_state_dict(state.get("precision", {}))
        parts.teacher.load_state_dict(state["teacher"])
        parts.method.load_state_dict(own_share(state, "method", parts.process) or {})
        if "rollouts_per_process" in state:  # rollouts sampled ahead for the next step
            parts.rollouts.load_state_dict(own_share(state, "rollouts", parts.process) or {})
        parts.rollouts.resume_from(parts.student)  # a separate sampler (vLLM, the async copy) gets the weights
        return Restored(path, state["step"], state["summary"], rng)


def check_same_strategy(state: dict, strategy: str) -> None:
    """Each strategy keeps the optimizer state its own way: by position (ddp), by parameter name (fsdp2), in
    DeepSpeed's partitions (deepspeed)."""
    was = state.get("strategy", DataParallel.name)  # written before strategies were recorded: one process
    if was != strategy:
        raise ConfigError(
            f"The checkpoint was written with distributed.strategy={was} and this run uses {strategy}. Resume with "
            f"distributed.strategy={was}, or start a fresh run (train.resume=false or another output folder)."
        )


def own_share(state: dict, key: str, process: ProcessInfo):
    """This process's entry of a checkpoint's per-process `key` (rng, method). A checkpoint from another number
    of processes cannot hand each one its own streams: refuse rather than resume inexactly."""
    shares = state.get(f"{key}_per_process")
    if shares is None:  # written by one process
        shares = [state.get(key)]
    if len(shares) != process.world_size:
        raise ConfigError(
            f"The checkpoint was written by {len(shares)} process(es) and this run has {process.world_size}. Resume "
            "with the same number of processes, or start a fresh run (train.resume=false or another output folder)."
        )
    return shares[process.rank]
