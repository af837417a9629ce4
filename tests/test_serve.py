"""`distillkit serve-teacher`: a real server process on loopback, serving a tiny model.

Checked: /health and /info, the vLLM-shaped /v1/completions through the official `openai` client, /v1/score
(binary and JSON) against the same model run in process, the documented binary layout, dynamic batching under
concurrent clients, every refusal (4xx, and the server stays up), and the API key.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import server_process
import torch
from server_process import ServerProcess, free_port
from tiny_models import make_tiny_model

from distillkit.batch import collate
from distillkit.losses.base import TeacherRequest
from distillkit.serve.client import TeacherClient
from distillkit.serve.protocol import tokenizer_hash
from distillkit.teachers.live import LiveTeacher

API_KEY = "test-key-123"
VOCAB = 16  # the character tokenizer of tests/tiny_models.py
CONTEXT = 64


def start_server(model_dir: Path, *args: str, env: dict | None = None, timeout: float = 150.0,
                 port: int | None = None) -> ServerProcess:
    """Start `python -m distillkit.cli serve-teacher` on a (free) loopback port and wait for /health."""
    port = port or free_port()
    server = server_process.start(
        [sys.executable, "-m", "distillkit.cli", "serve-teacher", "--model", str(model_dir), "--port", str(port),
         "--log-level", "warning", *args], port, model_dir.parent / f"server-{port}.log", env)
    server_process.wait_healthy(server, timeout)
    return server


def stop_server(server: ServerProcess) -> None:
    server_process.stop(server, grace=15)


def live_teacher(model_dir: Path, vocab_size: int = VOCAB) -> LiveTeacher:
    teacher = LiveTeacher(model=str(model_dir))
    teacher.setup(torch.device("cpu"), vocab_size, None)
    return teacher


def random_rows(seed: int, n: int = 6, vocab: int = VOCAB) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (int(m),), generator=g).tolist() for m in torch.randint(1, 12, (n,), generator=g)]
    comps = [torch.randint(3, vocab, (int(m),), generator=g).tolist() for m in torch.randint(1, 9, (n,), generator=g)]
    return prompts, comps


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serve") / "teacher", hidden=64, seed=3)


@pytest.fixture(scope="module")
def server(model_dir):
    server = start_server(model_dir, "--api-key", API_KEY, "--max-k", "8", "--batch-window-ms", "30",
                          "--max-body-bytes", "65536", "--max-sequences", "8")
    yield server.url
    stop_server(server)


@pytest.fixture(scope="module")
def live(model_dir) -> LiveTeacher:
    return live_teacher(model_dir)


@pytest.fixture
def auth() -> dict:
    return {"Authorization": f"Bearer {API_KEY}"}


def client(url: str, protocol: str = "binary", **kwargs) -> TeacherClient:
    return TeacherClient(url, api_key=API_KEY, protocol=protocol, retries=0, **kwargs)


def test_health_info_and_api_key(server, model_dir, auth):
    assert requests.get(server + "/health").json() == {"status": "ok"}  # open, for liveness probes
    missing = requests.get(server + "/info")
    assert missing.status_code == 401 and "API key" in missing.json()["error"]["message"]
    assert requests.get(server + "/info", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert requests.post(server + "/v1/score", json={}).status_code == 401
    info = requests.get(server + "/info", headers=auth)
    assert info.status_code == 200
    info = info.json()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert info["model"] == str(model_dir)
    assert info["vocab_size"] == VOCAB and info["tokenizer_vocab_size"] == len(tokenizer)
    assert info["tokenizer_hash"] == tokenizer_hash(tokenizer.get_vocab())
    assert info["max_k"] == 8 and info["context_length"] == CONTEXT
    assert {"forwards", "requests"} <= set(info["stats"])


def test_openai_client_gets_vllm_shaped_prompt_logprobs(server, live):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
    model = api.models.list().data[0].id
    prompt = [5, 9, 3, 12, 7, 7, 14, 4]
    out = api.completions.create(model=model, prompt=prompt, max_tokens=1, echo=True, logprobs=5,
                                 extra_body={"prompt_logprobs": 8})
    choice = out.choices[0]
    prompt_logprobs = choice.model_extra["prompt_logprobs"]
    assert len(prompt_logprobs) == len(prompt) and prompt_logprobs[0] is None
    ref = live.score(collate([prompt[:1]], [prompt[1:]], 0), TeacherRequest("topk", 1.0, 8))
    for t in range(1, len(prompt)):
        entry = prompt_logprobs[t]
        assert str(prompt[t]) in entry and len(entry) in (8, 9)
        top = sorted(((int(tid), v) for tid, v in entry.items() if v["rank"] <= 8), key=lambda x: x[1]["rank"])
        assert [tid for tid, _ in top] == ref.topk_ids[t - 1].tolist()
        assert np.allclose([v["logprob"] for _, v in top], ref.topk_logprobs[t - 1].numpy(), atol=1e-4)
        assert entry[str(prompt[t])]["logprob"] == pytest.approx(ref.token_logprobs[t - 1].item(), abs=1e-4)
        assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in entry.values())
    # echo=True with logprobs=5: OpenAI's text-keyed logprobs over prompt + 1 generated token
    assert len(choice.logprobs.tokens) == len(prompt) + 1 and choice.logprobs.token_logprobs[0] is None
    assert out.usage.prompt_tokens == len(prompt) and out.usage.completion_tokens == 1
    # a batch of prompts (list of lists) and max_tokens=0
    batch = api.completions.create(model=model, prompt=[prompt[:4], prompt], max_tokens=0, echo=True,
                                   extra_body={"prompt_logprobs": 2})
    assert [len(c.model_extra["prompt_logprobs"]) for c in batch.choices] == [4, len(prompt)]
    assert batch.usage.completion_tokens == 0
    # greedy continuation, one forward per token: the first generated token is the teacher's argmax
    greedy = api.completions.create(model=model, prompt=prompt, max_tokens=3, logprobs=2)
    steps = greedy.usage.completion_tokens
    assert 1 <= steps <= 3 and len(greedy.choices[0].logprobs.tokens) == steps
    with torch.no_grad():
        ref_next = live.parts.head.weight @ live.parts.hidden_states(
            torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long))[0, -1]
    assert greedy.choices[0].logprobs.token_logprobs[0] == pytest.approx(
        torch.log_softmax(ref_next, -1).max().item(), abs=1e-4)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="someone-else", prompt=prompt, max_tokens=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_score_matches_in_process_teacher(server, live, protocol, temperature):
    prompts, comps = random_rows(seed=1)
    batch = collate(prompts, comps, 0)
    ref = live.score(batch, TeacherRequest("topk", temperature, 5))
    sequences = [p + c for p, c in zip(prompts, comps, strict=True)]
    lengths = [len(p) for p in prompts]
    for kwargs in ({}, {"max_tokens_per_request": 7, "max_concurrency": 3}):  # one request; many tiny chunks
        lp, ids, tok = client(server, protocol, **kwargs).score(sequences, lengths, 5, temperature)
        assert lp.dtype == torch.float32 and ids.dtype == torch.int64 and tok.dtype == torch.float32
        assert lp.shape == ids.shape == (batch.num_completion_tokens, 5)
        torch.testing.assert_close(lp, ref.topk_logprobs, atol=1e-4, rtol=0)
        assert torch.equal(ids, ref.topk_ids)
        torch.testing.assert_close(tok, ref.token_logprobs, atol=1e-4, rtol=0)


def test_binary_and_json_carry_the_same_fields(server, auth):
    body = {"sequences": [[5, 6, 7, 8], [9, 10, 11]], "prompt_lengths": [2, 1], "k": 3, "temperature": 0.9}
    as_json = requests.post(server + "/v1/score", json=body, headers=auth).json()
    binary = requests.post(server + "/v1/score", json=body, headers={**auth, "Accept": "application/octet-stream"})
    assert binary.headers["content-type"] == "application/octet-stream"
    raw = binary.content
    # the documented layout, read by hand: magic, uint32 header size, JSON header, then the arrays
    assert raw[:4] == b"DKR1"
    (size,) = struct.unpack_from("<I", raw, 4)
    assert size % 4 == 0
    header = json.loads(raw[8 : 8 + size])
    n, k = header["rows"], header["k"]
    assert (n, k) == (4, 3) and header["rows_per_sequence"] == [2, 2]
    topk_lp = np.frombuffer(raw, "<f4", n * k, 8 + size).reshape(n, k)
    topk_ids = np.frombuffer(raw, "<i4", n * k, 8 + size + 4 * n * k).reshape(n, k)
    token_lp = np.frombuffer(raw, "<f4", n, 8 + size + 8 * n * k)
    assert len(raw) == 8 + size + 4 * (2 * n * k + n)
    assert {"rows", "k", "temperature", "rows_per_sequence", "topk_logprobs", "topk_ids", "token_logprobs"} <= set(
        as_json)
    assert np.array_equal(topk_lp, np.array(as_json["topk_logprobs"], np.float32))
    assert np.array_equal(topk_ids, np.array(as_json["topk_ids"]))
    assert np.array_equal(token_lp, np.array(as_json["token_logprobs"], np.float32))
    # a hand-made binary request gets the same answer
    lengths, prompts, tokens = [4, 3], [2, 1], [5, 6, 7, 8, 9, 10, 11]
    head = json.dumps({"num_sequences": 2, "num_tokens": 7, "k": 3, "temperature": 0.9}).encode()
    head += b" " * (-len(head) % 4)
    request = b"DKQ1" + struct.pack("<I", len(head)) + head + np.array(lengths + prompts + tokens, "<i4").tobytes()
    again = requests.post(server + "/v1/score", data=request,
                          headers={**auth, "Content-Type": "application/octet-stream"})
    assert again.status_code == 200 and again.content == raw


def test_concurrent_clients_get_their_own_rows_and_are_batched(server, live, auth):
    n_clients = 16
    jobs = []
    for c in range(n_clients):
        prompts, comps = random_rows(seed=100 + c, n=3)
        ref = live.score(collate(prompts, comps, 0), TeacherRequest("topk", 1.0, 4))
        jobs.append(([p + q for p, q in zip(prompts, comps, strict=True)], [len(p) for p in prompts], ref))
    before = requests.get(server + "/metrics", headers=auth).json()
    barrier, results, errors = threading.Barrier(n_clients), [None] * n_clients, []

    def work(c):
        try:
            sequences, lengths, _ = jobs[c]
            one = client(server)
            barrier.wait()
            results[c] = one.score(sequences, lengths, 4, 1.0)
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    after = requests.get(server + "/metrics", headers=auth).json()
    for (_, _, ref), (lp, ids, tok) in zip(jobs, results, strict=True):
        torch.testing.assert_close(lp, ref.topk_logprobs, atol=1e-4, rtol=0)
        assert torch.equal(ids, ref.topk_ids)
        torch.testing.assert_close(tok, ref.token_logprobs, atol=1e-4, rtol=0)
    requests_served = after["requests"] - before["requests"]
    forwards = after["forwards"] - before["forwards"]
    assert requests_served == n_clients
    assert forwards < requests_served, (forwards, requests_served)


GOOD = {"sequences": [[5, 6, 7, 8], [9, 10, 11]], "prompt_lengths": [2, 1], "k": 3, "temperature": 1.0}


@pytest.mark.parametrize("change, status, words", [
    # 422: the schema holds but a rule it cannot state does not
    ({"prompt_lengths": [2]}, 422, "prompt_lengths has 1"),
    ({"prompt_lengths": [2, 4]}, 422, "prompt_lengths[1]=4 lies outside [0, 3]"),
    ({"prompt_lengths": [0, 1]}, 422, "prompt_lengths[0]=0"),
    ({"k": 5, "vocab_size": 4}, 422, "k=5 exceeds the vocabulary of 4 tokens"),
    ({"sequences": [[5, 6, 7, 8], [9, 10, 11]], "vocab_size": 10}, 422, "token id 10 lies outside the vocabulary [0, 10)"),
    # 400: the schema does not hold
    ({"prompt_lengths": [-1, 1]}, 400, "prompt_lengths[0]=-1"),
    ({"sequences": [[5] * (CONTEXT + 1), [9, 10]]}, 400, "sequences[0] must be a list of 0 to 64 token ids"),
    ({"k": 0}, 400, "k=0 must be an integer in [1, 8]"),
    ({"k": 9}, 400, "--max-k is 8"),
    ({"sequences": [[5, 6, 16, 8], [9, 10, 11]]}, 400, "sequences[0][2]=16: a token id must be an integer in [0, 16)"),
    ({"sequences": [[5, 6, 7, 8], [9, -1, 11]]}, 400, "sequences[1][1]=-1"),
    ({"temperature": 0}, 400, "temperature=0 must be a number in [0.0001, 10000]"),
    ({"temperature": "hot"}, 400, "temperature='hot'"),
    ({"temperature": 1e-38}, 400, "temperature=1e-38"),  # was a 200 of NaN log-probs
    ({"temperature": 5e-324}, 400, "temperature=5e-324"),
    ({"temperature": 10**400}, 400, "temperature=1000000000"),  # was a 500 (OverflowError)
    ({"temperature": 10001}, 400, "temperature=10001"),
    ({"k": 2**63}, 400, "k=9223372036854775808"),  # was a 500 (OverflowError)
    ({"prompt_lengths": [2**63, 1]}, 400, "prompt_lengths[0]=9223372036854775808"),
    ({"sequences": [[5, 6.5, 7], [9, 10, 11]]}, 400, "sequences[0][1]=6.5: a token id must be"),
    ({"sequences": [[5, 2**64, 7], [9, 10, 11]]}, 400, "sequences[0][1]=18446744073709551616"),
    ({"vocab_size": 17}, 400, "vocab_size=17"),
])
def test_bad_score_requests_are_refused_and_the_server_stays_up(server, auth, change, status, words):
    resp = requests.post(server + "/v1/score", json={**GOOD, **change}, headers=auth)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]["message"]
    assert requests.get(server + "/health").status_code == 200


def test_bad_binary_and_oversized_requests(server, auth):
    octet = {**auth, "Content-Type": "application/octet-stream"}
    head = json.dumps({"num_sequences": 2, "num_tokens": 7, "k": 3, "temperature": 1.0}).encode()
    frame = b"DKQ1" + struct.pack("<I", len(head)) + head
    short = requests.post(server + "/v1/score", data=frame + np.array([4, 3, 2, 1, 5, 6], "<i4").tobytes(),
                          headers=octet)
    assert short.status_code == 400 and "announces" in short.json()["error"]["message"]
    wrong_sum = frame + np.array([4, 2, 2, 1, 5, 6, 7, 8, 9, 10, 11], "<i4").tobytes()
    resp = requests.post(server + "/v1/score", data=wrong_sum, headers=octet)
    assert resp.status_code == 400 and "lengths sum to 6" in resp.json()["error"]["message"]
    assert requests.post(server + "/v1/score", data=b"junk", headers=octet).status_code == 400
    assert requests.post(server + "/v1/score", data=b"{not json", headers={**auth, "Content-Type": "application/json"}
                         ).status_code == 400
    for raw, words in ((b'{"sequences": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "too deeply"),  # was a 500
                       (b'{"k": ' + b"7" * 5000 + b"}", "not valid JSON")):  # over Python's 4,300 digits: was a 500
        for path in ("/v1/score", "/v1/completions", "/get_sequence_logprobs/"):
            resp = requests.post(server + path, data=raw, headers={**auth, "Content-Type": "application/json"})
            assert resp.status_code == 400 and words in resp.json()["error"]["message"], (path, resp.text[:200])
    big = {**GOOD, "sequences": [[5] * 20] * 2000, "prompt_lengths": [1] * 2000}
    too_big = requests.post(server + "/v1/score", json=big, headers=auth)
    assert too_big.status_code == 413 and "--max-body-bytes=65536" in too_big.json()["error"]["message"]
    chunked = requests.post(server + "/v1/score", data=iter([json.dumps(big).encode()] * 2),  # no Content-Length
                            headers={**auth, "Content-Type": "application/json"})
    assert chunked.status_code == 413
    for body, status in (({"model": "x", "prompt": [1, 2]}, 404), ({"prompt": [1, 99], "max_tokens": 0}, 400),
                         ({"prompt": [1, 2], "prompt_logprobs": 9}, 400), ({"prompt": [5] * 60, "max_tokens": 5}, 422),
                         ({"prompt": []}, 400), ({"prompt": ""}, 400), ({"prompt": [[]]}, 400),
                         ({"prompt": [[5, 6]] * 9}, 400),  # more prompts than --max-sequences=8
                         ({"prompt": [5, 6], "temperature": 5e-324}, 400),
                         ({"prompt": [5, 6], "temperature": 10**400}, 400), ({"prompt": [5, 6], "n": 2**64}, 400)):
        resp = requests.post(server + "/v1/completions", json=body, headers=auth)
        assert resp.status_code == status and resp.json()["error"]["message"], (body, resp.text)
    assert requests.get(server + "/health").status_code == 200
    # and it still scores
    assert requests.post(server + "/v1/score", json=GOOD, headers=auth).json()["rows"] == 4


# ---------------------------------------------------------------- TRL's teacher protocols


@pytest.fixture(scope="module")
def open_server(model_dir):
    """No API key: TRL's clients send none."""
    server = start_server(model_dir, "--max-k", "8")
    url = server.url
    yield url
    stop_server(server)


