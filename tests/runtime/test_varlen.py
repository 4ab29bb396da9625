"""Packed variable-length batches (``Attention.varlen``, FlashAttention's varlen layout): outputs,
lse and gradients equal running each sequence alone through the float64 reference, for static,
runtime-classified and unmasked variants, GQA, empty sequences and sequence lengths that are not
multiples of the tile; bad cumulative lengths are refused with the argument named."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.compiler import interpreter_tiles

SETTINGS = settings(max_examples=12, deadline=None, phases=[p for p in Phase if p is not Phase.explain],
                    suppress_health_check=[HealthCheck.too_slow])
F64 = torch.float64


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32)


def _params(name: str, lens_k: list[int], draw) -> dict:
    longest = max(lens_k, default=0)
    if name == "sliding_window":
        return {"window": draw(st.integers(0, longest + 1))}
    if name == "chunked":
        return {"chunk": draw(st.integers(-1, longest + 1))}
    if name == "sink_window":
        return {"sinks": draw(st.integers(0, 3)), "window": draw(st.integers(0, longest + 1))}
    if name == "document":  # one row of ids per sequence, sorted, as long as the longest
        ids = torch.tensor(draw(st.lists(st.lists(st.integers(0, 3), min_size=longest, max_size=longest),
                                         min_size=len(lens_k), max_size=len(lens_k))), dtype=torch.int64)
        return {"doc": torch.sort(ids.view(len(lens_k), longest), dim=1).values}
    if name == "softmax_sink":
        return {"sink": torch.tensor(draw(st.lists(st.floats(-2, 2), min_size=2, max_size=2)))}
    return {}


def _alone(params: dict, b: int, n_kv: int) -> dict:
    """The parameters of sequence b run alone (per-sequence tensor rows, cut to its length)."""
    return {k: (v[b:b + 1, :n_kv] if k == "doc" else v) for k, v in params.items()}


NAMES = ["causal", "sliding_window", "chunked", "sink_window", "document", "softmax", "softmax_sink"]


@SETTINGS
@given(data=st.data(), name=st.sampled_from(NAMES), heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
       tiles=st.sampled_from([(8, 8), (16, 8), (8, 16)]))
def test_varlen_equals_each_sequence_alone(data, name, heads, tiles):
    count = data.draw(st.integers(1, 4))
    lens_k = data.draw(st.lists(st.integers(0, 40), min_size=count, max_size=count))
    if name == "document":  # ids [sequences, longest] must not be empty (as in a dense call)
        lens_k[0] = max(lens_k[0], 1)
    # document masks need n_q <= n_kv; others draw query lengths freely (0 included)
    lens_q = [data.draw(st.integers(0, n if name == "document" else 40)) for n in lens_k]
    params = _params(name, lens_k, data.draw)
    Hq, Hkv = heads
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(sum(lens_q), Hq, 16, generator=gen).requires_grad_()
    k = torch.randn(sum(lens_k), Hkv, 16, generator=gen).requires_grad_()
    v = torch.randn(sum(lens_k), Hkv, 8, generator=gen).requires_grad_()
    dout = torch.randn(sum(lens_q), Hq, 8, generator=gen)
    dlse = torch.randn(sum(lens_q), Hq, generator=gen)
    attn = attnc.load(name)
    with interpreter_tiles(*tiles):
        out, lse = attn.varlen(q, k, v, _cu(lens_q), _cu(lens_k), return_lse=True, **params)
        finite = torch.where(torch.isfinite(lse), lse, 0.0)  # rows that keep no key have lse -inf
        ((out * dout).sum() + (finite * dlse).sum()).backward()
    assert out.shape == (sum(lens_q), Hq, 8) and lse.shape == (sum(lens_q), Hq)
    q0, k0 = 0, 0
    for b, (nq, nk) in enumerate(zip(lens_q, lens_k, strict=True)):
        rows, keys = slice(q0, q0 + nq), slice(k0, k0 + nk)
        q0, k0 = q0 + nq, k0 + nk
        if nq == 0:
            continue
        qs, ks, vs = (t.detach()[s].transpose(0, 1)[None].to(F64).requires_grad_() for t, s in ((q, rows), (k, keys), (v, keys)))
        want, want_lse = attn.reference(qs, ks, vs, return_lse=True, **_alone(params, b, nk))
        want_finite = torch.where(torch.isfinite(want_lse), want_lse, 0.0)
        ((want * dout[rows].transpose(0, 1)[None].to(F64)).sum() + (want_finite * dlse[rows].t()[None].to(F64)).sum()).backward()
        torch.testing.assert_close(out[rows].detach().transpose(0, 1)[None].to(F64), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse[rows].detach().t()[None].to(F64), want_lse, rtol=1e-5, atol=1e-5)
        for got, ref in ((q.grad[rows], qs.grad), (k.grad[keys], ks.grad), (v.grad[keys], vs.grad)):
            torch.testing.assert_close(got.transpose(0, 1)[None].to(F64), ref, rtol=1e-4, atol=1e-4)


def test_varlen_matches_the_dense_kernel_per_sequence():
    attn = attnc.load("sliding_window")
    lens = [13, 0, 29]
    q, k, v = (torch.randn(sum(lens), 2, 16) for _ in range(3))
    out = attn.varlen(q, k, v, _cu(lens), _cu(lens), window=5)
    start = 0
    for n in lens:
        part = slice(start, start + n)
        start += n
        if n:
            dense = attn(*(t[part].transpose(0, 1)[None] for t in (q, k, v)), window=5)
            torch.testing.assert_close(out[part], dense[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("cu_q", "cu_k", "match"), [
    ([1, 4], [0, 4], "must start at 0"),
    ([0, 3, 2, 4], [0, 1, 2, 4], "must not decrease"),
    ([0, 3], [0, 4], "must end at the number of rows"),
    ([0, 4], [0, 2, 4], "as many sequences"),
])
def test_bad_cumulative_lengths_are_refused(cu_q, cu_k, match):
    q = torch.randn(4, 1, 8)
    with pytest.raises(ValueError, match=match):
        attnc.load("causal").varlen(q, q, q, torch.tensor(cu_q), torch.tensor(cu_k))


def test_varlen_argument_errors_name_the_argument():
    attn = attnc.load("causal")
    q = torch.randn(4, 1, 8)
    with pytest.raises(TypeError, match="cu_seqlens_k"):
        attn.varlen(q, q, q, torch.tensor([0, 4]), [0, 4])
    with pytest.raises(ValueError, match="`q` must be a 3-D tensor"):
        attn.varlen(q[None], q, q, torch.tensor([0, 4]), torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="`v` must be a torch.Tensor"):
        attn.varlen(q, q, [0.0], torch.tensor([0, 4]), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"packed shapes do not match: q \(4, 1, 8\)"):
        attn.varlen(q, torch.randn(4, 1, 6), q, torch.tensor([0, 4]), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="must be a multiple of key/value heads"):
        attn.varlen(torch.randn(4, 3, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8), torch.tensor([0, 4]),
                    torch.tensor([0, 4]))
    # a default computed from n_kv would differ per sequence: it must be given
    with pytest.raises(ValueError, match="`divisor`"):
        attnc.load("relu").varlen(q, q, q, torch.tensor([0, 4]), torch.tensor([0, 4]))
    out = attnc.load("relu").varlen(q, q, q, torch.tensor([0, 4]), torch.tensor([0, 4]), divisor=4.0)
    assert torch.isfinite(out).all()
