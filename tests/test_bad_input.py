"""Bad input a new user gives (issue 14 §5, §6) ends in one `distillkit: error:` line naming the fix, exit 2,
before any model loads: through the real CLI, and through `prepare()`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from distillkit.composition_errors import composition_message
from distillkit.errors import ConfigError
from distillkit.runner import prepare
from distillkit.trl_keys import TRL_ONLY_KEYS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def bad_files(root: Path) -> dict[str, Path]:
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]
    empty, malformed = root / "empty.jsonl", root / "malformed.jsonl"
    empty.write_text("")
    malformed.write_text(f"{json.dumps(rows[0])}\n{json.dumps(rows[1])}\n{{\"prompt\": \"3+3=\", completion: 6}}\n")
    return {"empty": empty, "malformed": malformed}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillkit.cli", *args, "tracking.enabled=false",
                           f"hydra.run.dir={cwd / 'run'}"], capture_output=True, text=True, timeout=180, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("distillkit: error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not (Path(result.args[-1].split("=", 1)[1]) / "final_model").exists()
    return errors[0]


# Composition errors cost ~2 s here; the others import transformers first (~12 s on 2 cores), so the fast tier
# keeps one of them (MISSING) and the slow tier the rest, whose refusals the in-process tests below cover too.
@pytest.mark.parametrize(("case", "fragments"), [
    ("train.lr=abc", ["train.lr=abc", "takes a float"]),
    ("method.max_new_tokens=64", ["method.max_new_tokens", "train.max_completion_length"]),
    pytest.param("+method.distillation_alpha=0.5", ["method.distillation_alpha", "method.beta"],
                 marks=pytest.mark.slow),
    ("model.student=MISSING", ["model.student=", "no such model folder"]),
    pytest.param("data.train=EMPTY", ["empty.jsonl is empty"], marks=pytest.mark.slow),
    pytest.param("data.train=MALFORMED", ["malformed.jsonl, line 3, is not valid JSON"], marks=pytest.mark.slow),
])
def test_cli_refuses_in_one_line(tmp_path, case, fragments):
    files = bad_files(tmp_path)
    case = (case.replace("MISSING", str(tmp_path / "no" / "such" / "model"))
            .replace("EMPTY", str(files["empty"])).replace("MALFORMED", str(files["malformed"])))
    assert_one_line_error(run_cli(case, cwd=tmp_path), *fragments)


def test_typed_schema_rejects_a_wrong_type_at_composition(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("train.lr=abc")
    assert composition_message(err.value).startswith("train.lr=abc: train.lr takes a float")
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("train.steps=1.5")
    assert "train.steps takes an integer" in composition_message(err.value)
    cfg = compose_cfg("train.lr=5e-4", "train.steps=3", "data.num_train=null", "train.max_grad_norm=null")
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float) and cfg.train.steps == 3


@pytest.mark.parametrize(("override", "fragment"), [
    ("+method.max_new_tokens=64", "use train.max_completion_length"),
    ("+method.distillation_alpha=0.5", "use method.beta"),
    ("+method.distillation_topk=50", "use loss.k"),
    ("+train.learning_rate=1e-4", "use train.lr"),
    ("+train.lr_typo=1", "train.lr_typo is not a distillkit key"),
])
def test_prepare_refuses_trl_and_unknown_keys(compose_cfg, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        prepare(compose_cfg(override))


def test_prepare_refuses_bad_data_files(compose_cfg, tmp_path):
    files = bad_files(tmp_path)
    with pytest.raises(ConfigError, match="is empty"):
        prepare(compose_cfg(f"data.train={files['empty']}"))
    with pytest.raises(ConfigError, match=r"line 3, is not valid JSON"):
        prepare(compose_cfg(f"data.eval={files['malformed']}"))
    rows = tmp_path / "rows.json"
    rows.write_text("[]")
    with pytest.raises(ConfigError, match="has no rows"):
        prepare(compose_cfg(f"data.train={rows}"))


def test_prepare_refuses_model_paths_that_are_not_models(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="model.student=.*no such model folder"):
        prepare(compose_cfg(f"model.student={tmp_path / 'nope'}"))
    with pytest.raises(ConfigError, match="teacher.model=.*no such model folder"):
        prepare(compose_cfg(f"teacher.model={tmp_path / 'nope'}"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ConfigError, match="teacher.model=.*no config.json"):
        prepare(compose_cfg(f"teacher.model={tmp_path / 'empty_folder'}"))


def test_a_value_left_missing_is_named(compose_cfg):
    with pytest.raises(ConfigError, match=r"model.student must be given"):
        prepare(compose_cfg("model.student=???"))


def test_composition_message_names_options_and_parse_errors():
    from hydra.errors import MissingConfigException, OverrideParseException

    missing = MissingConfigException("In 'config': Could not find 'loss/fulll'\n\nAvailable options in 'loss':\n"
                                     "\tfull\n\tsampled\n\ttopk\nConfig search path:\n\tprovider=hydra", "loss/fulll")
    assert composition_message(missing) == "loss=fulll: no such loss option; loss has full, sampled, topk."
    parse = OverrideParseException(override="train.lr=[1", message="no viable alternative at input '[1'")
    assert "cannot parse an override" in composition_message(parse)


def test_docs_map_every_refused_trl_key():
    text = (DOCS / "trl.md").read_text()
    missing = [key for key in TRL_ONLY_KEYS if f"`{key}`" not in text]
    assert not missing, f"docs/trl.md does not mention {missing}"