@pytest.fixture(scope="module")
def float64_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()


def reference(model, sequence: list[int], temperature: float) -> torch.Tensor:
    """Ground truth: log_softmax(model(input_ids).logits / T) in float64; row t predicts token t + 1."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0]
    return torch.log_softmax(logits / temperature, dim=-1)


TRL_ROWS = ([[5, 9, 3, 12, 7, 7, 14, 4], [3, 4, 5, 6, 7], [11, 12, 13]], [3, 1, 2])


def assert_trl_rows(model, top_lp, top_ids, actual_lp, temperature, k, sequences=TRL_ROWS[0],
                    prompt_lengths=TRL_ROWS[1]):
    """Per sequence and completion position: the top-k ids and log-probs and the actual token's log-prob."""
    assert len(top_lp) == len(sequences)
    for i, (seq, p) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        ref = reference(model, seq, temperature)
        assert len(top_lp[i]) == len(seq) - p
        for t in range(p, len(seq)):
            values, ids = ref[t - 1].topk(k)
            assert list(top_ids[i][t - p][:k]) == ids.tolist()
            np.testing.assert_allclose(top_lp[i][t - p][:k], values.numpy(), atol=2e-5, rtol=0)
            assert actual_lp[i][t - p] == pytest.approx(ref[t - 1, seq[t]].item(), abs=2e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_trl_1_16_vllm_client_against_serve_teacher(open_server, float64_model, monkeypatch, temperature):
    """TRL 1.16's own `VLLMClient.get_sequence_logprobs` (POST /v1/completions with prompt_logprobs and
    temperature), unchanged; the server applies the temperature (vLLM would not)."""
    vllm_client = pytest.importorskip("trl.generation.vllm_client")
    # The client refuses to start without vLLM installed, for its weight-sync parts; scoring needs only requests.
    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)
    client = vllm_client.VLLMClient(base_url=open_server)
    sequences, prompt_lengths = TRL_ROWS
    out = client.get_sequence_logprobs(sequences, prompt_lengths, top_logprobs=5, temperature=temperature,
                                       chunk_size=2)
    actual = [[row[0] for row in seq] for seq in out["actual_logprobs"]]
    assert_trl_rows(float64_model, out["logprobs"], out["logprob_token_ids"], actual, temperature, 5)
    assert out["actual_token_ids"] == [[[t] for t in s[p:]] for s, p in zip(sequences, prompt_lengths, strict=True)]


