"""`teacher=router`: several teachers, each row scored by the one its data set row names (multi-teacher on-policy
distillation, "MOPD": TRL's `teacher_id` column, verl's `teacher_key`).

Each entry of `teacher.teachers` is any scoring teacher (`kind: live | remote | cache`, with that kind's settings,
defaults from conf/teacher/<kind>.yaml). A micro-batch is split by `row[route_column]`, each part is scored by its
teacher, and the token rows are put back in the batch's order. Only the teachers a step has used so far stay on
the device; the others are parked on the CPU (in-process teachers on a CUDA device only). See docs/teachers.md.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from distillkit.batch import SequenceBatch
from distillkit.errors import ConfigError
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.strategies import DataParallel, Strategy
from distillkit.teachers.in_process import InProcessTeacher
from distillkit.teachers.members import build_member, member_config, member_identity
from distillkit.teachers.teacher import Teacher


class RouterTeacher(Teacher):
    """Scores each row with the teacher named by `row[route_column]`."""

    can_generate = False  # seq_kd would need sampling routed by row too; refused by the method's check

    def __init__(self, teachers: Mapping[str, Mapping], route_column: str = "teacher_id"):
        if not teachers:
            raise ConfigError("teacher=router needs at least one entry in teacher.teachers, e.g. "
                              "teacher.teachers={math: {kind: live, model: PATH}, code: {kind: remote, url: URL}}.")
        self.route_column = route_column
        configs = {str(tid): member_config(str(tid), entry) for tid, entry in teachers.items()}
        self.identities = {tid: member_identity(c) for tid, c in configs.items()}
        self.members: dict[str, Teacher] = {tid: build_member(f"teacher.teachers.{tid}", config)
                                             for tid, config in configs.items()}
        self.signals = tuple(s for s in ("topk", "token") if all(s in m.signals for m in self.members.values()))
        limits = [m.k_max for m in self.members.values() if m.k_max is not None]
        self.k_max = min(limits) if limits else None
        self.device = torch.device("cpu")
        self.strategy: Strategy = DataParallel()  # one process until `place` says otherwise
        self.resident: set[str] = set()
        self.used_this_step: set[str] = set()
        self.tokens = dict.fromkeys(self.members, 0)
        self.token_logprob_sums = dict.fromkeys(self.members, 0.0)
        self.seconds = dict.fromkeys(self.members, 0.0)

    def each(self, call, *args):
        """`call(member, *args)` for every member, its ConfigError prefixed with the teacher's id."""
        results = {}
        for tid, member in self.members.items():
            try:
                results[tid] = call(member, *args)
            except ConfigError as err:
                raise ConfigError(f"teacher.teachers.{tid}: {err}") from None
        return results

    def shared_vocab_size(self, tokenizer, student_config) -> int:
        """Each teacher's vocabulary is checked against the student's; the run uses the rows all of them share."""
        return min(self.each(lambda m: m.shared_vocab_size(tokenizer, student_config)).values())

    @property
    def context_length(self) -> int | None:
        limits = [c for c in self.each(lambda m: m.context_length).values() if c]
        return min(limits) if limits else None

    def check_request(self, request: TeacherRequest) -> None:
        if request.signal == "hidden":
            raise ConfigError("teacher=router cannot serve loss=full: each teacher has its own LM head, so there is "
                              "no one set of hidden states to give the loss. Use loss=topk (loss.k up to the "
                              "vocabulary size gives the whole distribution) or loss=sampled.")
        self.each(lambda m: m.check_request(request))

    def check_rows(self, rows: Sequence[Mapping], where: str) -> None:
        """Every row names a configured teacher in `route_column`: refused at start-up otherwise."""
        missing = sum(self.route_column not in row for row in rows)
        if missing:
            raise ConfigError(f"teacher=router routes by the column {self.route_column!r}, which {missing} {where} "
                              f"rows lack. Add it to the data, map it with data.columns, or set "
                              f"teacher.route_column.")
        counts = Counter(str(row[self.route_column]) for row in rows)
        counts = {tid: n for tid, n in counts.items() if tid not in self.members}
        if counts:
            found = ", ".join(f"{tid!r} ({n} rows)" for tid, n in sorted(counts.items()))
            raise ConfigError(f"{where} rows name teachers that teacher.teachers does not define: {found}. "
                              f"Defined: {', '.join(map(repr, self.members))}. Add them, or filter those rows out.")

    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module | None) -> None:
        self.device = device
        self.each(lambda m: m.setup(device, vocab_size, student))
        self.resident = set(self.members)
        for tid in self.members:
            self.park(tid)

    def place(self, strategy: Strategy, student: torch.nn.Module) -> None:
        self.strategy = strategy
        self.each(lambda m: m.place(strategy, student))

    def movable(self, tid: str) -> bool:
        """An in-process teacher held whole by this process on a CUDA device (a sharded one stays where it is)."""
        member = self.members[tid]
        return isinstance(member, InProcessTeacher) and self.device.type == "cuda" and not self.strategy.gathers_collectively

    def park(self, tid: str) -> None:
        if tid in self.resident and self.movable(tid):
            self.members[tid].model.to("cpu")
        self.resident.discard(tid)

    def bring(self, tid: str) -> None:
        if tid not in self.resident and self.movable(tid):
            self.members[tid].model.to(self.device)
        self.resident.add(tid)

    def score(self, batch: SequenceBatch, request: TeacherRequest,
              rows: Sequence[Mapping] | None = None) -> TeacherTokens:
        if rows is None or len(rows) != batch.input_ids.shape[0]:
            raise ValueError("teacher=router scores by row: give the data set row of every sequence")
        routes = [str(row[self.route_column]) for row in rows]
        needed = set(routes)
        for tid in self.resident - needed - self.used_this_step:
            self.park(tid)
        self.used_this_step |= needed
        token_row = batch.completion_mask.nonzero()[:, 0]  # the row of each completion token, row-major
        parts: dict[str, tuple[torch.Tensor, TeacherTokens]] = {}
        for tid in sorted(needed):
            picked = torch.tensor([i for i, r in enumerate(routes) if r == tid], device=batch.input_ids.device)
            sub = SequenceBatch(batch.input_ids[picked], batch.attention_mask[picked], batch.completion_mask[picked])
            self.bring(tid)
            start = time.perf_counter()
            tokens = self.members[tid].score(sub, request, [rows[i] for i in picked.tolist()])
            self.seconds[tid] += time.perf_counter() - start
            where = torch.isin(token_row, picked)
            parts[tid] = (where, tokens)
            self.tokens[tid] += int(where.sum())
            self.token_logprob_sums[tid] += float(tokens.token_logprobs.double().sum())
        return merge_tokens(parts, int(token_row.shape[0]))

    def after_optimizer_step(self, step: int) -> None:
        self.used_this_step = set()
        self.each(lambda m: m.after_optimizer_step(step))

    def metrics(self) -> dict[str, float]:
        """Per teacher, since the last call: completion tokens scored, their mean teacher log-prob, seconds."""
        out: dict[str, float] = {"teacher/resident": float(len(self.resident))}
        for tid in self.members:
            out[f"teacher/{tid}/tokens"] = float(self.tokens[tid])
            out[f"teacher/{tid}/seconds"] = self.seconds[tid]
            if self.tokens[tid]:
                out[f"teacher/{tid}/token_logprob"] = self.token_logprob_sums[tid] / self.tokens[tid]
            self.tokens[tid], self.token_logprob_sums[tid], self.seconds[tid] = 0, 0.0, 0.0
        return out

    def state_dict(self) -> dict:
        return {"teachers": self.identities}

    def load_state_dict(self, state: dict) -> None:
        """A resume must score each id with the teacher it was trained with."""
        before = state.get("teachers", {})
        changed = {tid: (before[tid], now) for tid, now in self.identities.items()
                   if tid in before and before[tid] != now}
        if changed:
            lines = "; ".join(f"{tid}: was {old}, now {new}" for tid, (old, new) in changed.items())
            raise ConfigError(f"teacher=router: the checkpoint was trained with other teachers under the same ids "
                              f"({lines}). Resume with the same teacher.teachers, or start a new output folder.")


def merge_tokens(parts: dict[str, tuple[torch.Tensor, TeacherTokens]], num_tokens: int) -> TeacherTokens:
    """Each teacher's token rows back into the batch's row-major order."""
    first = next(iter(parts.values()))[1]
    out = TeacherTokens()
    for name in ("topk_logprobs", "topk_ids", "token_logprobs"):
        pieces = [(where, getattr(tokens, name)) for where, tokens in parts.values()]
        if any(piece is None for _, piece in pieces):
            continue
        widths = {tuple(piece.shape[1:]) for _, piece in pieces}
        if len(widths) != 1:
            raise ValueError(f"the routed teachers returned {name} of different shapes {sorted(widths)}")
        dtype = functools.reduce(torch.promote_types, [piece.dtype for _, piece in pieces])
        template = getattr(first, name)
        merged = torch.empty((num_tokens, *template.shape[1:]), dtype=dtype, device=template.device)
        for where, piece in pieces:
            merged[where] = piece.to(merged.device, merged.dtype)
        setattr(out, name, merged)
    return out
