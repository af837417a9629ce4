"""schemathesis against `distillkit serve-teacher`'s own OpenAPI schema (/openapi.json), bounded.

Every check schemathesis has: no 5xx, status codes and answers as the schema says, schema-invalid requests refused
(negative data), schema-valid requests accepted or refused with 422 for a rule the schema cannot state
(tests/schemathesis.toml). It found, before the schema and the checks were made one: more prompts than maxItems and
a temperature of 5e-324 accepted, an empty prompt allowed by the schema but refused, a temperature above the
schema's maximum accepted, 500s for deep nesting and integers >= 2**63.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import start_server, stop_server
from tiny_models import make_tiny_model

pytest.importorskip("schemathesis", reason="schemathesis is in the test extra: pip install -e '.[test]'")
ST = Path(sys.executable).parent / "st"
CONFIG = Path(__file__).parent / "schemathesis.toml"


@pytest.mark.slow  # ~25 s: the slow tier, so the README's test command stays well under 5 minutes
def test_the_server_passes_schemathesis(tmp_path):
    model = make_tiny_model(tmp_path / "teacher", hidden=64, seed=3)
    server = start_server(model, "--max-k", "8", "--max-sequences", "8", "--api-key", "key-1")
    url = server.url
    try:
        done = subprocess.run(
            [str(ST), "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all",
             "-H", "Authorization: Bearer key-1", "--max-examples", "30", "--seed", "1", "--no-color",
             "--request-timeout", "30"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # st keeps a cache in its working folder
    finally:
        stop_server(server)
    assert done.returncode == 0 and "No issues found" in done.stdout, done.stdout[-8000:] + done.stderr[-2000:]
    assert "7 selected / 7 total" in done.stdout
