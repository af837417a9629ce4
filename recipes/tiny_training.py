"""The training pieces shared by the scripts that build the shipped tiny checkpoints.

`recipes/make_tiny_models.py` (distillkit/assets/tiny) and `recipes/gkd_scratchpad/make_models.py`
(distillkit/assets/scratchpad) train their teacher/student pairs the same way: a tiny Qwen2 built from a config,
cross-entropy on fresh seeded problems, AdamW with warmup and cosine decay, a teacher trained to a held-out exact
match target and a student saved at the first check inside an accuracy band. They kept two copies of that code;
this module is the one copy, parameterised where they differ (position count, answer length, batch size, gradient
clipping, evaluation chunks). `make_tiny_self_model_v3.py` takes its optimizer, step and generation config from
here, and `gkd_scratchpad/eval_final.py` its greedy decoding. Each script's numbers are unchanged: a rerun writes
the same safetensors.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

HEAD_DIM = 32  # vLLM's CPU attention backend needs a supported head size
MAX_FOLDER_BYTES = 10 * 1024 * 1024
LR = 3e-3
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 100
MIN_LR_RATIO = 0.1


def pin_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pin_everything(seed: int, num_threads: int) -> None:
    """`num_threads` CPU threads, deterministic torch algorithms, every seed pinned: reruns give the same bits."""
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    pin_seeds(seed)


def build_model(tokenizer, shape: dict, seed: int, *, max_positions: int, max_new_tokens: int) -> Qwen2ForCausalLM:
    """A fresh fp32 Qwen2 of `shape` (tied embeddings, init seeded by `seed`) with a greedy generation config."""
    assert shape["hidden_size"] // shape["num_attention_heads"] == HEAD_DIM
    config = Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, max_window_layers=shape["num_hidden_layers"], dtype="float32", **shape,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = greedy_generation_config(tokenizer, max_new_tokens)
    return model


def greedy_generation_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    """What the shipped folders' generation_config.json says: eos/pad ids of the char tokenizer, greedy."""
    return GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=max_new_tokens,
    )


def encode(tokenizer, examples: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded `prompt + completion + eos` with labels on the completion and eos only (prompt masked)."""
    prompts = tokenizer([ex["prompt"] for ex in examples], add_special_tokens=False)["input_ids"]
    answers = tokenizer([ex["completion"] for ex in examples], add_special_tokens=False)["input_ids"]
    rows = [(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers, strict=True)]
    length = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):  # right padding: causal attention never lets real tokens see it
        n = len(p) + len(a)
        input_ids[i, :n] = torch.tensor(p + a)
        attention_mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(a)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ProblemStream:
    """Fresh problems every step from a seeded RNG (never the held-out seed); `draw` makes one from the RNG."""

    def __init__(self, tokenizer, seed: int, draw: Callable[[random.Random], dict[str, str]], eval_seed: int):
        assert seed != eval_seed
        self.tokenizer = tokenizer
        self.draw = draw
        self.rng = random.Random(seed)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        return encode(self.tokenizer, [self.draw(self.rng) for _ in range(size)])


@torch.no_grad()
def forced_exact_match(model, encoded: dict[str, torch.Tensor], chunk: int | None = None) -> float:
    """Share of problems whose every completion token and eos is the argmax given the true prefix.

    The same number as greedy exact match (greedy decoding stays on the true completion exactly while each argmax
    is right), in one forward pass (per `chunk` rows, if given), so it is cheap enough to run every few steps.
    """
    was_training = model.training
    model.eval()
    rows = encoded["input_ids"].shape[0]
    chunk = chunk or rows
    ok_rows = []
    for start in range(0, rows, chunk):
        part = {k: v[start : start + chunk] for k, v in encoded.items()}
        logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        labels = part["labels"][:, 1:]
        ok_rows.append(((logits[:, :-1].argmax(-1) == labels) | (labels == -100)).all(-1))
    model.train(was_training)
    return torch.cat(ok_rows).float().mean().item()


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                       batch_size: int) -> list[tuple[str, bool]]:
    """Greedy `generate` per prompt: (the new tokens decoded up to eos, or all of them when there is no eos; whether
    eos was produced)."""
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    completions = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                        add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            completions.append((tokenizer.decode(row[: row.index(eos)] if eos in row else row), eos in row))
    model.train(was_training)
    return completions


def greedy_exact_match(model, tokenizer, eval_set, *, max_new_tokens: int, batch_size: int) -> float:
    """Greedy exact match with `generate`: the tokens before eos decode to `completion`, and eos was produced."""
    completions = greedy_completions(model, tokenizer, list(eval_set["prompt"]), max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
    targets = list(eval_set["completion"])
    return sum(has_eos and text == target
               for (text, has_eos), target in zip(completions, targets, strict=True)) / len(targets)


def make_optimizer(model, total_steps: int, lr: float = LR, warmup_steps: int = WARMUP_STEPS):
    """AdamW, linear warmup over `warmup_steps`, then cosine decay to MIN_LR_RATIO x `lr` at `total_steps`.

    Without the warmup the tiny teacher sat on a loss plateau (~1.1 nats/token, ~1% exact match) for 3,000+ steps.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps)
        progress = min(step, total_steps) / total_steps
        return warm * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(model, optimizer, scheduler, batch, max_grad_norm: float | None = None) -> float:
    """One CE step; the gradient norm is clipped to `max_grad_norm` when one is given (no schedule: constant lr)."""
    loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.item()


