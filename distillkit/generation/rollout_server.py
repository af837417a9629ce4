"""One running vLLM server as the trainer sees it (`generation=vllm_server`): a start-up check, completions by
token ids, and the development routes a weight push needs.

vLLM serves `/pause`, `/resume`, `/reset_prefix_cache`, `/collective_rpc` and the weight-transfer routes
(`/init_weight_transfer_engine`, `/update_weights`, ...) only when the server was started with
`VLLM_SERVER_DEV_MODE=1`, so the start-up check asks for one of them.
"""

from __future__ import annotations

import time

import requests

from distillkit.errors import ConfigError, ServerFailure

RESTART_HINT = ("Restart it at the same URL (the same model, VLLM_SERVER_DEV_MODE=1 and the same flags), or drop it "
                "from generation.urls.")


class RolloutServerError(ServerFailure):
    """A rollout server stopped answering, or refused a request, during training. The runner checkpoints the step
    as it was before it started and the command exits with code 3, as for a teacher server."""


class RolloutServer:
    """HTTP calls to one vLLM OpenAI-compatible server, with retries on refused connections, timeouts and 5xx."""

    def __init__(self, url: str, timeout: float = 600.0, connect_timeout: float = 5.0, retries: int = 2,
                 backoff: float = 1.0, pool_size: int = 32):
        self.url = url.rstrip("/")
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.retries, self.backoff = int(retries), float(backoff)
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.model: str | None = None  # the served model's name, from /v1/models
        self.max_model_len: int | None = None

    def connect(self) -> None:
        """At start-up, before any weights load: the server answers, serves a model and has the weight routes.
        Every failure is a ConfigError naming the fix."""
        try:
            health = self.session.get(f"{self.url}/health", timeout=(self.connect_timeout, 30))
            models = self.session.get(f"{self.url}/v1/models", timeout=(self.connect_timeout, 30))
        except requests.RequestException as err:
            raise ConfigError(
                f"generation=vllm_server: no vLLM server answers at {self.url} ({type(err).__name__}). Start one, "
                "e.g. `VLLM_SERVER_DEV_MODE=1 vllm serve STUDENT --port PORT` (see docs/generation.md), and list it "
                "in generation.urls."
            ) from err
        if health.status_code != 200 or models.status_code != 200:
            raise ConfigError(f"generation=vllm_server: the server at {self.url} is not healthy (/health: HTTP "
                              f"{health.status_code}, /v1/models: HTTP {models.status_code}).")
        served = models.json().get("data") or []
        if not served:
            raise ConfigError(f"generation=vllm_server: the server at {self.url} serves no model.")
        self.model, self.max_model_len = served[0]["id"], served[0].get("max_model_len")
        if self.session.get(f"{self.url}/is_paused", timeout=(self.connect_timeout, 30)).status_code == 404:
            raise ConfigError(
                f"generation=vllm_server: the server at {self.url} was started without VLLM_SERVER_DEV_MODE=1, so it "
                "has no weight-update routes (/pause, /collective_rpc, /init_weight_transfer_engine) and the "
                "student's weights cannot be pushed into it. Restart it with VLLM_SERVER_DEV_MODE=1 in its "
                "environment."
            )

    def post(self, path: str, body: dict | None = None, params: dict | None = None) -> requests.Response:
        """POST with retries; a server that never answers, or answers 4xx, is a RolloutServerError."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self.session.post(f"{self.url}{path}", json=body, params=params,
                                         timeout=(self.connect_timeout, self.timeout))
            except requests.RequestException as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if resp.status_code < 400:
                return resp
            if resp.status_code < 500:
                raise RolloutServerError(f"the vLLM rollout server at {self.url} refused {path} (HTTP "
                                         f"{resp.status_code}): {resp.text[:500]}")
            last = f"HTTP {resp.status_code}: {resp.text[:500]}"
        raise RolloutServerError(f"the vLLM rollout server at {self.url} did not answer {path} after "
                                 f"{self.retries + 1} tries ({last}). {RESTART_HINT}")

    def complete(self, prompt_ids: list[int], n: int, sampling: dict, seed: int | None) -> list[list[int]]:
        """`n` completions of one prompt (one request, so a group is sampled whole by one server), as token ids."""
        body = {"model": self.model, "prompt": list(prompt_ids), "n": n, "seed": seed, "return_token_ids": True,
                **sampling}
        choices = self.post("/v1/completions", body).json().get("choices") or []
        choices = sorted(choices, key=lambda c: c["index"])
        if len(choices) != n or any(c.get("token_ids") is None for c in choices):
            raise RolloutServerError(f"the vLLM rollout server at {self.url} answered {len(choices)} completions "
                                     f"with token ids for n={n}; generation=vllm_server needs vLLM >= 0.10 "
                                     "(`return_token_ids`).")
        return [list(c["token_ids"]) for c in choices]

    def world_size(self) -> int:
        """The server's workers (tensor x pipeline x data parallel): the NCCL group is these plus the trainer."""
        try:
            resp = self.session.get(f"{self.url}/get_world_size", timeout=(self.connect_timeout, 30))
            resp.raise_for_status()
        except requests.RequestException as err:
            raise RolloutServerError(f"the vLLM rollout server at {self.url} did not say its world size: {err}") from err
        return int(resp.json()["world_size"])

    def close(self) -> None:
        self.session.close()
