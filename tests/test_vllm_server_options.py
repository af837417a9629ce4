"""`generation=vllm_server` refusals that need no vLLM server, in the main environment: each comes before any
weights load and names its fix. The runs against real servers are in tests/test_vllm_server_generation.py."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading

import pytest

from distillkit.errors import ConfigError
from distillkit.generation.rollout_server import RolloutServer
from distillkit.generation.vllm_server import split_groups
from distillkit.runner import prepare

NO_SERVER = "http://127.0.0.1:9"


def server_cfg(compose_cfg, *overrides: str, urls: str = f"[{NO_SERVER}]"):
    return compose_cfg("generation=vllm_server", f"generation.urls={urls}", "generation.connect_timeout=1",
                       *overrides)


@pytest.mark.parametrize("overrides, words", [
    (["generation.urls=[]"], "needs generation.urls"),
    ([], f"no vLLM server answers at {NO_SERVER}"),
    (["generation.weight_transfer=nccl"], "generation.weight_transfer=checkpoint"),
    (["generation.weight_transfer=ipc"], "is not one of"),
    (["generation.sync_every=0"], "must be >= 1"),
    (["train.async_generation=true", "generation.sync_every=2"], "generation.sync_every=1"),
])
def test_refused_before_loading(compose_cfg, overrides, words):
    with pytest.raises(ConfigError, match=words):
        prepare(server_cfg(compose_cfg, *overrides))


def test_a_sharding_strategy_is_refused(compose_cfg):
    """The first process pushes the whole weights: FSDP2 would have to gather them every step (not built)."""
    with pytest.raises(ConfigError, match="distributed.strategy=fsdp2 is not supported yet: the first process pushes"):
        prepare(server_cfg(compose_cfg, "distributed.strategy=fsdp2"))


def test_async_generation_under_several_processes_is_refused(compose_cfg, monkeypatch):
    """Each push and generation ends with a collective, which a background sampler would interleave."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="several training processes"):
        prepare(server_cfg(compose_cfg, "train.async_generation=true"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_nccl_without_vllm_in_the_trainer_is_refused(compose_cfg, monkeypatch):
    from distillkit.generation.vllm_server import check_rollout_servers

    cfg = server_cfg(compose_cfg)
    with pytest.raises(ConfigError, match=r'pip install "distillkit\[vllm\]"'):
        check_rollout_servers(cfg.generation, on_cuda=True)  # auto is nccl on a GPU


def test_async_generation_is_still_refused_for_the_colocated_engine(compose_cfg):
    with pytest.raises(ConfigError, match="generation=vllm_server"):
        prepare(compose_cfg("generation=vllm", "train.async_generation=true"))


def test_a_server_without_dev_mode_is_refused():
    """An HTTP server that answers /health and /v1/models as vLLM does but has none of the weight routes, as a
    vLLM server started without VLLM_SERVER_DEV_MODE (the real one is slow to start; the check reads only these)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = {"/health": {}, "/v1/models": {"data": [{"id": "m", "max_model_len": 64}]}}.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(json.dumps(body or {}).encode())

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError, match="VLLM_SERVER_DEV_MODE=1"):
            RolloutServer(f"http://127.0.0.1:{httpd.server_address[1]}").connect()
    finally:
        httpd.shutdown()


def test_groups_are_split_over_servers_in_whole_contiguous_blocks():
    assert [list(b) for b in split_groups(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [list(b) for b in split_groups(2, 3)] == [[0], [1], []]
    for prompts in range(12):
        for servers in range(1, 5):
            blocks = split_groups(prompts, servers)
            assert [i for b in blocks for i in b] == list(range(prompts))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
