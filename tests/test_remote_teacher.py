"""`teacher=remote` and its client: the same answers as the model in process, strict merging, and faults.

A real `distillkit serve-teacher` process serves a tiny model on loopback; a small http.server in a thread stands
in for a flaky network in front of it (5xx, slowness, a short answer).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
import torch
from test_serve import VOCAB, live_teacher, random_rows, start_server, stop_server
from tiny_models import make_tiny_model

from distillkit.batch import SequenceBatch, collate
from distillkit.losses.base import TeacherRequest
from distillkit.models import ConfigError
from distillkit.serve.client import (
    TeacherClient,
    TeacherDeadlineError,
    TeacherProtocolError,
    TeacherRequestError,
    TeacherUnavailableError,
    merge_chunks,
    plan_chunks,
)
from distillkit.serve.protocol import decode_response, encode_response
from distillkit.teachers.remote import RemoteTeacher
from distillkit.teachers.teacher import TeacherDescription

FAST = {"retries": 1, "backoff": 0.01, "connect_timeout": 0.5}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("remote") / "teacher", hidden=64, seed=5)


@pytest.fixture(scope="module")
def server(model_dir):
    server = start_server(model_dir, "--max-k", "16")
    url = server.url
    yield url
    stop_server(server)


@pytest.fixture(scope="module")
def live(model_dir):
    return live_teacher(model_dir)


def remote(url: str, **kwargs) -> RemoteTeacher:
    teacher = RemoteTeacher(url, **kwargs)
    teacher.setup(torch.device("cpu"), VOCAB)
    return teacher


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_same(out, ref, topk: bool = True):
    torch.testing.assert_close(out.token_logprobs, ref.token_logprobs, atol=1e-4, rtol=0)
    if topk:
        torch.testing.assert_close(out.topk_logprobs, ref.topk_logprobs, atol=1e-4, rtol=0)
        assert torch.equal(out.topk_ids, ref.topk_ids)


@pytest.mark.parametrize("protocol, temperature", [
    ("binary", 1.0), ("binary", 0.7), ("json", 1.0), ("json", 0.7), ("openai", 1.0), ("trl", 1.0), ("trl", 0.7),
])
def test_remote_teacher_matches_the_model_in_process(server, live, protocol, temperature):
    prompts, comps = random_rows(seed=7, n=8)
    batch = collate(prompts, comps, 0)
    for kwargs in ({}, {"max_tokens_per_request": 9, "max_concurrency": 3}):  # whole, and in tiny chunks
        teacher = remote(server, protocol=protocol, **kwargs)
        for signal in ("topk", "token"):
            request = TeacherRequest(signal, temperature, 6)
            out, ref = teacher.score(batch, request), live.score(batch, request)
            assert_same(out, ref, topk=signal == "topk")
            assert out.token_logprobs.shape == (batch.num_completion_tokens,)
    # k above the vocabulary is cut to it, as in process (loss.k=20 on a 16-token vocabulary)
    assert_same(remote(server, protocol=protocol).score(batch, TeacherRequest("topk", temperature, 20)),
                live.score(batch, TeacherRequest("topk", temperature, 20)))


def test_rows_follow_completion_targets_with_holes_and_empty_rows(server, live):
    prompts, comps = random_rows(seed=8, n=4)
    batch = collate(prompts, comps, 0)
    completion = batch.completion_mask.clone()
    completion[1] = False  # a row without completion tokens
    first = int(torch.nonzero(completion[2])[0])
    if completion[2].sum() > 2:
        completion[2, first + 1] = False  # a hole inside a completion
    holey = SequenceBatch(batch.input_ids, batch.attention_mask, completion)
    request = TeacherRequest("topk", 0.8, 4)
    assert_same(remote(server).score(holey, request), live.score(holey, request))


def test_setup_info_tokenizer_and_hidden(server, model_dir, tmp_path):
    from transformers import AutoTokenizer

    teacher = remote(server)
    assert teacher.context_length == 64  # asked from the server's /info
    assert teacher.describe() == TeacherDescription(("topk", "token"), can_generate=False, k_max=16)
    teacher.check_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    from transformers import AutoConfig

    assert teacher.shared_vocab_size(AutoTokenizer.from_pretrained(model_dir), AutoConfig.from_pretrained(model_dir)) == VOCAB
    other = make_tiny_model(tmp_path / "other", alphabet="abcdefghijklm")
    with pytest.raises(ConfigError, match="different tokenizer"):
        teacher.check_tokenizer(AutoTokenizer.from_pretrained(other))
    batch = collate([[5, 6]], [[7, 8]], 0)
    with pytest.raises(ConfigError, match="teacher=remote cannot give what loss=full needs"):
        teacher.score(batch, TeacherRequest("hidden", 1.0))
    with pytest.raises(ConfigError, match="--max-k"):
        remote(server, k_max=3).score(batch, TeacherRequest("topk", 1.0, 4))


def test_openai_protocol_and_temperature(server, live):
    prompts, comps = random_rows(seed=9, n=3)
    batch = collate(prompts, comps, 0)
    with pytest.raises(ValueError, match="temperature 1 only"):
        remote(server, protocol="openai").score(batch, TeacherRequest("topk", 0.7, 4))
    approx = remote(server, protocol="openai", approximate_temperature=True)
    out = approx.score(batch, TeacherRequest("topk", 0.7, 4))
    ref = live.score(batch, TeacherRequest("topk", 0.7, 4))
    assert torch.equal(out.topk_ids, ref.topk_ids)
    assert (out.topk_logprobs >= ref.topk_logprobs - 1e-4).all()  # renormalized over the top-k: never lower
    assert (out.topk_logprobs.exp().sum(-1) <= 1 + 1e-5).all()


def test_unreachable_server_is_a_config_error_at_setup():
    url = closed_port_url()
    started = time.monotonic()
    with pytest.raises(ConfigError, match=url.replace(".", r"\.")) as err:
        RemoteTeacher(url, **FAST).setup(torch.device("cpu"), VOCAB)
    assert "distillkit serve-teacher" in str(err.value)
    assert time.monotonic() - started < 10


def test_client_retries_then_raises_teacher_unavailable():
    url = closed_port_url()
    started = time.monotonic()
    with pytest.raises(TeacherUnavailableError) as err:
        TeacherClient(url, retries=2, backoff=0.01, connect_timeout=0.5).score([[5, 6, 7]], [1], 3, 1.0)
    assert isinstance(err.value, RuntimeError)
    assert url in str(err.value) and "3 attempts" in str(err.value) and "serve-teacher" in str(err.value)
    assert time.monotonic() - started < 10


def chunk(rows: int, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"topk_logprobs": rng.standard_normal((rows, k)).astype(np.float32),
            "topk_ids": rng.integers(0, 10, (rows, k)).astype(np.int32),
            "token_logprobs": rng.standard_normal(rows).astype(np.float32)}


def test_merge_is_strict_and_keeps_order():
    a, b = chunk(2, 3, 0), chunk(4, 3, 1)
    lp, ids, tok = merge_chunks([a, b], [2, 4], 3)
    assert torch.equal(lp, torch.from_numpy(np.concatenate([a["topk_logprobs"], b["topk_logprobs"]])))
    assert ids.dtype == torch.int64 and torch.equal(tok[2:], torch.from_numpy(b["token_logprobs"]))
    missing = {key: v for key, v in b.items() if key != "topk_ids"}
    with pytest.raises(TeacherProtocolError, match="chunk 2 of 2 lacks the field 'topk_ids'"):
        merge_chunks([a, missing], [2, 4], 3)
    with pytest.raises(TeacherProtocolError, match=r"token_logprobs has shape \(3,\) but \(4,\)"):
        merge_chunks([a, {**b, "token_logprobs": b["token_logprobs"][:3]}], [2, 4], 3)
    with pytest.raises(TeacherProtocolError, match=r"shape \(4, 3\) but \(5, 3\)"):
        merge_chunks([a, b], [2, 5], 3)
    with pytest.raises(TeacherProtocolError, match="k=2"):
        merge_chunks([a, b], [2, 4], 2)
    with pytest.raises(TeacherProtocolError, match="1 chunk answers for 2"):
        merge_chunks([a], [2, 4], 3)
    assert plan_chunks([3, 3, 3, 10, 1], 6) == [(0, 2), (2, 3), (3, 4), (4, 5)]


class FlakyProxy:
    """A local HTTP server in front of the teacher: fails the first `failures` requests with `status`, sleeps
    `delay` seconds, lets `edit` change the teacher's answer, or answers /info with 404 (`hide_info`); every
    request is counted."""

    def __init__(self, target: str, failures: int = 0, status: int = 503, delay: float = 0.0, edit=None,
                 hide_info: bool = False):
        self.target, self.failures, self.status, self.delay, self.edit = target, failures, status, delay, edit
        self.hide_info = hide_info
        self.count = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def relay(self, method):
                proxy.count += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(proxy.delay)
                if proxy.hide_info and self.path == "/info":  # as TRL's and vLLM's servers: no /info
                    self.answer(404, b'{"detail":"Not Found"}', "application/json")
                    return
                if proxy.count <= proxy.failures:
                    self.answer(proxy.status, json.dumps({"error": {"message": "overloaded"}}).encode(),
                                "application/json")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                resp = requests.request(method, proxy.target + self.path, data=body, headers=headers)
                content = proxy.edit(resp.content) if proxy.edit else resp.content
                self.answer(resp.status_code, content, resp.headers.get("content-type", ""))

            def answer(self, status, content, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def do_GET(self):
                self.relay("GET")

            def do_POST(self):
                self.relay("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_5xx_is_retried_with_backoff_then_answers(server):
    seqs, lengths = [[5, 6, 7, 8], [9, 10, 11]], [2, 1]
    direct = TeacherClient(server).score(seqs, lengths, 3, 1.0)
    proxy = FlakyProxy(server, failures=2)
    try:
        out = TeacherClient(proxy.url, retries=3, backoff=0.01).score(seqs, lengths, 3, 1.0)
        assert proxy.count == 3
        for x, y in zip(out, direct, strict=True):
            assert torch.equal(x, y)
        proxy.count = 0
        with pytest.raises(TeacherUnavailableError, match="HTTP 503: overloaded"):
            TeacherClient(proxy.url, retries=1, backoff=0.01).score(seqs, lengths, 3, 1.0)
        assert proxy.count == 2
    finally:
        proxy.close()


def test_4xx_is_not_retried_and_carries_the_server_message(server):
    proxy = FlakyProxy(server)
    try:
        with pytest.raises(TeacherRequestError, match="k=17 must be an integer in \\[1, 16\\]") as err:
            TeacherClient(proxy.url, retries=3, backoff=0.01).score([[5, 6, 7]], [1], 17, 1.0)
        assert err.value.status == 400 and proxy.count == 1
    finally:
        proxy.close()


def test_read_timeout_is_retried_then_unavailable(server):
    proxy = FlakyProxy(server, delay=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(TeacherUnavailableError, match="ReadTimeout"):
            TeacherClient(proxy.url, retries=1, backoff=0.01, read_timeout=0.2).score([[5, 6, 7]], [1], 3, 1.0)
        assert proxy.count == 2 and time.monotonic() - started < 5
    finally:
        proxy.close()


def test_an_answer_with_a_missing_row_is_refused(server):
    def drop_last_row(content: bytes) -> bytes:
        out = decode_response(content)
        from distillkit.serve.protocol import ScoreResult

        return encode_response(ScoreResult(out["topk_logprobs"][:-1], out["topk_ids"][:-1],
                                           out["token_logprobs"][:-1], out["rows_per_sequence"], out["k"],
                                           out["temperature"], out["vocab_size"]))

    proxy = FlakyProxy(server, edit=drop_last_row)
    try:
        with pytest.raises(TeacherProtocolError, match="refusing to shift rows"):
            TeacherClient(proxy.url).score([[5, 6, 7, 8], [9, 10, 11]], [2, 1], 3, 1.0)
    finally:
        proxy.close()


def test_trl_protocol_refuses_a_short_answer_and_rescales_without_info(server, live):
    """protocol=trl merges as strictly as the others; against a server without /info (TRL's own, which leaves
    the temperature to vLLM, i.e. at 1) T != 1 is refused unless approximate_temperature."""
    def drop_a_row(content: bytes) -> bytes:
        body = json.loads(content)
        if "completion_lengths" in body:  # the scoring answer, not /info
            body["completion_lengths"][0] -= 1
        return json.dumps(body).encode()

    proxy = FlakyProxy(server, edit=drop_a_row)
    try:
        with pytest.raises(TeacherProtocolError, match="completion_lengths"):
            TeacherClient(proxy.url, protocol="trl").score([[5, 6, 7, 8], [9, 10, 11]], [2, 1], 3, 1.0)
    finally:
        proxy.close()
    prompts, comps = random_rows(seed=11, n=3)
    batch = collate(prompts, comps, 0)
    proxy = FlakyProxy(server, hide_info=True)
    try:
        with pytest.raises(ConfigError, match="temperature 1 only"):
            remote(proxy.url, protocol="trl").score(batch, TeacherRequest("topk", 0.7, 4))
        exact = remote(proxy.url, protocol="trl").score(batch, TeacherRequest("topk", 1.0, 4))
        assert_same(exact, live.score(batch, TeacherRequest("topk", 1.0, 4)))
        approx = remote(proxy.url, protocol="trl", approximate_temperature=True).score(
            batch, TeacherRequest("topk", 0.7, 4))
        ref = live.score(batch, TeacherRequest("topk", 0.7, 4))
        assert torch.equal(approx.topk_ids, ref.topk_ids)
        assert (approx.topk_logprobs >= ref.topk_logprobs - 1e-4).all()  # renormalized over the top-k: never lower
    finally:
        proxy.close()


def test_a_frozen_server_costs_at_most_the_deadline():
    """A loopback socket that accepts connections and never answers: one score call ends within the client's
    deadline, whatever the read timeout and retries say."""
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)
        url = f"http://127.0.0.1:{frozen.getsockname()[1]}"
        client = TeacherClient(url, read_timeout=300, retries=3, backoff=0.5, deadline=2.0)
        started = time.monotonic()
        with pytest.raises(TeacherDeadlineError, match="deadline of 2s") as err:
            client.score([[5, 6, 7]], [1], 3, 1.0)
        assert 1.9 < time.monotonic() - started < 4
        assert "teacher.deadline" in str(err.value)
