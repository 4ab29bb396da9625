"""attnc.merge (issue 19 item 5): two results over disjoint key sets combine into the result over
their union — checked against one call over the union, with the parts computed by attnc's
kernels over a key partition (any partition, including empty parts and rows no key reaches)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc

pytestmark = pytest.mark.usefixtures("poison")

# the keys a call sees are chosen by a [B, N_KV] tensor, so the parts keep their positions
SUBSET = """
attention subset(keep: tensor[B, N_KV] bool, slope: float = 0.1):
    score = score - slope * abs(q_idx - kv_idx)
    mask = keep[b, kv_idx] and kv_idx <= q_idx + (n_kv - n_q)
"""
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@settings(max_examples=15, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(list(TOL)), heads=st.sampled_from([(1, 1), (4, 2)]),
       nq=st.integers(1, 20), nkv=st.integers(1, 40))
def test_merging_two_parts_gives_the_whole(data, dtype, heads, nq, nkv):
    attn = attnc.compile(SUBSET)
    Hq, Hkv = heads
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    q = torch.randn(2, Hq, nq, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, Hkv, nkv, 16, generator=g).to(dtype) for _ in range(2))
    keep = torch.rand(2, nkv, generator=g) < data.draw(st.sampled_from([0.0, 0.5, 1.0]), label="density")
    part = torch.rand(2, nkv, generator=g) < data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="split")
    whole, lse = attn(q, k, v, keep=keep, return_lse=True)
    out_a, lse_a = attn(q, k, v, keep=keep & part, return_lse=True)
    out_b, lse_b = attn(q, k, v, keep=keep & ~part, return_lse=True)
    out, got_lse = attnc.merge(out_a, lse_a, out_b, lse_b)
    assert out.dtype == dtype and got_lse.dtype == torch.float32
    empty = lse == -math.inf
    assert torch.equal(got_lse == -math.inf, empty) and (out[empty] == 0).all()
    assert _maxabs(got_lse[~empty] - lse[~empty]) <= 1e-5 * max(1.0, _maxabs(lse[~empty]))
    err = _maxabs(out.double() - whole.double())
    assert err <= TOL[dtype] * max(1.0, _maxabs(whole)), f"max abs err {err:.3g}"


def _maxabs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def test_an_empty_part_contributes_nothing_even_nan():
    g = torch.Generator().manual_seed(0)
    out_b, lse_b = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, generator=g)
    out_a = torch.full_like(out_b, float("nan"))
    lse_a = torch.full_like(lse_b, -math.inf)
    out, lse = attnc.merge(out_a, lse_a, out_b, lse_b)
    assert torch.equal(out, out_b) and torch.equal(lse, lse_b)
    out, lse = attnc.merge(out_a, lse_a, out_a, lse_a)  # both empty: attnc's empty-row result
    assert (out == 0).all() and (lse == -math.inf).all()


def test_merge_is_differentiable():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64),
            torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)]
    with torch.no_grad():
        args[1][0, 0] = -math.inf  # one row with an empty part: finite gradients elsewhere, none through it
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *x: attnc.merge(*x), args)
    out, lse = attnc.merge(*args)
    grads = torch.autograd.grad((out.sum() + lse.sum()), args)
    assert all(torch.isfinite(x).all() for x in grads)
    assert (grads[0][0, 0] == 0).all()


def test_wrong_shapes_are_refused():
    out, lse = torch.zeros(2, 3, 4), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="without the last dimension"):
        attnc.merge(out, lse, out, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        attnc.merge(out, lse, torch.zeros(2, 3, 5), lse)


# ---------------------------------------------------------------- part_rule: when parts combine

RULES = {  # library variant → how its parts over disjoint key sets combine (None: they do not)
    "causal": "lse", "alibi": "lse", "document": "lse", "softcap": "lse", "relative_bias": "lse",
    "sink_window": "lse", "sigmoid": "sum", "relu": "sum", "none": "sum", "sigmoid_attention": "sum",
    "softmax_sink": None, "softmax_off_by_one": None, "clipped_softmax": None, "stick_breaking": None,
    "linear_attention": None, "differential": None, "natten2d": None,
}


@pytest.mark.parametrize("name", list(RULES))
def test_the_part_rule_of_library_variants(name):
    from attnc.runtime.merge import part_rule

    rule, why = part_rule(attnc.load(name).cascade)
    assert rule == RULES[name], why
    assert (why is None) == (rule is not None)


def _combine(rule, parts):
    out, lse = parts[0]
    for o, l in parts[1:]:
        out, lse = attnc.merge(out, lse, o, l) if rule == "lse" else (out + o, None)
    return out, lse


def test_parts_combine_by_the_rule_on_generated_definitions():
    """Soundness of ``part_rule``'s structural proof on programs nobody wrote: whenever it names
    a rule, the float64 reference over the keys cut in two (kv_offset, the ring's call) combines
    by it into the call over every key; rows at global positions (q_offset) as the ring has them."""
    from hypothesis import HealthCheck

    from attnc.runtime.merge import part_rule
    from attnc.testing import problems
    from attnc.testing.specs import definitions

    seen = {"lse": 0, "sum": 0, None: 0}

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(d=definitions(), data=st.data())
    def run(d, data):
        attn = attnc.compile(d.text)
        rule, _ = part_rule(attn.cascade)
        seen[rule] += 1
        if rule is None:
            return
        problem = data.draw(problems(attn, max_batch=1, heads=((2, 1),), max_len=12, head_dims=(4,),
                                     dtypes=(torch.float64,), params=d.param_strategies, defaults=False), label="problem")
        q, k, v, params = problem.inputs()
        n = min(q.shape[2], k.shape[2])  # tensor parameters sized by N_Q or N_KV cover n tokens
        cut = data.draw(st.integers(0, n), label="cut")
        rows = data.draw(st.integers(0, n - 1), label="first row")
        q, k, v = q[:, :, rows:n], k[:, :, :n], v[:, :, :n]
        lse_too = rule == "lse"
        call = dict(return_lse=lse_too, q_offset=rows, seq_len=n, **params)
        whole = attn.reference(q, k, v, **call)
        parts = [attn.reference(q, k[:, :, a:b], v[:, :, a:b], kv_offset=a, **call) for a, b in ((0, cut), (cut, n))]
        parts = [p if lse_too else (p, None) for p in parts]
        out, lse = _combine(rule, parts)
        want, want_lse = whole if lse_too else (whole, None)
        assert torch.allclose(out, want, rtol=1e-9, atol=1e-9, equal_nan=True), d.text
        if lse_too:
            assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse)), d.text
            fin = torch.isfinite(want_lse)
            assert torch.allclose(lse[fin], want_lse[fin], rtol=1e-9, atol=1e-9), d.text

    run()
    assert seen["lse"] >= 5 and seen["sum"] >= 10 and seen[None] >= 10, seen
