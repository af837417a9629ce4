"""`teacher=cache`: a teacher's top-k and actual-token log-probs recorded once by `distillkit cache-teacher`, read
back for every epoch and every job of a sweep. No teacher weights are loaded.

It serves the sequences it recorded: the off-policy micro-batches of GKD (`method.lmbda < 1`, the data set's
completions, or the teacher's samples recorded as a data file). The student's own rollouts were never scored: with
`teacher.fallback` ({kind: live | remote, ...}) they go to that teacher, without one a run that samples on-policy is
refused at start-up. See docs/teacher-cache.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from distillkit.batch import SequenceBatch
from distillkit.cache.format import sequence_key
from distillkit.cache.store import CachedScores, load_cache, read_manifest
from distillkit.errors import ConfigError
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.models import embedding_rows
from distillkit.serve.protocol import tokenizer_hash
from distillkit.strategies import Strategy
from distillkit.teachers.members import build_member, member_config
from distillkit.teachers.remote import split_rows
from distillkit.teachers.router import merge_tokens
from distillkit.teachers.teacher import Teacher, TeacherDescription


class CacheTeacher(Teacher):
    """Looks each sequence up by its tokens; what is not recorded goes to `fallback`, if there is one."""

    signals = ("topk", "token")
    can_generate = False

    def __init__(self, path: str, fallback: Mapping | None = None):
        self.path = Path(path)
        try:
            self.manifest = read_manifest(self.path)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"teacher.path={path}: {err} Record one with `distillkit cache-teacher OUT ...` "
                              "(docs/teacher-cache.md).") from None
        self.k_max = int(self.manifest["k"])
        self.fallback: Teacher | None = None
        if fallback is not None:
            self.fallback = build_member("teacher.fallback", member_config("fallback", fallback, where="teacher"))
        self.scores: CachedScores | None = None
        self.hits, self.misses = 0, 0

    def describe(self) -> TeacherDescription:
        return TeacherDescription(self.signals, self.can_generate, self.k_max, scores_unseen=self.fallback is not None)

    def shared_vocab_size(self, tokenizer, student_config) -> int:
        if tokenizer_hash(tokenizer.get_vocab()) != self.manifest["tokenizer_hash"]:
            raise ConfigError(f"teacher.path={self.path}: the cache was recorded with another tokenizer than the "
                              f"student's ({self.manifest['teacher']}). Record it again with this student's "
                              "model.student, or use the student the cache was made for.")
        rows = min(embedding_rows(student_config), int(self.manifest["vocab_size"]))
        if self.fallback is not None:
            try:
                rows = min(rows, self.fallback.shared_vocab_size(tokenizer, student_config))
            except ConfigError as err:
                raise ConfigError(f"teacher.fallback: {err}") from None
        return rows

    def check_request(self, request: TeacherRequest) -> None:
        if request.signal == "hidden":
            raise ConfigError("teacher=cache holds top-k and token log-probs, not hidden states: use loss=topk or "
                              "loss=sampled.")
        recorded = float(self.manifest["temperature"])
        if float(request.temperature) != recorded:
            raise ConfigError(f"teacher.path={self.path} was recorded at temperature {recorded} but the loss asks "
                              f"for {request.temperature}: set method.temperature={recorded}, or record the cache "
                              f"again with method.temperature={request.temperature}.")
        if request.signal == "topk" and request.k > self.k_max:
            raise ConfigError(f"loss.k={request.k} but teacher.path={self.path} recorded the top {self.k_max}: lower "
                              f"loss.k, or record the cache again with --k {request.k}.")
        if self.fallback is not None:
            self.fallback.check_request(request)

    def check_rows(self, rows: Sequence[Mapping], where: str) -> None:
        """Every fixed completion the run will score must be in the cache, unless a fallback scores the rest."""
        if self.fallback is not None:
            return
        known = self.loaded().where
        with_completions = [r for r in rows if "completion_ids" in r]
        missing = sum(sequence_key(r["prompt_ids"], r["completion_ids"]) not in known for r in with_completions)
        if missing:
            raise ConfigError(
                f"{missing} of the {len(with_completions)} {where} rows are not in the cache at {self.path} (it holds "
                f"{self.manifest['sequences']} sequences of {self.manifest['data']}). Record it with the run's data "
                "settings (the same data.* overrides), or set teacher.fallback={kind: live, model: TEACHER} to score "
                "the rest.")

    def loaded(self) -> CachedScores:
        """The recorded scores, read from disk once (at the start-up checks)."""
        if self.scores is None:
            self.scores = load_cache(self.path)
        return self.scores

    def setup(self, device: torch.device, vocab_size: int, student: torch.nn.Module | None) -> None:
        self.loaded()
        self.vocab_size = vocab_size
        if self.fallback is not None:
            self.fallback.setup(device, vocab_size, student)

    def place(self, strategy: Strategy, student: torch.nn.Module) -> None:
        if self.fallback is not None:
            self.fallback.place(strategy, student)

    def score(self, batch: SequenceBatch, request: TeacherRequest,
              rows: Sequence[Mapping] | None = None) -> TeacherTokens:
        scores = self.scores
        sequences, prompt_lengths, keeps = split_rows(batch)
        if any(keep is not None for keep in keeps):
            raise ValueError("teacher=cache scores contiguous completions only")
        keys = [sequence_key(s[:p], s[p:]) for s, p in zip(sequences, prompt_lengths, strict=True)]
        found = [key in scores.where for key in keys]
        token_row = batch.completion_mask.nonzero()[:, 0]
        scored_rows = [r for r in range(batch.input_ids.shape[0]) if bool(batch.completion_mask[r].any())]
        parts: dict[str, tuple[torch.Tensor, TeacherTokens]] = {}
        device = batch.input_ids.device
        k = request.k if request.signal == "topk" else 1
        hit_rows = [row for row, hit in zip(scored_rows, found, strict=True) if hit]
        if hit_rows:
            spans = [scores.where[key] for key, hit in zip(keys, found, strict=True) if hit]
            index = torch.cat([torch.arange(start, start + n) for start, n in spans])
            parts["cache"] = (torch.isin(token_row, torch.tensor(hit_rows, device=device)), TeacherTokens(
                topk_logprobs=torch.from_numpy(scores.topk_logprobs[index.numpy(), :k]).to(device),
                topk_ids=torch.from_numpy(scores.topk_ids[index.numpy(), :k]).to(device),
                token_logprobs=torch.from_numpy(scores.token_logprobs[index.numpy()]).to(device)))
        miss_rows = [row for row, hit in zip(scored_rows, found, strict=True) if not hit]
        if miss_rows:
            if self.fallback is None:
                raise ValueError(f"{len(miss_rows)} sequences are not in the cache at {self.path} and there is no "
                                 "teacher.fallback (the start-up checks should have refused this run)")
            picked = torch.tensor(miss_rows, device=device)
            sub = SequenceBatch(batch.input_ids[picked], batch.attention_mask[picked], batch.completion_mask[picked])
            parts["fallback"] = (torch.isin(token_row, picked), self.fallback.score(
                sub, request, None if rows is None else [rows[i] for i in miss_rows]))
        self.hits += len(hit_rows)
        self.misses += len(miss_rows)
        tokens = merge_tokens(parts, int(token_row.shape[0]))
        if request.signal == "token":
            tokens.topk_logprobs = tokens.topk_ids = None
        return tokens

    def after_optimizer_step(self, step: int) -> None:
        if self.fallback is not None:
            self.fallback.after_optimizer_step(step)

    def metrics(self) -> dict[str, float]:
        """Sequences answered from the cache and by the fallback since the last call."""
        out = {"teacher/cache_hits": float(self.hits), "teacher/cache_misses": float(self.misses)}
        self.hits, self.misses = 0, 0
        return out

    def state_dict(self) -> dict:
        return {"cache": {"path": str(self.path), "teacher": self.manifest["teacher"]}}
