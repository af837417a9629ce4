"""Divergences (full / top-k / sampled) against naive float64 references written straight from the math.

The references below deliberately do not use `distillkit.losses.math`: they build the full [N, V] logits,
take probabilities and apply the textbook formulas (TRL's conventions):

- temperature T divides both models' logits before the softmax;
- beta=0 is forward KL(T||S), beta=1 reverse KL(S||T), and 0<beta<1 the generalized JSD
  beta*KL(T||M) + (1-beta)*KL(S||M) with M = (1-beta)*S + beta*T;
- top-k: the support is the teacher's top-k ids, the student's full-vocab probabilities are read there, and both
  get a tail bucket 1 - sum(p) (add_tail) or are renormalized on the support;
- sampled: (log s(y) - log t(y)).detach() * log s(y) per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from distillkit.lm_head import LMHead
from distillkit.losses import (
    FullDivergence,
    SampledDivergence,
    StudentTokens,
    TeacherTokens,
    TopKDivergence,
)

N, H, V, HT, K = 7, 5, 11, 6, 4
BETAS = [0.0, 0.5, 1.0]
TEMPERATURES = [1.0, 0.7, 2.0]
# chunk sizes: 1 (divides N), 3 (does not), N, > N, automatic; each with and without per-token weights at
# least once (weights[0] = 0 masks a token)
CHUNKING = pytest.mark.parametrize(
    "chunk_size, weighted",
    [(1, True), (3, False), (3, True), (N, False), (N + 5, True), (None, False)],
    ids=["c1-w", "c3", "c3-w", "cN", "cN+5-w", "cauto"],
)
ATOL = RTOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention (x50 slower on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class Case:
    hidden: torch.Tensor  # [n, H]
    head: torch.Tensor  # [V, H]
    t_hidden: torch.Tensor  # [n, HT]
    t_head: torch.Tensor  # [V, HT]
    targets: torch.Tensor  # [n]
    weights: torch.Tensor | None  # [n]


def make_case(n: int = N, seed: int = 0, weighted: bool = False, dtype=torch.float32) -> Case:
    g = torch.Generator().manual_seed(seed)
    weights = None
    if weighted:
        weights = torch.rand(n, generator=g, dtype=torch.float64).to(dtype) * 2
        if n:
            weights[0] = 0.0  # a masked token
    return Case(
        hidden=torch.randn(n, H, generator=g, dtype=torch.float64).to(dtype),
        head=(0.7 * torch.randn(V, H, generator=g, dtype=torch.float64)).to(dtype),
        t_hidden=torch.randn(n, HT, generator=g, dtype=torch.float64).to(dtype),
        # 0.5: the teacher's top-k tails stay >= ~1e-3, so fp32 rounding of 1 - sum(p) stays below the tolerance
        t_head=(0.5 * torch.randn(V, HT, generator=g, dtype=torch.float64)).to(dtype),
        targets=torch.randint(0, V, (n,), generator=g),
        weights=weights,
    )


# --------------------------------------------------------------------------------- naive references
def ref_logp(hidden: torch.Tensor, head: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax((hidden.double() @ head.double().T) / temperature, dim=-1)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P||Q) per row on probability vectors (all entries > 0 in these tests)."""
    return (p * (p.log() - q.log())).sum(-1)


