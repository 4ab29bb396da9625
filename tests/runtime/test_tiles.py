"""Tile visits of the generated forward kernel, counted by instrumenting the interpreter
(``attnc.testing.tiles``): sparsity must never skip a tile that holds a kept pair, and for masks
whose bounds are exact (see ``ir/bounds.py``) the kernel visits exactly the needed
tiles, each once per pass; and results (forward and gradients) never depend on the tile size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.compiler import interpreter_tiles
from attnc.testing.tiles import count_tiles
from tests.library.strategies import Shape, kernel_params, natten_kernel_problems

MASKED = ["causal", "sliding_window", "chunked", "prefix_lm", "sink_window", "dilated_window", "document"]
# Masks whose clauses are comparisons linear in j (`//` by a parameter, abs, `or`, and a
# congruence for dilation no larger than a tile — the strategies draw dilation <= 4): exact.
EXACT = ["causal", "sliding_window", "chunked", "prefix_lm", "sink_window", "dilated_window"]
TILES = st.sampled_from([(16, 16), (16, 32), (32, 16), (32, 32)])


def _count(draw, name: str, tiles):
    """The tile count of library mask ``name`` on drawn lengths and parameters."""
    n_kv = draw(st.integers(1, 96))
    n_q = n_kv if name == "document" else draw(st.integers(1, 96))  # document needs n_q <= n_kv
    params = draw(kernel_params(name, Shape(1, 1, 1, n_q, n_kv, 16, 32)))
    return count_tiles(attnc.load(name), n_q, n_kv, *tiles, **params)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(MASKED), tiles=TILES)
def test_no_needed_tile_is_skipped(data, name, tiles):
    c = _count(data.draw, name, tiles)
    assert c.missed == 0, (c.needed & (c.visits == 0)).nonzero()
    assert c.visited >= c.needed_count


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=natten_kernel_problems(), tiles=TILES)
def test_no_needed_tile_is_skipped_natten2d(problem, tiles):
    shape, params = problem
    c = count_tiles(attnc.load("natten2d"), shape.Nq, shape.Nkv, *tiles, **params)
    assert c.missed == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(EXACT), tiles=TILES)
def test_exact_bounds_visit_exactly_the_needed_tiles(data, name, tiles):
    c = _count(data.draw, name, tiles)
    np.testing.assert_array_equal(c.visits, c.needed.astype(np.int64) * c.passes)
    assert c.ratio == 1.0 or c.needed_count == 0


def test_unmasked_kernel_visits_every_tile_once_per_pass():
    for name, passes in (("softmax", 1), ("clipped_softmax", 2)):
        c = count_tiles(attnc.load(name), 40, 70, 16, 32)
        assert c.passes == passes
        np.testing.assert_array_equal(c.visits, np.full((3, 3), passes))
        assert c.needed.all() and c.ratio == 1.0


def test_counts_follow_the_tile_size():
    # causal with n_q = n_kv = 64: 16-wide tiles need 4·5/2 = 10 tiles, 32-wide ones 3
    assert count_tiles(attnc.load("causal"), 64, 64, 16, 16).visited == 10
    assert count_tiles(attnc.load("causal"), 64, 64, 32, 32).visited == 3


def test_interpreter_tiles_keep_results_and_reject_bad_sizes():
    attn = attnc.load("sliding_window")
    q, k, v = (torch.randn(1, 2, 50, 16) for _ in range(3))
    want = attn.reference(q, k, v, window=9).float()
    for tiles in ((32, 16), (16, 64), (1, 2)):  # ragged edges at every size, 1-row tiles included
        with interpreter_tiles(*tiles):
            got = attn(q, k, v, window=9)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for bad in (24, 0, -16):
        with pytest.raises(ValueError, match="power of two"), interpreter_tiles(bad, 16):
            pass


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(MASKED), tiles=st.sampled_from([(16, 16), (16, 32), (32, 16)]))
def test_sparse_kernels_match_the_reference(data, name, tiles):
    # Many tiles per row (lengths up to 80 on 16-wide tiles) and edge parameters (chunk <= 0,
    # negative windows, dilation <= 0): output and gradients equal the float64 reference's.
    n_kv = data.draw(st.integers(1, 80))
    n_q = n_kv if name == "document" else data.draw(st.integers(1, 80))
    params = data.draw(kernel_params(name, Shape(1, 2, 2, n_q, n_kv, 16, 16)))
    attn = attnc.load(name)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (n_q, n_kv, n_kv))
    dout = torch.randn(1, 2, n_q, 16, generator=gen)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    with interpreter_tiles(*tiles):
        out = attn(*ins, **params)
        out.backward(dout)
    ref_ins = [t.double().requires_grad_() for t in (q, k, v)]
    want = attn.reference(*ref_ins, **params)
    want.backward(dout.double())
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    for got, ref in zip(ins, ref_ins, strict=True):
        torch.testing.assert_close(got.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)
