"""Build the tiny self-distillation checkpoint shipped for the SDFT/SDPO demos.

    python recipes/make_tiny_self_model.py

Writes `distillkit/assets/tiny/self/` (Qwen2 config + fp32 safetensors + char tokenizer + generation config)
and a section of `distillkit/assets/tiny/README.md`. Nothing is downloaded: the model is built from a config
and trained from scratch on CPU on a mixture of five synthetic streams (`distillkit.data.hinted_tasks`):

- plain addition          `123+045=` -> `168<eos>`    (old skill, partial)
- plain maximum           `123>045=` -> `123<eos>`    (second old skill: plain answers depend on the operator)
- hinted addition     `168|123+045=` -> `168<eos>`
- hinted maximum      `123|123>045=` -> `123<eos>`
- hinted subtraction   `78|123-045=` -> `78<eos>`

and never on plain subtraction (the new skill). The hint format `{privileged_context}|{prompt}` is the teacher prompt the
self-distillation methods must use. The model is saved at the first evaluation where it

- already uses an in-context hint: hinted exact match >= 95% on both tasks,
- has a second old skill, partly: plain maximum exact match >= MAXIMUM_MIN,
- has a partial old skill: plain addition exact match in ADDITION_BAND (room for SDPO to improve it, yet
  enough successes among 8 samples at temperature 1 to find demonstrations), and
- lacks the new skill: plain subtraction exact match <= 10%.

Every source of randomness is pinned (`SEED`, fixed problem streams, 1 CPU thread, deterministic torch
algorithms), so a rerun on the same software stack gives the same checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared pieces of make_tiny_models.py

from make_tiny_models import (  # noqa: E402  (same seeds, model config, encoding, metric, step and save)
    build_model,
    encode,
    forced_exact_match,
    pin_seeds,
    save,
    train_step,
)
from tiny_training import (  # noqa: E402  (the optimizer and schedule of every tiny checkpoint)
    BETAS,
    LR,
    MIN_LR_RATIO,
    WARMUP_STEPS,
    WEIGHT_DECAY,
    make_optimizer,
)

from distillkit.data.addition import addition_dataset, addition_example  # noqa: E402
from distillkit.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from distillkit.data.hinted_tasks import (  # noqa: E402
    HINTED_ALPHABET,
    TEACHER_PROMPT_TEMPLATE,
    hinted_prompt,
    maximum_dataset,
    maximum_example,
    subtraction_dataset,
    subtraction_example,
)

SEED = 0
DIGITS = 3
EVAL_SEED = 1234  # held-out sets; no training stream may use it
EVAL_SIZE = 1000
# One problem stream per part of the mixture, each with its own seed (none is EVAL_SEED).
STREAM_SEEDS = {"addition": 11, "maximum": 14, "addition_hinted": 12, "maximum_hinted": 15, "subtraction_hinted": 13}
# Problems per part in every batch (fixed counts, so the batch composition does not depend on an RNG).
MIXTURE = {"addition": 56, "maximum": 16, "addition_hinted": 24, "maximum_hinted": 8, "subtraction_hinted": 24}
MAX_STEPS = 3000
EVAL_EVERY = 10
ADDITION_BAND = (0.30, 0.55)
HINTED_MIN = 0.95
MAXIMUM_MIN = 0.30  # a partial second skill is enough: plain answers must depend on the operator
SUBTRACTION_MAX = 0.10
MAX_NEW_TOKENS = 5  # longest answer "1998" + eos
NUM_SAMPLES = 8  # the sampled pass rate: problems with >= 1 right answer among 8 samples at temperature 1
# One thread: the result does not depend on the machine's core count, and these tiny matmuls gain little from
# more threads.
NUM_THREADS = 1

SHAPE = dict(  # the shape of the tiny teacher
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
)
HEAD_DIM = 32  # vLLM's CPU attention backend needs a supported head size

OUT_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny"
README_HEADING = "## The self-distillation model (`self/`)"


def with_hint(example: dict[str, str]) -> dict[str, str]:
    """The teacher's view of a problem: `ANS|PROMPT` -> `ANS`."""
    return {
        "prompt": hinted_prompt(example["completion"], example["prompt"]),
        "completion": example["completion"],
    }


