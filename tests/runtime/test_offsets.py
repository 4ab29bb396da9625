"""Position offsets (issue 19 item 1): a call whose queries sit at ``q_offset + i`` and keys at
``kv_offset + j`` of a ``seq_len``-token self-attention computes exactly those rows of the full
call — checked against the full call's own kernel result, never against the offset machinery:
every library variant on a chunk of rows with all keys; a causal decoding loop over a growing
cache; a padded cache with per-row lengths; keys split in two shards merged by `attnc.merge`;
gradients of a chunk; the reference interpreter at offsets."""

from __future__ import annotations

import math

import pytest
import torch

import attnc
from tests.codegen.test_forward_kernels import _params

pytestmark = pytest.mark.usefixtures("poison")

GRIDS = ("natten1d", "natten2d", "natten3d")  # grid variants: refused for now
VARIANTS = sorted(name for name in attnc.library.names() if name not in GRIDS)


def _qkv(B, Hq, Hkv, N, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, N, 16, generator=g).to(dtype), torch.randn(B, Hkv, N, 16, generator=g).to(dtype),
            torch.randn(B, Hkv, N, 16, generator=g).to(dtype))


def _close(got, want, tol=1e-5):
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs err {err:.3g}"


@pytest.mark.parametrize("name", VARIANTS)
def test_a_chunk_of_rows_with_every_key_is_those_rows_of_the_full_call(name):
    B, Hq, Hkv, L = 2, 2, 1, 21
    q, k, v = _qkv(B, Hq, Hkv, L, seed=len(name))
    params = _params(name, B, Hq, L, L, torch.Generator().manual_seed(1))
    attn = attnc.load(name)
    lse_too = attn.cascade.has_lse
    full = attn(q, k, v, return_lse=lse_too, **params)
    for a, b in ((0, 5), (9, 21)):
        part = attn(q[:, :, a:b], k, v, q_offset=a, return_lse=lse_too, **params)
        for got, want in zip(part, full) if lse_too else ((part, full),):
            _close(got, want[:, :, a:b])


@pytest.mark.parametrize("name", GRIDS)
def test_grid_variants_are_refused_with_the_reason(name):
    q, k, v = _qkv(1, 1, 1, 16)
    with pytest.raises(ValueError, match="grid variant"):
        attnc.load(name)(q, k, v, q_offset=3)


def test_a_decoding_loop_over_a_growing_cache_equals_the_full_call():
    """One new token per step, the cache holding every earlier one: causal and sliding window."""
    q, k, v = _qkv(2, 4, 2, 12, seed=3)
    for attn, params in ((attnc.load("causal"), {}), (attnc.load("sliding_window"), {"window": 6})):
        full = attn(q, k, v, **params)
        for t in range(12):
            step = attn(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], q_offset=t, **params)
            _close(step, full[:, :, t:t + 1])


def test_a_padded_cache_with_per_row_lengths():
    """Rows of different lengths in one padded cache: keys at or past a row's `seq_len` are not
    there, whatever the padding holds (finite values, as for any dropped key)."""
    lengths = [5, 23, 1]
    q, k, v = _qkv(3, 2, 1, 24, seed=4)
    attn = attnc.load("causal")
    pos = torch.tensor([n - 1 for n in lengths])
    last = torch.stack([q[r, :, n - 1] for r, n in enumerate(lengths)]).unsqueeze(2)
    out = attn(last, k, v, q_offset=pos, seq_len=torch.tensor(lengths))
    for r, n in enumerate(lengths):
        alone = attn(q[r:r + 1, :, :n], k[r:r + 1, :, :n], v[r:r + 1, :, :n])
        _close(out[r:r + 1], alone[:, :, n - 1:n])


def test_keys_in_two_shards_merge_into_the_full_call():
    """Context parallelism's step: each shard of keys at its kv_offset, merged by their lse."""
    q, k, v = _qkv(1, 2, 2, 30, seed=5)
    for name, params in (("causal", {}), ("sliding_window", {"window": 9}), ("document", {
            "doc": torch.tensor([[0] * 7 + [1] * 16 + [2] * 7])})):
        attn = attnc.load(name)
        full, lse = attn(q, k, v, return_lse=True, **params)
        for m in (0, 13, 30):  # an empty shard included
            a = attn(q, k[:, :, :m], v[:, :, :m], kv_offset=0, seq_len=30, return_lse=True, **params)
            b = attn(q, k[:, :, m:], v[:, :, m:], kv_offset=m, seq_len=30, return_lse=True, **params)
            out, got_lse = attnc.merge(*a, *b)
            _close(out, full)
            assert torch.equal(got_lse == -math.inf, lse == -math.inf)


def test_gradients_of_a_chunk_are_the_full_calls():
    q, k, v = _qkv(1, 2, 1, 26, seed=6)
    w = torch.randn(1, 2, 26, 16, generator=torch.Generator().manual_seed(7))
    w[:, :, :8] = 0
    w[:, :, 19:] = 0
    attn = attnc.load("sliding_window")
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad((attn(*xs, window=5) * w).sum(), xs)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad((attn(xs[0][:, :, 8:19], xs[1], xs[2], q_offset=8, window=5) * w[:, :, 8:19]).sum(), xs)
    for g, f in zip(got, want):
        _close(g, f)


def test_the_reference_takes_offsets_too():
    q, k, v = _qkv(2, 2, 2, 18, seed=8)
    attn = attnc.load("alibi")
    want = attn.reference(q, k, v)[:, :, 4:9]
    _close(attn.reference(q[:, :, 4:9], k, v, q_offset=4), want, 1e-12)
    _close(attn(q[:, :, 4:9], k, v, q_offset=4), want)


def test_bad_offsets_are_refused():
    q, k, v = _qkv(2, 1, 1, 8)
    attn = attnc.load("causal")
    with pytest.raises(ValueError, match="`q_offset` must be in 0"):
        attn(q, k, v, q_offset=-1)
    with pytest.raises(TypeError, match="`kv_offset` must be an int or an integer tensor"):
        attn(q, k, v, kv_offset=torch.zeros(2))
    with pytest.raises(ValueError, match=r"`seq_len` must be an int or a tensor \[B\]"):
        attn(q, k, v, seq_len=torch.tensor([8, 8, 8]))
    doc = attnc.load("document")
    with pytest.raises(ValueError, match="`doc` must cover the sequence"):
        doc(q[:, :, :2], k, v, q_offset=10, doc=torch.zeros(2, 8, dtype=torch.long))
