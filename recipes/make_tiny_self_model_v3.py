"""Build `distillkit/assets/tiny/self_v3`: the tiny self model, taught to read a demonstration written in letters.

    python recipes/make_tiny_self_model_v3.py          # CPU, 1 thread, deterministic; ~6 min

For `recipes/sdft_continual/`. The demonstration of the new skill (subtraction) is written in a notation the
model never writes itself: every digit d as the letter `abcdefghij`[d] (`78` -> `hi`,
`distillkit.data.hinted_tasks.to_letters`). The model answers in its native notation, digits. It is trained so
that it

- reads a lettered hint in context and answers natively: `hi|123-045=` -> `78<eos>` (also for `+` and `>`),
- has two old skills, plain addition `123+045=` -> `168<eos>` and plain maximum `123>045=` -> `123<eos>`
  (~87% and ~91%),
- has the new skill, plain subtraction `123-045=` -> `78<eos>`, only partly (in SUBTRACTION_BAND, ~32%), as the
  paper's new tasks are partly solved by its base models, and
- never writes a letter: no training target has one.

(A first variant, `--no-partial-subtraction`, stops after phase 1 with plain subtraction at ~0%; on it SDFT and
SFT both wiped out the old skills, see `recipes/sdft_continual/README.md`.)

So SFT on the demonstrations must teach the model a new way of writing (off-policy targets, as an expert's
demonstrations are for an LLM), while SDFT's teacher, the model reading the demonstration in context, gives
targets in the model's own notation.

Start: the weights of the shipped `tiny/self` (v2; `recipes/make_tiny_self_model.py`), its 18-token embedding
rows copied by token string into a 28-token vocabulary (`build_char_tokenizer(LETTERED_ALPHABET)`); the ten
letter rows are new (normal, std 0.02, seed 0). Then STEPS steps of cross-entropy on the answer tokens and eos
of a fixed mixture (MIXTURE problems of each part per batch, each part from its own seeded stream), AdamW with
warmup and cosine decay (phase 1). The old hint format (`78|...`) is not trained any more. Then phase 2 (below,
PHASE2_*): the same mixture plus plain subtraction, until plain subtraction is partial. Every source of randomness
is pinned, so a rerun on the same software stack gives the same checkpoint. Writes `self_v3/README.md` with the
measured held-out accuracies.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tiny_models import encode, forced_exact_match, greedy_exact_match, save  # noqa: E402
from tiny_training import (  # noqa: E402
    BETAS,
    MIN_LR_RATIO,
    WEIGHT_DECAY,
    greedy_generation_config,
    make_optimizer,
    pin_everything,
    train_step,
)

from distillkit.data.addition import addition_dataset, addition_example  # noqa: E402
from distillkit.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from distillkit.data.hinted_tasks import (  # noqa: E402
    LETTERED_ALPHABET,
    hinted_prompt,
    maximum_dataset,
    maximum_example,
    subtraction_dataset,
    subtraction_example,
    to_letters,
)

SEED = 0
DIGITS = 3
EVAL_SEED = 1234  # held-out sets; no training stream may use it
EVAL_SIZE = 1000
STREAM_SEEDS = {"addition": 21, "maximum": 24, "addition_lettered": 22, "maximum_lettered": 25,
                "subtraction_lettered": 23, "subtraction": 26}
MIXTURE = {"addition": 48, "maximum": 32, "addition_lettered": 16, "maximum_lettered": 8,
           "subtraction_lettered": 24}
STEPS = 800
LR = 2e-3
# Phase 2 (from the phase-1 weights, a fresh AdamW at constant lr PHASE2_LR, fresh streams PHASE2_SEEDS): the
# same mixture plus PLAIN_SUBTRACTION plain subtraction problems per batch, until the first evaluation (every
# PHASE2_EVAL_EVERY steps) with plain subtraction in SUBTRACTION_BAND, both old skills >= OLD_MIN and all
# lettered hints >= HINTED_MIN (rewinding and checking every step if subtraction jumps over the band). The new
# skill is then partial, as the paper's new tasks are for its base models. Phase 2 depends on phase 1 only through
# its weights, so `--phase1 DIR` (a folder written with `--no-partial-subtraction`) gives the same result.
PLAIN_SUBTRACTION = 64
PHASE2_LR = 2e-3
PHASE2_SEEDS = {part: seed + 10 for part, seed in STREAM_SEEDS.items()}
PHASE2_MAX_STEPS = 1500
PHASE2_EVAL_EVERY = 10
SUBTRACTION_BAND = (0.15, 0.40)
OLD_MIN = 0.85
WARMUP_STEPS = 50
EVAL_EVERY = 50
HINTED_MIN = 0.95
SUBTRACTION_MAX = 0.10
MAX_NEW_TOKENS = 5
NUM_THREADS = 1

BASE_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny" / "self"
OUT_DIR = REPO_ROOT / "distillkit" / "assets" / "tiny" / "self_v3"


def lettered_hint(example: dict[str, str]) -> dict[str, str]:
    """The teacher's view: `LETTERED_ANSWER|PROMPT` -> native answer."""
    return {"prompt": hinted_prompt(to_letters(example["completion"]), example["prompt"]),
            "completion": example["completion"]}


