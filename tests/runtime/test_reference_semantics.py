"""Properties of the float64 reference interpreter itself (docs/semantics.md).

GQA/MQA head mapping, n_q ≠ n_kv (absolute indices; the library's masks align bottom-right),
batch invariance, parameter validation (tensor shapes/dtypes, missing and unknown parameters),
rows with no kept key, the ``scale=`` override, and defaults evaluated from the sizes.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from tests.library import strategies as S

F64 = torch.float64


@functools.lru_cache(maxsize=None)
def lib(name):
    return attnc.library_cascade(name)


@functools.lru_cache(maxsize=None)
def text(src, name="a"):
    return attnc.spec_from_text(src).cascade(name)


def same(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> bool:
    """Equal up to float64 round-off (both must be NaN-free, infinities must coincide)."""
    if torch.isnan(a).any() or torch.isnan(b).any():
        return False
    fin = torch.isfinite(a) & torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)) or not torch.equal(a[~fin], b[~fin]):
        return False
    return S.rel_err(a[fin], b[fin]) <= tol


# Variants whose params can be drawn from a shape alone; h-dependent ones (alibi, softmax_sink,
# relative_bias) matter most for the head mapping.
def params_for(name: str, s: S.Shape):
    return {
        "full": st.just({}), "causal": st.just({}), "alibi": st.just({}), "sigmoid_attention": st.just({}),
        "sliding_window": S.window_params(s), "sink_window": S.sink_window_params(s),
        "prefix_lm": S.prefix_params(s), "dilated_window": S.dilated_window_params(s),
        "chunked": S.chunk_params(s), "softcap": S.softcap_params(s),
        "document": S.document_params(s), "relative_bias": S.relative_bias_params(s),
        "softmax_sink": S.sink_params(s),
    }[name]


def lse_or_none(cascade, *args, **kw):
    out, lse = attnc.reference(cascade, *args, return_lse=True, **kw)
    return out, lse


# ----------------------------------------------------------------------------- GQA / MQA


@pytest.mark.parametrize("name", ["full", "causal", "alibi", "softmax_sink", "relative_bias", "sigmoid_attention"])
@settings(deadline=None, max_examples=12, derandomize=True)
@given(data=st.data())
def test_gqa_equals_explicit_head_repetition(name, data):
    shape = data.draw(S.shapes(heads=(2, 4)).filter(lambda s: s.Hkv < s.Hq), label="shape")
    p = data.draw(S.problems(st.just(shape)), label="problem")
    prm = data.draw(params_for(name, shape), label="params")
    g = shape.Hq // shape.Hkv
    idx = torch.tensor([h // g for h in range(shape.Hq)])  # query head h reads kv head h // g
    out, lse = lse_or_none(lib(name), p.q, p.k, p.v, **prm)
    out2, lse2 = lse_or_none(lib(name), p.q, p.k[:, idx], p.v[:, idx], **prm)
    assert same(out, out2)
    assert (lse is None and lse2 is None) or same(lse, lse2)


def test_gqa_mapping_is_grouped_not_interleaved():
    """With Hq = 4, Hkv = 2: heads 0, 1 read kv head 0 and heads 2, 3 read kv head 1 (h // 2),
    not h % 2. k = 0 makes each output the mean of its kv head's values."""
    q = torch.randn(1, 4, 3, 8, dtype=F64)
    k = torch.zeros(1, 2, 5, 8, dtype=F64)
    v = torch.stack([torch.full((5, 2), 1.0), torch.full((5, 2), -7.0)]).to(F64).unsqueeze(0)
    out = attnc.reference(lib("full"), q, k, v)
    assert torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 1.0, -7.0, -7.0], dtype=F64))


# ----------------------------------------------------------------------------- n_q != n_kv


def test_indices_are_absolute():
    """q_idx runs over 0..n_q-1 and kv_idx over 0..n_kv-1 with no implicit alignment."""
    cascade = text("attention a:\n    mask = kv_idx == q_idx\n")
    for nq, nkv in [(3, 7), (7, 3)]:
        q = torch.randn(1, 1, nq, 8, dtype=F64)
        k = torch.randn(1, 1, nkv, 8, dtype=F64)
        v = torch.randn(1, 1, nkv, 4, dtype=F64)
        out, lse = attnc.reference(cascade, q, k, v, return_lse=True)
        m = min(nq, nkv)
        assert torch.equal(out[0, 0, :m], v[0, 0, :m])  # one kept key: its value, exactly
        assert (out[0, 0, m:] == 0).all() and (lse[0, 0, m:] == -math.inf).all()


