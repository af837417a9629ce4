"""Bad input is refused before any model loads, with a message that names the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from tiny_models import make_tiny_model

from distillkit.models import ConfigError
from distillkit.runner import prepare


def refuse(cfg, *fragments: str) -> str:
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    for fragment in fragments:
        assert fragment in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("override", ["method.lmbda=1.5", "method.beta=-0.1", "method.lmbda=-1"])
def test_out_of_range_lmbda_or_beta(compose_cfg, override):
    refuse(compose_cfg(override), override.split("=")[0], "[0, 1]")


def test_sampled_loss_needs_reverse_kl(compose_cfg):
    refuse(compose_cfg("loss=sampled", "method.beta=0.5"), "method.beta=1")
    assert prepare(compose_cfg("loss=sampled")).method.beta == 1.0  # the default is consistent


def test_unknown_group_option(compose_cfg):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_cfg("loss=fulll")
    assert "fulll" in str(err.value)


def test_data_without_prompt(compose_cfg, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"question": "1+1=", "completion": "2"}) for _ in range(4)))
    refuse(compose_cfg(f"data.train={path}"), "no `prompt` column", "rename_column")


def test_missing_completions_when_off_policy(compose_cfg, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "1+1="}) for _ in range(4)))
    refuse(compose_cfg(f"data.train={path}", "method.lmbda=0.5"), "no `completion` column", "seq_kd=true")
    assert prepare(compose_cfg(f"data.train={path}", "method.lmbda=1")).train_rows  # on-policy needs none
    assert prepare(compose_cfg(f"data.train={path}", "method.lmbda=0", "method.seq_kd=true")).train_rows


def test_prompt_longer_than_budget(compose_cfg, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "1" * 70, "completion": "2"}))
    refuse(compose_cfg(f"data.train={path}"), "longer than the prompt budget", "max_completion_length")


def test_vocabulary_mismatch(compose_cfg, tmp_path):
    other = make_tiny_model(tmp_path / "other", alphabet="abcdefghij+=")
    refuse(compose_cfg(f"teacher.model={other}"), "different tokenizers")


def test_padded_embedding_rows_share_the_prefix(compose_cfg, tmp_path):
    padded = make_tiny_model(tmp_path / "padded", hidden=128, vocab_pad=8)
    assert prepare(compose_cfg(f"teacher.model={padded}")).vocab_size == 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
@pytest.mark.parametrize("override", ["device=cuda", "model.attn_implementation=flash_attention_2"])
def test_cuda_only_option_on_cpu(compose_cfg, override):
    refuse(compose_cfg(override), "CUDA")


def test_cli_prints_the_error_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "distillkit.cli", "method.lmbda=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "distillkit: error: method.lmbda=2" in result.stderr
    assert "Traceback" not in result.stderr
