"""The teacher cache: bytes per token against TRL's binary format, and a Hydra sweep on one recording.

    python benchmarks/bench_teacher_cache.py size            # SmolLM2-135M teacher on English text, k = 20 and 100
    python benchmarks/bench_teacher_cache.py sweep --steps 100 --jobs 3

size: the teacher scores 64-token completions of the repository's own docs (natural English); each chunk is encoded
lossless and float16 and decoded back. TRL's binary format (`trl vllm-serve`, `/get_sequence_logprobs/`,
`response_format="binary"`) sends float32 top-k log-probs, int32 top-k ids, a float32 actual log-prob and an int32
actual id per token: 8k + 8 bytes before padding to the batch's longest completion and base64 (x4/3), which are
not counted here, so the ratio is against TRL's smallest form.
sweep: `distillkit -m` over method.beta on the tiny pair, off-policy: the live teacher in every job, against one
`distillkit cache-teacher` recording plus the same sweep on `teacher=cache`. Wall time of each command.
"""

from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def size(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.cache.format import Chunk, decode_chunk, encode_chunk, sequence_key
    from distillkit.real_models import smollm2_folder

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = " ".join(Path(f).read_text() for f in sorted(glob.glob(str(ROOT / "docs" / "*.md"))))
    ids = tokenizer(text)["input_ids"]
    prompt, completion = 32, 64
    seqs = [ids[i : i + prompt + completion] for i in range(0, args.sequences * 96, 96)]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor(seqs)).logits[:, prompt - 1 : -1].float(), -1)
    targets = torch.tensor(seqs)[:, prompt:]
    tokens = targets.numel()
    keys = np.stack([np.frombuffer(sequence_key(s[:prompt], s[prompt:]), np.uint8) for s in seqs])
    print(f"SmolLM2-135M-Instruct, {len(seqs)} sequences x {completion} completion tokens ({tokens} tokens), "
          f"vocabulary {len(tokenizer)}")
    print("| k | encoding | bytes/token | TRL binary bytes/token | ratio | decoded |")
    print("|---|---|---|---|---|---|")
    for k in (20, 100):
        values, top = logp.topk(k, -1)
        chunk = Chunk(keys, np.full(len(seqs), completion, np.int32), values.reshape(tokens, k).numpy(),
                      top.reshape(tokens, k).int().numpy(), logp.gather(-1, targets[..., None]).reshape(tokens).numpy(),
                      targets.reshape(tokens).int().numpy())
        for encoding in ("lossless", "float16"):
            body = encode_chunk(chunk, encoding, len(tokenizer))
            _, back = decode_chunk(body)
            if encoding == "lossless":
                same = (np.array_equal(back.topk_logprobs.view(np.int32), chunk.topk_logprobs.view(np.int32))
                        and np.array_equal(back.token_logprobs.view(np.int32), chunk.token_logprobs.view(np.int32))
                        and np.array_equal(back.topk_ids, chunk.topk_ids))
                decoded = "bit for bit" if same else "DIFFERS"
            else:
                err = np.abs(back.topk_logprobs - chunk.topk_logprobs)
                p_err = np.abs(np.exp(back.topk_logprobs) - np.exp(chunk.topk_logprobs))
                decoded = f"max abs error {err.max():.1e} in log-prob, {p_err.max():.1e} in probability"
            trl = 8 * k + 8
            print(f"| {k} | {encoding} | {len(body) / tokens:.1f} | {trl} | x{len(body) / tokens / trl:.3f} | "
                  f"{decoded} |")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - start


def sweep(args) -> None:
    betas = ",".join(str(round(b, 2)) for b in np.linspace(0, 1, args.jobs))
    common = ["method.lmbda=0", "loss=topk", "loss.k=8", f"train.steps={args.steps}", "train.eval_every=0",
              "tracking.enabled=false", "data.num_train=4000", "data.num_eval=200"]
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "distillkit.cli"]
        live = timed([*cli, "-m", *common, f"method.beta={betas}", f"hydra.sweep.dir={tmp}/live"])
        record = timed([*cli, "cache-teacher", f"{tmp}/cache", *common])
        cached = timed([*cli, "-m", "teacher=cache", f"teacher.path={tmp}/cache", *common, f"method.beta={betas}",
                        f"hydra.sweep.dir={tmp}/cached"])
    print(f"{args.jobs} jobs (method.beta={betas}) x {args.steps} steps, tiny pair, off-policy:")
    print(f"  live teacher in every job: {live:.1f} s")
    print(f"  cache-teacher once: {record:.1f} s, then the sweep on teacher=cache: {cached:.1f} s "
          f"(total {record + cached:.1f} s, x{(record + cached) / live:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("size", "sweep"))
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    size(args) if args.what == "size" else sweep(args)


if __name__ == "__main__":
    main()
