"""`teacher=router`: each row scored by the teacher its `teacher_id` names, with the shipped tiny teachers of
addition (`tiny/teacher`) and subtraction (`tiny/teacher_sub`) and the tiny student."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from configs import compose_config
from test_serve import start_server, stop_server
from transformers import AutoModelForCausalLM

from distillkit.batch import collate
from distillkit.cache.record import main as cache_teacher
from distillkit.checkpoint import latest_checkpoint, load_checkpoint
from distillkit.cli import ASSETS_DIR
from distillkit.errors import ConfigError
from distillkit.losses.base import TeacherRequest
from distillkit.runner import StepClock, build, optimizer_step, prepare, run

ADD, SUB = ASSETS_DIR / "tiny" / "teacher", ASSETS_DIR / "tiny" / "teacher_sub"
STUDENT = ASSETS_DIR / "tiny" / "student"


def routed(compose, *overrides: str):
    loss = [] if any(o.startswith("loss=") for o in overrides) else ["loss=topk", "loss.k=4"]
    return compose([f"model.student={STUDENT}", "teacher=router", *loss,
                    "data.train=arithmetic_routed", "data.eval=arithmetic_routed", "data.num_train=64",
                    "data.num_eval=32", "train.batch_size=8", "train.gradient_accumulation_steps=2",
                    "tracking.enabled=false", *overrides])


@pytest.fixture
def compose():
    return compose_config


def float64_reference(model_dir, prompts, completions, pad_id, temperature):
    """log_softmax(model(input_ids).logits / T) at the completion positions, in float64, row by row."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
        out.append(torch.log_softmax(logits / temperature, -1))
    return out


def test_each_row_is_scored_by_its_teacher(compose):
    cfg = routed(compose, "method.temperature=0.7")
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.eval_rows[:12]
    assert {r["teacher_id"] for r in rows} == {"add", "sub"}
    batch = collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], prepared.tokenizer.pad_token_id)
    got = parts.teacher.score(batch, TeacherRequest("topk", 0.7, k=4), rows)
    start = 0
    for row in rows:
        teacher = ADD if row["teacher_id"] == "add" else SUB
        ref = float64_reference(teacher, [row["prompt_ids"]], [row["completion_ids"]], 0, 0.7)[0]
        n = len(row["completion_ids"])
        values, ids = ref.topk(4, -1)
        torch.testing.assert_close(got.topk_logprobs[start : start + n].double(), values, atol=2e-5, rtol=1e-5)
        assert torch.equal(got.topk_ids[start : start + n].long(), ids)
        actual = ref.gather(-1, torch.tensor(row["completion_ids"])[:, None]).squeeze(-1)
        torch.testing.assert_close(got.token_logprobs[start : start + n].double(), actual, atol=2e-5, rtol=1e-5)
        start += n
    assert start == got.token_logprobs.shape[0]


def test_the_routed_teachers_may_be_a_cache_and_a_server(compose, tmp_path):
    """`add` from a recording of the addition teacher, `sub` from `distillkit serve-teacher` serving the other."""
    shutil.copytree(SUB, tmp_path / "sub")
    server = start_server(tmp_path / "sub", "--max-k", "16")
    url = server.url
    try:
        data = ["data.train=arithmetic_routed", "data.eval=arithmetic_routed", "data.num_train=64", "data.num_eval=32"]
        assert cache_teacher([str(tmp_path / "cache"), f"teacher.model={ADD}", f"model.student={STUDENT}", *data,
                              "loss=topk", "loss.k=4"]) == 0
        cfg = routed(compose, "method.lmbda=0", "~teacher.teachers.add", "~teacher.teachers.sub",
                     f"+teacher.teachers.add={{kind: cache, path: {tmp_path / 'cache'}}}",
                     f"+teacher.teachers.sub={{kind: remote, url: '{url}', retries: 0}}")
        prepared = prepare(cfg)
        parts = build(cfg, prepared)
        rows = prepared.eval_rows[:12]
        batch = collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], 0)
        got = parts.teacher.score(batch, TeacherRequest("topk", 1.0, k=4), rows)
        start = 0
        for row in rows:
            ref = float64_reference(ADD if row["teacher_id"] == "add" else SUB, [row["prompt_ids"]],
                                    [row["completion_ids"]], 0, 1.0)[0]
            n = len(row["completion_ids"])
            values, ids = ref.topk(4, -1)
            torch.testing.assert_close(got.topk_logprobs[start : start + n].double(), values, atol=5e-5, rtol=1e-5)
            assert torch.equal(got.topk_ids[start : start + n].long(), ids)
            start += n
        assert parts.teacher.state_dict()["teachers"]["sub"] == {"kind": "remote", "source": url, "dtype": ""}
    finally:
        stop_server(server)