class MixtureStream:
    """Fresh problems every step: MIXTURE[part] problems of each part, each part from its own seeded RNG."""

    def __init__(self, tokenizer, mixture: dict[str, int]):
        assert EVAL_SEED not in STREAM_SEEDS.values()
        self.tokenizer = tokenizer
        self.mixture = mixture
        self.rngs = {part: random.Random(STREAM_SEEDS[part]) for part in mixture}
        self.hi = 10**DIGITS - 1

    def example(self, part: str) -> dict[str, str]:
        rng = self.rngs[part]
        a, b = rng.randint(0, self.hi), rng.randint(0, self.hi)
        if part == "addition":
            return addition_example(a, b, DIGITS)
        if part == "addition_hinted":
            return with_hint(addition_example(a, b, DIGITS))
        if part == "maximum":
            return maximum_example(a, b, DIGITS)
        if part == "maximum_hinted":
            return with_hint(maximum_example(a, b, DIGITS))
        if part == "subtraction_hinted":
            return with_hint(subtraction_example(a, b, DIGITS))
        raise ValueError(part)

    def batch(self) -> dict[str, torch.Tensor]:
        examples = [self.example(part) for part, n in self.mixture.items() for _ in range(n)]
        return encode(self.tokenizer, examples)

    def get_state(self):
        return {part: rng.getstate() for part, rng in self.rngs.items()}

    def set_state(self, state) -> None:
        for part, rng in self.rngs.items():
            rng.setstate(state[part])


def eval_sets() -> dict[str, list[dict[str, str]]]:
    """The six held-out sets (seed EVAL_SEED): plain and hinted addition, maximum and subtraction."""
    addition = [dict(r) for r in addition_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS)]
    subtraction = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in subtraction_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS)
    ]
    maximum = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in maximum_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS)
    ]
    return {
        "addition": addition,
        "addition_hinted": [with_hint(r) for r in addition],
        "maximum": maximum,
        "maximum_hinted": [with_hint(r) for r in maximum],
        "subtraction": subtraction,
        "subtraction_hinted": [with_hint(r) for r in subtraction],
    }


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], num_samples: int = 0, batch_size: int = 500):
    """Greedy answers (num_samples=0), or `num_samples` answers per prompt sampled at temperature 1.

    An answer is the decoded tokens before eos, or None when no eos was produced.
    """
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    answers = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=num_samples)
        out = model.generate(
            **enc,
            **(sampling if num_samples else dict(do_sample=False)),
            max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            answers.append(tokenizer.decode(row[: row.index(eos)]) if eos in row else None)
    model.train(was_training)
    return answers


def greedy_exact_match(model, tokenizer, examples: list[dict[str, str]]) -> float:
    answers = generate_answers(model, tokenizer, [ex["prompt"] for ex in examples])
    return sum(a == ex["completion"] for a, ex in zip(answers, examples, strict=True)) / len(examples)


def sampled_pass_rate(model, tokenizer, examples: list[dict[str, str]], seed: int) -> tuple[float, float]:
    """(share of problems with >= 1 right answer among NUM_SAMPLES samples, mean per-sample success)."""
    torch.manual_seed(seed)
    answers = generate_answers(model, tokenizer, [ex["prompt"] for ex in examples], num_samples=NUM_SAMPLES)
    right = [
        [answers[i * NUM_SAMPLES + j] == ex["completion"] for j in range(NUM_SAMPLES)]
        for i, ex in enumerate(examples)
    ]
    return sum(any(r) for r in right) / len(right), sum(map(sum, right)) / (len(right) * NUM_SAMPLES)


def train(tokenizer, held_out: dict[str, dict[str, torch.Tensor]], lr: float, mixture: dict[str, int]):
    """CE on the mixture until the first evaluation that meets every criterion (see the module docstring).

    Evaluations run every EVAL_EVERY steps. If plain addition jumps from below the band straight over it,
    training rewinds (model, optimizer, schedule and problem streams) to the previous evaluation and evaluates
    after every step from there.
    """
    lo, hi = ADDITION_BAND
    model = build_model(tokenizer, SHAPE, seed=SEED)
    model.train()
    optimizer, scheduler = make_optimizer(model, MAX_STEPS, lr=lr)
    stream = MixtureStream(tokenizer, mixture)
    t0 = time.perf_counter()
    every = EVAL_EVERY
    snapshot = None
    step = 0
    while step < MAX_STEPS:
        if step % every == 0:
            snapshot = copy.deepcopy(
                (step, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), stream.get_state())
            )
        step += 1
        loss = train_step(model, optimizer, scheduler, stream.batch())
        if step % every:
            continue
        acc = {name: forced_exact_match(model, enc) for name, enc in held_out.items()}
        print(
            f"step {step:5d}  loss {loss:.4f}  exact match: addition {acc['addition']:6.1%}  "
            f"maximum {acc['maximum']:6.1%}  subtraction {acc['subtraction']:6.1%}  "
            f"hinted: addition {acc['addition_hinted']:6.1%}  maximum {acc['maximum_hinted']:6.1%}  "
            f"subtraction {acc['subtraction_hinted']:6.1%}  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        hinted_ok = (
            min(acc["addition_hinted"], acc["maximum_hinted"], acc["subtraction_hinted"]) >= HINTED_MIN
            and acc["maximum"] >= MAXIMUM_MIN
        )
        if lo <= acc["addition"] <= hi and hinted_ok and acc["subtraction"] <= SUBTRACTION_MAX:
            return model, {"steps": step, "seconds": time.perf_counter() - t0, "forced": acc}
        if acc["subtraction"] > SUBTRACTION_MAX:
            raise SystemExit(f"plain subtraction reached {acc['subtraction']:.1%} without being trained on")
        if acc["addition"] > hi:
            if every == 1 or not hinted_ok:
                raise SystemExit(
                    f"addition went over the band ({acc['addition']:.1%}) "
                    + ("even when evaluated every step" if every == 1 else "before the hint was learned")
                )
            print(f"addition jumped over the band; rewinding to step {snapshot[0]}", flush=True)
            step, model_state, optim_state, sched_state, stream_state = snapshot
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
            scheduler.load_state_dict(sched_state)
            stream.set_state(stream_state)
            every = 1
    raise SystemExit(f"no evaluation met the criteria in {MAX_STEPS} steps")