def widen(base_dir: Path, tokenizer) -> Qwen2ForCausalLM:
    """The v2 model with its embedding rows moved to `tokenizer`'s ids; new tokens get fresh rows."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    config = Qwen2Config(**{**base.config.to_dict(), "vocab_size": len(tokenizer)})
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).float()
    state = base.state_dict()
    old_emb = state.pop("model.embed_tokens.weight")
    state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"model.embed_tokens.weight", "lm_head.weight"}, (missing, unexpected)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED)
        emb.copy_(torch.randn(emb.shape, generator=gen) * config.initializer_range)
        for token, old_id in base_tok.get_vocab().items():
            emb[tokenizer.convert_tokens_to_ids(token)] = old_emb[old_id]
    model.tie_weights()
    model.generation_config = greedy_generation_config(tokenizer, MAX_NEW_TOKENS)
    return model


class Stream:
    def __init__(self, tokenizer, seeds=STREAM_SEEDS):
        assert EVAL_SEED not in seeds.values()
        self.tokenizer = tokenizer
        self.rngs = {part: random.Random(seed) for part, seed in seeds.items()}

    def example(self, part: str) -> dict[str, str]:
        rng = self.rngs[part]
        a, b = rng.randint(0, 10**DIGITS - 1), rng.randint(0, 10**DIGITS - 1)
        make = {"addition": addition_example, "maximum": maximum_example, "subtraction": subtraction_example}
        task, _, hint = part.partition("_")
        example = make[task](a, b, DIGITS)
        example = {"prompt": example["prompt"], "completion": example["completion"]}
        return lettered_hint(example) if hint else example

    def batch(self, mixture=MIXTURE):
        return encode(self.tokenizer, [self.example(p) for p, n in mixture.items() for _ in range(n)])

    def get_state(self):
        return {part: rng.getstate() for part, rng in self.rngs.items()}

    def set_state(self, state) -> None:
        for part, rng in self.rngs.items():
            rng.setstate(state[part])


def eval_sets():
    def plain(ds):
        return [{"prompt": r["prompt"], "completion": r["completion"]} for r in ds]

    add = plain(addition_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS))
    mx = plain(maximum_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS))
    sub = plain(subtraction_dataset(EVAL_SIZE, seed=EVAL_SEED, digits=DIGITS))
    return {"addition": add, "maximum": mx, "subtraction": sub,
            "addition_lettered": [lettered_hint(r) for r in add],
            "maximum_lettered": [lettered_hint(r) for r in mx],
            "subtraction_lettered": [lettered_hint(r) for r in sub]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--no-partial-subtraction", action="store_true",
                        help="skip phase 2: plain subtraction stays at ~0%% (the first v3 variant; README)")
    parser.add_argument("--phase1", type=Path, help="load the phase-1 weights from this folder instead of training")
    args = parser.parse_args()
    pin_everything(SEED, NUM_THREADS)
    t0 = time.perf_counter()

    tokenizer = build_char_tokenizer(LETTERED_ALPHABET)
    assert len(tokenizer) == 28, len(tokenizer)
    model = widen(BASE_DIR, tokenizer)
    model.train()
    optimizer, scheduler = make_optimizer(model, args.steps, lr=LR, warmup_steps=WARMUP_STEPS)
    sets = eval_sets()
    held_out = {name: encode(tokenizer, ex) for name, ex in sets.items()}
    stream = Stream(tokenizer)

    def show(step, loss):
        acc = {name: forced_exact_match(model, enc) for name, enc in held_out.items()}
        print(f"step {step:4d} loss {loss:.4f} " + " ".join(f"{k} {v:6.1%}" for k, v in acc.items())
              + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
        return acc

    show(0, float("nan"))
    if args.phase1:
        model = AutoModelForCausalLM.from_pretrained(args.phase1, dtype=torch.float32)
        model.train()
        acc = show(args.steps, float("nan"))
    for step in range(1 if args.phase1 is None else args.steps + 1, args.steps + 1):
        loss = train_step(model, optimizer, scheduler, stream.batch())
        if step % EVAL_EVERY == 0 or step == args.steps:
            acc = show(step, loss)
    phase2_steps = 0
    if not args.no_partial_subtraction:
        optimizer = torch.optim.AdamW(model.parameters(), lr=PHASE2_LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
        stream = Stream(tokenizer, PHASE2_SEEDS)
        mixture2 = {**MIXTURE, "subtraction": PLAIN_SUBTRACTION}
        lo, hi = SUBTRACTION_BAND
        every, snapshot = PHASE2_EVAL_EVERY, None
        while True:
            if phase2_steps % every == 0:
                snapshot = copy.deepcopy((phase2_steps, model.state_dict(), optimizer.state_dict(),
                                          stream.get_state()))
            phase2_steps += 1
            if phase2_steps > PHASE2_MAX_STEPS:
                raise SystemExit(f"phase 2 met no evaluation's criteria in {PHASE2_MAX_STEPS} steps")
            loss = train_step(model, optimizer, None, stream.batch(mixture2))  # constant lr: no schedule
            if phase2_steps % every:
                continue
            acc = show(args.steps + phase2_steps, loss)
            ready = (min(acc[k] for k in ("addition_lettered", "maximum_lettered", "subtraction_lettered"))
                     >= HINTED_MIN and min(acc["addition"], acc["maximum"]) >= OLD_MIN)
            if ready and lo <= acc["subtraction"] <= hi:
                break
            if acc["subtraction"] > hi:
                if every == 1:
                    raise SystemExit("plain subtraction jumped over the band even when checked every step")
                print(f"subtraction jumped over the band; rewinding to phase-2 step {snapshot[0]}", flush=True)
                phase2_steps, model_state, optim_state, stream_state = snapshot
                model.load_state_dict(model_state)
                optimizer.load_state_dict(optim_state)
                stream.set_state(stream_state)
                every = 1
    train_seconds = time.perf_counter() - t0
    if min(acc[k] for k in ("addition_lettered", "maximum_lettered", "subtraction_lettered")) < HINTED_MIN:
        raise SystemExit(f"the lettered hint is not read well enough: {acc}")
    if args.no_partial_subtraction and acc["subtraction"] > SUBTRACTION_MAX:
        raise SystemExit(f"plain subtraction reached {acc['subtraction']:.1%} without being trained on")

    out = args.out.resolve()
    size = save(model, tokenizer, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    from datasets import Dataset

    greedy = {name: greedy_exact_match(reloaded, reloaded_tok, Dataset.from_list(ex)) for name, ex in sets.items()}
    rows = "\n".join(f"| `{name}` | {acc:.1%} |" for name, acc in greedy.items())
    (out / "README.md").write_text(f"""# `self_v3`: the tiny self model that reads a lettered demonstration

