"""``attnc.flex_attention`` against torch's ``flex_attention`` (eager, CPU) — issue 18 item 3:
the same call, the same numbers; a BlockMask read for its mask_mod only; gradients against a dense
float64 oracle (torch's flex has no CPU backward). Outputs poisoned first."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import (AuxRequest, BlockMask, and_masks, create_block_mask, flex_attention,
                                               or_masks)

import attnc
from attnc.runtime import flex

pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.filterwarnings("ignore:return_lse is deprecated"), pytest.mark.usefixtures("poison")]


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() <= 5


def stripes(b, h, q_idx, kv_idx):
    return (kv_idx % 3 == 0) | (q_idx == kv_idx)


def rel_bias(score, b, h, q_idx, kv_idx):
    return score + (q_idx - kv_idx) * 0.05 * (h + 1)


def soft_cap(score, b, h, q_idx, kv_idx):
    return 8.0 * torch.tanh(score / 8.0)


MASKS = {"none": None, "causal": causal, "window": window, "causal & window": and_masks(causal, window),
         "window | stripes": or_masks(window, stripes)}
SCORES = {"none": None, "rel_bias": rel_bias, "soft_cap": soft_cap}


def _qkv(B, Hq, Hkv, Nq, Nkv, D, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Nq, D, generator=g), torch.randn(B, Hkv, Nkv, D, generator=g),
            torch.randn(B, Hkv, Nkv, D, generator=g))


@settings(max_examples=25, deadline=None)
@given(mask=st.sampled_from(list(MASKS)), score=st.sampled_from(list(SCORES)), B=st.integers(1, 2),
       heads=st.sampled_from([(2, 2), (4, 2), (3, 1)]), Nq=st.integers(1, 40), Nkv=st.integers(1, 40),
       D=st.sampled_from([8, 16, 24]), scale=st.sampled_from([None, 0.3]), seed=st.integers(0, 2**16))
def test_same_call_same_numbers_as_torch_flex(mask, score, B, heads, Nq, Nkv, D, scale, seed):
    Hq, Hkv = heads
    q, k, v = _qkv(B, Hq, Hkv, Nq, Nkv, D, seed)
    mask_mod, score_mod = MASKS[mask], SCORES[score]
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, B, Hq, Nq, Nkv, device="cpu")
    kw = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=Hq != Hkv, return_lse=True)
    out, lse = attnc.flex_attention(q, k, v, **kw)
    want, want_lse = flex_attention(q, k, v, **kw)
    rows = torch.isfinite(want_lse)
    assert torch.allclose(out[rows], want[rows], atol=2e-5, rtol=1e-4)
    assert torch.allclose(lse[rows], want_lse[rows], atol=2e-5, rtol=1e-5)
    assert (out[~rows] == 0).all() and (lse[~rows] == -math.inf).all()


def test_return_aux_and_kernel_options_as_flex_takes_them():
    q, k, v = _qkv(1, 2, 2, 12, 12, 16, 1)
    bm = create_block_mask(causal, 1, 2, 12, 12, device="cpu")
    out, aux = attnc.flex_attention(q, k, v, block_mask=bm, return_aux=AuxRequest(lse=True),
                                    kernel_options={"BLOCK_M": 64})
    want, want_aux = flex_attention(q, k, v, block_mask=bm, return_aux=AuxRequest(lse=True))
    assert torch.allclose(out, want, atol=2e-5) and torch.allclose(aux.lse, want_aux.lse, atol=2e-5)
    only = attnc.flex_attention(q, k, v, block_mask=bm)
    assert isinstance(only, torch.Tensor) and torch.allclose(only, want, atol=2e-5)


def _dense(q, k, v, score_mod, mask_mod):
    """Flex's definition in float64, materialized on broadcast index tensors."""
    Hq = q.shape[1]
    k, v = (t.repeat_interleave(Hq // t.shape[1], dim=1) for t in (k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    idx = (torch.arange(q.shape[0]).view(-1, 1, 1, 1), torch.arange(Hq).view(1, -1, 1, 1),
           torch.arange(q.shape[2]).view(1, 1, -1, 1), torch.arange(k.shape[2]).view(1, 1, 1, -1))
    if score_mod is not None:
        s = score_mod(s, *idx)
    if mask_mod is not None:
        s = s.masked_fill(~torch.as_tensor(mask_mod(*idx)).expand(s.shape), -math.inf)
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("mask,score", [("causal", "rel_bias"), ("causal & window", "soft_cap"), ("none", "none")])
def test_gradients(mask, score):
    q, k, v = _qkv(1, 4, 2, 18, 22, 16, 7)
    mask_mod, score_mod = MASKS[mask], SCORES[score]
    bm = None if mask_mod is None else create_block_mask(mask_mod, 1, 4, 18, 22, device="cpu")
    x32 = [t.clone().requires_grad_() for t in (q, k, v)]
    x64 = [t.double().requires_grad_() for t in (q, k, v)]
    w = torch.randn(1, 4, 18, 16, generator=torch.Generator().manual_seed(8))
    got = torch.autograd.grad((attnc.flex_attention(*x32, score_mod=score_mod, block_mask=bm, enable_gqa=True)
                               * w).sum(), x32)
    want = torch.autograd.grad((_dense(*x64, score_mod, mask_mod) * w.double()).sum(), x64)
    for name, g, f in zip("qkv", got, want):
        err = float((g.double() - f).norm() / f.norm())
        assert err <= 1e-4, f"d{name} rel err {err:.3g}"


def test_the_same_functions_are_traced_once():
    q, k, v = _qkv(1, 2, 2, 16, 16, 16, 2)
    bm = create_block_mask(window, 1, 2, 16, 16, device="cpu")
    attnc.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm)
    first = flex.traced(rel_bias, window)
    builds = attnc.compile_count()
    attnc.flex_attention(q * 2, k, v, score_mod=rel_bias,
                         block_mask=create_block_mask(window, 1, 2, 16, 16, device="cpu"))
    assert flex.traced(rel_bias, window) is first and attnc.compile_count() == builds


