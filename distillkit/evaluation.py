"""Held-out evaluation: greedy exact match, and the teacher-student KL on the reference completions."""

from __future__ import annotations

import torch

from distillkit.assembly import Parts, teacher_generator
from distillkit.batch import collate, completion_hidden
from distillkit.generation import HFGenerator
from distillkit.losses.base import TeacherRequest
from distillkit.losses.chunked_head import at_least_fp32, auto_chunk_size
from distillkit.losses.math import add_tail_bucket, kl
from distillkit.models import DecoderAndHead


def exact_match(generator, rows: list[dict]) -> float:
    """Fraction of prompts whose greedy completion equals the reference completion token for token (with EOS)."""
    scored = [r for r in rows if "completion_ids" in r]
    if not scored:
        return float("nan")
    outputs = generator.generate([r["prompt_ids"] for r in scored], n=1, greedy=True)
    return sum(out == r["completion_ids"] for out, r in zip(outputs, scored, strict=True)) / len(scored)


@torch.no_grad()
def teacher_forced_kl(
    student: DecoderAndHead, teacher, rows: list[dict], vocab_size: int, pad_id: int, device: torch.device,
    batch_size: int = 256,
) -> float:
    """Mean per-token forward KL(T||S) at temperature 1 over the held-out reference completions.

    A teacher that only sends top-k log-probs (a server) is compared on its top-k support plus a tail bucket.
    """
    scored = [r for r in rows if "completion_ids" in r]
    total, tokens = 0.0, 0
    full = "hidden" in teacher.signals
    request = TeacherRequest("hidden", 1.0) if full else TeacherRequest("topk", 1.0, k=teacher.k_max or 20)
    for start in range(0, len(scored), batch_size):
        part = scored[start : start + batch_size]
        batch = collate([r["prompt_ids"] for r in part], [r["completion_ids"] for r in part], pad_id).to(device)
        theirs = teacher.score(batch, request, part)  # first: a self-teacher may swap weights and reshard under FSDP
        hs = completion_hidden(student.hidden_states(batch.input_ids, batch.attention_mask), batch)
        head = student.lm_head(vocab_size)
        chunk = auto_chunk_size(vocab_size)
        for a in range(0, hs.shape[0], chunk):
            s = torch.log_softmax(head.logits(hs[a : a + chunk]), -1)
            if full:
                t = torch.log_softmax(theirs.head.logits(theirs.hidden[a : a + chunk]), -1)
            else:
                t = add_tail_bucket(at_least_fp32(theirs.topk_logprobs[a : a + chunk]))
                s = add_tail_bucket(s.gather(-1, theirs.topk_ids[a : a + chunk].long()))
            total += kl(t, s).sum().item()
        tokens += hs.shape[0]
    return total / max(tokens, 1)


def evaluate(parts: Parts, greedy_student, eval_rows: list[dict]) -> dict[str, float]:
    """The student's held-out accuracy and its teacher-forced KL to the teacher, in eval mode."""
    was_training = parts.student.training
    parts.student.eval()
    try:
        metrics = {}
        for suffix, rows in route_groups(eval_rows, parts.teacher.route_column).items():
            metrics[f"eval/accuracy{suffix}"] = exact_match(greedy_student, rows)
            metrics[f"eval/teacher_kl{suffix}"] = teacher_forced_kl(
                parts.student_parts, parts.teacher, rows, parts.vocab_size, parts.tokenizer.pad_token_id, parts.device)
        return {**metrics, **{f"eval/{key}": value for key, value in parts.teacher.metrics().items()}}
    finally:
        parts.student.train(was_training)


def route_groups(rows: list[dict], route_column: str | None) -> dict[str, list[dict]]:
    """All rows (metric suffix ""), and with routed teachers each teacher's rows too ("/<teacher id>")."""
    groups = {"": rows}
    if route_column is not None:
        for row in rows:
            groups.setdefault(f"/{row[route_column]}", []).append(row)
    return groups


class Evaluator:
    """A run's evaluations: the student (greedy decoding, KL to the teacher) and, once, the teacher's accuracy."""

    def __init__(self, parts: Parts, rows: list[dict]):
        self.parts, self.rows = parts, rows
        length = parts.cfg.train.max_completion_length
        self.greedy_student = HFGenerator(max_completion_length=length).bind(parts.student, parts.tokenizer)
        self.greedy_teacher = teacher_generator(parts.cfg, parts.teacher, parts.tokenizer, greedy=True)

    def student(self) -> dict[str, float]:
        return evaluate(self.parts, self.greedy_student, self.rows)

    def teacher_accuracy(self) -> float:
        """NaN for a teacher that cannot generate here (a server)."""
        return exact_match(self.greedy_teacher, self.rows) if self.greedy_teacher else float("nan")