BOTTOM_RIGHT = ["causal", "sliding_window", "sink_window", "prefix_lm", "dilated_window", "document", "alibi", "chunked"]


@pytest.mark.parametrize("name", BOTTOM_RIGHT)
@settings(deadline=None, max_examples=15, derandomize=True)
@given(data=st.data())
def test_library_masks_align_bottom_right(name, data):
    """The last n_q queries of an n_kv × n_kv problem give the same rows as the n_q × n_kv one:
    query i of the short problem is position i + n_kv − n_q (docs/semantics.md)."""
    shape = data.draw(S.shapes(min_n=2, nq_le_nkv=True).filter(lambda s: s.Nq < s.Nkv), label="shape")
    long = S.Shape(shape.B, shape.Hq, shape.Hkv, shape.Nkv, shape.Nkv, shape.D, shape.Dv)
    p = data.draw(S.problems(st.just(long)), label="problem")
    prm = data.draw(params_for(name, long), label="params")
    if name == "chunked":  # make the difference observable: chunks that do not divide the offset
        prm = {"chunk": data.draw(st.integers(2, max(2, shape.Nkv - 1)), label="chunk")}
    full_out, full_lse = attnc.reference(lib(name), p.q, p.k, p.v, return_lse=True, **prm)
    tail = slice(shape.Nkv - shape.Nq, None)
    out, lse = attnc.reference(lib(name), p.q[:, :, tail], p.k, p.v, return_lse=True, **prm)
    assert same(out, full_out[:, :, tail])
    assert same(lse, full_lse[:, :, tail])


@settings(deadline=None, max_examples=15, derandomize=True)
@given(data=st.data())
def test_relative_bias_table_is_bottom_right_consistent(data):
    """table[h, j − i + n_q − 1] = table[h, (j − p) + n_kv − 1] with p = i + n_kv − n_q: column
    n_kv − 1 is relative offset 0 at the aligned position. So the short problem with the first
    n_q + n_kv − 1 columns of the long problem's table reproduces the long problem's last rows."""
    shape = data.draw(S.shapes(min_n=2, nq_le_nkv=True).filter(lambda s: s.Nq < s.Nkv), label="shape")
    long = S.Shape(shape.B, shape.Hq, shape.Hkv, shape.Nkv, shape.Nkv, shape.D, shape.Dv)
    p = data.draw(S.problems(st.just(long)), label="problem")
    table = data.draw(S.relative_bias_params(long), label="table")["table"]  # [H, 2 n_kv − 1]
    full_out = attnc.reference(lib("relative_bias"), p.q, p.k, p.v, table=table)
    tail = slice(shape.Nkv - shape.Nq, None)
    out = attnc.reference(lib("relative_bias"), p.q[:, :, tail], p.k, p.v, table=table[:, : shape.Nq + shape.Nkv - 1])
    assert same(out, full_out[:, :, tail])


@settings(deadline=None, max_examples=15, derandomize=True)
@given(data=st.data())
def test_causal_with_more_queries_than_keys(data):
    """n_q > n_kv: the first n_q − n_kv queries sit before the sequence and see nothing; the rest
    are the square causal problem."""
    shape = data.draw(S.shapes().filter(lambda s: s.Nq > s.Nkv), label="shape")
    p = data.draw(S.problems(st.just(shape)), label="problem")
    out, lse = attnc.reference(lib("causal"), p.q, p.k, p.v, return_lse=True)
    extra = shape.Nq - shape.Nkv
    assert (out[:, :, :extra] == 0).all() and (lse[:, :, :extra] == -math.inf).all()
    sq_out, sq_lse = attnc.reference(lib("causal"), p.q[:, :, extra:], p.k, p.v, return_lse=True)
    assert same(out[:, :, extra:], sq_out) and same(lse[:, :, extra:], sq_lse)


# ----------------------------------------------------------------------------- batch invariance


@pytest.mark.parametrize("name", ["causal", "document", "softmax_sink", "sigmoid_attention", "relative_bias"])
@settings(deadline=None, max_examples=10, derandomize=True)
@given(data=st.data())
def test_batch_invariance(name, data):
    shape = data.draw(S.shapes(nq_le_nkv=name == "document").filter(lambda s: s.B == 2), label="shape")
    p = data.draw(S.problems(st.just(shape)), label="problem")
    prm = data.draw(params_for(name, shape), label="params")
    out, lse = lse_or_none(lib(name), p.q, p.k, p.v, **prm)
    for b in range(shape.B):
        one = {k: (t[b:b + 1] if k == "doc" else t) for k, t in prm.items()}  # doc is per batch row
        o, l = lse_or_none(lib(name), p.q[b:b + 1], p.k[b:b + 1], p.v[b:b + 1], **one)
        assert same(o, out[b:b + 1])
        assert (l is None and lse is None) or same(l, lse[b:b + 1])