def test_step_logs_each_teachers_tokens(compose):
    cfg = routed(compose)
    prepared = prepare(cfg)
    parts = build(cfg, prepared)
    rows = prepared.train_rows[:16]
    metrics = optimizer_step(parts, rows, 0, StepClock())
    assert metrics["teacher/add/tokens"] > 0 and metrics["teacher/sub/tokens"] > 0
    assert metrics["teacher/add/tokens"] + metrics["teacher/sub/tokens"] == metrics["train/tokens"]
    assert metrics["teacher/sub/token_logprob"] < 0
    assert metrics["teacher/resident"] == 2  # both were used by the step
    assert parts.teacher.metrics()["teacher/add/tokens"] == 0  # counted once


def write_rows(path, ids):
    path.write_text("".join(json.dumps({"prompt": "123+045=", "completion": "168", "teacher_id": i}) + "\n"
                            for i in ids))
    return path


def test_rows_naming_an_unknown_teacher_are_refused_before_loading(compose, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", ["add", "code", "sub", "code", "math"])
    with pytest.raises(ConfigError, match=r"'code' \(2 rows\), 'math' \(1 rows\).*Defined: 'add', 'sub'"):
        prepare(routed(compose, f"data.train={data}", "data.num_train=null"))


def test_a_missing_route_column_is_refused(compose):
    with pytest.raises(ConfigError, match="routes by the column 'teacher_id', which 64 training rows lack"):
        prepare(routed(compose, "data.train=addition"))


def test_each_teachers_vocabulary_is_checked(compose):
    other = ASSETS_DIR / "tiny" / "self_v3"  # another character set
    with pytest.raises(ConfigError, match="teacher.teachers.sub: .*tokenizer"):
        prepare(routed(compose, f"teacher.teachers.sub.model={other}"))


@pytest.mark.parametrize(("override", "message"), [
    (["loss=full"], "each teacher has its own LM head"),
    (["method.seq_kd=true", "method.lmbda=0"], "seq_kd=true needs a teacher that generates"),
    (["+teacher.teachers.code={kind: ema}"], "a teacher named here is one of live, remote, cache"),
    (["+teacher.teachers.sub.temprature=2"], "not settings of teacher=live"),
])
def test_what_a_router_cannot_do_is_refused(compose, override, message):
    with pytest.raises(ConfigError, match=message):
        prepare(routed(compose, *override))


def test_a_resume_with_other_teachers_under_the_same_ids_is_refused(compose, tmp_path):
    run(routed(compose, "train.steps=2", "train.save_every=1", "train.eval_every=0", "data.num_eval=8"), tmp_path)
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["teacher"]["teachers"]["sub"] == {"kind": "live", "source": str(SUB), "dtype": "float32"}
    swapped = routed(compose, "train.steps=3", "train.eval_every=0", f"teacher.teachers.sub.model={ADD}")
    with pytest.raises(ConfigError, match="other teachers under the same ids .*sub: was"):
        run(swapped, tmp_path)


def gold_nll(model_dir, rows) -> float:
    """Mean cross-entropy of the gold completions (and EOS), teacher-forced: how much a model knows a task."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = collate([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], 0)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = torch.log_softmax(logits, -1)[batch.completion_mask[:, 1:]]
    return float(-logp.gather(-1, batch.completion_targets()[:, None]).mean())


@pytest.mark.slow
def test_two_teachers_teach_one_student_both_tasks(compose, tmp_path):
    """The student learns addition from one teacher and subtraction from the other, and beats a run whose only
    teacher (the addition one, for every row) does not know subtraction, on subtraction."""
    common = ["train.steps=200", "train.eval_every=0", "data.num_train=8000", "train.batch_size=32", "method.lmbda=0.5",
              "data.num_eval=400"]
    run(routed(compose, *common), tmp_path / "router")
    run(routed(compose, *common, f"teacher.teachers.sub.model={ADD}"), tmp_path / "single")
    prepared = prepare(routed(compose, "data.num_eval=400"))
    tasks = {t: [r for r in prepared.eval_rows if r["teacher_id"] == t] for t in ("add", "sub")}
    start = {t: gold_nll(STUDENT, rows) for t, rows in tasks.items()}
    router = {t: gold_nll(tmp_path / "router" / "final_model", rows) for t, rows in tasks.items()}
    single = {t: gold_nll(tmp_path / "single" / "final_model", rows) for t, rows in tasks.items()}
    print(start, router, single)
    assert router["add"] < start["add"] - 0.05 and router["sub"] < start["sub"] - 0.5  # learns both
    assert router["sub"] < single["sub"] - 0.5  # what the single teacher could not teach
