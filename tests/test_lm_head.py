"""One LM head: every path that projects hidden states (the loss, the in-process teacher, the teacher server,
evaluation) gives the model's own `model(input_ids).logits`, for families with a head bias (Phi), a logit scale
(Cohere, Granite) and final-logit softcapping (Gemma 2). Ground truth is transformers' forward, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
)

from distillkit.batch import collate, completion_hidden
from distillkit.errors import ConfigError
from distillkit.evaluation import teacher_forced_kl
from distillkit.lm_head import check_head_matches_model, lm_head, logit_transform
from distillkit.losses import StudentTokens
from distillkit.losses.base import TeacherRequest
from distillkit.losses.full import FullDivergence
from distillkit.losses.math import generalized_jsd
from distillkit.models import decoder_and_head
from distillkit.serve.engine import ScoreJob, TeacherEngine
from distillkit.teachers.live import LiveTeacher

VOCAB = 40
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 0}


def phi() -> torch.nn.Module:  # lm_head has a bias
    config = PhiConfig(**SMALL, partial_rotary_factor=0.5)
    model = PhiForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.bias, std=2.0)  # large enough to matter
    return model


def gemma2() -> torch.nn.Module:  # tanh softcap on the final logits; a small cap so that it bends them
    return Gemma2ForCausalLM(Gemma2Config(**SMALL, head_dim=16, final_logit_softcapping=1.5,
                                          attn_logit_softcapping=50.0, query_pre_attn_scalar=16))


def cohere() -> torch.nn.Module:  # logits * logit_scale
    return CohereForCausalLM(CohereConfig(**SMALL, logit_scale=0.3))


def granite() -> torch.nn.Module:  # logits / logits_scaling
    return GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=0.25))


FAMILIES = {"phi_bias": phi, "gemma2_softcap": gemma2, "cohere_scale": cohere, "granite_scaling": granite}


@pytest.fixture(params=list(FAMILIES))
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[request.param]().double().eval()
    with torch.no_grad():  # random heads give near-zero logits; scale them so the transform is not a no-op
        model.get_output_embeddings().weight.mul_(20.0)
    return model


def rows(seed: int = 0, n: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    g = np.random.default_rng(seed)
    prompts = [g.integers(1, VOCAB, g.integers(2, 6)).tolist() for _ in range(n)]
    completions = [g.integers(1, VOCAB, g.integers(1, 5)).tolist() for _ in range(n)]
    return prompts, completions


def model_logits_at_completions(model, batch) -> torch.Tensor:
    """Ground truth: transformers' own forward, the rows that predict each completion token."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits[:, :-1][batch.completion_mask[:, 1:]]


