"""The reference against hand-written formulas, for the variants torch has no spelling of.

Each formula below is written in plain torch float64 from the paper formula quoted in the spec's
comment — not from attnc's cascades — with its own GQA expansion and its own masks:

* sigmoid / sigmoid_attention (Ramapuram et al., 2024): out = σ(s + b) @ v, b = −log n_kv by default
* relu (Wortsman et al., 2023): out = relu(s) @ v / n_kv
* none (linear attention, quadratic form): out = s @ v
* softmax_sink (gpt-oss): softmax over [logits, sink_h], sink column dropped; lse over both
* softmax_off_by_one (Miller, 2023): exp(s) / (1 + Σ exp(s)); lse = log(1 + Σ exp(s))
* clipped_softmax (Bondarenko et al., 2023): clip((ζ − γ)·softmax(s) + γ, 0, 1) @ v
* natten2d (Hassani et al.; NATTEN): a loop transcription of NATTEN's get_window_start
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from tests.library import strategies as S

TOL = 1e-6
F64 = torch.float64

MAX_REL_ERR: dict[tuple[str, str], float] = defaultdict(float)


def _check(name: str, what: str, got: torch.Tensor, want: torch.Tensor):
    assert not torch.isnan(got).any(), f"{name}: NaN in attnc's {what}"
    e = S.rel_err(got, want)
    MAX_REL_ERR[(name, what)] = max(MAX_REL_ERR[(name, what)], e)
    assert e <= TOL, f"{name}: {what} rel err {e:.3g}"


@functools.lru_cache(maxsize=None)
def _library(name):
    return attnc.library_cascade(name)


@functools.lru_cache(maxsize=None)
def _text(text):
    return attnc.spec_from_text(text).cascade("a")


# ----------------------------------------------------------------------------- hand formulas


def expand_heads(k: torch.Tensor, Hq: int) -> torch.Tensor:
    """GQA: query head h uses key/value head h // (Hq // Hkv)."""
    Hkv = k.shape[1]
    idx = torch.tensor([h // (Hq // Hkv) for h in range(Hq)])
    return k[:, idx]


def logits(p: S.Problem, scale: float | None = None) -> torch.Tensor:
    s = p.shape
    scale = 1.0 / math.sqrt(s.D) if scale is None else scale
    return scale * torch.einsum("bhid,bhjd->bhij", p.q, expand_heads(p.k, s.Hq))


def values(p: S.Problem) -> torch.Tensor:
    return expand_heads(p.v, p.shape.Hq)


def hand_sigmoid(p, bias, keep=None):
    w = torch.sigmoid(logits(p) + bias)
    if keep is not None:
        w = w * keep
    return w @ values(p)


def hand_relu(p, divisor, keep=None):
    w = torch.relu(logits(p))
    if keep is not None:
        w = w * keep
    return w @ values(p) / divisor


def hand_none(p, keep=None):
    w = logits(p)
    if keep is not None:
        w = w * keep
    return w @ values(p)


def hand_softmax_sink(p, sink, keep=None):
    s = logits(p)
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    B, H, Nq, _ = s.shape
    col = sink.view(1, H, 1, 1).expand(B, H, Nq, 1)
    full = torch.cat([s, col], dim=-1)
    probs = torch.softmax(full, dim=-1)[..., :-1]
    return probs @ values(p), torch.logsumexp(full, dim=-1)


def hand_off_by_one_literal(p):
    """exp(s) / (1 + Σ exp(s)) literally (fine for moderate logits)."""
    e = torch.exp(logits(p))
    z = 1.0 + e.sum(-1, keepdim=True)
    return (e / z) @ values(p), torch.log(z[..., 0])


def hand_off_by_one_stable(p, keep=None):
    """softmax₁ = softmax over [0, s_1, …, s_n] with the 0 column dropped (stable for any logit)."""
    s = logits(p)
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    full = torch.cat([torch.zeros_like(s[..., :1]), s], dim=-1)
    return torch.softmax(full, -1)[..., 1:] @ values(p), torch.logsumexp(full, -1)


def hand_clipped_softmax(p, zeta, gamma, keep=None):
    s = logits(p)
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    probs = torch.softmax(s, -1)
    w = torch.clamp((zeta - gamma) * probs + gamma, 0.0, 1.0)
    if keep is not None:
        w = w * keep  # the clip acts on the kept keys only; a masked key takes no weight
    return w @ values(p)


def sliding_keep(s: S.Shape, window: int) -> torch.Tensor:
    """Bottom-right causal sliding window: 0 <= i + (Nkv - Nq) - j < window, [1, 1, Nq, Nkv]."""
    i = torch.arange(s.Nq).view(-1, 1) + s.off
    j = torch.arange(s.Nkv).view(1, -1)
    return ((i - j >= 0) & (i - j < window)).view(1, 1, s.Nq, s.Nkv)


# ----------------------------------------------------------------------------- sigmoid family


@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems(), bias=st.one_of(st.none(), st.floats(-6.0, 3.0)))
def test_sigmoid(p, bias):
    kw = {} if bias is None else {"bias": bias}
    out = attnc.reference(_library("sigmoid"), p.q, p.k, p.v, **kw)
    _check("sigmoid", "out", out, hand_sigmoid(p, 0.0 if bias is None else bias))


@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems(), bias=st.one_of(st.none(), st.floats(-6.0, 3.0)))
def test_sigmoid_attention(p, bias):
    """Default bias −log(n_kv) (n_kv, not n_q: shapes here often have n_q ≠ n_kv)."""
    kw = {} if bias is None else {"bias": bias}
    out = attnc.reference(_library("sigmoid_attention"), p.q, p.k, p.v, **kw)
    _check("sigmoid_attention", "out", out, hand_sigmoid(p, -math.log(p.shape.Nkv) if bias is None else bias))