# ----------------------------------------------------------------------------- parameter validation


def _qkv(B=2, Hq=4, Hkv=2, Nq=3, Nkv=5, D=8, Dv=6):
    g = S.seeded(1)
    return (torch.randn(B, Hq, Nq, D, generator=g, dtype=F64), torch.randn(B, Hkv, Nkv, D, generator=g, dtype=F64),
            torch.randn(B, Hkv, Nkv, Dv, generator=g, dtype=F64))


@pytest.mark.parametrize("name, param, bad", [
    ("softmax_sink", "sink", torch.zeros(2, dtype=F64)),              # [H_KV] instead of [H]
    ("softmax_sink", "sink", torch.zeros(4, 1, dtype=F64)),           # extra dim
    ("relative_bias", "table", torch.zeros(4, 5 + 3, dtype=F64)),     # N_Q + N_KV instead of − 1
    ("relative_bias", "table", torch.zeros(2, 7, dtype=F64)),         # H_KV rows
    ("document", "doc", torch.zeros(2, 3, dtype=torch.int64)),        # [B, N_Q] instead of [B, N_KV]
    ("document", "doc", torch.zeros(5, dtype=torch.int64)),           # missing batch dim
])
def test_tensor_param_shape_errors_are_value_errors_naming_the_param(name, param, bad):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=f"`{param}`"):
        attnc.reference(lib(name), q, k, v, **{param: bad})


@pytest.mark.parametrize("name, param, bad", [
    ("softmax_sink", "sink", torch.zeros(4, dtype=torch.int64)),
    ("softmax_sink", "sink", torch.zeros(4, dtype=torch.bool)),
    ("relative_bias", "table", torch.zeros(4, 7, dtype=torch.int32)),
    ("document", "doc", torch.zeros(2, 5, dtype=F64)),
    ("document", "doc", torch.zeros(2, 5, dtype=torch.bool)),
    ("document", "doc", [[0] * 5] * 2),                               # not a tensor at all
    ("sliding_window", "window", 2.5),                                # non-integral int
    ("sliding_window", "window", True),                               # bool is not an int
    ("sliding_window", "window", "3"),
    ("softcap", "cap", torch.ones(2, dtype=F64)),                     # scalar param given a vector
])
def test_param_dtype_errors_are_type_errors(name, param, bad):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=f"`{param}`"):
        attnc.reference(lib(name), q, k, v, **{param: bad})


@pytest.mark.parametrize("name, kw, missing", [
    ("sliding_window", {}, "window"),
    ("sink_window", {"sinks": 1}, "window"),
    ("softmax_sink", {}, "sink"),
    ("document", {}, "doc"),
    ("natten2d", {"kernel_h": 3, "kernel_w": 3}, "width"),
])
def test_missing_param_is_type_error(name, kw, missing):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=f"`{missing}`"):
        attnc.reference(lib(name), q, k, v, **kw)


@pytest.mark.parametrize("name, kw", [
    ("full", {"window": 3}),
    ("sliding_window", {"window": 3, "windw": 3}),
    ("softmax", {"sink": torch.zeros(4, dtype=F64)}),
])
def test_unknown_param_is_type_error(name, kw):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="unknown parameter"):
        attnc.reference(lib(name), q, k, v, **kw)


def test_valid_tensor_params_of_other_dtypes_are_accepted():
    """int32 doc ids and float32 tables are converted, not rejected, and give the same result."""
    q, k, v = _qkv()
    doc = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    assert same(attnc.reference(lib("document"), q, k, v, doc=doc.to(torch.int32)),
                attnc.reference(lib("document"), q, k, v, doc=doc))
    table = torch.randn(4, 7, dtype=F64).float()
    assert same(attnc.reference(lib("relative_bias"), q, k, v, table=table),
                attnc.reference(lib("relative_bias"), q, k, v, table=table.double()))