Made by `python recipes/make_tiny_self_model_v3.py` (its docstring has the details); used by
`recipes/sdft_continual/`. Qwen2, {model.num_parameters():,} parameters, {size / 1e6:.2f} MB, the shape of
`tiny/self`. Tokenizer: `build_char_tokenizer(LETTERED_ALPHABET)`, 28 tokens (`<pad>`, `<eos>`, `<unk>`,
`+-0123456789=>abcdefghij|`).

Started from the weights of `tiny/self` (v2). Phase 1: {args.steps} steps of 128 problems per step ({MIXTURE};
stream seeds {STREAM_SEEDS}), AdamW lr {LR:g} (warmup {WARMUP_STEPS}, cosine to {MIN_LR_RATIO:g}x), weight decay
{WEIGHT_DECAY}. Phase 2: {phase2_steps} steps of the same mixture plus {PLAIN_SUBTRACTION if phase2_steps else 0}
plain subtraction problems, fresh AdamW at constant lr {PHASE2_LR:g}, stream seeds {PHASE2_SEEDS}, stopped at the
first evaluation with plain subtraction in [{SUBTRACTION_BAND[0]:.0%}, {SUBTRACTION_BAND[1]:.0%}], both old skills
>= {OLD_MIN:.0%} and the lettered hints >= {HINTED_MIN:.0%}. 1 thread, deterministic, seed {SEED}. `*_lettered`
is the problem with the answer in letters in context, `hi|123-045=` -> `78<eos>`; no training target has a
letter.

| held-out set (1,000 problems, seed {EVAL_SEED}), greedy exact match | |
|---|---|
{rows}

Wall time of the run that wrote these files (CPU, load-dependent): {train_seconds:.0f} s.
""")
    print(f"saved {out} ({size / 1e6:.2f} MB): greedy {greedy}; {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
