"""`generation=vllm_server` on this machine: weight-push time and rollout throughput against one running server.

    VLLM_SERVER_DEV_MODE=1 VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server \
        --model MODEL --port 8000 --dtype float32 --max-model-len 256 --enforce-eager &
    python benchmarks/bench_vllm_server.py --model MODEL --url http://127.0.0.1:8000

Reports the seconds of one push (median of --pushes; the checkpoint transfer on CPU, NCCL on a GPU), and the
completion tokens per second of `generate` (prompts x n) through the server and through HF `generate` on the
same weights in this process, after checking that their greedy completions agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillkit.generation import HFGenerator, VLLMServerGenerator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--pushes", type=int, default=5)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    opts = p.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    server = VLLMServerGenerator([opts.url], max_completion_length=opts.tokens).bind(model, tokenizer)
    hf = HFGenerator(max_completion_length=opts.tokens).bind(model, tokenizer)
    prompts = [tokenizer(f"Question {i}: what is {i} plus {2 * i}? Answer:")["input_ids"] for i in range(opts.prompts)]
    pushes = []
    for _ in range(opts.pushes):
        t0 = time.perf_counter()
        server.push_weights()
        pushes.append(time.perf_counter() - t0)
    greedy_match = sum(a == b for a, b in zip(server.generate(prompts, greedy=True), hf.generate(prompts, greedy=True),
                                              strict=True)) / len(prompts)
    rates = {}
    for name, gen in (("server", server), ("hf", hf)):
        t0 = time.perf_counter()
        out = gen.generate(prompts, n=opts.n)
        rates[name] = sum(len(c) for c in out) / (time.perf_counter() - t0)
    server.close()
    print(json.dumps({
        "model": opts.model, "parameters": sum(p.numel() for p in model.parameters()),
        "push_seconds_median": statistics.median(pushes), "push_seconds": [round(x, 4) for x in pushes],
        "greedy_match_fraction": greedy_match, "completion_tokens_per_s": rates,
        "prompts": opts.prompts, "n": opts.n, "max_tokens": opts.tokens, "torch_threads": torch.get_num_threads(),
    }, indent=1))


if __name__ == "__main__":
    main()