@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems(), divisor=st.one_of(st.none(), st.floats(0.25, 50.0)))
def test_relu(p, divisor):
    kw = {} if divisor is None else {"divisor": divisor}
    out = attnc.reference(_library("relu"), p.q, p.k, p.v, **kw)
    _check("relu", "out", out, hand_relu(p, p.shape.Nkv if divisor is None else divisor))


@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems())
def test_none_is_linear(p):
    out = attnc.reference(_library("none"), p.q, p.k, p.v)
    _check("none", "out", out, hand_none(p))


@pytest.mark.parametrize("name", ["sigmoid", "sigmoid_attention", "relu", "none", "clipped_softmax"])
def test_norms_without_lse_return_none(name):
    p = S.Problem(S.Shape(1, 2, 2, 3, 5, 8, 8), *S.make_tensors(S.Shape(1, 2, 2, 3, 5, 8, 8), 0), seed=0)
    out, lse = attnc.reference(_library(name), p.q, p.k, p.v, return_lse=True)
    assert lse is None
    assert torch.equal(out, attnc.reference(_library(name), p.q, p.k, p.v))


# ----------------------------------------------------------------------------- softmax with sinks


@settings(deadline=None, max_examples=20, derandomize=True)
@given(data=st.data())
def test_softmax_sink(data):
    p = data.draw(S.problems(temperatures=(0.5, 1.0, 4.0)), label="problem")
    prm = data.draw(S.sink_params(p.shape), label="params")
    out, lse = attnc.reference(_library("softmax_sink"), p.q, p.k, p.v, return_lse=True, **prm)
    want_out, want_lse = hand_softmax_sink(p, prm["sink"])
    _check("softmax_sink", "out", out, want_out)
    _check("softmax_sink", "lse", lse, want_lse)
    # the sink takes mass: the weights on real keys sum to < 1, so the output is a shrunk average
    w_sum = attnc.reference(_library("softmax_sink"), p.q, p.k, torch.ones_like(p.v[..., :1]), **prm)
    assert (w_sum < 1).all() and (w_sum > 0).all()


@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems())
def test_softmax_off_by_one(p):
    out, lse = attnc.reference(_library("softmax_off_by_one"), p.q, p.k, p.v, return_lse=True)
    want_out, want_lse = hand_off_by_one_literal(p)
    _check("softmax_off_by_one", "out", out, want_out)
    _check("softmax_off_by_one", "lse", lse, want_lse)


