"""The training loop: every method runs it. Set-up is `distillkit.assembly`, one optimizer step `distillkit.step`,
checkpoints `distillkit.checkpointer`, evaluation `distillkit.evaluation`, and how the student is spread over
processes `distillkit.strategies`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from distillkit.assembly import (
    Parts,
    Prepared,
    build,
    build_object,
    check_composition,
    prepare,
    seed_everything,
    teacher_generator,
)
from distillkit.checkpoint import set_rng_state
from distillkit.checkpointer import Checkpointer, check_same_strategy, own_share
from distillkit.distributed import all_reduce_sum, barrier, init_distributed, same_on_every_process
from distillkit.errors import ServerFailure
from distillkit.evaluation import Evaluator, evaluate
from distillkit.preemption import PreemptionGuard
from distillkit.step import StepClock, accumulate_gradients, optimizer_step
from distillkit.sweep import SweepJob
from distillkit.tracking import Tracker
from distillkit.validation import SUFFIXES, choice, loss_mode, resolve_device

__all__ = [  # what tests, benchmarks and recipes import from here
    "Parts", "Prepared", "StepClock", "StepSampler", "Summary", "accumulate_gradients", "build", "build_object",
    "check_composition", "check_same_strategy", "evaluate", "optimizer_step", "own_share", "prepare", "run",
    "seed_everything", "teacher_generator", "train",
]


@dataclass
class Summary:
    """What the run prints at the end (and what tests read)."""

    student_accuracy: list[float] = field(default_factory=list)  # [before, after]
    teacher_accuracy: float = float("nan")
    teacher_kl: list[float] = field(default_factory=list)  # [before, after]
    tokens_per_s: float = 0.0
    steps: int = 0  # optimizer steps taken, counted (a resumed run counts the steps before the kill too)
    run_id: str | None = None
    ui_command: str = ""
    final_model_dir: str = ""


class StepSampler:
    """Which data set rows an optimizer step uses: a function of (seed, step) alone, so resuming needs no state."""

    def __init__(self, num_rows: int, rows_per_step: int, seed: int):
        self.num_rows, self.rows_per_step, self.seed = num_rows, rows_per_step, seed
        self._epoch, self._order = -1, []

    def indices(self, step: int) -> list[int]:
        out = []
        for position in range(step * self.rows_per_step, (step + 1) * self.rows_per_step):
            epoch, offset = divmod(position, self.num_rows)
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._order[offset]))
        return out


class ProcessRows:
    """This process's rows of each optimizer step: its share of the step's prompts. A rollout batch serves
    `num_iterations` steps, so consecutive steps of one batch read the same rows."""

    def __init__(self, cfg: DictConfig, rows: list[dict], parts: Parts):
        self.rows, self.rank = rows, parts.process.rank
        self.per_process = parts.method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)
        self.iterations = parts.method.num_iterations
        self.sampler = StepSampler(len(rows), self.per_process * parts.process.world_size, cfg.data.seed)

    def at(self, step: int) -> list[dict]:
        indices = self.sampler.indices(step // self.iterations)
        return [self.rows[i] for i in indices[self.rank * self.per_process : (self.rank + 1) * self.per_process]]


def run(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None, sweep: SweepJob | None = None
        ) -> Summary:
    process = init_distributed(on_cpu=resolve_device(cfg.device).type == "cpu")
    output_dir = Path(same_on_every_process(str(output_dir)))  # one folder: the checkpoints to resume from
    prepared = prepare(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    parts = build(cfg, prepared, process)
    if process.rank:  # each process samples its own rollouts
        seed_everything(cfg.train.seed + 1_000_003 * process.rank)
    try:
        with PreemptionGuard() as guard:
            return train(cfg, output_dir, overrides, prepared, parts, sweep, guard)
    finally:
        parts.rollouts.close()
        parts.generator.close()  # a colocated vLLM engine holds memory until shut down


def train(cfg: DictConfig, output_dir: Path, overrides: list[str] | None, prepared: Prepared, parts: Parts,
          sweep: SweepJob | None = None, guard: PreemptionGuard | None = None) -> Summary:
    """Resume or evaluate the starting point, then sample, step, log, evaluate, save and heed preemption."""
    steps, main = cfg.train.steps, parts.process.is_main  # one process tracks and saves; all train and evaluate
    evaluator = Evaluator(parts, prepared.eval_rows)
    checkpointer = Checkpointer(parts, output_dir / "checkpoints", cfg.train.keep_checkpoints)
    restored = checkpointer.restore() if cfg.train.resume else None
    tracker = Tracker(cfg.tracking.enabled and main, cfg.tracking.tracking_uri, cfg.tracking.experiment,
                      cfg.tracking.run_name)
    tracker.start(cfg, overrides or [], output_dir, run_tags(cfg), sweep)
    summary = resumed_summary(restored) if restored else starting_point(evaluator, tracker)
    summary.run_id, summary.ui_command = tracker.run_id, tracker.ui_command()
    start = restored.step if restored else 0
    rows, clock = ProcessRows(cfg, prepared.train_rows, parts), StepClock()
    progress = tqdm(range(start, steps), initial=start, total=steps, desc=f"{choice(cfg, 'method')} {loss_mode(cfg)}",
                    dynamic_ncols=True, disable=not main)
    for step in progress:
        before = checkpointer.process_state()
        try:
            metrics = optimizer_step(parts, rows.at(step), step, clock,
                                     rows.at(step + 1) if step + 1 < steps else None)
        except ServerFailure as err:  # saved as it was before this step, so a resume redoes the step exactly
            parts.optimizer.zero_grad(set_to_none=True)
            saved_on_server_failure(err, checkpointer, step, summary, tracker, before)
            raise
        done, summary.steps = step + 1, summary.steps + 1
        progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        if done % cfg.train.log_every == 0 or done == steps:
            tracker.log(metrics, step=done)
        if due(cfg.train.eval_every, done, steps):
            try:
                tracker.log(evaluator.student(), step=done)
            except ServerFailure as err:
                saved_on_server_failure(err, checkpointer, done, summary, tracker)
                raise
        if due(cfg.train.save_every, done, steps):
            checkpointer.save(done, summary)
        if preempted(guard, parts) and done != steps:  # SLURM preemption or timeout: every process stops here
            checkpointer.save(done, summary)
            tracker.end(status="KILLED")  # reopened (same run id) by the resumed job
            progress.close()
            barrier()
            guard.hand_over(done)
    progress.close()
    try:
        return finish(cfg, output_dir, parts, evaluator, tracker, summary, clock)
    except ServerFailure as err:  # the final evaluation: a resume starts there instead of redoing the steps
        saved_on_server_failure(err, checkpointer, steps, summary, tracker)
        raise


def saved_on_server_failure(err: ServerFailure, checkpointer: Checkpointer, step: int, summary: Summary,
                             tracker: Tracker, before=None) -> None:
    """Checkpoint the run at `step` after the teacher failed, and record on the error that a checkpoint exists, so
    the message the user reads is true (a failure in the first evaluation has none)."""
    checkpointer.save(step, summary, before)
    err.checkpoint_step = step
    tracker.end(status="FAILED")


def resumed_summary(restored) -> Summary:
    summary = Summary(**restored.summary)
    set_rng_state(restored.rng)  # last: nothing before the loop draws from them
    print(f"Resumed from {restored.path} (step {restored.step}).")
    return summary


def starting_point(evaluator: Evaluator, tracker: Tracker) -> Summary:
    """The teacher's accuracy and the student's before training: the figures the run's result is read against."""
    summary = Summary(teacher_accuracy=evaluator.teacher_accuracy())
    before = evaluator.student()
    summary.student_accuracy.append(before["eval/accuracy"])
    summary.teacher_kl.append(before["eval/teacher_kl"])
    tracker.log({**before, "eval/teacher_accuracy": summary.teacher_accuracy}, step=0)
    return summary