def ref_jsd(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalized JSD on probabilities; s is the student, t the teacher."""
    if beta == 0.0:
        return ref_kl(t, s)
    if beta == 1.0:
        return ref_kl(s, t)
    m = (1.0 - beta) * s + beta * t
    return beta * ref_kl(t, m) + (1.0 - beta) * ref_kl(s, m)


def ref_entropy(s_logp: torch.Tensor) -> torch.Tensor:
    return -(s_logp.exp() * s_logp).sum(-1)


def signal_dtype(case: Case) -> torch.dtype:
    """Teacher log-probs come in float32 (what a server sends), or float64 for float64 cases."""
    return torch.float64 if case.hidden.dtype == torch.float64 else torch.float32


def teacher_topk(case: Case, temperature: float, k: int, seed: int = 1):
    """The teacher's top-k log-probs (normalized over the full vocab) and ids.

    The k columns are shuffled: the loss must not depend on their order.
    """
    t_logp = ref_logp(case.t_hidden, case.t_head, temperature)
    values, ids = t_logp.topk(k, dim=-1)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    return values[:, perm].to(signal_dtype(case)), ids[:, perm]


def ref_support(s_logp, t_top_logp, ids, add_tail: bool):
    """Student and teacher probabilities on the top-k support (plus tail bucket, or renormalized)."""
    s = s_logp.exp().gather(-1, ids)
    t = t_top_logp.double().exp()
    if add_tail:
        s = torch.cat([s, 1.0 - s.sum(-1, keepdim=True)], dim=-1)
        t = torch.cat([t, 1.0 - t.sum(-1, keepdim=True)], dim=-1)
    else:
        s = s / s.sum(-1, keepdim=True)
        t = t / t.sum(-1, keepdim=True)
    return s, t


# Each reference takes the float64 student hidden and head and returns, per token: the loss (with autograd),
# the reverse KL(S||T) on the mode's support and the student's full-vocab entropy (both without grad).
def ref_full(case: Case, h, w, beta, temperature):
    s_logp = ref_logp(h, w, temperature)
    t_logp = ref_logp(case.t_hidden, case.t_head, temperature)
    per_token = ref_jsd(s_logp.exp(), t_logp.exp(), beta)
    return per_token, ref_kl(s_logp.exp(), t_logp.exp()).detach(), ref_entropy(s_logp).detach()


def ref_topk(case: Case, h, w, beta, temperature, k, add_tail):
    s_logp = ref_logp(h, w, temperature)
    t_top, ids = teacher_topk(case, temperature, k)
    s, t = ref_support(s_logp, t_top, ids, add_tail)
    return ref_jsd(s, t, beta), ref_kl(s, t).detach(), ref_entropy(s_logp).detach()


def ref_sampled(case: Case, h, w, temperature):
    s_logp = ref_logp(h, w, temperature)
    t_y = sampled_teacher(case, temperature).double()
    s_y = s_logp.gather(-1, case.targets[:, None]).squeeze(-1)
    log_ratio = (s_y - t_y).detach()
    return log_ratio * s_y, log_ratio, ref_entropy(s_logp).detach()


def sampled_teacher(case: Case, temperature: float) -> torch.Tensor:
    t_logp = ref_logp(case.t_hidden, case.t_head, temperature)
    return t_logp.gather(-1, case.targets[:, None]).squeeze(-1).to(signal_dtype(case))


# ------------------------------------------------------------------------------------------ harness
def teacher_tokens(mode: str, case: Case, temperature: float, k: int = K) -> TeacherTokens:
    if mode == "full":
        return TeacherTokens(hidden=case.t_hidden, head=LMHead(case.t_head))
    if mode == "topk":
        values, ids = teacher_topk(case, temperature, k)
        return TeacherTokens(topk_logprobs=values, topk_ids=ids)
    return TeacherTokens(token_logprobs=sampled_teacher(case, temperature))


def run_lib(div, mode, case, temperature, k=K, grad_h=True, grad_w=True, upstream=1.0):
    h = case.hidden.clone().requires_grad_(grad_h)
    w = case.head.clone().requires_grad_(grad_w)
    out = div(StudentTokens(h, LMHead(w), case.targets, case.weights), teacher_tokens(mode, case, temperature, k))
    if grad_h or grad_w:
        (upstream * out.loss_sum).backward()
    return out, h.grad, w.grad


def run_ref(ref, case):
    """Reference loss, grads (w.r.t. the float64 copies of hidden and head), summed KL and entropy."""
    h = case.hidden.to(torch.float64, copy=True).requires_grad_(True)
    w = case.head.to(torch.float64, copy=True).requires_grad_(True)
    per_token, kl, entropy = ref(h, w)
    weights = torch.ones_like(per_token) if case.weights is None else case.weights.double()
    loss = (per_token * weights).sum()
    loss.backward()
    distilled = weights > 0  # the KL metric covers the distilled (unmasked) tokens only
    return loss.detach(), h.grad, w.grad, kl[distilled].sum().item(), entropy.sum().item()


def assert_matches(out, g_h, g_w, ref_out, upstream=1.0, check_stats=True):
    """Loss and grads against the reference; the stats are plain (unweighted) sums over the tokens (the KL over the
    unmasked ones)."""
    loss, r_h, r_w, r_kl, r_ent = ref_out
    torch.testing.assert_close(out.loss_sum.detach().double(), loss, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(g_h.double(), upstream * r_h, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(g_w.double(), upstream * r_w, atol=ATOL, rtol=RTOL)
    if check_stats:
        assert set(out.stats) >= {"kl", "entropy"}
        assert out.stats["kl"] == pytest.approx(r_kl, rel=RTOL, abs=ATOL)
        assert out.stats["entropy"] == pytest.approx(r_ent, rel=RTOL, abs=ATOL)


# ---------------------------------------------------------------------------------- values + grads
@CHUNKING
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", [*BETAS, 0.1, 0.9])  # the written-out gradient has its own branch at 0 and 1
def test_full_matches_reference(beta, temperature, chunk_size, weighted):
    case = make_case(weighted=weighted)
    out, g_h, g_w = run_lib(
        FullDivergence(beta, temperature, chunk_size=chunk_size), "full", case, temperature
    )
    ref = run_ref(lambda h, w: ref_full(case, h, w, beta, temperature), case)
    assert_matches(out, g_h, g_w, ref)


@CHUNKING
@pytest.mark.parametrize("add_tail", [True, False], ids=["tail", "renorm"])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_topk_matches_reference(beta, temperature, add_tail, chunk_size, weighted):
    case = make_case(weighted=weighted)
    div = TopKDivergence(beta, temperature, k=K, add_tail=add_tail, chunk_size=chunk_size)
    out, g_h, g_w = run_lib(div, "topk", case, temperature)
    ref = run_ref(lambda h, w: ref_topk(case, h, w, beta, temperature, K, add_tail), case)
    assert_matches(out, g_h, g_w, ref)


@pytest.mark.parametrize("add_tail", [True, False], ids=["tail", "renorm"])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_topk_with_whole_vocab_equals_full(beta, temperature, add_tail):
    """k = V: the tail is ~0 and the renormalization a no-op, so top-k is the full-vocab divergence."""
    case = make_case(weighted=True)
    div = TopKDivergence(beta, temperature, k=V, add_tail=add_tail, chunk_size=3)
    out, g_h, g_w = run_lib(div, "topk", case, temperature, k=V)
    ref = run_ref(lambda h, w: ref_full(case, h, w, beta, temperature), case)
    assert_matches(out, g_h, g_w, ref)
    assert torch.isfinite(g_h).all() and torch.isfinite(g_w).all()


@CHUNKING
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_sampled_matches_reference(temperature, chunk_size, weighted):
    case = make_case(weighted=weighted)
    div = SampledDivergence(1.0, temperature, chunk_size=chunk_size)
    out, g_h, g_w = run_lib(div, "sampled", case, temperature)
    ref = run_ref(lambda h, w: ref_sampled(case, h, w, temperature), case)
    assert_matches(out, g_h, g_w, ref)


def test_sampled_gradient_is_the_estimator_not_the_kl_value():
    """The gradient is (log s(y) - log t(y)) * d log s(y), not d[(log s(y) - log t(y)) * log s(y)]."""
    case = make_case()
    out, g_h, _ = run_lib(SampledDivergence(1.0, 1.0), "sampled", case, 1.0)
    h = case.hidden.to(torch.float64, copy=True).requires_grad_(True)
    s_y = ref_logp(h, case.head, 1.0).gather(-1, case.targets[:, None]).squeeze(-1)
    t_y = sampled_teacher(case, 1.0).double()
    ((s_y - t_y) * s_y).sum().backward()  # no detach: the gradient of the value, which must differ
    assert not torch.allclose(g_h.double(), h.grad, atol=1e-3)


# ------------------------------------------------------------------------------- edge cases / plumbing
MODES = ["full", "topk", "sampled"]


def make_div(mode, beta=0.5, temperature=0.7, chunk_size=3, add_tail=True):
    if mode == "full":
        return FullDivergence(beta, temperature, chunk_size=chunk_size)
    if mode == "topk":
        return TopKDivergence(beta, temperature, k=K, add_tail=add_tail, chunk_size=chunk_size)
    return SampledDivergence(1.0, temperature, chunk_size=chunk_size)


def make_ref(mode, case, beta=0.5, temperature=0.7, add_tail=True):
    if mode == "full":
        return lambda h, w: ref_full(case, h, w, beta, temperature)
    if mode == "topk":
        return lambda h, w: ref_topk(case, h, w, beta, temperature, K, add_tail)
    return lambda h, w: ref_sampled(case, h, w, temperature)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("mode", MODES)
def test_no_rows(mode, weighted):
    case = make_case(n=0, weighted=weighted)
    out, g_h, g_w = run_lib(make_div(mode), mode, case, 0.7)
    assert out.loss_sum.item() == 0.0
    assert out.loss_sum.requires_grad
    assert g_h.shape == (0, H)
    assert g_w.shape == (V, H) and torch.equal(g_w, torch.zeros_like(g_w))
    assert out.stats["kl"] == 0.0 and out.stats["entropy"] == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_frozen_head_gets_no_grad(mode):
    case = make_case(weighted=True)
    out, g_h, g_w = run_lib(make_div(mode), mode, case, 0.7, grad_w=False)
    assert g_w is None
    ref = run_ref(make_ref(mode, case), case)
    torch.testing.assert_close(out.loss_sum.detach().double(), ref[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(g_h.double(), ref[1], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode", MODES)
def test_frozen_hidden_only_head_gets_grad(mode):
    case = make_case(weighted=True)
    out, g_h, g_w = run_lib(make_div(mode), mode, case, 0.7, grad_h=False)
    assert g_h is None
    ref = run_ref(make_ref(mode, case), case)
    torch.testing.assert_close(g_w.double(), ref[2], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode", MODES)
def test_nothing_requires_grad(mode):
    case = make_case()
    out, _, _ = run_lib(make_div(mode), mode, case, 0.7, grad_h=False, grad_w=False)
    assert not out.loss_sum.requires_grad
    ref = run_ref(make_ref(mode, case), case)
    torch.testing.assert_close(out.loss_sum.double(), ref[0], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode", MODES)
def test_upstream_gradient_scales(mode):
    case = make_case(weighted=True)
    out, g_h, g_w = run_lib(make_div(mode), mode, case, 0.7, upstream=-2.5)
    assert_matches(out, g_h, g_w, run_ref(make_ref(mode, case), case), upstream=-2.5)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_flows_to_parameters_before_the_head(mode):
    """hidden is a non-leaf (output of a layer): the grad must reach that layer's parameters."""
    case = make_case(weighted=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 4, generator=g, dtype=torch.float64)
    a = torch.randn(4, H, generator=g, dtype=torch.float64)
    case.hidden = (x @ a).float()

    a_lib = a.float().requires_grad_(True)
    hidden = x.float() @ a_lib
    w = case.head.clone().requires_grad_(True)
    out = make_div(mode)(
        StudentTokens(hidden, LMHead(w), case.targets, case.weights), teacher_tokens(mode, case, 0.7)
    )
    out.loss_sum.backward()

    a_ref = a.clone().requires_grad_(True)
    per_token, _, _ = make_ref(mode, case)(x @ a_ref, case.head.double())
    (per_token * case.weights.double()).sum().backward()
    torch.testing.assert_close(a_lib.grad.double(), a_ref.grad, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_inputs_give_fp32_loss_and_input_dtype_grads(mode):
    case = make_case(weighted=True)
    ref = run_ref(make_ref(mode, case), case)
    low = make_case(weighted=True, dtype=torch.bfloat16)
    out, g_h, g_w = run_lib(make_div(mode), mode, low, 0.7)
    assert out.loss_sum.dtype == torch.float32
    assert g_h.dtype == torch.bfloat16 and g_w.dtype == torch.bfloat16
    # bf16 inputs: only a coarse agreement is expected
    torch.testing.assert_close(out.loss_sum.detach().double(), ref[0], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(g_h.double(), ref[1], atol=5e-2, rtol=5e-2)


def test_teacher_requests():
    assert FullDivergence(0.5, 0.7).teacher_request().signal == "hidden"
    req = TopKDivergence(0.5, 0.7, k=K).teacher_request()
    assert (req.signal, req.temperature, req.k) == ("topk", 0.7, K)
    req = SampledDivergence(1.0, 2.0).teacher_request()
    assert (req.signal, req.temperature) == ("token", 2.0)


VARIANTS = pytest.mark.parametrize(
    "mode, add_tail",
    [("full", True), ("topk", True), ("topk", False), ("sampled", True)],
    ids=["full", "topk-tail", "topk-renorm", "sampled"],
)


@VARIANTS
def test_float64_inputs_match_reference_to_float64_precision(mode, add_tail):
    """float64 student and teacher inputs must be computed in float64 (nothing cast down to fp32).

    The library keeps fp32 only as a floor for lower-precision inputs, so with float64 inputs (student hidden
    and head, and the teacher's float64 top-k / token log-probs) the result must agree with the float64
    reference to ~1e-12, not to fp32's ~1e-7.
    """
    case = make_case(weighted=True, dtype=torch.float64)
    beta, temperature = 0.5, 0.7
    div = make_div(mode, beta, temperature, add_tail=add_tail)
    ref = run_ref(make_ref(mode, case, beta, temperature, add_tail), case)
    out, g_h, g_w = run_lib(div, mode, case, temperature)
    assert out.loss_sum.dtype == g_h.dtype == g_w.dtype == torch.float64
    tight = dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.loss_sum.detach(), ref[0], **tight)
    torch.testing.assert_close(g_h, ref[1], **tight)
    torch.testing.assert_close(g_w, ref[2], **tight)


# --------------------------------------------------------------------------------------- gradcheck
@VARIANTS
def test_gradcheck_float64(mode, add_tail):
    """Numerical vs analytical gradient of the summed loss, in float64, through the chunked head."""
    case = make_case(n=4, seed=5, weighted=True, dtype=torch.float64)
    div = make_div(mode, beta=0.5, temperature=0.7, chunk_size=3, add_tail=add_tail)
    teacher = teacher_tokens(mode, case, 0.7)
    # fp32-representable teacher log-probs: this test must not depend on how the library casts them
    for name in ("topk_logprobs", "token_logprobs"):
        if getattr(teacher, name) is not None:
            setattr(teacher, name, getattr(teacher, name).float().double())
    h = case.hidden.clone().requires_grad_(True)
    w = case.head.clone().requires_grad_(True)

    if mode != "sampled":

        def f(h, w):
            return div(StudentTokens(h, LMHead(w), case.targets, case.weights), teacher).loss_sum

    else:
        # The sampled loss's value is not the function its gradient differentiates: with the log-ratio
        # r = log s(y) - log t(y) held fixed, its gradient sum w * r * d log s(y) is exactly the gradient of
        # Q = 0.5 * sum w * r**2. So the output's value is Q (finite differences see Q) while its backward is
        # the library's (the analytical side).
        t_y = teacher.token_logprobs.double()

        def f(h, w):
            loss = div(StudentTokens(h, LMHead(w), case.targets, case.weights), teacher).loss_sum
            s_y = ref_logp(h, w, 0.7).gather(-1, case.targets[:, None]).squeeze(-1)
            q = 0.5 * (case.weights * (s_y - t_y) ** 2).sum()
            return loss - loss.detach() + q.detach()

    assert f(h, w).dtype == torch.float64, "the library should keep float64 logits for float64 inputs"
    assert torch.autograd.gradcheck(f, (h, w), eps=1e-6, atol=1e-6, rtol=1e-4)
