"""Where an optimizer step's micro-batches come from: built when the step starts, or sampled one step ahead.

`train.async_generation=true` is one-step-off-policy training, as TRL's `AsyncDistillationTrainer`, verl's
one-step-off scheduler and AReaL do it: while step t trains, a background thread samples step t+1's rollouts from
a copy of the student that holds the weights step t started from. At the end of step t the copy takes the new
weights, so a rollout is never more than one update old (`rollouts/staleness` is 0 for the first step, 1 after).
The rollout policy's log-probs of the sampled tokens (a no-grad forward of the copy, at the loss temperature) go
into the clipped importance ratio min(pi_theta / pi_rollout, `train.async_is_clip`) that already reweights reused
rollouts. Each step's sampling is seeded from (seed, process, step), so a resumed run samples what the
uninterrupted one did; the rollouts prepared for the next step are part of the checkpoint.

With `generation=vllm_server` the copy's generator is the rollout servers: they take the copy's weights when it
takes the student's (pushed before the next request, from the background thread), so the copy's log-probs are
still those of the policy that sampled. A failure in the background (a dead server) is raised by the step that
takes those rollouts, before its update, so the runner checkpoints that step as it was.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for

import torch

from distillkit.batch import SequenceBatch, completion_hidden
from distillkit.generation import Generator
from distillkit.losses.base import TeacherRequest
from distillkit.methods.method import Method
from distillkit.methods.micro_batch import MicroBatch, RolloutContext
from distillkit.models import decoder_and_head
from distillkit.precision import MixedPrecision
from distillkit.teachers.in_process import score_tokens


class Rollouts:
    """Synchronous: the method builds the step's micro-batches when the step starts, with the student itself."""

    def __init__(self, method: Method, context: RolloutContext):
        self.method, self.context = method, context

    def take(self, step: int, rows: list[dict]) -> list[MicroBatch]:
        return self.method.micro_batches(step, rows, self.context)

    def prefetch(self, step: int, rows: list[dict]) -> None:
        """Start on `step`'s rollouts now, if this source works ahead."""

    def after_update(self, student: torch.nn.Module) -> None:
        """The optimizer step is done: a separate sampler (vLLM) gets the new weights."""
        self.context.generator.sync(student)

    def resume_from(self, student: torch.nn.Module) -> None:
        """The student's weights were restored from a checkpoint: the sampler takes them."""
        self.context.generator.sync(student, force=True)

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self, next_step: int) -> dict:
        """What a resume at `next_step` needs that it cannot rebuild: nothing, for rollouts made on demand."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncRollouts(Rollouts):
    """One step ahead, from a copy of the student, in one background thread with its own torch thread budget."""

    def __init__(self, method: Method, context: RolloutContext, rollout_model: torch.nn.Module, vocab_size: int,
                 precision: MixedPrecision, seed: int, threads: int, is_clip: float | None):
        super().__init__(method, context)
        self.model, self.parts = rollout_model, decoder_and_head(rollout_model)
        self.vocab_size, self.precision, self.seed, self.is_clip = vocab_size, precision, seed, is_clip
        self.executor = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(threads,))
        self.version = 0  # optimizer updates the copy has taken
        self.ready: dict[int, tuple[int, Future | list[MicroBatch]]] = {}  # step -> (version sampled at, batches)
        self.staleness = 0
        self.taken: tuple[int, int, list[MicroBatch]] = (-1, 0, [])  # the last step handed out

    @classmethod
    def around(cls, student: torch.nn.Module, generator: Generator, method: Method, context: RolloutContext,
               vocab_size: int, precision: MixedPrecision, seed: int, threads: int, is_clip: float | None
               ) -> AsyncRollouts:
        """A frozen copy of the student, and `generator` bound to it, sample while the student trains."""
        rollout_model = copy.deepcopy(student).requires_grad_(False).eval()
        sampler = RolloutContext(generator.bind(rollout_model, context.tokenizer), None, context.tokenizer,
                                 context.num_micro_batches, context.seed)
        return cls(method, sampler, rollout_model, vocab_size, precision, seed, threads, is_clip)

    def take(self, step: int, rows: list[dict]) -> list[MicroBatch]:
        if step not in self.ready:  # the first step, or a step nothing was prefetched for: sample now
            self.ready[step] = (self.version, self.build(step, rows))
        version, micros = self.ready.pop(step)
        micros = micros.result() if isinstance(micros, Future) else micros
        self.staleness = self.version - version
        self.taken = (step, version, micros)  # what a checkpoint of a failed step must hold
        return micros

    def prefetch(self, step: int, rows: list[dict]) -> None:
        self.ready[step] = (self.version, self.executor.submit(self.build, step, rows))

    def after_update(self, student: torch.nn.Module) -> None:
        self.take_weights(student)
        self.context.generator.sync(self.model)  # a separate sampler (rollout servers) takes them too
        self.version += 1

    def resume_from(self, student: torch.nn.Module) -> None:
        self.take_weights(student)
        self.context.generator.sync(self.model, force=True)

    def take_weights(self, student: torch.nn.Module) -> None:
        self.wait()  # the copy is not read while it changes
        with torch.no_grad():
            for mine, theirs in zip(self.model.parameters(), student.parameters(), strict=True):
                mine.copy_(theirs)

    def wait(self) -> None:
        """Until nothing samples in the background. A sampling that failed keeps its error for `take`."""
        wait_for([micros for _, micros in self.ready.values() if isinstance(micros, Future)])
        for step, (version, micros) in list(self.ready.items()):
            if isinstance(micros, Future) and micros.exception() is None:
                self.ready[step] = (version, micros.result())

    @torch.no_grad()
    def build(self, step: int, rows: list[dict]) -> list[MicroBatch]:
        torch.manual_seed(self.seed + step)  # a function of (seed, process, step): a resume samples the same
        with self.precision.autocast():
            micros = self.method.micro_batches(step, rows, self.context)
            for micro in micros:
                if micro.on_policy:
                    micro.old_logprobs = self.rollout_logprobs(micro.student)
                    micro.is_clip = self.is_clip
        return micros

    def rollout_logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """The copy's log-probs of the sampled tokens at the loss temperature: pi_rollout of the ratio."""
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        hidden = completion_hidden(self.parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
        request = TeacherRequest("token", self.method.temperature)
        head = self.parts.lm_head(self.vocab_size).detached()
        return score_tokens(hidden, head, batch.completion_targets(), request).token_logprobs.float().cpu()

    def metrics(self) -> dict[str, float]:
        return {"rollouts/staleness": float(self.staleness)}

    def state_dict(self, next_step: int) -> dict:
        self.wait()
        if next_step in self.ready and not isinstance(self.ready[next_step][1], Future):  # not a failed sampling
            version, micros = self.ready[next_step]
        elif self.taken[0] == next_step:  # a failed step, redone on resume
            _, version, micros = self.taken
        else:
            return {}
        return {"step": next_step, "staleness": self.version - version,
                "micro_batches": [m.to_state() for m in micros]}

    def load_state_dict(self, state: dict) -> None:
        if state:
            micros = [MicroBatch.from_state(m) for m in state["micro_batches"]]
            self.ready[state["step"]] = (self.version - state["staleness"], micros)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
