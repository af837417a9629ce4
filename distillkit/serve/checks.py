"""What the teacher server accepts: one `Limits` that both the request checks and the OpenAPI schema read.

Two kinds of refusal, so that a client (and schemathesis) can tell them apart:
- 400: the request breaks the published schema (a wrong type, a number out of its range, too many items);
- 422: the request follows the schema but breaks a rule the schema cannot state (two lists of different lengths,
  a prompt length past its sequence, a prompt plus completion longer than the model's context).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillkit.serve.protocol import ScoreRequest

MIN_TEMPERATURE = 1e-4  # below it a float32 model's logits / T overflow into NaN log-probs for ordinary logits
MAX_TEMPERATURE = 1e4
MAX_K = "this server's --max-k"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def schema_error(message: str) -> ApiError:
    return ApiError(400, message)


def rule_error(message: str) -> ApiError:
    return ApiError(422, message)


@dataclass(frozen=True)
class Limits:
    """The server's bounds, from its options and its model."""

    max_k: int
    max_sequences: int  # per request, every endpoint
    context_length: int
    vocab_size: int  # LM-head rows

    def int_in(self, value, name: str, low: int, high: int, bound: str = "") -> int:
        """`bound`: what sets `high`, for the message (e.g. "this server's --max-k")."""
        number = integer(value)
        if number is None or not low <= number <= high:
            raise schema_error(f"{name}={short(value)} must be an integer in [{low}, {high}]"
                               + (f" ({bound} is {high})" if bound else ""))
        return number

    def temperature(self, value, name: str = "temperature") -> float:
        """A number in [MIN_TEMPERATURE, MAX_TEMPERATURE]; compared before float() so 10**400 is refused, not an
        OverflowError."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
            raise schema_error(f"{name}={short(value)} must be a number in [{MIN_TEMPERATURE:g}, "
                               f"{MAX_TEMPERATURE:g}] (the log-probs are log_softmax(logits / {name}))")
        return float(value)

    def token_lists(self, value, name: str, min_length: int = 0) -> list[list[int]]:
        """A list (at most max_sequences) of token-id lists (at most context_length each), ids in [0, vocab)."""
        if not isinstance(value, list) or len(value) > self.max_sequences:
            raise schema_error(f"{name} must be a list of at most {self.max_sequences} lists of token ids "
                               "(this server's --max-sequences)")
        return [self.token_list(seq, f"{name}[{i}]", min_length) for i, seq in enumerate(value)]

    def token_list(self, seq, name: str, min_length: int = 0) -> list[int]:
        if not isinstance(seq, list) or not min_length <= len(seq) <= self.context_length:
            raise schema_error(f"{name} must be a list of {min_length} to {self.context_length} token ids (the "
                               "model's context)")
        tokens = [integer(token) for token in seq]
        for t, token in enumerate(tokens):
            if token is None or not 0 <= token < self.vocab_size:
                raise schema_error(f"{name}[{t}]={short(seq[t])}: a token id must be an integer in [0, "
                                   f"{self.vocab_size}) (the vocabulary)")
        return tokens

    def int_list(self, value, name: str, low: int, high: int) -> list[int]:
        if not isinstance(value, list) or len(value) > self.max_sequences:
            raise schema_error(f"{name} must be a list of at most {self.max_sequences} integers")
        return [self.int_in(x, f"{name}[{i}]", low, high) for i, x in enumerate(value)]


def integer(value) -> int | None:
    """An int, or a float with no fractional part (JSON Schema's "integer": 1.0 is one); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def score_request_from_json(body, limits: Limits) -> ScoreRequest:
    """/v1/score's JSON body, checked against the schema (400)."""
    if not isinstance(body, dict):
        raise schema_error("the JSON body must be an object with sequences, prompt_lengths, k, temperature")
    for key in ("sequences", "prompt_lengths", "k", "temperature"):
        if key not in body:
            raise schema_error(f"the JSON body lacks {key!r}")
    sequences = limits.token_lists(body["sequences"], "sequences")
    prompt_lengths = limits.int_list(body["prompt_lengths"], "prompt_lengths", 0, limits.context_length)
    k = limits.int_in(body["k"], "k", 1, limits.max_k, MAX_K)
    temperature = limits.temperature(body["temperature"])
    vocab_size = body.get("vocab_size")
    if vocab_size is not None:
        limits.int_in(vocab_size, "vocab_size", 1, limits.vocab_size)
    return ScoreRequest.from_lists(sequences, prompt_lengths, k, temperature, vocab_size)


def check_score_request(req: ScoreRequest, limits: Limits) -> int:
    """Refuse anything the model cannot answer exactly as asked. Returns the vocabulary size to normalize over.

    The binary form arrives unchecked, so the schema's bounds are checked here again (400), then the rules (422).
    """
    s = len(req.lengths)
    if s > limits.max_sequences:
        raise schema_error(f"{s} sequences: at most {limits.max_sequences} per request (this server's "
                           "--max-sequences); send fewer per request")
    limits.int_in(req.k, "k", 1, limits.max_k, MAX_K)
    limits.temperature(req.temperature)
    vocab = limits.vocab_size if req.vocab_size is None else limits.int_in(req.vocab_size, "vocab_size", 1,
                                                                            limits.vocab_size)
    lengths, prompts = req.lengths, req.prompt_lengths
    if len(prompts) != s:
        raise rule_error(f"sequences has {s} entries but prompt_lengths has {len(prompts)}: one each")
    if req.k > vocab:
        raise rule_error(f"k={req.k} exceeds the vocabulary of {vocab} tokens")
    if s:
        long = np.nonzero(lengths > limits.context_length)[0]
        if len(long):
            i = int(long[0])
            raise schema_error(f"sequence {i} has {int(lengths[i])} tokens, more than the model's context of "
                               f"{limits.context_length}")
        bad = np.nonzero((prompts < 0) | (prompts > lengths))[0]
        if len(bad):
            i = int(bad[0])
            status = schema_error if prompts[i] < 0 else rule_error
            raise status(f"prompt_lengths[{i}]={int(prompts[i])} lies outside [0, {int(lengths[i])}] "
                         f"(sequence {i} has {int(lengths[i])} tokens)")
        zero = np.nonzero((prompts == 0) & (lengths > 0))[0]
        if len(zero):
            i = int(zero[0])
            raise rule_error(f"prompt_lengths[{i}]=0 but sequence {i} is not empty: its first token has no prefix "
                             "to be predicted from, so a prompt length must be >= 1 (0 only for an empty sequence)")
    if len(req.tokens):
        starts = np.repeat(req.offsets[:-1], lengths)
        position = np.arange(len(req.tokens)) - starts
        completion = position >= np.repeat(prompts, lengths)
        outside = (req.tokens < 0) | (req.tokens >= limits.vocab_size)
        bad = outside | (completion & (req.tokens >= vocab))
        if bad.any():
            t = int(np.argmax(bad))
            i = int(np.searchsorted(req.offsets, t, side="right") - 1)
            limit = vocab if completion[t] else limits.vocab_size
            status = schema_error if outside[t] else rule_error
            raise status(f"sequence {i}, position {int(position[t])}: token id {int(req.tokens[t])} lies "
                         f"outside the vocabulary [0, {limit})")
    return vocab

