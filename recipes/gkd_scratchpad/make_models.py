"""Build the teacher/student pair for the `addition_scratchpad` comparison (recipes/gkd_scratchpad).

    python recipes/gkd_scratchpad/make_models.py

Writes `distillkit/assets/scratchpad/{teacher,student}/` (Qwen2 configs + fp32 safetensors + char tokenizer +
generation config) and `distillkit/assets/scratchpad/README.md`. Nothing is downloaded: both models are built
from a config and trained from scratch with cross-entropy on the built-in task `addition_scratchpad`
(`distillkit.data.long_addition`: 5-8 digit addition with a column-by-column scratchpad) on CPU, 1 thread.

- teacher: trained until greedy exact match (the whole completion: scratchpad, answer and eos) on the held-out
  set is >= TEACHER_TARGET.
- student: a smaller model, trained with cross-entropy and saved at the first evaluation whose held-out
  accuracy is in STUDENT_BAND (rewinding to evaluate every step if it would jump over the band).

Every source of randomness is pinned (`SEED`, fixed problem streams, 1 CPU thread, deterministic torch
algorithms), so a rerun on the same software stack gives the same checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from distillkit.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from distillkit.data.long_addition import (  # noqa: E402
    ALPHABET,
    MAX_DIGITS,
    MIN_DIGITS,
    long_addition_dataset,
    long_addition_example,
)

SEED = 0
EVAL_SEED = 1234  # the held-out set (the recipe's data.eval_seed); no training stream may use it
EVAL_SIZE = 1000
TEACHER_STREAM_SEED = 101
STUDENT_STREAM_SEED = 102
BATCH_SIZE = 64
LR = 3e-3
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 100
MIN_LR_RATIO = 0.1
MAX_NEW_TOKENS = 6 * MAX_DIGITS + 2  # longest completion (49 characters) + eos
NUM_THREADS = 1

TEACHER_TARGET = 0.95
TEACHER_EVAL_EVERY = 100
TEACHER_MAX_STEPS = 4000

STUDENT_BAND = (0.10, 0.30)
STUDENT_EVAL_EVERY = 20
STUDENT_MAX_STEPS = 4000

SHAPES = {
    "teacher": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=512),
    "student": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=256),
}
HEAD_DIM = 32
MAX_POSITIONS = 128  # prompt (at most 18) + completion (at most 50)
MAX_FOLDER_BYTES = 10 * 1024 * 1024

OUT_DIR = REPO_ROOT / "distillkit" / "assets" / "scratchpad"


def pin_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(tokenizer, shape: dict, seed: int) -> Qwen2ForCausalLM:
    assert shape["hidden_size"] // shape["num_attention_heads"] == HEAD_DIM
    config = Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, max_window_layers=shape["num_hidden_layers"], dtype="float32", **shape,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
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
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        input_ids[i, :n] = torch.tensor(p + a)
        attention_mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(a)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ProblemStream:
    """Fresh problems every step from a seeded RNG (never the held-out seed), drawn like the data set's rows."""

    def __init__(self, tokenizer, seed: int):
        assert seed != EVAL_SEED
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        examples = []
        for _ in range(size):
            digits = self.rng.randint(MIN_DIGITS, MAX_DIGITS)
            lo, hi = 10 ** (digits - 1), 10**digits - 1
            examples.append(long_addition_example(self.rng.randint(lo, hi), self.rng.randint(lo, hi), digits))
        return encode(self.tokenizer, examples)


@torch.no_grad()
def forced_exact_match(model, encoded: dict[str, torch.Tensor], chunk: int = 250) -> float:
    """Share of problems whose every completion token and eos is the argmax given the true prefix (= greedy exact
    match, in one forward pass per chunk)."""
    was_training = model.training
    model.eval()
    ok_rows = []
    for start in range(0, encoded["input_ids"].shape[0], chunk):
        part = {k: v[start : start + chunk] for k, v in encoded.items()}
        logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        labels = part["labels"][:, 1:]
        ok_rows.append(((logits[:, :-1].argmax(-1) == labels) | (labels == -100)).all(-1))
    model.train(was_training)
    return torch.cat(ok_rows).float().mean().item()


