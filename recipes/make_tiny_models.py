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
import sys
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_training  # noqa: E402
from tiny_training import (  # noqa: E402  (the shared pieces; make_tiny_self_model*.py and others import them from here)
    ProblemStream,
    encode,
    pin_everything,
    pin_seeds,
    save,
    shape_line,
    train_into_band,
    train_to_target,
)
from tiny_training import forced_exact_match as forced_exact_match  # noqa: E402  (re-exported)
from tiny_training import make_optimizer as make_optimizer  # noqa: E402  (re-exported)
from tiny_training import train_step as train_step  # noqa: E402  (re-exported)

from distillkit.data.addition import ALPHABET, addition_dataset, addition_example  # noqa: E402
from distillkit.data.char_tokenizer import build_char_tokenizer  # noqa: E402

SEED = 0
DIGITS = 3
EVAL_SEED = 1234  # held-out set; no training stream may use it
EVAL_SIZE = 1000
TEACHER_STREAM_SEED = 1
STUDENT_STREAM_SEED = 2
BATCH_SIZE = 128
MAX_NEW_TOKENS = 5  # longest answer "1998" + eos
MAX_POSITIONS = 64
# One thread: the result does not depend on the machine's core count, and these tiny matmuls gain little from
# more threads (on a busy 2-core machine, 2 threads ran ~10x slower than 1 because of spinning workers).
NUM_THREADS = 1

TEACHER_TARGET = 0.95
TEACHER_EVAL_EVERY = 50
TEACHER_MAX_STEPS = 2000

STUDENT_BAND = (0.22, 0.35)
STUDENT_EVAL_EVERY = 10
STUDENT_MAX_STEPS = 2000
STUDENT_MIN_JUMP = 0.05  # the student's check must be this far above its untrained accuracy: it has made its jump

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

OUT_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny"


def build_model(tokenizer, shape: dict, seed: int) -> Qwen2ForCausalLM:
    """The shared model at this task's sizes (also what make_tiny_self_model.py builds)."""
    return tiny_training.build_model(tokenizer, shape, seed, max_positions=MAX_POSITIONS,
                                     max_new_tokens=MAX_NEW_TOKENS)


def greedy_exact_match(model, tokenizer, eval_set, batch_size: int = 500) -> float:
    """The shared greedy exact match at this task's answer length (also used by other tiny-model scripts)."""
    return tiny_training.greedy_exact_match(model, tokenizer, eval_set, max_new_tokens=MAX_NEW_TOKENS,
                                            batch_size=batch_size)


def draw_problem(rng) -> dict[str, str]:
    """One zero-padded DIGITS-digit addition problem."""
    hi = 10**DIGITS - 1
    return addition_example(rng.randint(0, hi), rng.randint(0, hi), DIGITS)


def train_teacher(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the held-out exact match (checked every TEACHER_EVAL_EVERY steps) reaches TEACHER_TARGET."""
    model = build_model(tokenizer, SHAPES["teacher"], seed=SEED)
    stream = ProblemStream(tokenizer, TEACHER_STREAM_SEED, draw_problem, EVAL_SEED)
    return model, train_to_target(model, stream, held_out, target=TEACHER_TARGET, eval_every=TEACHER_EVAL_EVERY,
                                  max_steps=TEACHER_MAX_STEPS, batch_size=BATCH_SIZE)


def train_student(tokenizer, held_out) -> tuple[Qwen2ForCausalLM, dict]:
    """CE until the first evaluation that lands in STUDENT_BAND after the jump (see `train_into_band`)."""
    model = build_model(tokenizer, SHAPES["student"], seed=SEED + 1)
    stream = ProblemStream(tokenizer, STUDENT_STREAM_SEED, draw_problem, EVAL_SEED)
    return model, train_into_band(model, stream, held_out, band=STUDENT_BAND, eval_every=STUDENT_EVAL_EVERY,
                                  max_steps=STUDENT_MAX_STEPS, batch_size=BATCH_SIZE, min_jump=STUDENT_MIN_JUMP)


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
neither is the held-out seed), AdamW (lr {tiny_training.LR:g}, betas {tiny_training.BETAS}, weight decay {tiny_training.WEIGHT_DECAY}) with
{tiny_training.WARMUP_STEPS} warmup steps and cosine decay to {tiny_training.MIN_LR_RATIO:g}x over the step cap, {NUM_THREADS} CPU thread,
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

    pin_everything(SEED, NUM_THREADS)

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
