"""One optimizer step: the method's micro-batches, the teacher's scores, the loss, and the strategy's update.

Each micro-batch's summed loss is divided by the loss-token count of the whole step (all micro-batches, all
processes), so the gradient does not depend on how the step is split into micro-batches or processes.
"""

from __future__ import annotations

import time

import torch

from distillkit.assembly import Parts
from distillkit.batch import completion_hidden
from distillkit.distributed import all_reduce_sums, gather_lists, sum_across_processes
from distillkit.losses import StudentTokens


class StepClock:
    """Wall time per phase (generation, teacher scoring, update) and completion tokens per second."""

    def __init__(self):
        self.totals = {"generate": 0.0, "teacher": 0.0, "update": 0.0}
        self.tokens = 0.0
        self._phase = None

    def __call__(self, phase: str):
        self._phase = phase
        return self

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.totals[self._phase] += time.perf_counter() - self._start

    def tokens_per_s(self) -> float:
        return self.tokens / max(sum(self.totals.values()), 1e-9)

    def metrics(self) -> dict[str, float]:
        total = max(sum(self.totals.values()), 1e-9)
        return {"train/tokens_per_s": self.tokens_per_s(),
                **{f"time/{k}_fraction": v / total for k, v in self.totals.items()}}


def optimizer_step(parts: Parts, rows: list[dict], step: int, clock: StepClock,
                   next_rows: list[dict] | None = None) -> dict[str, float]:
    """Buffered rollouts for all micro-batches, accumulation, the update, the teacher's update. `next_rows`: the
    next step's rows, for rollouts sampled while this step trains (`train.async_generation`)."""
    cfg = parts.cfg
    with clock("generate"), parts.precision.autocast():
        micros = parts.rollouts.take(step, rows)
    if next_rows is not None:
        parts.rollouts.prefetch(step + 1, next_rows)
    metrics = accumulate_gradients(parts, micros, clock)
    with clock("update"):
        grad_norm = parts.strategy.step(parts.params, parts.optimizer, parts.precision, cfg.train.max_grad_norm,
                                        has_loss=metrics["train/micro_batches_with_loss"] > 0)
        parts.scheduler.step()
    parts.teacher.after_optimizer_step(step + 1)
    with clock("generate"):  # an asynchronous sampler's wait for the next step's rollouts counts as generation
        parts.rollouts.after_update(parts.student)
    clock.tokens += metrics["train/tokens"]
    lengths = torch.cat([m.student.completion_mask.sum(1).float() for m in micros])
    metrics.update({
        "train/grad_norm": grad_norm, "train/lr": parts.scheduler.get_last_lr()[0],
        "train/on_policy_fraction": sum(m.on_policy for m in micros) / len(micros),
        "completions/mean_length": float(lengths.mean()), "completions/max_length": float(lengths.max()),
        "completions/min_length": float(lengths.min()),
        **parts.method.metrics(), **parts.rollouts.metrics(), **parts.teacher.metrics(), **clock.metrics(),
    })
    return metrics