def log_check(name: str, step: int, loss: float, acc: float, t0: float) -> None:
    print(f"[{name}] step {step:5d}  loss {loss:.4f}  held-out exact match {acc:6.1%}  "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)


def train_to_target(model, stream: ProblemStream, held_out: dict[str, torch.Tensor], *, target: float,
                    eval_every: int, max_steps: int, batch_size: int, max_grad_norm: float | None = None,
                    eval_chunk: int | None = None, name: str = "teacher") -> dict:
    """CE until the held-out exact match (checked every `eval_every` steps) reaches `target`."""
    model.train()
    optimizer, scheduler = make_optimizer(model, max_steps)
    t0 = time.perf_counter()
    acc = 0.0
    for step in range(1, max_steps + 1):
        loss = train_step(model, optimizer, scheduler, stream.batch(batch_size), max_grad_norm)
        if step % eval_every == 0:
            acc = forced_exact_match(model, held_out, eval_chunk)
            log_check(name, step, loss, acc, t0)
            if acc >= target:
                break
    else:
        raise SystemExit(f"{name} reached only {acc:.1%} after {max_steps} steps")
    return {"steps": step, "seconds": time.perf_counter() - t0, "accuracy": acc}


def train_into_band(model, stream: ProblemStream, held_out: dict[str, torch.Tensor], *, band: tuple[float, float],
                    eval_every: int, max_steps: int, batch_size: int, max_grad_norm: float | None = None,
                    eval_chunk: int | None = None, min_jump: float | None = None, name: str = "student") -> dict:
    """CE until the first evaluation in `band` (every `eval_every` steps).

    With `min_jump`, that evaluation must also be more than `min_jump` above the untrained model's (it has made its
    jump off the floor). If one jumps from below the band straight over it, training rewinds (model, optimizer,
    schedule and problem stream) to the previous evaluation and evaluates after every step from there.
    """
    lo, hi = band
    model.train()
    optimizer, scheduler = make_optimizer(model, max_steps)
    t0 = time.perf_counter()
    every, snapshot, step = eval_every, None, 0
    floor = None
    if min_jump is not None:
        floor = forced_exact_match(model, held_out, eval_chunk)
        print(f"[{name}] step     0  held-out exact match {floor:6.1%}", flush=True)
    while step < max_steps:
        if step % every == 0:
            snapshot = copy.deepcopy((step, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                                      stream.rng.getstate()))
        step += 1
        loss = train_step(model, optimizer, scheduler, stream.batch(batch_size), max_grad_norm)
        if step % every:
            continue
        acc = forced_exact_match(model, held_out, eval_chunk)
        log_check(name, step, loss, acc, t0)
        if lo <= acc <= hi and (floor is None or acc > floor + min_jump):
            return {"steps": step, "seconds": time.perf_counter() - t0, "accuracy": acc}
        if acc > hi:
            if every == 1:
                raise SystemExit(f"{name} jumped over the band ({acc:.1%}) even when evaluated every step")
            print(f"[{name}] jumped over the band; rewinding to step {snapshot[0]}", flush=True)
            step, model_state, optim_state, sched_state, rng_state = snapshot
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
            scheduler.load_state_dict(sched_state)
            stream.rng.setstate(rng_state)
            every = 1
    raise SystemExit(f"{name} never reached {lo:.0%} in {max_steps} steps")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save(model, tokenizer, folder: Path) -> int:
    """Write `folder` afresh (model and tokenizer, files readable by all); its size, kept under MAX_FOLDER_BYTES."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for f in folder.iterdir():  # safetensors writes 0600; make the shipped files readable by all
        f.chmod(0o644)
    size = folder_bytes(folder)
    if size >= MAX_FOLDER_BYTES:
        raise SystemExit(f"{folder} is {size} bytes, over the {MAX_FOLDER_BYTES} byte limit")
    return size


def shape_line(name: str, model) -> str:
    """The model's row of a README shape table."""
    c = model.config
    return (f"| {name} | {c.hidden_size} | {c.num_hidden_layers} | {c.num_attention_heads} | "
            f"{c.num_key_value_heads} | {HEAD_DIM} | {c.intermediate_size} | {model.num_parameters():,} |")
