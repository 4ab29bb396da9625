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