@settings(deadline=None, max_examples=10, derandomize=True)
@given(p=S.problems(temperatures=(300.0, 3000.0)))
def test_softmax_off_by_one_large_logits_are_stable(p):
    """Logits of hundreds to thousands overflow the literal exp; the result must stay finite."""
    out, lse = attnc.reference(_library("softmax_off_by_one"), p.q, p.k, p.v, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    want_out, want_lse = hand_off_by_one_stable(p)
    _check("softmax_off_by_one(large)", "out", out, want_out)
    _check("softmax_off_by_one(large)", "lse", lse, want_lse)


def test_softmax_off_by_one_equals_sink_zero():
    """softmax₁ is softmax_sink with every sink logit 0 (an identity between two library specs)."""
    shape = S.Shape(2, 4, 2, 6, 9, 8, 5)
    q, k, v = S.make_tensors(shape, 7, temperature=2.0)
    a, la = attnc.reference(_library("softmax_off_by_one"), q, k, v, return_lse=True)
    b, lb = attnc.reference(_library("softmax_sink"), q, k, v, return_lse=True, sink=torch.zeros(4, dtype=F64))
    assert S.rel_err(a, b) <= 1e-12 and S.rel_err(la, lb) <= 1e-12


# ----------------------------------------------------------------------------- clipped softmax


@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems(temperatures=(0.5, 2.0, 8.0)),
       zg=st.one_of(st.none(), st.tuples(st.floats(1.0, 1.5), st.floats(-0.5, 0.0))))
def test_clipped_softmax(p, zg):
    kw = {} if zg is None else {"zeta": zg[0], "gamma": zg[1]}
    zeta, gamma = (1.003, -0.003) if zg is None else zg
    out = attnc.reference(_library("clipped_softmax"), p.q, p.k, p.v, **kw)
    _check("clipped_softmax", "out", out, hand_clipped_softmax(p, zeta, gamma))


def test_clipped_softmax_clips_to_exact_zero_and_one():
    """With a strongly negative γ small probabilities clip to exactly 0; with ζ large a dominant
    probability clips to exactly 1 — so out equals v at the argmax key (a one-hot row)."""
    shape = S.Shape(1, 1, 1, 4, 6, 8, 3)
    q, k, v = S.make_tensors(shape, 3, temperature=40.0)  # nearly one-hot rows
    out = attnc.reference(_library("clipped_softmax"), q, k, v, zeta=3.0, gamma=-0.5)
    arg = (q @ k.transpose(-1, -2)).argmax(-1)  # [1, 1, 4]
    assert torch.equal(out[0, 0], v[0, 0, arg[0, 0]])


# ----------------------------------------------------------------------------- norms under a mask


MASKED_NORMS = {
    "sigmoid": "attention a(window: int, bias: float):\n    mask = sliding_window(window)\n    norm = sigmoid(bias)\n",
    "relu": "attention a(window: int):\n    mask = sliding_window(window)\n    norm = relu\n",
    "none": "attention a(window: int):\n    mask = sliding_window(window)\n    norm = none\n",
    "softmax_sink": "attention a(window: int, sink: tensor[H] float):\n    mask = sliding_window(window)\n    norm = softmax_sink(sink)\n",
    "softmax_off_by_one": "attention a(window: int):\n    mask = sliding_window(window)\n    norm = softmax_off_by_one\n",
    # γ > 0 here, so a masked key that leaked into the clip would get weight γ
    "clipped_softmax": "attention a(window: int, zeta: float, gamma: float):\n    mask = sliding_window(window)\n    norm = clipped_softmax(zeta, gamma)\n",
}


