"""A teacher server that freezes during a training run: the run ends within `teacher.deadline` with exit code 3,
and its message says whether a checkpoint was written (none when the teacher freezes in the starting evaluation;
one at the last step when it freezes in the final evaluation, from which a rerun finishes the run).

A real `distillkit serve-teacher` answers behind a loopback proxy that, after a given number of scoring requests,
accepts connections and never answers them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from test_serve import start_server, stop_server


class FreezingProxy:
    """Relays GETs, and the first `answer` POSTs, to the teacher; holds every later POST open without answering."""

    def __init__(self, target: str, answer: int):
        self.target, self.answer, self.posts = target, answer, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        stream = conn.makefile("rb")
        while True:
            line = stream.readline()
            if not line:
                return
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while (header := stream.readline()) not in (b"\r\n", b""):
                name, value = header.decode().split(":", 1)
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers.get("content-length", 0)))
            if method == "POST":
                self.posts += 1
                if self.posts > self.answer:
                    self.held.append(conn)  # accepted, never answered
                    return
            resp = requests.request(method, self.target + path, data=body,
                                    headers={k: v for k, v in headers.items() if k in ("content-type", "accept")})
            conn.sendall(f"HTTP/1.1 {resp.status_code} OK\r\nContent-Type: {resp.headers['content-type']}\r\n"
                         f"Content-Length: {len(resp.content)}\r\n\r\n".encode() + resp.content)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def teacher_url(tiny_pair):
    server = start_server(tiny_pair[1])
    url = server.url
    yield url
    stop_server(server)


def train(tiny_pair, url: str, out, steps: int = 3, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "distillkit.cli", f"model.student={tiny_pair[0]}", "teacher=remote",
               f"teacher.url={url}", "teacher.deadline=3", "loss=topk", "loss.k=8", "data.num_train=64",
               "data.num_eval=8", "train.batch_size=4", f"train.steps={steps}", "train.save_every=0",
               "train.eval_every=0", "train.max_completion_length=5", "tracking.enabled=false",
               f"hydra.run.dir={out}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_freeze_in_the_starting_evaluation_says_no_checkpoint_was_written(tiny_pair, teacher_url, tmp_path):
    proxy = FreezingProxy(teacher_url, answer=0)
    try:
        started = time.monotonic()
        done = train(tiny_pair, proxy.url, tmp_path)
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert done.returncode == 3, done.stderr[-3000:]
    assert "did not answer within the client's deadline of 3s" in done.stderr
    assert "No checkpoint was written" in done.stderr and "A checkpoint was written" not in done.stderr
    assert not list((tmp_path / "checkpoints").glob("step_*"))
    assert elapsed < 60  # start-up plus one 3 s deadline, not the ~20 minutes of the read timeouts and retries


@pytest.mark.slow
def test_a_freeze_in_the_final_evaluation_keeps_every_step(tiny_pair, teacher_url, tmp_path):
    """Every scoring request but the last (the final evaluation's, one batch of 8 rows) is answered."""
    counting = FreezingProxy(teacher_url, answer=10**9)
    try:
        full = train(tiny_pair, counting.url, tmp_path / "full")
    finally:
        counting.close()
    assert full.returncode == 0, full.stderr[-3000:]
    proxy = FreezingProxy(teacher_url, answer=counting.posts - 1)
    try:
        done = train(tiny_pair, proxy.url, tmp_path)
    finally:
        proxy.close()
    assert done.returncode == 3, done.stderr[-3000:]
    assert "A checkpoint was written at step 3; rerun the same command to resume." in done.stderr
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == ["step_00000003"]
    assert not (tmp_path / "final_model").exists()
    again = train(tiny_pair, teacher_url, tmp_path)  # the teacher answers again: the run ends without a step
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed from" in again.stdout and "step 3" in again.stdout
    assert (tmp_path / "final_model" / "model.safetensors").exists()