@pytest.mark.parametrize("mutate, exc", [
    (lambda q, k, v: (q[0], k, v), ValueError),                        # 3-D q
    (lambda q, k, v: (q, k[:1], v[:1]), ValueError),                   # batch mismatch
    (lambda q, k, v: (q, k[..., :4], v), ValueError),                  # head dim mismatch
    (lambda q, k, v: (q[:, :3], k, v), ValueError),                    # Hq not a multiple of Hkv
    (lambda q, k, v: (q, k, v[:, :, :4]), ValueError),                 # v's N differs from k's
    (lambda q, k, v: (q.to(torch.int64), k, v), TypeError),            # integer q
    (lambda q, k, v: (q.numpy(), k, v), TypeError),                    # not a tensor
])
def test_input_validation(mutate, exc):
    with pytest.raises(exc):
        attnc.reference(lib("full"), *mutate(*_qkv()))


# ----------------------------------------------------------------------------- empty rows


NO_KEYS = "attention a:\n    mask = kv_idx < 0\n"


@pytest.mark.parametrize("norm", ["softmax", "sigmoid", "relu", "none", "softmax_off_by_one", "clipped_softmax"])
@settings(deadline=None, max_examples=6, derandomize=True)
@given(p=S.problems(temperatures=(1.0, 50.0)))
def test_fully_masked_problem(norm, p):
    cascade = text(NO_KEYS if norm == "softmax" else NO_KEYS + f"    norm = {norm}\n")
    out, lse = attnc.reference(cascade, p.q, p.k, p.v, return_lse=True)
    assert out.shape == (p.shape.B, p.shape.Hq, p.shape.Nq, p.shape.Dv)
    assert (out == 0).all()
    if lse is not None:
        assert (lse == -math.inf).all()


@settings(deadline=None, max_examples=15, derandomize=True)
@given(p=S.problems(temperatures=(1.0, 50.0)), data=st.data())
def test_partially_masked_rows(p, data):
    """A mask that empties exactly the rows with odd q_idx (plus any row whose window is empty):
    those rows are exactly 0 / −inf, the others are finite and equal the unmasked softmax rows
    restricted to their keys — and nothing is NaN."""
    nq = p.shape.Nq
    cascade = text("attention a(sink: tensor[H] float):\n    mask = q_idx % 2 == 0\n    norm = softmax_sink(sink)\n")
    sink = data.draw(S.sink_params(p.shape), label="sink")["sink"]
    out, lse = attnc.reference(cascade, p.q, p.k, p.v, return_lse=True, sink=sink)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    odd = torch.arange(nq) % 2 == 1
    assert (out[:, :, odd] == 0).all() and (lse[:, :, odd] == -math.inf).all()
    full_out, full_lse = attnc.reference(lib("softmax_sink"), p.q, p.k, p.v, return_lse=True, sink=sink)
    assert same(out[:, :, ~odd], full_out[:, :, ~odd]) and same(lse[:, :, ~odd], full_lse[:, :, ~odd])


@settings(deadline=None, max_examples=15, derandomize=True)
@given(p=S.problems(temperatures=(1.0, 30.0)), window=st.integers(0, 3))
def test_empty_rows_from_library_masks(p, window):
    """sink_window with sinks = 0 and n_q > n_kv (or window 0) leaves rows empty."""
    out, lse = attnc.reference(lib("sink_window"), p.q, p.k, p.v, return_lse=True, sinks=0, window=window)
    pos = torch.arange(p.shape.Nq) + p.shape.off
    empty = (pos < 0) | (window == 0)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert (out[:, :, empty] == 0).all() and (lse[:, :, empty] == -math.inf).all()
    assert torch.isfinite(lse[:, :, ~empty]).all()


def test_zero_length_sequences():
    q, k, v = _qkv()
    out, lse = attnc.reference(lib("full"), q, k[:, :, :0], v[:, :, :0], return_lse=True)
    assert out.shape == (2, 4, 3, 6) and (out == 0).all() and (lse == -math.inf).all()
    out, lse = attnc.reference(lib("full"), q[:, :, :0], k, v, return_lse=True)
    assert out.shape == (2, 4, 0, 6) and lse.shape == (2, 4, 0)


# ----------------------------------------------------------------------------- scale, defaults


@pytest.mark.parametrize("name", ["full", "causal", "softcap", "sigmoid", "relu", "clipped_softmax", "softmax_off_by_one"])
@settings(deadline=None, max_examples=10, derandomize=True)
@given(p=S.problems(), scale=st.floats(0.01, 3.0))
def test_scale_override_equals_scaling_q(name, p, scale):
    """score = scale · q·k: scale=c equals the default scale 1/sqrt(D) applied to q · c·sqrt(D)."""
    cascade = lib(name)
    a = attnc.reference(cascade, p.q, p.k, p.v, scale=scale)
    b = attnc.reference(cascade, p.q * (scale * math.sqrt(p.shape.D)), p.k, p.v)
    assert S.rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("name", ["full", "sigmoid", "relu", "none"])