def due(every: int, done: int, steps: int) -> bool:
    """An every-N-steps action (evaluation, checkpoint) that the end of training does anyway."""
    return bool(every) and done % every == 0 and done != steps


def preempted(guard: PreemptionGuard | None, parts: Parts) -> bool:
    """Whether any process was told to stop; collective, so they all stop at the same step."""
    return guard is not None and all_reduce_sum(float(guard.requested), parts.device) > 0


def finish(cfg: DictConfig, output_dir: Path, parts: Parts, evaluator: Evaluator, tracker: Tracker,
           summary: Summary, clock: StepClock) -> Summary:
    """The final evaluation, the model folder that `from_pretrained` loads, and the run's last tracking."""
    after = evaluator.student()
    tracker.log(after, step=cfg.train.steps)
    summary.student_accuracy.append(after["eval/accuracy"])
    summary.teacher_kl.append(after["eval/teacher_kl"])
    summary.tokens_per_s = clock.tokens_per_s()
    final_dir = output_dir / "final_model"
    parts.strategy.save_final(parts.student, parts.tokenizer, final_dir, parts.process.is_main)
    barrier()
    summary.final_model_dir = str(final_dir)
    tracker.set_tags({"distillkit.final_model": str(final_dir.resolve())})
    tracker.log({"summary/tokens_per_s": summary.tokens_per_s}, step=cfg.train.steps)
    tracker.end()
    return summary


def run_tags(cfg: DictConfig) -> dict[str, str]:
    return {group: choice(cfg, group) for group in SUFFIXES}