def readme_section(model, info: dict, size: int, lr: float, mixture: dict[str, int]) -> str:
    c, g = model.config, info["greedy"]
    batch = sum(mixture.values())
    parts = ", ".join(f"{n} {part.replace('_', ' ')}" for part, n in mixture.items())
    return f"""{README_HEADING}

A third tiny Qwen2 causal LM for the self-distillation methods (SDFT, SDPO), which use the model itself as
the teacher, conditioned on privileged context (a demonstration: the answer) placed in its prompt. It is
trained so that it (a) already uses such a hint, (b) has two partial old skills, addition and maximum
(`123>045=` -> `123<eos>`), and (c) lacks a new skill, subtraction (`distillkit.data.hinted_tasks`, e.g.
`123-045=` -> `78<eos>`), unless hinted. The second plain skill is there so that the model's plain answers
depend on the operator: without it (the first version of this model, addition only) anything learned about
`a-b=` spilled onto `a+b=`, and both SFT and SDFT on subtraction wiped addition out completely.

The hint format, the one teacher prompt it was trained on, is `{{privileged_context}}|{{prompt}}`: the answer,
`|`, then the plain prompt, e.g. `168|123+045=` -> `168<eos>`, `123|123>045=` -> `123<eos>` and
`78|123-045=` -> `78<eos>`
(`distillkit.data.hinted_tasks.TEACHER_PROMPT_TEMPLATE = "{TEACHER_PROMPT_TEMPLATE}"`). The built-in tasks
`subtraction` and `addition_hinted` carry the answer in a `privileged_context` column
(`hinted_tasks.maximum_dataset` makes the maximum problems; it is not a built-in `data.train` task).

Shape as the teacher's (hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads,
{c.num_key_value_heads} kv heads, head_dim {HEAD_DIM}, intermediate {c.intermediate_size}, tied embeddings):
{model.num_parameters():,} parameters, {size / 1e6:.2f} MB. Its tokenizer is
`build_char_tokenizer(HINTED_ALPHABET)`: 18 tokens, `<pad>`=0, `<eos>`=1, `<unk>`=2, then `+-0123456789=>|`
(the teacher's and student's 16 tokens with the same ids, plus `>`=16 and `|`=17).

| held-out set (1,000 problems, seed {EVAL_SEED}) | greedy exact match |
|---|---|
| plain addition `a+b=` (old skill) | {g["addition"]:.1%} |
| plain maximum `a>b=` (second old skill) | {g["maximum"]:.1%} |
| plain subtraction `a-b=` (new skill, never trained on) | {g["subtraction"]:.1%} |
| hinted addition `ANS\\|a+b=` | {g["addition_hinted"]:.1%} |
| hinted maximum `ANS\\|a>b=` | {g["maximum_hinted"]:.1%} |
| hinted subtraction `ANS\\|a-b=` | {g["subtraction_hinted"]:.1%} |

Plain addition sampled at temperature 1, {NUM_SAMPLES} samples per problem: {info["pass_at"]:.1%} of the
problems have at least one right sample; {info["per_sample"]:.1%} of the samples are right.

Training: cross-entropy on the answer tokens and `<eos>` only, {batch} fresh problems per step ({parts};
stream seeds {", ".join(str(STREAM_SEEDS[part]) for part in mixture)};
never a plain subtraction prompt), AdamW (lr {lr:g}, betas {BETAS}, weight decay {WEIGHT_DECAY}) with
{WARMUP_STEPS} warmup steps and cosine decay to {MIN_LR_RATIO:g}x over {MAX_STEPS} steps, {NUM_THREADS} CPU
thread, deterministic torch algorithms, seed {SEED}. Evaluated every {EVAL_EVERY} steps (every step after a
rewind if plain addition would jump over the band) and saved after {info["steps"]} steps, at the first
evaluation where plain addition was in [{ADDITION_BAND[0]:.0%}, {ADDITION_BAND[1]:.0%}], plain maximum
>= {MAXIMUM_MIN:.0%}, all three hinted sets >= {HINTED_MIN:.0%} and plain subtraction <= {SUBTRACTION_MAX:.0%}. Wall time of the run that wrote these
files (CPU, load-dependent): {info["seconds"]:.0f} s training, {info["total_seconds"]:.0f} s in all.

Regenerate (CPU, deterministic; overwrites `self/` and this section, which
`recipes/make_tiny_models.py` does not write, so rerun this after it):

    python recipes/make_tiny_self_model.py
"""


