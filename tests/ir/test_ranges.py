"""Interval arithmetic over the IR (attnc/ir/ranges.py): sound bounds, checked by sampling."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from attnc.ir import nodes as n
from attnc.ir.ranges import int32_overflows, weight_range


def _weights(c):
    return [x.weight for st_ in c.stages for x in n.walk(st_.expr) if isinstance(x, n.Contract)]


@pytest.mark.parametrize("name, bounded", [
    ("softmax", True), ("softmax_off_by_one", True), ("softmax_sink", True), ("clipped_softmax", True),
    ("sigmoid", True), ("relu", False), ("none", False),
])
def test_library_weights(name, bounded):
    # fp16 kernels round bounded weights to fp16 before tl.dot; unbounded ones run in fp32
    (w,) = _weights(attnc.library_cascade(name))
    lo, hi = weight_range(attnc.library_cascade(name), w)
    assert (max(-lo, hi) <= 1.0) == bounded, (lo, hi)


def test_a_tempered_softmax_weight_is_bounded_and_a_shifted_one_is_not():
    tempered = ("norm t:\n    m[i] = max(s[i, j] for j)\n    e[i, j] = exp(0.5 * (s[i, j] - m[i]))\n"
                "    out[i] = sum(e[i, j] * v[j] for j) / sum(e[i, j] for j)\nattention a:\n    norm = t\n")
    shifted = tempered.replace("(s[i, j] - m[i])", "(s[i, j] - m[i] + 20.0)")
    for text, want in ((tempered, (0.0, 1.0)), (shifted, None)):
        c = attnc.spec_from_text(text).cascade("a")
        (w,) = _weights(c)
        lo, hi = weight_range(c, w)
        if want:
            assert (lo, hi) == want
        else:
            assert hi == pytest.approx(math.exp(10.0))  # 0.5 · (s − m + 20) <= 10


@settings(max_examples=60, deadline=None)
@given(window=st.integers(0, 2**31 - 1), dilation=st.integers(0, 2**31 - 1), nq=st.integers(1, 40),
       nkv=st.integers(1, 40))
def test_int32_overflow_is_reported_exactly_when_the_product_leaves_int32(window, dilation, nq, nkv):
    c = attnc.library_cascade("dilated_window")
    env = {"i": (0, nq - 1), "j": (0, nkv - 1), "b": (0, 0), "h": (0, 0), "n_q": (nq, nq), "n_kv": (nkv, nkv),
           "window": (window, window), "dilation": (dilation, dilation)}
    bad = int32_overflows(c, env)
    assert bool(bad) == (window * dilation > 2**31 - 1), bad


def test_the_kernel_refuses_an_overflowing_call_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))
    attn = attnc.load("dilated_window")
    q = torch.randn(1, 1, 9, 16)
    before = attnc.compile_count()
    with pytest.raises(ValueError, match="beyond int32"):
        attn(q, q, q, window=2**30, dilation=4)
    assert attnc.compile_count() == before and not (tmp_path / "cache").exists()
