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
import json
import sys
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "recipes"))  # tiny_training: the pieces shared with make_tiny_models.py

import tiny_training  # noqa: E402
from tiny_training import (  # noqa: E402
    ProblemStream,
    encode,
    folder_bytes,
    greedy_completions,
    pin_everything,
    pin_seeds,
    save,
    shape_line,
    train_into_band,
    train_to_target,
)

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
MAX_GRAD_NORM = 1.0
MAX_NEW_TOKENS = 6 * MAX_DIGITS + 2  # longest completion (49 characters) + eos
NUM_THREADS = 1
EVAL_CHUNK = 250  # rows per forward pass of the teacher-forced checks
GREEDY_BATCH = 250

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
MAX_POSITIONS = 128  # prompt (at most 18) + completion (at most 50)

OUT_DIR = REPO_ROOT / "distillkit" / "assets" / "scratchpad"


def build_model(tokenizer, shape: dict, seed: int) -> Qwen2ForCausalLM:
    return tiny_training.build_model(tokenizer, shape, seed, max_positions=MAX_POSITIONS,
                                     max_new_tokens=MAX_NEW_TOKENS)


def draw_problem(rng) -> dict[str, str]:
    """One problem drawn like the data set's rows: MIN_DIGITS-MAX_DIGITS digits, both operands that long."""
    digits = rng.randint(MIN_DIGITS, MAX_DIGITS)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    return long_addition_example(rng.randint(lo, hi), rng.randint(lo, hi), digits)


def greedy_exact_match(model, tokenizer, eval_set, batch_size: int = GREEDY_BATCH) -> dict[str, float]:
    """Greedy `generate`: whole-completion exact match (tokens before eos == completion, eos produced), and
    final-answer match (the text after `|` equals the sum, whatever the scratchpad)."""
    completions = greedy_completions(model, tokenizer, list(eval_set["prompt"]), max_new_tokens=MAX_NEW_TOKENS,
                                     batch_size=batch_size)
    exact = answer = 0
    for (text, has_eos), target in zip(completions, eval_set["completion"], strict=True):
        exact += has_eos and text == target
        answer += has_eos and text.partition("|")[2] == target.partition("|")[2]
    return {"exact": exact / len(eval_set), "answer": answer / len(eval_set)}


def train_teacher(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the held-out exact match (checked every TEACHER_EVAL_EVERY steps) reaches TEACHER_TARGET."""
    model = build_model(tokenizer, SHAPES["teacher"], seed=SEED)
    stream = ProblemStream(tokenizer, TEACHER_STREAM_SEED, draw_problem, EVAL_SEED)
    return model, train_to_target(model, stream, held_out, target=TEACHER_TARGET, eval_every=TEACHER_EVAL_EVERY,
                                  max_steps=TEACHER_MAX_STEPS, batch_size=BATCH_SIZE, max_grad_norm=MAX_GRAD_NORM,
                                  eval_chunk=EVAL_CHUNK)


def train_student(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the first evaluation in STUDENT_BAND (every STUDENT_EVAL_EVERY steps; if one jumps over the band,
    rewind model, optimizer, schedule and problem stream to the previous evaluation and evaluate every step)."""
    model = build_model(tokenizer, SHAPES["student"], seed=SEED + 1)
    stream = ProblemStream(tokenizer, STUDENT_STREAM_SEED, draw_problem, EVAL_SEED)
    return model, train_into_band(model, stream, held_out, band=STUDENT_BAND, eval_every=STUDENT_EVAL_EVERY,
                                  max_steps=STUDENT_MAX_STEPS, batch_size=BATCH_SIZE, max_grad_norm=MAX_GRAD_NORM,
                                  eval_chunk=EVAL_CHUNK)


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
{MAX_POSITIONS}; head_dim is {tiny_training.HEAD_DIM}.

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
the held-out seed, and distillkit's training rows, `data.seed` 0-2, are other draws), AdamW (lr {tiny_training.LR:g}, betas
{tiny_training.BETAS}, weight decay {tiny_training.WEIGHT_DECAY}), gradient clipping {MAX_GRAD_NORM}, {tiny_training.WARMUP_STEPS} warmup steps and cosine decay to
{tiny_training.MIN_LR_RATIO:g}x over the step cap, {NUM_THREADS} CPU thread, deterministic torch algorithms, weight init seeds
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

    pin_everything(SEED, NUM_THREADS)

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