def trl_1_9_request(url: str, sequences, prompt_lengths, top_logprobs: int, temperature: float, use_binary: bool):
    """The request TRL 1.9's `VLLMClient.get_sequence_logprobs` sends (trl v1.9.0, trl/generation/vllm_client.py,
    lines 578-631: one `session.post` of this JSON to f"{base_url}/get_sequence_logprobs/"), and its decoding of a
    binary answer (`_decode_binary_logprobs`, lines 648-692), reproduced here because that TRL cannot be installed
    beside TRL 1.16."""
    import base64

    resp = requests.post(f"{url}/get_sequence_logprobs/", json={
        "sequences": sequences, "prompt_lengths": prompt_lengths, "top_logprobs": top_logprobs,
        "temperature": temperature, "response_format": "binary" if use_binary else "json"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    if not use_binary:
        return {"logprobs": body["logprobs"], "logprob_token_ids": body["logprob_token_ids"]}
    shape, lengths = body["shape"], body["completion_lengths"]
    lp = np.frombuffer(base64.b64decode(body["logprobs_b64"]), dtype=np.float32).reshape(shape)
    ids = np.frombuffer(base64.b64decode(body["token_ids_b64"]), dtype=np.int32).reshape(shape)
    actual_shape = [shape[0], shape[1], 1]
    actual_lp = np.frombuffer(base64.b64decode(body["actual_logprobs_b64"]), dtype=np.float32).reshape(actual_shape)
    actual_ids = np.frombuffer(base64.b64decode(body["actual_token_ids_b64"]), dtype=np.int32).reshape(actual_shape)
    return {"logprobs": [lp[i, :n, :].tolist() for i, n in enumerate(lengths)],
            "logprob_token_ids": [ids[i, :n, :].tolist() for i, n in enumerate(lengths)],
            "actual_logprobs": [actual_lp[i, :n, :].tolist() for i, n in enumerate(lengths)],
            "actual_token_ids": [actual_ids[i, :n, :].tolist() for i, n in enumerate(lengths)]}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trl_1_9_get_sequence_logprobs_binary_and_json(open_server, float64_model, temperature):
    sequences, prompt_lengths = TRL_ROWS
    binary = trl_1_9_request(open_server, sequences, prompt_lengths, 4, temperature, use_binary=True)
    actual = [[row[0] for row in seq] for seq in binary["actual_logprobs"]]
    assert_trl_rows(float64_model, binary["logprobs"], binary["logprob_token_ids"], actual, temperature, 4)
    assert binary["actual_token_ids"] == [[[t] for t in s[p:]] for s, p in zip(sequences, prompt_lengths, strict=True)]
    # JSON: vLLM's prompt_logprobs by rank, the top-k then the actual token when it is not among them
    as_json = trl_1_9_request(open_server, sequences, prompt_lengths, 4, temperature, use_binary=False)
    for i, (seq, p) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        for t in range(p, len(seq)):
            ids, lps = as_json["logprob_token_ids"][i][t - p], as_json["logprobs"][i][t - p]
            assert ids[:4] == binary["logprob_token_ids"][i][t - p]
            assert len(ids) == (4 if seq[t] in ids[:4] else 5) and seq[t] in ids
            assert lps[ids.index(seq[t])] == pytest.approx(actual[i][t - p], abs=1e-6)
    # the JSON form carries the binary keys as null, as TRL's response model did
    raw = requests.post(f"{open_server}/get_sequence_logprobs/", json={
        "sequences": sequences, "prompt_lengths": prompt_lengths, "top_logprobs": 2}).json()
    assert raw["logprobs_b64"] is None and raw["shape"] is None and len(raw["logprobs"]) == 3


def test_trl_endpoint_defaults_and_refusals(open_server):
    url = f"{open_server}/get_sequence_logprobs/"
    # top_logprobs defaults to TRL's 100, cut to this server's --max-k (8); top_logprobs=0 gives the actual tokens
    default = requests.post(url, json={"sequences": [[5, 6, 7]], "prompt_lengths": [1],
                                       "response_format": "binary"}).json()
    assert default["shape"] == [1, 2, 8] and default["completion_lengths"] == [2]
    zero = requests.post(url, json={"sequences": [[5, 6, 7], []], "prompt_lengths": [1, 0],
                                    "top_logprobs": 0, "response_format": "binary"}).json()
    assert zero["shape"] == [2, 2, 0] and zero["completion_lengths"] == [2, 0]
    for body, status, words in [
        ({"sequences": [[5, 6]], "prompt_lengths": [3]}, 422, "prompt_length=3 which is out of range [0, 2]"),
        ({"sequences": [[5, 6]], "prompt_lengths": [0]}, 422, "prompt_length=0"),
        ({"sequences": [[5, 6]], "prompt_lengths": [1, 1]}, 422, "prompt_lengths has 2"),
        ({"sequences": [[5, 6]], "prompt_lengths": [1], "top_logprobs": 9}, 400, "--max-k is 8"),
        ({"sequences": [[5, 6]], "prompt_lengths": [1], "temperature": 0}, 400, "temperature=0"),
        ({"sequences": [[5, 6]], "prompt_lengths": [1], "response_format": "xml"}, 400, "response_format"),
        ({"sequences": [[5, 99]], "prompt_lengths": [1]}, 400, "sequences[0][1]=99"),
        ({"prompt_lengths": [1]}, 400, "lacks 'sequences'"),
    ]:
        resp = requests.post(url, json=body)
        assert resp.status_code == status and words in resp.json()["error"]["message"], (body, resp.text)


def test_completions_honour_temperature(open_server, float64_model):
    """`temperature` > 0 is the log-probs' temperature (TRL sends its scoring temperature there); 0 means greedy and
    leaves them at 1, as vLLM's are."""
    prompt = TRL_ROWS[0][0]
    for temperature, expected in ((0.5, 0.5), (0, 1.0), (None, 1.0)):
        body = {"prompt": prompt, "max_tokens": 0, "prompt_logprobs": 3, "temperature": temperature}
        entries = requests.post(f"{open_server}/v1/completions", json=body).json()["choices"][0]["prompt_logprobs"]
        ref = reference(float64_model, prompt, expected)
        for t in range(1, len(prompt)):
            assert entries[t][str(prompt[t])]["logprob"] == pytest.approx(ref[t - 1, prompt[t]].item(), abs=2e-5)