def test_the_transform_differs_from_a_plain_projection(model):
    """Guards the test itself: without bias/scale/softcap the logits would differ from the model's."""
    batch = collate(*rows(), pad_id=0)
    parts = decoder_and_head(model)
    hidden = completion_hidden(parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
    plain = hidden @ model.get_output_embeddings().weight.T
    assert (plain - model_logits_at_completions(model, batch)).abs().max() > 0.1


def test_head_gives_the_models_logits(model):
    batch = collate(*rows(), pad_id=0)
    parts = decoder_and_head(model)
    hidden = completion_hidden(parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
    torch.testing.assert_close(lm_head(model).logits(hidden), model_logits_at_completions(model, batch))
    check_head_matches_model(model, parts.hidden_states, "the model")  # the start-up check accepts it


@pytest.mark.parametrize("signal", ["hidden", "topk", "token"])
def test_in_process_teacher_gives_the_models_logprobs(model, signal):
    teacher = LiveTeacher()
    teacher.bind(model, VOCAB)
    batch = collate(*rows(1), pad_id=0)
    temperature = 0.7
    out = teacher.score(batch, TeacherRequest(signal, temperature, k=5))
    truth = torch.log_softmax(model_logits_at_completions(model, batch) / temperature, -1)
    if signal == "hidden":
        torch.testing.assert_close(torch.log_softmax(out.head.logits(out.hidden) / temperature, -1), truth)
        return
    torch.testing.assert_close(out.token_logprobs, truth.gather(-1, batch.completion_targets()[:, None])[:, 0])
    if signal == "topk":
        torch.testing.assert_close(out.topk_logprobs, truth.topk(5, -1).values)


def test_teacher_server_engine_gives_the_models_logprobs(model):
    from distillkit.data.char_tokenizer import build_char_tokenizer

    engine = TeacherEngine(model, build_char_tokenizer("0123456789"), "m", torch.device("cpu"))
    try:
        prompts, completions = rows(2)
        sequences = [np.array(p + c) for p, c in zip(prompts, completions, strict=True)]
        job = ScoreJob(sequences, [len(p) for p in prompts], k=4, temperature=1.0, vocab_size=VOCAB)
        result = engine.submit(job).result(timeout=60)
    finally:
        engine.close()
    batch = collate(prompts, completions, pad_id=0)
    truth = torch.log_softmax(model_logits_at_completions(model, batch), -1)
    np.testing.assert_allclose(result.token_logprobs, truth.gather(-1, batch.completion_targets()[:, None])[:, 0],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.topk_logprobs, truth.topk(4, -1).values, rtol=1e-5, atol=1e-5)


def test_evaluation_kl_is_the_kl_of_the_models_logits(model):
    teacher = LiveTeacher()
    torch.manual_seed(1)
    other = type(model)(model.config).double().eval()
    teacher.bind(other, VOCAB)
    prompts, completions = rows(3)
    eval_rows = [{"prompt_ids": p, "completion_ids": c} for p, c in zip(prompts, completions, strict=True)]
    ours = teacher_forced_kl(decoder_and_head(model), teacher, eval_rows, VOCAB, 0, torch.device("cpu"))
    batch = collate(prompts, completions, pad_id=0)
    s = torch.log_softmax(model_logits_at_completions(model, batch), -1)
    t = torch.log_softmax(model_logits_at_completions(other, batch), -1)
    truth = (t.exp() * (t - s)).sum(-1).mean().item()
    assert ours == pytest.approx(truth, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_loss_values_and_gradients_match_the_models_logits(model, beta):
    """The chunked loss through the one head, against a naive float64 JSD of `model(...).logits`: the loss, the
    student's token log-probs, and the gradient of every parameter (the head's bias and weight included)."""
    torch.manual_seed(2)
    teacher_model = type(model)(model.config).double().eval()
    batch = collate(*rows(4), pad_id=0)
    temperature = 0.8
    targets = batch.completion_targets()

    parts = decoder_and_head(model)
    hidden = completion_hidden(parts.hidden_states(batch.input_ids, batch.attention_mask), batch)
    teacher = LiveTeacher()
    teacher.bind(teacher_model, VOCAB)
    out = FullDivergence(beta, temperature, chunk_size=3)(
        StudentTokens(hidden, parts.lm_head(VOCAB), targets), teacher.score(batch, TeacherRequest("hidden", temperature)))
    out.loss_sum.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    s = torch.log_softmax(logits[:, :-1][batch.completion_mask[:, 1:]] / temperature, -1)
    t = torch.log_softmax(model_logits_at_completions(teacher_model, batch) / temperature, -1)
    naive = generalized_jsd_naive(s, t, beta).sum()
    naive.backward()
    assert out.loss_sum.item() == pytest.approx(naive.item(), rel=1e-9)
    torch.testing.assert_close(out.token_logprobs.double(), s.gather(-1, targets[:, None])[:, 0].detach(),
                               rtol=1e-6, atol=1e-6)
    head = model.get_output_embeddings()
    head_params = [n for n, p in model.named_parameters() if p is head.weight or p is head.bias]
    assert head_params and all(n in ours for n in head_params), "the head's parameters get a gradient"
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-7, atol=1e-9, msg=name)


def generalized_jsd_naive(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """Written out from the definition: beta=0 KL(T||S), beta=1 KL(S||T), else M = (1-beta) S + beta T."""
    ps, pt = s.exp(), t.exp()
    if beta == 0:
        return (pt * (t - s)).sum(-1)
    if beta == 1:
        return (ps * (s - t)).sum(-1)
    m = (1 - beta) * ps + beta * pt
    return beta * (pt * (t - m.log())).sum(-1) + (1 - beta) * (ps * (s - m.log())).sum(-1)


def test_naive_reference_agrees_with_the_library_formula():
    s, t = torch.log_softmax(torch.randn(3, 7, dtype=torch.float64), -1), torch.log_softmax(torch.randn(3, 7), -1)
    for beta in (0.0, 0.3, 1.0):
        torch.testing.assert_close(generalized_jsd(s, t.double(), beta), generalized_jsd_naive(s, t.double(), beta))


def test_transform_read_from_each_config():
    assert logit_transform(Gemma2Config(final_logit_softcapping=30.0)).softcap == 30.0
    assert logit_transform(CohereConfig(logit_scale=0.0625)).scale == 0.0625
    assert logit_transform(GraniteConfig(logits_scaling=8.0)).scale == 0.125
    assert logit_transform(LlamaConfig()).is_identity


class ScaledLlama(LlamaForCausalLM):
    """A family whose logit transform distillkit does not know: its forward doubles the logits."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_an_unknown_logit_transform_is_refused_at_start_up():
    model = ScaledLlama(LlamaConfig(**SMALL))
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    with pytest.raises(ConfigError, match="changes its logits in a way distillkit does not apply"):
        check_head_matches_model(model, decoder_and_head(model).hidden_states, "The student x")