def test_scale_override_is_not_ignored(name):
    q, k, v = _qkv()
    default = attnc.reference(lib(name), q, k, v)
    assert same(default, attnc.reference(lib(name), q, k, v, scale=1 / math.sqrt(8)))
    assert S.rel_err(attnc.reference(lib(name), q, k, v, scale=1.0), default) > 1e-3


@settings(deadline=None, max_examples=10, derandomize=True)
@given(p=S.problems())
def test_scale_zero_gives_the_mean_of_kept_values(p):
    out = attnc.reference(lib("causal"), p.q, p.k, p.v, scale=0.0)
    s = p.shape
    g = s.Hq // s.Hkv
    for i in range(s.Nq):
        last = i + s.off
        for h in range(s.Hq):
            if last < 0:
                assert (out[:, h, i] == 0).all()
            else:
                mean = p.v[:, h // g, : last + 1].mean(1)
                assert torch.allclose(out[:, h, i], mean, rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=15, derandomize=True)
@given(p=S.problems(S.shapes(min_n=2)))
def test_defaults_use_n_kv(p):
    """sigmoid_attention's bias default is −log(n_kv) and relu's divisor n_kv, evaluated per call."""
    nkv = p.shape.Nkv
    a = attnc.reference(lib("sigmoid_attention"), p.q, p.k, p.v)
    assert same(a, attnc.reference(lib("sigmoid_attention"), p.q, p.k, p.v, bias=-math.log(nkv)))
    assert not same(a, attnc.reference(lib("sigmoid_attention"), p.q, p.k, p.v, bias=0.0), tol=1e-9)
    r = attnc.reference(lib("relu"), p.q, p.k, p.v)
    assert same(r, attnc.reference(lib("relu"), p.q, p.k, p.v, divisor=float(nkv)))
    assert same(r * nkv, attnc.reference(lib("relu"), p.q, p.k, p.v, divisor=1.0))
    if p.shape.Nq != nkv:  # n_kv, not n_q
        assert not same(a, attnc.reference(lib("sigmoid_attention"), p.q, p.k, p.v, bias=-math.log(p.shape.Nq)), tol=1e-9)


def test_defaults_are_re_evaluated_per_call():
    cascade = lib("sigmoid_attention")
    q, k, v = _qkv(Nkv=5)
    first = attnc.reference(cascade, q, k, v)
    q2, k2, v2 = _qkv(Nkv=11)
    second = attnc.reference(cascade, q2, k2, v2)
    assert same(second, attnc.reference(cascade, q2, k2, v2, bias=-math.log(11)))
    assert same(first, attnc.reference(cascade, q, k, v, bias=-math.log(5)))


# ----------------------------------------------------------------------------- total arithmetic


def test_tensor_param_indices_are_clamped():
    """t[kv_idx - 1] at kv_idx = 0 reads t[0]; t[kv_idx + 1] at the last key reads t[n_kv - 1]."""
    cascade = text("attention a(t: tensor[N_KV] float):\n    score = score + t[kv_idx - 1] + 2.0 * t[kv_idx + 1]\n    norm = none\n")
    q, k, v = _qkv(Nkv=5)
    t = torch.randn(5, dtype=F64)
    idx = torch.arange(5)
    bias = t[(idx - 1).clamp(0, 4)] + 2.0 * t[(idx + 1).clamp(0, 4)]
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(8) + bias
    want = s @ v.repeat_interleave(2, 1)
    assert S.rel_err(attnc.reference(cascade, q, k, v, t=t), want) <= 1e-12


def test_division_by_zero_is_total():
    """chunk = 0: q // 0 == k // 0 == 0, so every key is kept (equals full); dilation 0 in
    dilated_window: d % 0 == d, so only d == 0 survives (the diagonal at the aligned position)."""
    q, k, v = _qkv(Nq=5, Nkv=5)
    assert same(attnc.reference(lib("chunked"), q, k, v, chunk=0), attnc.reference(lib("full"), q, k, v))
    out = attnc.reference(lib("dilated_window"), q, k, v, window=3, dilation=0)
    assert torch.equal(out, v.repeat_interleave(2, 1))
