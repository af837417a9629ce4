"""A server in its own process on loopback: start it, wait until `/health` answers, stop it.

One piece for every test that runs a real server (`distillkit serve-teacher`, vLLM's OpenAI server with TRL's or
distillkit's flags) and for benchmarks/gpu_check.py, which runs the same servers on a GPU machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log: IO[str]  # the server's stdout and stderr, open for reading back
    own_group: bool  # in a process group of its own (signals go to the group: the server's children too)

    def log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-chars:]


def start(command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
          own_group: bool = True) -> ServerProcess:
    """Start `command` (which must listen on `port`). In a new session by default, so `stop` takes the server's
    children with it; `own_group=False` keeps it in the caller's group, so whoever kills that group (the GPU
    check's time limit) kills the server too."""
    log = open(log_path, "w+")  # noqa: SIM115 (closed by stop)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=own_group)
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log, own_group)


def signal_server(server: ServerProcess, signum: int) -> None:
    if server.own_group:
        os.killpg(server.proc.pid, signum)
    else:
        server.proc.send_signal(signum)


def wait_healthy(server: ServerProcess, limit: float, poll: float = 0.2) -> None:
    """Until `GET /health` answers 200; a server that exits or stays silent past `limit` seconds is stopped and
    raises with the end of its log."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log_tail()
            stop(server)
            raise RuntimeError(f"the server exited with code {server.proc.returncode}:\n{tail}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(poll)
    tail = server.log_tail()
    stop(server)
    raise RuntimeError(f"the server at {server.url} did not answer /health within {limit:.0f} s:\n{tail}")


def stop(server: ServerProcess, grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; closes the log."""
    if server.proc.poll() is None:
        signal_server(server, signal.SIGTERM)
        try:
            server.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_server(server, signal.SIGKILL)
            server.proc.wait()
    server.log.close()


def kill(server: ServerProcess) -> None:
    """SIGKILL: a crash, not a shutdown."""
    signal_server(server, signal.SIGKILL)
    server.proc.wait()