def accumulate_gradients(parts: Parts, micros: list, clock: StepClock | None = None) -> dict[str, float]:
    """Forward and backward over an optimizer step's micro-batches; the gradients are not yet reduced."""
    clock = clock or StepClock()
    method = parts.method
    if parts.strategy.collective_forwards:
        same_forwards_on_every_process(micros)
    terms = [method.token_term(m, parts.device) for m in micros]  # SDPO's PPO-clip term, SFT's cross-entropy
    has_loss = [m.teacher is not None or term is not None for m, term in zip(micros, terms, strict=True)]
    last = max((i for i, loses in enumerate(has_loss) if loses), default=-1)
    loss_tokens, completion_tokens = all_reduce_sums(  # the step's two counts, in one collective
        [sum(m.loss_tokens for m in micros), sum(m.student.num_completion_tokens for m in micros)], parts.device)
    norm = max(loss_tokens, 1)
    sums: dict[str, torch.Tensor] = {}  # on the device until the step's end: one host sync for all of them
    for i, (micro, term) in enumerate(zip(micros, terms, strict=True)):
        if not has_loss[i]:  # e.g. SDPO w=1 and no rollout in it was reprompted: nothing to learn from
            continue
        batch = micro.student.to(parts.device)
        teacher_tokens = None
        if micro.teacher is not None:
            with clock("teacher"):  # GKD's teacher reads the student's own batch: copied once
                teacher_batch = batch if micro.teacher is micro.student else micro.teacher.to(parts.device)
                teacher_tokens = parts.teacher.score(teacher_batch, parts.divergence.teacher_request(),
                                                     micro.rows)
        with clock("update"), parts.precision.autocast():
            hidden = parts.student_parts.hidden_states(batch.input_ids, batch.attention_mask)
            student_tokens = StudentTokens(
                completion_hidden(hidden, batch), parts.student_parts.lm_head(parts.vocab_size),
                batch.completion_targets(),
                weights=to_device(micro.distill_weights, parts.device),
                old_logprobs=to_device(micro.old_logprobs, parts.device),
                is_clip=method.distillation_is_clip if micro.is_clip is None else micro.is_clip,
            )
            out = parts.divergence(student_tokens, teacher_tokens, term, method.distillation_weight)
        with clock("update"):
            parts.strategy.backward(out.loss_sum / norm, parts.precision, last_of_step=i == last)
        if method.num_iterations > 1:  # the first step's become pi_old of the reuse steps to come
            micro.token_logprobs = out.token_logprobs.cpu()
        loss = out.loss_sum.detach().double()
        for key, value in {**out.stat_sums, "loss": loss,
                           "loss_on_policy" if micro.on_policy else "loss_off_policy": loss}.items():
            sums[key] = sums[key] + value if key in sums else value
    keys = list(sums)
    values = torch.stack([sums[k].double().reshape(()) for k in keys]).tolist() if keys else []
    totals = {"loss": 0.0, "loss_on_policy": 0.0, "loss_off_policy": 0.0, **dict(zip(keys, values, strict=True))}
    return step_metrics(totals, norm, completion_tokens, float(sum(has_loss)))


def step_metrics(sums: dict[str, float], norm: float, completion_tokens: float, with_loss: float
                 ) -> dict[str, float]:
    """The step's losses and statistics, summed over processes in one collective and normalized."""
    sums = sum_across_processes(sums)
    token_norm = max(completion_tokens, 1)
    metrics = {"train/loss": sums["loss"] / norm, "train/loss_on_policy": sums["loss_on_policy"] / norm,
               "train/loss_off_policy": sums["loss_off_policy"] / norm, "train/tokens": completion_tokens,
               "train/micro_batches_with_loss": with_loss,
               "train/kl": sums.get("kl", 0.0) / max(sums.get("kl_tokens", 0.0), 1),  # over distilled tokens only
               "train/entropy": sums.get("entropy", 0.0) / token_norm}
    if "distillation" in sums:
        metrics["train/distillation_loss"] = sums["distillation"] / norm
    if "policy" in sums:  # the method's token term (SDPO's PPO-clip term, SFT's cross-entropy)
        metrics["train/policy_loss"] = sums["policy"] / norm
    if "policy_clipped" in sums:
        metrics["train/policy_clipped_fraction"] = sums["policy_clipped"] / token_norm
        metrics["train/policy_ratio_mean"] = sums["policy_ratio"] / token_norm
    if "is_ratio" in sums:
        metrics["train/is_ratio_mean"] = sums["is_ratio"] / token_norm
        metrics["train/is_clipped_fraction"] = sums["is_clipped"] / token_norm
    return metrics


def same_forwards_on_every_process(micros: list) -> None:
    """Under FSDP every forward, and under DeepSpeed every backward, is a collective, so every process must run the
    same micro-batches with the same terms. A micro-batch that has no teacher batch here (e.g. SDPO: no rollout in
    it was reprompted) but has one on another process gets the student's own view with every token masked out: a
    forward with no loss."""
    everyone, _ = gather_lists([[m.teacher is not None for m in micros]])
    for i, micro in enumerate(micros):
        if micro.teacher is None and any(flags[i] for flags in everyone):
            micro.teacher = micro.student
            micro.distill_weights = torch.zeros(micro.student.num_completion_tokens)


def to_device(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)
