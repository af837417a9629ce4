"""Build the tiny teacher/student checkpoints shipped for the embedded default demo.

    python recipes/make_tiny_models.py

Writes `distillkit/assets/tiny/{teacher,student}/` (Qwen2 configs + fp32 safetensors + char tokenizer +
generation config) and `distillkit/assets/tiny/README.md`. Nothing is downloaded: the models are built from
a config and trained from scratch on the synthetic addition task (`distillkit.data.addition`) on CPU.

- teacher: trained with cross-entropy until greedy exact match on the held-out set is >= 95%.
- student: trained with cross-entropy and saved at the first evaluation whose held-out accuracy is in
  [22%, 35%], i.e. just after its accuracy has jumped off the floor. A student saved before the jump
  (~2%) cannot be improved by distillation; one saved well above it leaves distillation nothing to show.

Every source of randomness is pinned (`SEED`, fixed problem streams, 1 CPU thread, deterministic torch
algorithms), so a rerun on the same software stack gives the same checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from distillkit.data.addition import ALPHABET, addition_dataset, addition_example  # noqa: E402
from distillkit.data.char_tokenizer import build_char_tokenizer  # noqa: E402

SEED = 0
DIGITS = 3
EVAL_SEED = 1234  # held-out set; no training stream may use it
EVAL_SIZE = 1000
TEACHER_STREAM_SEED = 1
STUDENT_STREAM_SEED = 2
BATCH_SIZE = 128
LR = 3e-3
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 100
MIN_LR_RATIO = 0.1
MAX_NEW_TOKENS = 5  # longest answer "1998" + eos
# One thread: the result does not depend on the machine's core count, and these tiny matmuls gain little from
# more threads (on a busy 2-core machine, 2 threads ran ~10x slower than 1 because of spinning workers).
NUM_THREADS = 1

TEACHER_TARGET = 0.95
TEACHER_EVAL_EVERY = 50
TEACHER_MAX_STEPS = 2000

STUDENT_BAND = (0.22, 0.35)
STUDENT_EVAL_EVERY = 10
STUDENT_MAX_STEPS = 2000

SHAPES = {
    "teacher": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
    ),
    "student": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
    ),
}
HEAD_DIM = 32  # vLLM's CPU attention backend needs a supported head size
MAX_FOLDER_BYTES = 10 * 1024 * 1024

OUT_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny"


def pin_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(tokenizer, shape: dict, seed: int) -> Qwen2ForCausalLM:
    assert shape["hidden_size"] // shape["num_attention_heads"] == HEAD_DIM
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        max_window_layers=shape["num_hidden_layers"],
        dtype="float32",
        **shape,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    return model


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
    """Fresh addition problems every step from a seeded RNG (never the held-out seed)."""

    def __init__(self, tokenizer, seed: int):
        assert seed != EVAL_SEED
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.hi = 10**DIGITS - 1

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        examples = [
            addition_example(self.rng.randint(0, self.hi), self.rng.randint(0, self.hi), DIGITS)
            for _ in range(size)
        ]
        return encode(self.tokenizer, examples)


@torch.no_grad()
def forced_exact_match(model, encoded: dict[str, torch.Tensor]) -> float:
    """Share of problems whose every answer token and eos is the argmax given the true prefix.

    One forward pass; the same number as greedy exact match (greedy decoding stays on the true answer exactly
    while each argmax is right), so it is cheap enough to run every few steps.
    """
    was_training = model.training
    model.eval()
    logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    model.train(was_training)
    labels = encoded["labels"][:, 1:]
    ok = (logits[:, :-1].argmax(-1) == labels) | (labels == -100)
    return ok.all(-1).float().mean().item()


@torch.no_grad()
def greedy_exact_match(model, tokenizer, eval_set, batch_size: int = 500) -> float:
    """Greedy exact match with `generate`: the tokens before eos decode to `completion`, and eos was produced."""
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    correct = 0
    for start in range(0, len(eval_set), batch_size):
        chunk = eval_set[start : start + batch_size]
        enc = tokenizer(chunk["prompt"], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        for row, target in zip(new_tokens, chunk["completion"], strict=True):
            if eos in row and tokenizer.decode(row[: row.index(eos)]) == target:
                correct += 1
    model.train(was_training)
    return correct / len(eval_set)


def make_optimizer(model, total_steps: int):
    """AdamW, linear warmup then cosine decay to 10% of LR at `total_steps`.

    Without the warmup the teacher sat on a loss plateau (~1.1 nats/token, ~1% exact match) for 3,000+ steps.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / WARMUP_STEPS)
        progress = min(step, total_steps) / total_steps
        return warm * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(model, optimizer, scheduler, batch) -> float:
    loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def train_teacher(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the held-out exact match (checked every TEACHER_EVAL_EVERY steps) reaches TEACHER_TARGET."""
    model = build_model(tokenizer, SHAPES["teacher"], seed=SEED)
    model.train()
    optimizer, scheduler = make_optimizer(model, TEACHER_MAX_STEPS)
    stream = ProblemStream(tokenizer, TEACHER_STREAM_SEED)
    t0 = time.perf_counter()
    acc = 0.0
    for step in range(1, TEACHER_MAX_STEPS + 1):
        loss = train_step(model, optimizer, scheduler, stream.batch(BATCH_SIZE))
        if step % TEACHER_EVAL_EVERY == 0:
            acc = forced_exact_match(model, held_out)
            print(
                f"[teacher] step {step:5d}  loss {loss:.4f}  held-out exact match {acc:6.1%}  "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            if acc >= TEACHER_TARGET:
                break
    else:
        raise SystemExit(f"teacher reached only {acc:.1%} after {TEACHER_MAX_STEPS} steps")
    return model, {"steps": step, "seconds": time.perf_counter() - t0, "accuracy": acc}


def train_student(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the first evaluation that lands in STUDENT_BAND after the jump.

    Evaluations run every STUDENT_EVAL_EVERY steps. If one jumps from below the band straight over it, training
    rewinds (model, optimizer, schedule and problem stream) to the previous evaluation and evaluates after
    every step from there.
    """
    lo, hi = STUDENT_BAND
    model = build_model(tokenizer, SHAPES["student"], seed=SEED + 1)
    model.train()
    optimizer, scheduler = make_optimizer(model, STUDENT_MAX_STEPS)
    stream = ProblemStream(tokenizer, STUDENT_STREAM_SEED)
    t0 = time.perf_counter()
    every = STUDENT_EVAL_EVERY
    floor = forced_exact_match(model, held_out)
    print(f"[student] step     0  held-out exact match {floor:6.1%}", flush=True)
    snapshot = None
    step = 0
    while step < STUDENT_MAX_STEPS:
        if step % every == 0:
            snapshot = copy.deepcopy(
                (
                    step,
                    model.state_dict(),
                    optimizer.state_dict(),
                    scheduler.state_dict(),
                    stream.rng.getstate(),
                )
            )
        step += 1
        loss = train_step(model, optimizer, scheduler, stream.batch(BATCH_SIZE))
        if step % every:
            continue
        acc = forced_exact_match(model, held_out)
        print(
            f"[student] step {step:5d}  loss {loss:.4f}  held-out exact match {acc:6.1%}  "
            f"({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        if lo <= acc <= hi and acc > floor + 0.05:  # in the band and off the floor: it has made its jump
            return model, {"steps": step, "seconds": time.perf_counter() - t0, "accuracy": acc}
        if acc > hi:
            if every == 1:
                raise SystemExit(f"student jumped over the band ({acc:.1%}) even when evaluated every step")
            print(f"[student] jumped over the band; rewinding to step {snapshot[0]}", flush=True)
            step, model_state, optim_state, sched_state, rng_state = snapshot
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
            scheduler.load_state_dict(sched_state)
            stream.rng.setstate(rng_state)
            every = 1
    raise SystemExit(f"student never reached {lo:.0%} in {STUDENT_MAX_STEPS} steps")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save(model, tokenizer, folder: Path) -> int:
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
    c = model.config
    return (
        f"| {name} | {c.hidden_size} | {c.num_hidden_layers} | {c.num_attention_heads} | "
        f"{c.num_key_value_heads} | {HEAD_DIM} | {c.intermediate_size} | {model.num_parameters():,} |"
    )


def write_readme(models: dict, info: dict, sizes: dict) -> None:
    t, s = info["teacher"], info["student"]
    text = f"""# Tiny shipped checkpoints

Two tiny Qwen2 causal LMs (`Qwen2ForCausalLM`, fp32 safetensors) trained from scratch on the built-in
synthetic task: zero-padded 3-digit addition (`distillkit.data.addition`, e.g. `123+045=` -> `168<eos>`).
They are what the embedded default demo distills: a competent teacher and a weak student that has just
started to learn the task, so distillation has room to show an improvement. Nothing here was downloaded.

Both folders hold the model config, weights, a `generation_config.json` (eos/pad ids, greedy) and the
character-level tokenizer (`build_char_tokenizer(ALPHABET + "-")`: 16 tokens, `<pad>`=0, `<eos>`=1,
`<unk>`=2, then the characters), so `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` work on either. Embeddings are tied; `max_position_embeddings` is
64; head_dim is 32 so vLLM's CPU backend can serve them.

| model | hidden | layers | heads | kv heads | head_dim | intermediate | parameters |
|---|---|---|---|---|---|---|---|
{shape_line("teacher", models["teacher"])}
{shape_line("student", models["student"])}

| model | folder size | held-out greedy exact match | CE training |
|---|---|---|---|
| teacher | {sizes["teacher"] / 1e6:.2f} MB | {t["greedy"]:.1%} | {t["steps"]} steps, stopped at the first eval (every {TEACHER_EVAL_EVERY} steps) >= {TEACHER_TARGET:.0%} |
| student | {sizes["student"] / 1e6:.2f} MB | {s["greedy"]:.1%} | {s["steps"]} steps, stopped at the first eval in [{STUDENT_BAND[0]:.0%}, {STUDENT_BAND[1]:.0%}] after its jump |

Held-out set: `addition_dataset({EVAL_SIZE}, seed={EVAL_SEED})`; greedy decoding, at most {MAX_NEW_TOKENS} new
tokens; a problem counts when the tokens before `<eos>` decode to the completion and `<eos>` was produced.

Training: cross-entropy on the answer tokens and `<eos>` only (prompt masked), batch {BATCH_SIZE} problems
drawn fresh each step (teacher stream seed {TEACHER_STREAM_SEED}, student stream seed {STUDENT_STREAM_SEED};
neither is the held-out seed), AdamW (lr {LR:g}, betas {BETAS}, weight decay {WEIGHT_DECAY}) with
{WARMUP_STEPS} warmup steps and cosine decay to {MIN_LR_RATIO:g}x over the step cap, {NUM_THREADS} CPU thread,
deterministic torch algorithms, seed {SEED} (weight init: teacher {SEED}, student {SEED + 1}). Accuracy
curves on this task sit on a plateau (~1% exact match) and then jump; without the warmup the teacher
stayed on it for over 3,000 steps. The student is checked every {STUDENT_EVAL_EVERY} steps (rewinding and
checking every step if it would jump over the band) and kept at the first check in the band, so it has
made its jump but is far from solving the task. Checks during training use teacher-forced argmax exact
match (equal to greedy exact match); the accuracies above are from `generate` on the saved folders.
Wall time of the run that wrote these files (CPU, load-dependent): teacher {t["seconds"]:.0f} s, student
{s["seconds"]:.0f} s.

Regenerate (CPU, a few minutes on an idle machine; deterministic; overwrites both folders and this file):

    python recipes/make_tiny_models.py
"""
    (OUT_DIR / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where to write teacher/ and student/")
    args = parser.parse_args()
    out = args.out.resolve()

    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    pin_seeds(SEED)

    tokenizer = build_char_tokenizer(ALPHABET + "-")
    assert len(tokenizer) == 16, len(tokenizer)
    eval_set = addition_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS)
    held_out = encode(tokenizer, list(eval_set))

    start = time.perf_counter()
    models, info, sizes = {}, {}, {}
    for name, train in (("teacher", train_teacher), ("student", train_student)):
        pin_seeds(SEED)
        print(f"== {name}: {SHAPES[name]}", flush=True)
        models[name], info[name] = train(tokenizer, held_out)
        sizes[name] = save(models[name], tokenizer, out / name)
        # Score what was written, the way users load it: greedy `generate` on the reloaded folder.
        reloaded = AutoModelForCausalLM.from_pretrained(out / name)
        info[name]["greedy"] = greedy_exact_match(
            reloaded, AutoTokenizer.from_pretrained(out / name), eval_set
        )
        if abs(info[name]["greedy"] - info[name]["accuracy"]) > 0.005:
            print(
                f"!! {name}: generate() gives {info[name]['greedy']:.1%}, teacher-forced argmax gave "
                f"{info[name]['accuracy']:.1%}",
                flush=True,
            )
        print(
            f"== {name}: {info[name]['greedy']:.1%} held-out greedy exact match after {info[name]['steps']} "
            f"steps ({info[name]['seconds']:.0f}s); {models[name].num_parameters():,} params, "
            f"{sizes[name] / 1e6:.2f} MB in {out / name}",
            flush=True,
        )

    if out == OUT_DIR.resolve():
        write_readme(models, info, sizes)
    print(
        f"done in {time.perf_counter() - start:.0f}s: teacher {info['teacher']['greedy']:.1%}, "
        f"student {info['student']['greedy']:.1%} (held-out greedy exact match)",
        flush=True,
    )


if __name__ == "__main__":
    main()