def test_what_is_refused_says_why():
    q, k, v = _qkv(1, 4, 2, 16, 16, 16, 3)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        attnc.flex_attention(q, k, v)
    bm = create_block_mask(causal, 1, 4, 32, 32, device="cpu")
    with pytest.raises(ValueError, match=r"made for \(Q_LEN, KV_LEN\) = \(32, 32\)"):
        attnc.flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    with pytest.raises(TypeError, match="must be a torch BlockMask"):
        attnc.flex_attention(q, k, v, block_mask=torch.ones(16, 16, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(ValueError, match="max_scores"):
        attnc.flex_attention(q, k, v, enable_gqa=True, return_aux=AuxRequest(lse=True, max_scores=True))
    # block lists without a mask_mod: the lists are the mask, which attnc does not read
    nb = torch.tensor([[[1]]], dtype=torch.int32)  # one block per query block of 128: the first only
    idx = torch.zeros(1, 1, 1, 2, dtype=torch.int32)
    lists = BlockMask.from_kv_blocks(nb, idx, BLOCK_SIZE=8, seq_lengths=(16, 16))
    with pytest.raises(attnc.SpecError, match="has no mask_mod"):
        attnc.flex_attention(q, k, v, block_mask=lists, enable_gqa=True)


SOFTCAP = 20.0
DOC = torch.tensor([0] * 6 + [1] * 6)


def _capped(score, b, h, q_idx, kv_idx):
    return SOFTCAP * torch.tanh(score / SOFTCAP)


def _same_doc(b, h, q_idx, kv_idx):
    return DOC[q_idx] == DOC[kv_idx]


def test_a_rebound_global_is_traced_again():
    """A function reads its globals at each call under Flex; a new object behind a name (a float or
    a tensor rebound, not changed in place) must not reuse the old trace."""
    global SOFTCAP, DOC
    q, k, v = _qkv(1, 2, 2, 12, 12, 8, 9)
    saved = SOFTCAP, DOC
    try:
        for cap, doc in ((20.0, saved[1]), (0.5, saved[1]), (0.5, torch.tensor([0] * 3 + [1] * 9))):
            SOFTCAP, DOC = cap, doc
            bm = create_block_mask(_same_doc, 1, 2, 12, 12, device="cpu")
            out = attnc.flex_attention(q, k, v, score_mod=_capped, block_mask=bm)
            assert torch.allclose(out, flex_attention(q, k, v, score_mod=_capped, block_mask=bm), atol=2e-5)
    finally:
        SOFTCAP, DOC = saved