@pytest.mark.parametrize("name", list(MASKED_NORMS))
@settings(deadline=None, max_examples=12, derandomize=True)
@given(data=st.data())
def test_norms_reduce_over_kept_keys_only(name, data):
    p = data.draw(S.problems(), label="problem")
    s = p.shape
    window = data.draw(st.integers(0, s.Nkv + 1), label="window")
    keep = sliding_keep(s, window)
    rows = keep.expand(s.B, s.Hq, s.Nq, s.Nkv).any(-1)
    prm = {"window": window}
    want_lse = None
    if name == "sigmoid":
        prm["bias"] = data.draw(st.floats(-3.0, 1.0), label="bias")
        want = hand_sigmoid(p, prm["bias"], keep)
    elif name == "relu":
        want = hand_relu(p, s.Nkv, keep)  # the divisor stays n_kv, not the kept count
    elif name == "none":
        want = hand_none(p, keep)
    elif name == "softmax_sink":
        prm.update(data.draw(S.sink_params(s), label="sink"))
        want, want_lse = hand_softmax_sink(p, prm["sink"], keep)
    elif name == "softmax_off_by_one":
        want, want_lse = hand_off_by_one_stable(p, keep)
    else:
        prm["zeta"] = data.draw(st.floats(1.0, 1.3), label="zeta")
        prm["gamma"] = data.draw(st.floats(0.0, 0.2), label="gamma")
        want = hand_clipped_softmax(p, prm["zeta"], prm["gamma"], keep)
    res = attnc.reference(_text(MASKED_NORMS[name]), p.q, p.k, p.v, return_lse=want_lse is not None, **prm)
    out, lse = res if want_lse is not None else (res, None)
    _check(f"{name}+mask", "out", out[rows], want[rows])
    # documented convention for rows with no kept key, whatever the norm
    assert (out[~rows] == 0).all()
    if want_lse is not None:
        _check(f"{name}+mask", "lse", lse[rows], want_lse[rows])
        assert (lse[~rows] == -math.inf).all()
        assert not torch.isnan(lse).any()


# ----------------------------------------------------------------------------- natten2d


def attnc_weights(cascade, n: int, **params) -> torch.Tensor:
    """The weights the reference implies, [n, n]: q = 0 makes every kept key's weight 1/count,
    and v = I reads the weights out, so keep = (weights > 0)."""
    q = torch.zeros(1, 1, n, 8, dtype=F64)
    k = torch.randn(1, 1, n, 8, generator=S.seeded(0), dtype=F64)
    v = torch.eye(n, dtype=F64).view(1, 1, n, n)
    w = attnc.reference(cascade, q, k, v, **params)[0, 0]
    return w


def test_natten_reference_helper_is_sane():
    """The loop reference itself: windows hold the query, are centred in the interior, stay inside
    the axis, and step by the dilation within the query's dilation group."""
    for L, K, d in [(9, 3, 1), (12, 5, 2), (21, 7, 3), (23, 7, 3), (7, 7, 1), (16, 5, 3)]:
        for i, keys in enumerate(S.natten_axis_neighbors(L, K, d)):
            assert len(set(keys)) == K and i in keys
            assert all(0 <= j < L and j % d == i % d for j in keys)
            if i - (K // 2) * d >= 0 and i + (K // 2) * d < L:
                assert keys[0] == i - (K // 2) * d


@settings(deadline=None, max_examples=20, derandomize=True)
@given(case=S.natten_cases())
def test_natten2d_mask_matches_natten(case):
    H, W, K, d = case.height, case.width, case.kernel, case.dilation
    n = H * W
    weights = attnc_weights(_library("natten2d"), n, width=W, kernel_h=K, kernel_w=K, dilation_h=d, dilation_w=d)
    keep = weights > 0
    want = S.natten2d_mask(H, W, K, d)
    bad = (keep != want).nonzero()
    assert bad.numel() == 0, f"{len(bad)} mismatching pairs, first (query, key) = {bad[0].tolist()} (H={H}, W={W})"
    # every query sees exactly kernel² keys, each with weight 1 / kernel²
    assert (keep.sum(-1) == K * K).all()
    assert torch.allclose(weights[keep], torch.full_like(weights[keep], 1.0 / (K * K)), rtol=1e-12)


@settings(deadline=None, max_examples=15, derandomize=True)
@given(case=S.natten_cases(max_extra=3), seed=st.integers(0, 2**31 - 1), heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]))
def test_natten2d_outputs(case, seed, heads):
    H, W, K, d = case.height, case.width, case.kernel, case.dilation
    n = H * W
    shape = S.Shape(1, heads[0], heads[1], n, n, 8, 8)
    q, k, v = S.make_tensors(shape, seed, temperature=2.0)
    p = S.Problem(shape, q, k, v, seed)
    keep = S.natten2d_mask(H, W, K, d)
    s = logits(p).masked_fill(~keep, -math.inf)
    want = torch.softmax(s, -1) @ values(p)
    out, lse = attnc.reference(_library("natten2d"), q, k, v, return_lse=True, width=W, kernel_h=K, kernel_w=K,
                                dilation_h=d, dilation_w=d)
    _check("natten2d", "out", out, want)
    _check("natten2d", "lse", lse, torch.logsumexp(s, -1))