@torch.no_grad()
def greedy_exact_match(model, tokenizer, eval_set, batch_size: int = 250) -> dict[str, float]:
    """Greedy `generate`: whole-completion exact match (tokens before eos == completion, eos produced), and
    final-answer match (the text after `|` equals the sum, whatever the scratchpad)."""
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    exact = answer = 0
    for start in range(0, len(eval_set), batch_size):
        chunk = eval_set[start : start + batch_size]
        enc = tokenizer(chunk["prompt"], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        for row, target in zip(out[:, enc["input_ids"].shape[1] :].tolist(), chunk["completion"], strict=True):
            text = tokenizer.decode(row[: row.index(eos)]) if eos in row else None
            exact += text == target
            answer += text is not None and text.partition("|")[2] == target.partition("|")[2]
    model.train(was_training)
    return {"exact": exact / len(eval_set), "answer": answer / len(eval_set)}


def make_optimizer(model, total_steps: int):
    """AdamW, linear warmup then cosine decay to MIN_LR_RATIO x LR at `total_steps`."""
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
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
            print(f"[teacher] step {step:5d}  loss {loss:.4f}  held-out exact match {acc:6.1%}  "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            if acc >= TEACHER_TARGET:
                break
    else:
        raise SystemExit(f"teacher reached only {acc:.1%} after {TEACHER_MAX_STEPS} steps")
    return model, {"steps": step, "seconds": time.perf_counter() - t0, "accuracy": acc}


def train_student(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the first evaluation in STUDENT_BAND (every STUDENT_EVAL_EVERY steps; if one jumps over the band,
    rewind model, optimizer, schedule and problem stream to the previous evaluation and evaluate every step)."""
    lo, hi = STUDENT_BAND
    model = build_model(tokenizer, SHAPES["student"], seed=SEED + 1)
    model.train()
    optimizer, scheduler = make_optimizer(model, STUDENT_MAX_STEPS)
    stream = ProblemStream(tokenizer, STUDENT_STREAM_SEED)
    t0 = time.perf_counter()
    every, snapshot, step = STUDENT_EVAL_EVERY, None, 0
    while step < STUDENT_MAX_STEPS:
        if step % every == 0:
            snapshot = copy.deepcopy((step, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                                      stream.rng.getstate()))
        step += 1
        loss = train_step(model, optimizer, scheduler, stream.batch(BATCH_SIZE))
        if step % every:
            continue
        acc = forced_exact_match(model, held_out)
        print(f"[student] step {step:5d}  loss {loss:.4f}  held-out exact match {acc:6.1%}  "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
        if lo <= acc <= hi:
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
    for f in folder.iterdir():
        f.chmod(0o644)
    size = folder_bytes(folder)
    if size >= MAX_FOLDER_BYTES:
        raise SystemExit(f"{folder} is {size} bytes, over the {MAX_FOLDER_BYTES} byte limit")
    return size


def shape_line(name: str, model) -> str:
    c = model.config
    return (f"| {name} | {c.hidden_size} | {c.num_hidden_layers} | {c.num_attention_heads} | "
            f"{c.num_key_value_heads} | {HEAD_DIM} | {c.intermediate_size} | {model.num_parameters():,} |")


def write_readme(out: Path, models: dict, info: dict, sizes: dict) -> None:
    t, s = info["teacher"], info["student"]
    text = f"""# Teacher and student for `addition_scratchpad` (recipes/gkd_scratchpad)

Two tiny Qwen2 causal LMs (`Qwen2ForCausalLM`, fp32 safetensors) trained from scratch with cross-entropy on the
built-in task `addition_scratchpad` (`distillkit.data.long_addition`): 5-8 digit addition with a written
column-by-column scratchpad, e.g. `48213+90567=` -> `3701,1680,2570,8080,4931|138780<eos>` (each column: the two
operand digits, the sum digit, the carry out; right to left; then `|` and the sum). Completions are 31-50
tokens with `<eos>`. Nothing here was downloaded.

Both folders hold the model config, weights, `generation_config.json` (eos/pad ids, greedy, max {MAX_NEW_TOKENS}
new tokens) and the character tokenizer (`build_char_tokenizer(ALPHABET)` of `distillkit.data.long_addition`:
`<pad>`=0, `<eos>`=1, `<unk>`=2, then `+ , 0-9 = |`), so `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)` work on either. Embeddings are tied; `max_position_embeddings` is
{MAX_POSITIONS}; head_dim is {HEAD_DIM}.

| model | hidden | layers | heads | kv heads | head_dim | intermediate | parameters |
|---|---|---|---|---|---|---|---|
{shape_line("teacher", models["teacher"])}
{shape_line("student", models["student"])}

| model | folder size | held-out greedy exact match (whole completion) | final answer right | CE training |
|---|---|---|---|---|
| teacher | {sizes["teacher"] / 1e6:.2f} MB | {t["greedy"]["exact"]:.1%} | {t["greedy"]["answer"]:.1%} | {t["steps"]} steps, stopped at the first eval (every {TEACHER_EVAL_EVERY} steps) >= {TEACHER_TARGET:.0%} |
| student | {sizes["student"] / 1e6:.2f} MB | {s["greedy"]["exact"]:.1%} | {s["greedy"]["answer"]:.1%} | {s["steps"]} steps, stopped at the first eval in [{STUDENT_BAND[0]:.0%}, {STUDENT_BAND[1]:.0%}] |

Held-out set: `long_addition_dataset({EVAL_SIZE}, seed={EVAL_SEED})` (the recipe's `data.eval_seed`); greedy
decoding, at most {MAX_NEW_TOKENS} new tokens. Exact match: the tokens before `<eos>` decode to the whole reference
completion (scratchpad and answer) and `<eos>` was produced: the number distillkit's evaluator reports.

Training: cross-entropy on the completion tokens and `<eos>` only (prompt masked), batch {BATCH_SIZE} problems
drawn fresh each step (teacher stream seed {TEACHER_STREAM_SEED}, student stream seed {STUDENT_STREAM_SEED}; neither is
the held-out seed, and distillkit's training rows, `data.seed` 0-2, are other draws), AdamW (lr {LR:g}, betas
{BETAS}, weight decay {WEIGHT_DECAY}), gradient clipping 1.0, {WARMUP_STEPS} warmup steps and cosine decay to
{MIN_LR_RATIO:g}x over the step cap, {NUM_THREADS} CPU thread, deterministic torch algorithms, weight init seeds
teacher {SEED}, student {SEED + 1}. Checks during training use teacher-forced argmax exact match (equal to greedy
exact match); the accuracies above are from `generate` on the saved folders. Wall time of the run that wrote
these files (2 shared CPU cores, 1 thread): teacher {t["seconds"]:.0f} s, student {s["seconds"]:.0f} s.

Regenerate (deterministic; overwrites both folders and this file; `--only teacher|student` rebuilds one and
rewrites this file from the other's `training.json`):

    python recipes/gkd_scratchpad/make_models.py
"""
    (out / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where to write teacher/ and student/")
    parser.add_argument("--only", choices=["teacher", "student"], default=None,
                        help="build only this one (the README is written once both folders exist)")
    args = parser.parse_args()
    out = args.out.resolve()

    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    pin_seeds(SEED)

    tokenizer = build_char_tokenizer(ALPHABET)
    eval_set = long_addition_dataset(EVAL_SIZE, seed=EVAL_SEED)
    held_out = encode(tokenizer, list(eval_set))

    start = time.perf_counter()
    models, info, sizes = {}, {}, {}
    for name, train in (("teacher", train_teacher), ("student", train_student)):
        if args.only and name != args.only:  # the other one as an earlier run wrote it (each is trained alone)
            if (out / name / "training.json").exists():
                models[name] = AutoModelForCausalLM.from_pretrained(out / name)
                info[name] = json.loads((out / name / "training.json").read_text())
                sizes[name] = folder_bytes(out / name)
            continue
        pin_seeds(SEED)
        print(f"== {name}: {SHAPES[name]}", flush=True)
        models[name], info[name] = train(tokenizer, held_out)
        sizes[name] = save(models[name], tokenizer, out / name)
        reloaded = AutoModelForCausalLM.from_pretrained(out / name)
        info[name]["greedy"] = greedy_exact_match(reloaded, AutoTokenizer.from_pretrained(out / name), eval_set)
        (out / name / "training.json").write_text(json.dumps(info[name], indent=1) + "\n")
        (out / name / "training.json").chmod(0o644)
        print(f"== {name}: greedy exact match {info[name]['greedy']['exact']:.1%}, final answer "
              f"{info[name]['greedy']['answer']:.1%} after {info[name]['steps']} steps "
              f"({info[name]['seconds']:.0f}s); {models[name].num_parameters():,} params, "
              f"{sizes[name] / 1e6:.2f} MB in {out / name}", flush=True)

    if len(models) == 2:
        write_readme(out, models, info, sizes)
    print(f"done in {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
