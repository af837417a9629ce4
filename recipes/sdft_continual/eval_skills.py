"""Score a model on the new skill and the old skills of the SDFT continual-learning recipe.

    python recipes/sdft_continual/eval_skills.py MODEL_OR_RUN_DIR [...] [--out skills.json]

A path is a model folder (`final_model`, or a `save_pretrained` folder), or a distillkit run folder: then its
`checkpoints/step_*` (weights loaded into the model of `--base`) and `final_model` are all scored, in step order,
which gives SDFT's curve.

Held-out sets: 1,000 problems each, seed 1234 (no training stream uses it); greedy decoding, at most 5 new
tokens; an answer is the text before `<eos>` (none when no `<eos>` came).

- `sub_native`: plain `a-b=` answered in the model's own notation (digits), exact match.
- `sub_letters`: answered in the demonstration's notation (letters, `78` -> `hi`), exact match.
- `sub_value`: right in either notation (`from_letters(answer) == answer digits`, mixed spellings included):
  the new-skill accuracy used for the comparison, fair to SFT, which learns to write letters.
- `add_native`, `max_native`: the old skills (plain `a+b=`, plain `a>b=`), exact match in digits, as the base
  model answers them; `add_value`, `max_value`: right in either notation (lenient: letters spilled onto the
  old skill are not counted as forgetting).
- `sub_hinted`: `hi|a-b=` -> `78` (the demonstration in context; the SDFT teacher's own accuracy).
- `kl_sub`, `kl_add`, `kl_max`: how far the model moved from the base model (`--base`) on each task's
  prompts: KL(model || base) of the next-token distribution at the first answer position, mean over the
  held-out prompts, in nats (the quantity "RL's Razor" ties forgetting to, at one position).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillkit.checkpoint import load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from distillkit.data.addition import addition_dataset  # noqa: E402
from distillkit.data.hinted_tasks import (  # noqa: E402
    from_letters,
    hinted_prompt,
    maximum_dataset,
    subtraction_lettered_dataset,
    to_letters,
)

BASE_MODEL = REPO_ROOT / "distillkit" / "assets" / "tiny" / "self_v3"
EVAL_SEED = 1234
EVAL_SIZE = 1000
MAX_NEW_TOKENS = 5


def held_out_sets() -> dict[str, list[dict[str, str]]]:
    sub = [dict(r) for r in subtraction_lettered_dataset(EVAL_SIZE, seed=EVAL_SEED)]
    return {
        "sub": sub,
        "add": [dict(r) for r in addition_dataset(EVAL_SIZE, seed=EVAL_SEED)],
        "max": [dict(r) for r in maximum_dataset(EVAL_SIZE, seed=EVAL_SEED)],
        "sub_hinted": [{"prompt": hinted_prompt(r["privileged_context"], r["prompt"]), "completion": r["completion"]}
                       for r in sub],
    }


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], batch_size: int = 500) -> list[str | None]:
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    answers: list[str | None] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            answers.append(tokenizer.decode(row[: row.index(eos)]) if eos in row else None)
    model.train(was_training)
    return answers


@torch.no_grad()
def first_token_kl(model, base, tokenizer, prompts: list[str]) -> float:
    """Mean KL(model || base) of the next-token distribution after each prompt (left-padded batch)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    logp = torch.log_softmax(model(**enc).logits[:, -1].float(), -1)
    logq = torch.log_softmax(base(**enc).logits[:, -1].float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean().item()


def score(model, tokenizer, sets: dict | None = None, base=None) -> dict[str, float]:
    sets = sets or held_out_sets()
    result: dict[str, float] = {}
    was_training = model.training
    model.eval()
    if base is not None:
        for name in ("sub", "add", "max"):
            result[f"kl_{name}"] = first_token_kl(model, base, tokenizer, [r["prompt"] for r in sets[name]])
    model.train(was_training)
    for name, rows in sets.items():
        answers = greedy_answers(model, tokenizer, [r["prompt"] for r in rows])
        truth = [r["completion"] for r in rows]
        n = len(rows)
        native = sum(a == t for a, t in zip(answers, truth, strict=True)) / n
        if name == "sub_hinted":
            result[name] = native
            continue
        result[f"{name}_native"] = native
        result[f"{name}_value"] = sum(a is not None and from_letters(a) == t
                                      for a, t in zip(answers, truth, strict=True)) / n
        if name == "sub":
            result["sub_letters"] = sum(a == to_letters(t) for a, t in zip(answers, truth, strict=True)) / n
        result[f"{name}_letter_answers"] = sum(a is not None and bool(re.search("[a-j]", a)) for a in answers) / n
    return result


def models_in(path: Path, base: Path):
    """(step or None, model, tokenizer) for a model folder, or for every checkpoint and the final model of a run."""
    if (path / "config.json").exists():
        yield None, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
        return
    tokenizer = AutoTokenizer.from_pretrained(base)
    for ckpt in sorted((path / "checkpoints").glob("step_*")):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        yield int(ckpt.name.split("_")[1]), model, tokenizer
    final = path / "final_model"
    if final.exists():
        yield -1, AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32), AutoTokenizer.from_pretrained(final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+")
    parser.add_argument("--base", type=Path, default=BASE_MODEL, help="the model a run's checkpoints belong to")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = held_out_sets()
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    rows = []
    for path in args.paths:
        for step, model, tokenizer in models_in(path, args.base):
            row = {"path": str(path), "step": step, **score(model, tokenizer, sets, base)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
