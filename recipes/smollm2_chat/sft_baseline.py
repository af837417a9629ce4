"""Baseline for the SmolLM2 chat recipe: SFT of the same derived student on the same data.

    python recipes/smollm2_chat/sft_baseline.py --student DIR --out DIR [--steps 120] [--batch-size 8]
                                                [--lr 5e-4] [--seed 0] [--train recipes/smollm2_chat/data/train.jsonl]

Cross-entropy on the training file's `completion` (the teacher's own greedy answers, make_data.py: sequence-level
KD, no ground truth) after the prompt wrapped as one user message in the chat template, exactly as distillkit
tokenizes it (`distillkit.data.loading.encode_prompt` / `encode_completion`: the completion's tokens and EOS; loss
on those only). The prompts of each step are the ones the GKD run of the same seed uses
(`distillkit.runner.StepSampler` with seed `--seed`, as `data.seed`), and the optimizer is GKD's: AdamW (0.9, 0.98),
no weight decay, cosine schedule with 5 warmup steps, gradient clipping at 1.0, 1 CPU thread. Plain torch and
transformers otherwise (none of distillkit's training loop). Saves the final model and tokenizer to `--out`, and
the loss curve to `--out/sft_log.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from distillkit.data.loading import as_chat, encode_completion, encode_prompt, load_examples  # noqa: E402
from distillkit.runner import StepSampler  # noqa: E402

BETAS = (0.9, 0.98)
WARMUP_STEPS = 5
MAX_GRAD_NORM = 1.0


def batch_tensors(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on the prompt and the padding)."""
    width = max(len(p) + len(c) for p, c in examples)
    ids, mask, labels = [], [], []
    for prompt, completion in examples:
        seq = prompt + completion
        pad = width - len(seq)
        ids.append(seq + [pad_id] * pad)
        mask.append([1] * len(seq) + [0] * pad)
        labels.append([-100] * len(prompt) + completion + [-100] * pad)
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=Path, default=HERE / "data" / "train.jsonl")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    model.train()
    rows = as_chat(load_examples(str(args.train)))
    encoded = [(encode_prompt(r["prompt"], tokenizer), encode_completion(r["completion"], tokenizer)) for r in rows]
    sampler = StepSampler(len(encoded), args.batch_size, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=BETAS, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, WARMUP_STEPS, args.steps)
    log = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        input_ids, mask, labels = batch_tensors([encoded[i] for i in sampler.indices(step)], pad_id)
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        scored = targets != -100  # the head runs on the completion positions only (49k-row vocabulary)
        logits = model.get_output_embeddings()(hidden[scored]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[scored])  # mean over the completion tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        log.append({"step": step + 1, "loss": loss.item(), "seconds": time.perf_counter() - t0})
        if (step + 1) % 10 == 0 or step + 1 == args.steps:
            print(f"step {step + 1:4d}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f} s", flush=True)
    train_seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "sft_log.json").write_text(json.dumps(
        {"config": {**config, "betas": BETAS, "warmup_steps": WARMUP_STEPS, "max_grad_norm": MAX_GRAD_NORM,
                    "schedule": "cosine", "threads": 1},
         "train_seconds": train_seconds, "log": log}, indent=2) + "\n")
    print(f"SFT done: {args.steps} steps in {train_seconds:.0f} s; model in {args.out}", flush=True)


if __name__ == "__main__":
    main()
