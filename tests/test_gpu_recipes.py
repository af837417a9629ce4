"""The GPU recipes (real hub models) cannot run here; they are composed and checked as far as a run does before it
loads a model: the CLI prints them, and validation, the method, teacher and loss objects and their combination
accept them. Nothing here touches the hub or loads weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from configs import compose_config

import distillkit.validation
from distillkit.cli import CONF_DIR
from distillkit.data.loading import load_split
from distillkit.errors import ConfigError
from distillkit.runner import build_object, check_composition
from distillkit.validation import validate

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# recipe folder, config name, student, teacher model (None: the student itself), method, teacher, data set
GPU_RECIPES = [
    ("gkd_qwen3_gsm8k", "gkd", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-8B", "GKD", "LiveTeacher", "openai/gsm8k"),
    ("sdft_science_qa", "sdft", "Qwen/Qwen2.5-7B-Instruct", None, "SDFT", "EmaTeacher",
     "data/sdft_science/train.jsonl"),
    ("sdpo_verifiable", "sdpo", "Qwen/Qwen3-1.7B", None, "SDPO", "EmaTeacher", "openai/gsm8k"),
]
IDS = [r[0] for r in GPU_RECIPES]


def compose_recipe(recipe: str, name: str, *overrides: str):
    """The recipe composed as `distillkit --config-dir recipes/<recipe> --config-name <name>` composes it."""
    return compose_config([f"hydra.searchpath=[file://{CONF_DIR}]", *overrides], RECIPES / recipe, name)


@pytest.fixture
def on_a_gpu_machine(monkeypatch):
    """What validation sees on the machine the recipes are for: CUDA, and vLLM installed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distillkit.validation, "require_vllm", lambda: None)


@pytest.mark.parametrize(("recipe", "name", "student", "teacher_model", "method", "teacher", "data"), GPU_RECIPES,
                         ids=IDS)
def test_cli_prints_the_recipe(recipe, name, student, teacher_model, method, teacher, data):
    shown = subprocess.run(
        [sys.executable, "-m", "distillkit.cli", "--config-dir", str(RECIPES / recipe), "--config-name", name,
         "--cfg", "job"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["model"]["student"] == student
    assert cfg["method"]["_target_"] == f"distillkit.methods.{method}"
    assert cfg["teacher"]["_target_"] == f"distillkit.teachers.{teacher}"
    assert cfg["teacher"].get("model") == teacher_model
    assert cfg["data"]["train"] == data
    assert cfg["generation"]["_target_"] == "distillkit.generation.VLLMGenerator"


@pytest.mark.parametrize(("recipe", "name", "student", "teacher_model", "method", "teacher", "data"), GPU_RECIPES,
                         ids=IDS)
def test_recipe_validates_and_composes(on_a_gpu_machine, recipe, name, student, teacher_model, method, teacher,
                                       data):
    cfg = compose_recipe(recipe, name)
    validate(cfg)
    built_method = build_object(cfg.method)
    built_teacher = build_object(cfg.teacher)
    assert type(built_method).__name__ == method and type(built_teacher).__name__ == teacher
    check_composition(cfg, built_method, built_teacher)
    # whole rollout groups per optimizer step (refused at start-up otherwise)
    built_method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)
    # the columns the method needs come out of the recipe's column mapping
    produced = {"prompt", *cfg.data.columns}
    assert set(built_method.required_columns()) <= produced
    assert "prompt" in cfg.data.columns


@pytest.mark.parametrize(("recipe", "name", "overrides", "match"), [
    # a server sends top-k log-probs, not the hidden states the GKD recipe's full-vocabulary loss needs
    ("gkd_qwen3_gsm8k", "gkd", ["teacher=remote", "~teacher.dtype"], "loss=full"),
    # the sampled-token estimator is reverse KL only; the SDPO recipe sets beta 0.5
    ("sdpo_verifiable", "sdpo", ["loss=sampled", "~loss.k", "~loss.add_tail"], "method.beta=1"),
    # an unknown key in a recipe's group node reaches the constructor
    ("sdft_science_qa", "sdft", ["+method.no_such_knob=1"], "no_such_knob"),
], ids=["remote-teacher-full-loss", "sampled-loss-jsd", "unknown-key"])
def test_a_refused_recipe_variant_fails_the_checks(on_a_gpu_machine, recipe, name, overrides, match):
    """The checks above have teeth: a refused combination or an invalid key fails them."""
    cfg = compose_recipe(recipe, name, *overrides)
    with pytest.raises(ConfigError, match=match):  # a message for the user, not a crash
        validate(cfg)
        check_composition(cfg, build_object(cfg.method), build_object(cfg.teacher))


GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How "
                 "much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
]


@pytest.mark.parametrize("recipe,name", [("gkd_qwen3_gsm8k", "gkd"), ("sdpo_verifiable", "sdpo")])
def test_gsm8k_recipes_map_gsm8k_columns(tmp_path, recipe, name):
    """The recipes' `data:` blocks applied to rows shaped like openai/gsm8k (a local copy: no hub here)."""
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GSM8K_ROWS))
    cfg = compose_recipe(recipe, name, f"data.train={path}", f"data.eval={path}")
    for which in ("train", "eval"):
        rows = load_split(cfg.data, which)
        assert len(rows) == 2
        row = rows[0]
        assert row["prompt"][0]["role"] == "system" and "/no_think" in row["prompt"][0]["content"]
        assert row["prompt"][1] == {"role": "user", "content": GSM8K_ROWS[0]["question"]}
        assert row["completion"] == row["answer"] == GSM8K_ROWS[0]["answer"]  # copied: `answer` stays
    if recipe == "sdpo_verifiable":  # the recipe's reward function, as SDPO builds it, on those rows
        (reward,) = build_object(cfg.method).rewards
        assert reward.name == "numeric_answer_match"
        got = reward.fn(None, ["... so \\boxed{72}", "It is 11."], answer=[r["answer"] for r in GSM8K_ROWS])
        assert got == [1.0, 0.0]


def test_sdft_recipe_maps_the_authors_columns(tmp_path):
    """Rows shaped like the authors' science data (`messages` = [system, user], `output_text`)."""
    rows = [{"messages": [{"role": "system", "content": "You are a chemist."},
                          {"role": "user", "content": f"Question {i}? A) x B) y"}],
             "output_text": f"Reasoning {i}. The answer is B."} for i in range(3)]
    for split in ("train", "eval"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = compose_recipe("sdft_science_qa", "sdft", f"data.train={tmp_path / 'train.jsonl'}",
                         f"data.eval={tmp_path / 'eval.jsonl'}")
    train = load_split(cfg.data, "train")
    assert train[0]["prompt"] == rows[0]["messages"]
    assert train[0]["privileged_context"] == rows[0]["output_text"]
    method = build_object(cfg.method)
    teacher_prompt = method.teacher_prompt(train[0]["prompt"], train[0]["privileged_context"])
    assert teacher_prompt[0] == rows[0]["messages"][0]  # the system turn is kept
    assert teacher_prompt[1]["content"].startswith("Question 0? A) x B) y\n\nThis is an example for a response")
    assert "Reasoning 0. The answer is B." in teacher_prompt[1]["content"]
