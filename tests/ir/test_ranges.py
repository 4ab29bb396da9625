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


# ---------------------------------------------------------------------------- masked pairs, indices


@pytest.mark.parametrize("name, absorbed", [
    ("causal", True), ("sliding_window", True), ("document", True), ("natten2d", True), ("relu", True),
    ("softcap", False),  # the mask on the raw score: cap·tanh(−inf) = −cap, not −inf
    ("alibi", False),  # score − slope·(i − j): the slope's sign is not known
    ("sigmoid_attention", False),  # sigmoid(s + bias): a float parameter may be ±inf
    ("none", False),  # the weight is s itself
])
def test_which_reductions_get_their_identity_at_a_masked_pair(name, absorbed):
    from attnc.ir.ranges import absorbs

    c = attnc.library_cascade(name)
    reds = [st_.expr for st_ in c.stages if isinstance(st_.expr, (n.Reduce, n.Contract))]
    assert all(absorbs(c, r) for r in reds) == absorbed


def test_at_masked_pair_follows_ieee_special_values():
    from attnc.ir.ranges import NEG_INF, ZERO, at_masked_pair

    c = attnc.library_cascade("causal")
    s = n.Ref("s", n.FLOAT)
    m = n.Ref("m", n.FLOAT)
    assert at_masked_pair(c, s) == NEG_INF
    assert at_masked_pair(c, n.Call("exp", (n.Binary("-", s, m, n.FLOAT),), n.FLOAT)) == ZERO
    assert at_masked_pair(c, n.Binary("*", s, n.Const(0.0, n.FLOAT), n.FLOAT)) is None  # −inf·0: NaN
    assert at_masked_pair(c, n.Binary("-", s, s, n.FLOAT)) is None  # −inf − (−inf)
    assert at_masked_pair(c, n.Binary("*", s, n.Const(-2.0, n.FLOAT), n.FLOAT)) == "+inf"


def _v(name):
    return n.Var(name, n.INT)


def _b(op, a, b):
    return n.Binary(op, a, b, n.INT)


@pytest.mark.parametrize("index, dim, proven", [
    (_b("-", _b("+", _b("-", _v("j"), _v("i")), _v("n_q")), n.Const(1, n.INT)),
     _b("-", _b("+", _v("N_Q"), _v("N_KV")), n.Const(1, n.INT)), True),  # relative_bias's table
    (_v("h"), _v("H"), True), (_v("b"), _v("B"), True), (_v("j"), _v("N_KV"), True),
    (_v("i"), _v("N_KV"), False),  # n_q may exceed n_kv: document's doc[b, q_idx]
    (_b("+", _v("j"), n.Const(1, n.INT)), _v("N_KV"), False),
    (_b("-", _v("j"), _v("i")), _v("N_KV"), False),  # negative when i > j
    (_b("*", _v("j"), n.Const(2, n.INT)), _b("*", _v("N_KV"), n.Const(2, n.INT)), True),
    (_b("//", _v("j"), n.Const(2, n.INT)), _v("N_KV"), False),  # not affine: not proven
])
def test_tensor_indices_proven_in_range(index, dim, proven):
    from attnc.ir.ranges import index_in_range

    assert index_in_range(index, dim) == proven


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 9), nkv=st.integers(1, 9), aq=st.integers(0, 3), akv=st.integers(0, 3),
       a=st.integers(-2, 2), b=st.integers(-2, 2), c=st.integers(-3, 3))
def test_a_proven_index_is_in_range_on_every_pair(nq, nkv, aq, akv, a, b, c):
    # soundness by enumeration: a·i + b·j + c + (n_q − 1) proven in [0, N_Q + N_KV − 1) must be
    from attnc.ir.ranges import index_in_range

    index = _b("+", _b("+", _b("*", _v("i"), n.Const(a, n.INT)), _b("*", _v("j"), n.Const(b, n.INT))),
               _b("+", n.Const(c, n.INT), _b("-", _v("n_q"), n.Const(1, n.INT))))
    dim = _b("-", _b("+", _v("N_Q"), _v("N_KV")), n.Const(1, n.INT))
    if index_in_range(index, dim):
        size = (nq + aq) + (nkv + akv) - 1
        for i in range(nq):
            for j in range(nkv):
                assert 0 <= a * i + b * j + c + nq - 1 < size


_INTERVALS = st.tuples(st.integers(-70, 70), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(n.BITWISE), a=_INTERVALS, b=_INTERVALS)
def test_bitwise_intervals_hold_every_value(op, a, b):
    """ir.ranges (overflow checks) and the runtime's tile classifier bound ``x op y`` for every x in
    a, y in b, with the language's clamped shift count; the classifier is exact on single values."""
    from attnc.ir.ranges import bitwise_interval
    from attnc.runtime.sparsity import _Evaluator, _Int

    def value(x, y):
        k = min(max(y, 0), n.SHIFT_MAX)
        return {"&": x & y, "|": x | y, "^": x ^ y, "<<": x << k, ">>": x >> k}[op]

    values = [value(x, y) for x in range(a[0], a[1] + 1) for y in range(b[0], b[1] + 1)]
    lo, hi = bitwise_interval(op, (float(a[0]), float(a[1])), (float(b[0]), float(b[1])))
    assert lo <= min(values) and max(values) <= hi
    t = _Evaluator.bitwise(op, *(_Int(torch.tensor(r[0]), torch.tensor(r[1])) for r in (a, b)))
    assert int(t.lo) <= min(values) and max(values) <= int(t.hi)
    if a[0] == a[1] and b[0] == b[1]:
        assert int(t.lo) == int(t.hi) == values[0]


def test_bitwise_of_int32_values_stays_in_int32():
    """`x | -2**31` and `x ^ -2**31` always fit int32: the overflow check must not refuse them."""
    from attnc.ir.ranges import INT32, bitwise_interval

    for op in ("&", "|", "^"):
        lo, hi = bitwise_interval(op, (0.0, 40.0), (-(2.0**31), -(2.0**31)))
        assert INT32[0] <= lo and hi <= INT32[1], op
    attn = attnc.compile("mask a = (q_idx | -2147483648) < 0 and (kv_idx ^ -2147483648) < 0\n")
    q = torch.randn(1, 1, 37, 16)
    assert torch.isfinite(attn(q, q, q)).all()