def write_readme_section(text: str) -> None:
    """Replace this model's section of the README (from its heading to the end), or append it."""
    path = OUT_DIR / "README.md"
    old = path.read_text() if path.exists() else "# Tiny shipped checkpoints\n"
    if README_HEADING in old:
        old = old[: old.index(README_HEADING)]
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where to write self/")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument(
        "--mixture",
        type=int,
        nargs=len(MIXTURE),
        default=list(MIXTURE.values()),
        metavar=tuple(part.upper() for part in MIXTURE),
        help="problems of each part per batch",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    mixture = dict(zip(MIXTURE, args.mixture, strict=True))

    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    pin_seeds(SEED)

    tokenizer = build_char_tokenizer(HINTED_ALPHABET)
    assert len(tokenizer) == 18, len(tokenizer)
    sets = eval_sets()
    held_out = {name: encode(tokenizer, examples) for name, examples in sets.items()}

    start = time.perf_counter()
    print(f"== self: {SHAPE}, lr {args.lr:g}, mixture {mixture}", flush=True)
    model, info = train(tokenizer, held_out, args.lr, mixture)
    size = save(model, tokenizer, out / "self")
    # Score what was written, the way users load it: `generate` on the reloaded folder.
    reloaded = AutoModelForCausalLM.from_pretrained(out / "self")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out / "self")
    info["greedy"] = {name: greedy_exact_match(reloaded, reloaded_tokenizer, ex) for name, ex in sets.items()}
    for name, acc in info["greedy"].items():
        if abs(acc - info["forced"][name]) > 0.005:
            print(
                f"!! {name}: generate() gives {acc:.1%}, teacher-forced argmax gave {info['forced'][name]:.1%}"
            )
    info["pass_at"], info["per_sample"] = sampled_pass_rate(
        reloaded, reloaded_tokenizer, sets["addition"], SEED
    )
    info["total_seconds"] = time.perf_counter() - start
    if out == OUT_DIR.resolve():
        write_readme_section(readme_section(model, info, size, args.lr, mixture))
    g = info["greedy"]
    print(
        f"== self after {info['steps']} steps ({info['seconds']:.0f}s): greedy exact match: addition "
        f"{g['addition']:.1%}, maximum {g['maximum']:.1%}, subtraction {g['subtraction']:.1%}, hinted addition "
        f"{g['addition_hinted']:.1%}, hinted maximum {g['maximum_hinted']:.1%}, hinted subtraction "
        f"{g['subtraction_hinted']:.1%}; addition at temperature 1: "
        f"{info['pass_at']:.1%} of problems with >= 1 of {NUM_SAMPLES} right, {info['per_sample']:.1%} per sample; "
        f"{model.num_parameters():,} params, {size / 1e6:.2f} MB in {out / 'self'}; "
        f"done in {info['total_seconds']:.0f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
