"""Properties of the generated forward kernels (Triton interpreter on CPU), beyond the examples in
test_forward_kernels.py:

* every library variant on random problems (batch, GQA/MQA, ragged tile edges, Dv ≠ D, odd head
  dims, explicit scales, each variant's parameters from tests/library/strategies.py), all three
  dtypes, against the float64 reference — output, lse, and the empty-row rule;
* q/k/v (and tensor parameters) with arbitrary strides give bit-identical results;
* sizes, batch and runtime scalars never rebuild a kernel; a new dtype builds exactly one;
* head dims 1–256 with Dv ≠ D;
* validation errors name the argument and the bad value, and build or write nothing;
* the empty-row rule for every kind of norm, zero-length problems, and runtime scalars at the
  ends of int32 (run in a worker process: a kernel that reads out of bounds may crash).

Outputs are poisoned with NaN before each launch and every test gets a fresh kernel cache dir.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.reference import reference_keep
from tests.library import strategies as S

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = list(TOL)
VARIANTS = attnc.library.names()


pytestmark = pytest.mark.usefixtures("poison")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def cache_files(cache) -> list:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


_fresh = itertools.count()


def fresh_name(stem: str) -> str:
    """A cascade name no other test (or earlier run in this process) has compiled: the kernel
    cache key covers the cascade text, which starts with the name."""
    return f"{stem}_{os.getpid()}_{next(_fresh)}"


def has_mask(cascade) -> bool:
    return any(st_.name == "keep" for st_ in cascade.stages)


def check_against_reference(attn, q, k, v, params, *, scale=None, dtype=None, what="", empty=None):
    """Run the kernel and the reference; check shapes, NaN-freedom, relative error, lse and the
    empty-row rule (rows the mask empties: out exactly 0, lse −inf). The empty rows are those where
    the reference's lse is −inf, or ``empty`` [Nq] when given. Returns (out, lse)."""
    dtype = dtype or q.dtype
    c = attn.cascade
    B, Hq, Nq, Dv = q.shape[0], q.shape[1], q.shape[2], v.shape[3]
    if c.has_lse:
        got, got_lse = attn(q, k, v, scale=scale, return_lse=True, **params)
        ref, ref_lse = attnc.reference(c, q, k, v, scale=scale, return_lse=True, **params)
    else:
        got, got_lse = attn(q, k, v, scale=scale, **params), None
        ref, ref_lse = attnc.reference(c, q, k, v, scale=scale, **params), None
        # no lse to tell empty rows by: without a mask no row is empty, else the caller says which
        assert empty is not None or not has_mask(c), f"{c.name}: a masked cascade without lse needs `empty`"
    assert got.shape == (B, Hq, Nq, Dv) and got.dtype == dtype, what
    assert torch.isfinite(ref).all(), f"{what}: the reference itself is not finite"
    assert not torch.isnan(got).any(), f"{what}: NaN in the output (unwritten or 0/0)"
    assert torch.isfinite(got).all(), f"{what}: inf in the output"
    err = S.rel_err(got, ref)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3e} > {TOL[dtype]:.0e}"
    if got_lse is None and empty is not None:
        rows = got[empty] if empty.dim() == 3 else got[:, :, empty]
        assert torch.equal(rows, torch.zeros_like(rows)), f"{what}: an empty row is not exactly 0"
    if got_lse is not None:
        assert got_lse.shape == (B, Hq, Nq) and got_lse.dtype == torch.float32, what
        if empty is not None:
            assert torch.equal(ref_lse == -math.inf, empty.expand(B, Hq, Nq)), f"{what}: the reference disagrees on empty rows"
        empty = ref_lse == -math.inf
        assert not torch.isnan(got_lse).any(), f"{what}: NaN in lse"
        assert torch.equal(got_lse == -math.inf, empty), f"{what}: lse is −inf on other rows than the empty ones"
        assert torch.isfinite(got_lse[~empty]).all(), what
        assert torch.isfinite(ref_lse[~empty]).all(), what
        diff = (got_lse[~empty].double() - ref_lse[~empty]).abs()
        bound = TOL[dtype] * (1 + ref_lse[~empty].abs())
        assert (diff <= bound).all(), f"{what}: lse off by up to {diff.max().item():.3e}"
        if empty.any():
            assert torch.equal(got[empty], torch.zeros_like(got[empty])), f"{what}: an empty row is not exactly 0"
    return got, got_lse


def _cast_tensor_params(params: dict, wide: bool) -> dict:
    """Tensor parameters as the strategies give them (int64 / float64), or narrowed to int32 /
    float32: the kernel must accept both, like the reference."""
    if wide:
        return params
    out = {}
    for key, value in params.items():
        if isinstance(value, torch.Tensor):
            value = value.to(torch.int32 if not value.dtype.is_floating_point else torch.float32)
        out[key] = value
    return out


# ----------------------------------------------------------------------------- 1. every variant


@dataclass(frozen=True)
class Case:
    shape: S.Shape
    params: dict
    seed: int
    temperature: float
    scale: float | None
    wide_params: bool


@st.composite
def kernel_cases(draw, name: str) -> Case:
    if name.startswith("natten"):  # a grid: n_q = n_kv = its token count
        shape, params = draw(S.natten_kernel_problems(name=name))
    else:
        shape = draw(S.kernel_shapes())
        params = draw(S.kernel_params(name, shape))  # a KeyError: a new variant needs a strategy
    seed = draw(st.integers(0, 2**31 - 1))
    temperature = draw(st.sampled_from([1.0, 0.5, 3.0]))
    # the default, or an explicit scale: 0, negative, or within fp32's comfortable range
    scale = draw(st.one_of(st.none(), st.none(), st.sampled_from([0.0, 1.0, -0.5]), st.floats(0.01, 1.5)))
    return Case(shape, params, seed, temperature, scale, draw(st.booleans()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", VARIANTS)
@settings(deadline=None, max_examples=3)
@given(data=st.data())
def test_every_variant_matches_the_reference(name, dtype, data):
    case = data.draw(kernel_cases(name), label="case")
    s = case.shape
    q, k, v = (t.to(dtype) for t in S.make_tensors(s, case.seed, case.temperature))
    params = _cast_tensor_params(case.params, case.wide_params)
    attn = attnc.load(name)
    empty = None
    if has_mask(attn.cascade) and not attn.cascade.has_lse:  # no lse to tell the empty rows by
        empty = ~reference_keep(attn.cascade, q, k, v, scale=case.scale, **params).any(-1)
    check_against_reference(attn, q, k, v, params, scale=case.scale, what=f"{name} {dtype} {case}", empty=empty)


# Rows that the mask empties, at and across the 16-row tile edge: query i is empty iff
# i + (Nkv − Nq) < 0 for a causal mask with Nq = 20 > Nkv = 3, i.e. rows 0..16 (tile 0 entirely,
# one row of tile 1). The norms with a constant in the normalizer (sink, off-by-one) would give
# a finite lse by their formula; the empty-row rule wins.
EMPTY_ROW_SPECS = {
    "softmax": "attention {n}:\n    mask = causal\n",
    "softmax_sink": "attention {n}(sink: tensor[H] float):\n    mask = causal\n    norm = softmax_sink(sink)\n",
    "softmax_off_by_one": "attention {n}:\n    mask = causal\n    norm = softmax_off_by_one\n",
    "clipped_softmax": "attention {n}:\n    mask = causal\n    norm = clipped_softmax\n",
    "sigmoid": "attention {n}:\n    mask = causal\n    norm = sigmoid(2.0)\n",
    "relu": "attention {n}:\n    mask = causal\n    norm = relu(1.0)\n",
    "none": "attention {n}:\n    mask = causal\n    norm = none\n",
}


@pytest.mark.parametrize("norm", sorted(EMPTY_ROW_SPECS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_the_mask_empties_are_zero_with_minus_inf_lse(norm, dtype):
    attn = attnc.compile(EMPTY_ROW_SPECS[norm].format(n=f"empty_rows_{norm}"))
    g = S.seeded(7)
    Nq, Nkv, Hq = 20, 3, 2
    q = torch.randn(1, Hq, Nq, 16, generator=g).to(dtype)
    k = torch.randn(1, 1, Nkv, 16, generator=g).to(dtype)
    v = torch.randn(1, 1, Nkv, 8, generator=g).to(dtype)
    params = {"sink": torch.full((Hq,), 3.0)} if norm == "softmax_sink" else {}
    empty = torch.arange(Nq) < Nq - Nkv
    out, lse = check_against_reference(attn, q, k, v, params, what=norm, empty=empty)
    assert torch.equal(out[:, :, empty], torch.zeros(1, Hq, int(empty.sum()), 8, dtype=dtype))
    if lse is not None:
        assert (lse[:, :, empty] == -math.inf).all() and torch.isfinite(lse[:, :, ~empty]).all()


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "clipped_softmax", "causal"])
@pytest.mark.parametrize("sizes", [(1, 4, 0), (1, 0, 5), (0, 4, 5)], ids=["no-keys", "no-queries", "no-batch"])
def test_zero_length_problems(name, sizes):
    B, Nq, Nkv = sizes
    attn = attnc.load(name)
    q, k, v = torch.randn(B, 2, Nq, 16), torch.randn(B, 1, Nkv, 16), torch.randn(B, 1, Nkv, 8)
    out = attn(q, k, v)
    assert out.shape == (B, 2, Nq, 8)
    assert torch.equal(out, torch.zeros_like(out)), "no keys: every row is empty, so out is 0"
    if attn.cascade.has_lse:
        _, lse = attn(q, k, v, return_lse=True)
        assert lse.shape == (B, 2, Nq) and (lse == -math.inf).all()


# ----------------------------------------------------------------------------- 2. strides


def _bnhd(t):
    """Same values, stored [B, N, H, D] (the layout of most model code), viewed as [B, H, N, D]."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _d_stride2(t):
    """Every other element of a wider buffer: stride 2 along the head dim."""
    buf = torch.full((*t.shape[:3], 2 * t.shape[3]), float("nan"), dtype=t.dtype)
    buf[..., ::2] = t
    return buf[..., ::2]


def _reversed_dims(t):
    """Stored [D, N, H, B]: every stride differs from the contiguous one, the head dim's is largest."""
    return t.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)


def _padded_window(t):
    """A window into a larger buffer, NaN around it: storage offset and padded strides in every dim."""
    B, H, N, D = t.shape
    buf = torch.full((B + 1, H + 2, N + 3, D + 5), float("nan"), dtype=t.dtype)
    buf[1:, 1:H + 1, 2:N + 2, 3:D + 3] = t
    return buf[1:, 1:H + 1, 2:N + 2, 3:D + 3]


LAYOUTS = {"bnhd": _bnhd, "d_stride2": _d_stride2, "reversed": _reversed_dims, "padded": _padded_window}


def _strided_case(layout: str, dtype, g):
    """(q, k, v) in a non-contiguous layout; 'broadcast' and 'packed' change values too, so the
    comparison is always against the same tensors made contiguous."""
    B, Hq, Hkv, Nq, Nkv, D, Dv = 2, 4, 2, 9, 19, 24, 16
    if layout == "broadcast":  # stride 0 along batch (q) and heads (k, v)
        q = torch.randn(1, Hq, Nq, D, generator=g).to(dtype).expand(B, Hq, Nq, D)
        k = torch.randn(B, 1, Nkv, D, generator=g).to(dtype).expand(B, Hkv, Nkv, D)
        v = torch.randn(B, 1, Nkv, Dv, generator=g).to(dtype).expand(B, Hkv, Nkv, Dv)
        return q, k, v
    if layout == "packed_kv":  # k and v are two halves of one [B, Nkv, Hkv, D + Dv] buffer
        q = _bnhd(torch.randn(B, Hq, Nq, D, generator=g).to(dtype))
        kv = torch.randn(B, Nkv, Hkv, D + Dv, generator=g).to(dtype).transpose(1, 2)
        return q, kv[..., :D], kv[..., D:]
    make = LAYOUTS[layout]
    return (make(torch.randn(B, Hq, Nq, D, generator=g).to(dtype)),
            make(torch.randn(B, Hkv, Nkv, D, generator=g).to(dtype)),
            make(torch.randn(B, Hkv, Nkv, Dv, generator=g).to(dtype)))


@pytest.mark.parametrize("name", ["softmax", "clipped_softmax"])  # one pass with lse, two passes without
@pytest.mark.parametrize("layout", [*LAYOUTS, "broadcast", "packed_kv"])
def test_any_strides_give_the_contiguous_result(name, layout):
    dtype = torch.float16 if layout in ("bnhd", "padded") else torch.float32
    q, k, v = _strided_case(layout, dtype, S.seeded(3))
    assert not any(t.is_contiguous() for t in (q, k, v))
    attn = attnc.load(name)
    lse_wanted = attn.cascade.has_lse
    got = attn(q, k, v, return_lse=lse_wanted)
    want = attn(q.contiguous(), k.contiguous(), v.contiguous(), return_lse=lse_wanted)
    for a, b in zip(got, want) if lse_wanted else [(got, want)]:
        assert torch.equal(a, b), f"{name}/{layout}: strided and contiguous runs differ"
    out = got[0] if lse_wanted else got
    err = S.rel_err(out, attnc.reference(attn.cascade, q, k, v))
    assert err <= TOL[dtype], f"{name}/{layout}: relative error {err:.3e}"


def test_strided_tensor_parameters():
    """A transposed float table and a strided int32 doc-id tensor read like contiguous ones."""
    g = S.seeded(5)
    B, Hq, Nq, Nkv, D = 2, 2, 17, 17, 16
    q, k, v = (_bnhd(torch.randn(B, Hq, n, D, generator=g)) for n in (Nq, Nkv, Nkv))
    table = torch.randn(Nq + Nkv - 1, Hq, generator=g).t()  # [H, N_Q + N_KV − 1], strides (1, Hq)
    docs = torch.sort(torch.randint(0, 3, (B, 2 * Nkv), generator=g), dim=1).values.to(torch.int32)
    doc = docs[:, ::2]  # stride 2 along tokens
    assert not table.is_contiguous() and not doc.is_contiguous()
    for name, params, dense in [("relative_bias", {"table": table}, {"table": table.contiguous()}),
                                ("document", {"doc": doc}, {"doc": doc.contiguous()})]:
        attn = attnc.load(name)
        got, lse = attn(q, k, v, return_lse=True, **params)
        want, want_lse = attn(q, k, v, return_lse=True, **dense)
        assert torch.equal(got, want) and torch.equal(lse, want_lse), name
        check_against_reference(attn, q, k, v, params, what=name)


# ----------------------------------------------------------------------------- 3. compile once


def test_sizes_batch_and_scalars_build_one_kernel_per_dtype(cache):
    attn = attnc.compile(f"attention {fresh_name('once')}(window: int):\n    mask = sliding_window(window)\n")
    rnd = random.Random(2024)
    before = attnc.compile_count()
    for call in range(100):
        B = rnd.randint(1, 3)
        # mostly one or two tiles (the interpreter is slow), sometimes up to 64
        Nq, Nkv = (rnd.randint(1, 64) if call % 10 == 0 else rnd.randint(1, 20) for _ in range(2))
        window = rnd.randint(0, 70)
        q, k, v = torch.randn(B, 1, Nq, 16), torch.randn(B, 1, Nkv, 16), torch.randn(B, 1, Nkv, 16)
        out = attn(q, k, v, window=window, return_lse=call % 2 == 0)
        assert not torch.isnan(out[0] if call % 2 == 0 else out).any()
    assert attnc.compile_count() - before == 1, "sizes, batch or a runtime scalar rebuilt the kernel"
    assert len(cache_files(cache)) == 1, cache_files(cache)

    # a new dtype is a new specialization: exactly one more build, then none
    x = torch.randn(2, 1, 7, 16).half()
    attn(x, x, x, window=3)
    assert attnc.compile_count() - before == 2
    attn(torch.randn(1, 1, 19, 16).half(), x[:1], x[:1], window=30)
    assert attnc.compile_count() - before == 2
    assert len(cache_files(cache)) == 2

    # a new head dim: at most one more build (block sizes may specialize), and then no more
    y = torch.randn(1, 1, 5, 64)
    attn(y, y, y, window=2)
    after_d = attnc.compile_count()
    assert after_d - before <= 3
    attn(torch.randn(2, 1, 3, 64), torch.randn(2, 1, 9, 64), torch.randn(2, 1, 9, 64), window=5)
    assert attnc.compile_count() == after_d


# ----------------------------------------------------------------------------- 4. head dims


HEAD_DIMS = [(1, 1), (4, 12), (8, 8), (12, 4), (16, 16), (32, 32), (40, 24), (64, 64), (80, 80), (96, 96),
             (80, 96), (128, 128), (160, 160), (192, 192), (192, 128), (256, 256), (256, 64), (64, 256)]


@pytest.mark.parametrize("name, params", [("softmax", {}), ("sliding_window", {"window": 4})], ids=["softmax", "window"])
@pytest.mark.parametrize("dims", HEAD_DIMS, ids=lambda d: f"D{d[0]}-Dv{d[1]}")
def test_head_dims(name, params, dims):
    D, Dv = dims
    g = S.seeded(D * 1000 + Dv)
    attn = attnc.load(name)
    for n in (5, 17):
        q = torch.randn(1, 2, n, D, generator=g).half()
        k = torch.randn(1, 1, n, D, generator=g).half()
        v = torch.randn(1, 1, n, Dv, generator=g).half()
        check_against_reference(attn, q, k, v, params, what=f"{name} D={D} Dv={Dv} n={n}")


# ----------------------------------------------------------------------------- 5. validation


# One spec with a parameter of every kind; each case below breaks one thing about a valid call.
PROBE = """attention {name}(window: int, doc: tensor[B, N_KV] int, table: tensor[H, N_Q + N_KV - 1] float,
                  cap: float = 30.0, wide: bool = False):
    score = relative_bias(table)
    score = softcap(cap)
    mask = (sliding_window(window) or wide) and document(doc)
"""
SIGMOID_PROBE = "attention {name}:\n    norm = sigmoid\n"  # no lse
SOFTMAX_PROBE = "attention {name}:\n    mask = causal\n"  # no parameters
PARAMLESS = (SIGMOID_PROBE, SOFTMAX_PROBE)

B_, HQ, HKV, NQ, NKV, D_ = 2, 4, 2, 3, 5, 16


def _valid(spec: str = PROBE):
    g = S.seeded(11)
    q = torch.randn(B_, HQ, NQ, D_, generator=g)
    k = torch.randn(B_, HKV, NKV, D_, generator=g)
    v = torch.randn(B_, HKV, NKV, 8, generator=g)
    params = {"window": 3, "doc": torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 2]]),
              "table": torch.randn(HQ, NQ + NKV - 1, generator=g)}
    return [q, k, v], ({} if spec in PARAMLESS else params), {}


def _set(i, value):
    def f(qkv, params, kw):
        qkv[i] = value(qkv[i]) if callable(value) else value
    return f


def _param(key, value):
    def f(qkv, params, kw):
        if value is _DROP:
            del params[key]
        else:
            params[key] = value
    return f


_DROP = object()

# (id, spec, mutation, exception, substrings of the message, shared with the reference)
VALIDATION = [
    ("q-3d", PROBE, _set(0, lambda q: q[0]), ValueError, ["`q`", "(4, 3, 16)"], True),
    ("k-5d", PROBE, _set(1, lambda k: k[None]), ValueError, ["`k`", "(1, 2, 2, 5, 16)"], True),
    ("v-2d", PROBE, _set(2, lambda v: v[0, 0]), ValueError, ["`v`", "(5, 8)"], True),
    ("q-not-a-tensor", PROBE, _set(0, lambda q: q.tolist()), TypeError, ["`q`", "list"], True),
    ("q-int", PROBE, _set(0, lambda q: q.to(torch.int32)), TypeError, ["`q`", "int32"], True),
    ("batch", PROBE, _set(1, lambda k: k[:1]), ValueError, ["batch", "q has 2", "k has 1"], True),
    ("batch-v", PROBE, _set(2, lambda v: torch.cat([v, v])), ValueError, ["batch", "v has 4"], True),
    ("heads", PROBE, _set(0, lambda q: q[:, :3]), ValueError, ["query heads (3)", "key/value heads (2)"], True),
    ("v-heads", PROBE, _set(2, lambda v: v[:, :1]), ValueError, ["`v`", "(2, 1, 5, 8)"], True),
    ("v-length", PROBE, _set(2, lambda v: v[:, :, :4]), ValueError, ["`v`", "(2, 2, 4, 8)"], True),
    ("head-dim", PROBE, _set(1, lambda k: k[..., :8]), ValueError, ["head dim", "q has 16", "(2, 2, 5, 8)"], True),
    ("device", PROBE, _set(1, lambda k: k.to("meta")), ValueError, ["device", "meta", "cpu"], True),
    ("scale", PROBE, lambda qkv, p, kw: kw.update(scale="0.5"), TypeError, ["`scale`", "str"], True),
    ("missing-scalar", PROBE, _param("window", _DROP), TypeError, ["`window`"], True),
    ("missing-tensor", PROBE, _param("table", _DROP), TypeError, ["`table`"], True),
    ("unknown", PROBE, _param("windw", 3), TypeError, ["windw"], True),
    ("unknown-on-paramless", SOFTMAX_PROBE, _param("window", 3), TypeError, ["window", "unknown"], True),
    ("table-shape", PROBE, _param("table", torch.zeros(HQ, NQ + NKV)), ValueError, ["`table`", "(4, 8)", "(4, 7)"], True),
    ("doc-shape", PROBE, _param("doc", torch.zeros(B_, NQ, dtype=torch.int64)), ValueError, ["`doc`", "(2, 3)", "(2, 5)"],
     True),
    ("doc-float", PROBE, _param("doc", torch.zeros(B_, NKV)), TypeError, ["`doc`", "float32"], True),
    ("table-int", PROBE, _param("table", torch.zeros(HQ, NQ + NKV - 1, dtype=torch.int32)), TypeError,
     ["`table`", "int32"], True),
    ("table-list", PROBE, _param("table", [[0.0] * 7] * 4), TypeError, ["`table`", "list"], True),
    ("window-float", PROBE, _param("window", 2.5), TypeError, ["`window`", "2.5"], True),
    ("window-str", PROBE, _param("window", "3"), TypeError, ["`window`", "str"], True),
    ("window-bool", PROBE, _param("window", True), TypeError, ["`window`", "bool"], True),
    ("window-vector", PROBE, _param("window", torch.tensor([1, 2])), TypeError, ["`window`", "(2,)"], True),
    ("window-int32-overflow", PROBE, _param("window", 2**31), ValueError, ["`window`", str(2**31)], True),
    ("cap-str", PROBE, _param("cap", "big"), TypeError, ["`cap`", "str"], True),
    ("wide-int", PROBE, _param("wide", 1), TypeError, ["`wide`", "int"], True),
    # kernel-only rules (the float64 reference accepts these)
    ("float64", PROBE, lambda qkv, p, kw: qkv.__setitem__(slice(None), [t.double() for t in qkv]), TypeError,
     ["`q`", "float64"], False),
    ("mixed-dtypes", PROBE, _set(2, lambda v: v.half()), TypeError, ["float32", "float16"], False),
    ("head-dim-257", PROBE, lambda qkv, p, kw: qkv.__setitem__(slice(None), [
        torch.randn(B_, HQ, NQ, 257), torch.randn(B_, HKV, NKV, 257), torch.randn(B_, HKV, NKV, 8)]),
     ValueError, ["D=257"], False),
    ("dv-300", PROBE, _set(2, lambda v: torch.randn(B_, HKV, NKV, 300)), ValueError, ["Dv=300"], False),
    ("doc-device", PROBE, _param("doc", torch.zeros(B_, NKV, dtype=torch.int64, device="meta")), ValueError,
     ["`doc`", "meta"], False),
    ("return-lse-without-lse", SIGMOID_PROBE, lambda qkv, p, kw: kw.update(return_lse=True), ValueError,
     ["return_lse"], False),
]


@pytest.mark.parametrize("case_id, spec, mutate, exc, needles, shared", VALIDATION, ids=[c[0] for c in VALIDATION])
def test_validation_errors_name_the_argument_and_build_nothing(case_id, spec, mutate, exc, needles, shared, cache):
    attn = attnc.compile(spec.format(name=fresh_name("probe")))
    qkv, params, kw = _valid(spec)
    mutate(qkv, params, kw)
    before = attnc.compile_count()
    with pytest.raises(exc) as info:
        attn(*qkv, **kw, **params)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{case_id}: {needle!r} not in {message!r}"
    assert attnc.compile_count() == before, f"{case_id}: a failing call built a kernel"
    assert cache_files(cache) == [], f"{case_id}: a failing call wrote {cache_files(cache)}"
    if shared:  # one validation for both: the reference fails the same way
        with pytest.raises(exc) as ref_info:
            attnc.reference(attn.cascade, *qkv, **kw, **params)
        assert str(ref_info.value) == message
    # the control: the same fresh variant was not built yet, so asking for it builds and writes one
    attn.kernel_path(torch.float32)
    assert attnc.compile_count() == before + 1 and len(cache_files(cache)) == 1


def test_unsupported_dtype_for_kernel_path_builds_nothing(cache):
    attn = attnc.compile(f"attention {fresh_name('probe')}:\n    mask = causal\n")
    before = attnc.compile_count()
    with pytest.raises(TypeError, match="float64"):
        attn.kernel_path(torch.float64)
    assert attnc.compile_count() == before and cache_files(cache) == []


def test_the_validation_probe_runs_when_called_correctly():
    """The valid call every validation case starts from runs and matches the reference, so each
    failure above is caused by its one mutation."""
    attn = attnc.compile(PROBE.format(name="validation_probe"))
    qkv, params, _ = _valid()
    check_against_reference(attn, *qkv, params, what="probe")


# ----------------------------------------------------------------------------- 6. extreme scalars
#
# Runtime scalars at the ends of int32 (validation accepts them). Each library mask compares or
# floor-divides them with small positions, which cannot overflow, so the kernel must agree with
# the int64 reference. (Products such as dilated_window's window·dilation may wrap: integer
# arithmetic is 32-bit in kernels, docs/language.md.) Nq, Nkv = 20, 37 and 37, 20: several key
# tiles, so tile skipping from the mask's bounds is exercised. "No input can fault a kernel"
# (docs/semantics.md), but a kernel that reads out of bounds can crash the process, so these
# cases run in a worker process, started in the background when the module's first test runs;
# a crash fails its case and the worker restarts after it.

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
_INT_EXTREMES = [
    ("sliding_window", {"window": I32_MIN}), ("sliding_window", {"window": I32_MAX}),
    ("chunked", {"chunk": I32_MIN}), ("chunked", {"chunk": I32_MAX}), ("chunked", {"chunk": -1}),
    ("chunked", {"chunk": 0}),
    ("prefix_lm", {"prefix": I32_MIN}), ("prefix_lm", {"prefix": I32_MAX}),
    ("sink_window", {"sinks": I32_MIN, "window": I32_MAX}), ("sink_window", {"sinks": I32_MAX, "window": I32_MIN}),
    ("dilated_window", {"window": 0, "dilation": I32_MIN}), ("dilated_window", {"window": 1, "dilation": I32_MAX}),
]
_FLOAT_EXTREMES = [
    ("sigmoid", {"bias": -1e4}), ("sigmoid", {"bias": 1e4}), ("softcap", {"cap": 1e-3}), ("softcap", {"cap": -5.0}),
    ("softmax_sink", {"sink": torch.tensor([1e4, -math.inf])}), ("relu", {"divisor": 1e-30}),
]
EXTREME_CASES = ([(name, params, nq, nkv) for name, params in _INT_EXTREMES for nq, nkv in ((20, 37), (37, 20))]
                 + [(name, params, 20, 37) for name, params in _FLOAT_EXTREMES])


def _extreme_id(case) -> str:
    name, params, nq, nkv = case
    shown = "".join(f"-{k}={v}" if isinstance(v, (int, float)) else f"-{k}" for k, v in params.items())
    return f"{name}{shown}-nq{nq}-nkv{nkv}"


def _run_extreme_case(index: int) -> None:
    name, params, nq, nkv = EXTREME_CASES[index]
    g = S.seeded(13)
    q, k, v = (torch.randn(1, 2, nq, 16, generator=g), torch.randn(1, 1, nkv, 16, generator=g),
               torch.randn(1, 1, nkv, 8, generator=g))
    check_against_reference(attnc.load(name), q, k, v, params, what=_extreme_id(EXTREME_CASES[index]))


def _worker_main(indices: list[int]) -> None:
    """In the worker: run the cases, one result line per case (START before it runs)."""
    attnc.Attention.POISON = True
    for i in indices:
        print(f"START {i}", flush=True)
        try:
            _run_extreme_case(i)
        except Exception as err:  # noqa: BLE001 — reported to the parent, which fails the case
            print(f"FAIL {i} {json.dumps(f'{type(err).__name__}: {err}')}", flush=True)
        else:
            print(f"OK {i}", flush=True)


class _ExtremeRunner:
    """Drives worker processes over EXTREME_CASES in a background thread; results by index:
    ('ok', ''), ('fail', message) or ('crash', how). A case runs in well under a second; one
    still running after CASE_TIMEOUT seconds is killed (a kernel walking far more key tiles than
    exist reads out of bounds for a long time before it faults)."""

    CASE_TIMEOUT = 10

    def __init__(self, cache_dir):
        self.cache_dir = str(cache_dir)
        self.results: dict[int, tuple[str, str]] = {}
        self.proc: subprocess.Popen | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the worker (the module finished, maybe early with -x)."""
        self.closed = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join()

    def _drive(self) -> None:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, ATTNC_CACHE_DIR=self.cache_dir, PYTHONPATH=str(root))
        pending = list(range(len(EXTREME_CASES)))
        while pending and not self.closed:
            self.proc = proc = subprocess.Popen(
                [sys.executable, "-m", "tests.codegen.test_kernel_properties", "--extreme-worker", *map(str, pending)],
                cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stderr_lines: list[str] = []
            drain = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
            drain.start()
            current, timer, killed = None, None, []
            for line in proc.stdout:
                word, _, rest = line.strip().partition(" ")
                index, _, message = rest.partition(" ")
                if word == "START":
                    current = int(index)
                    if timer:
                        timer.cancel()
                    timer = threading.Timer(self.CASE_TIMEOUT, lambda: (killed.append(1), proc.kill()))
                    timer.start()
                elif word in ("OK", "FAIL"):
                    self.results[int(index)] = ("ok", "") if word == "OK" else ("fail", json.loads(message))
                    pending.remove(int(index))
                    current = None
            if timer:
                timer.cancel()
            code = proc.wait()
            drain.join()
            if current is None:
                if pending:  # the worker died before starting a case: report them all
                    tail = "".join(stderr_lines[-20:])
                    for i in pending:
                        self.results[i] = ("crash", f"the worker exited with {code} before this case:\n{tail}")
                    pending = []
                continue
            if killed:
                how = f"still running after {self.CASE_TIMEOUT} s (a correct run takes < 1 s), killed"
            else:
                fatal = [ln for ln in stderr_lines if "Fatal Python error" in ln or "Error" in ln][:3]
                died = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                how = f"the kernel's process died with {died} ({''.join(fatal).strip() or 'no message'})"
            self.results[current] = ("crash", how)
            pending.remove(current)

    def result(self, index: int) -> tuple[str, str]:
        self.thread.join()
        return self.results.get(index, ("crash", "no result from the worker"))


@pytest.fixture(scope="module", autouse=True)
def extreme_runner(request, tmp_path_factory):
    """Started with the module's first test when any extreme case is selected, so the worker
    runs alongside the other tests."""
    wanted = any(item.name.startswith("test_extreme_runtime_scalars") and item.module is request.module
                 for item in request.session.items)
    runner = _ExtremeRunner(tmp_path_factory.mktemp("extreme-cache")) if wanted else None
    yield runner
    if runner is not None:
        runner.close()


@pytest.mark.parametrize("index", range(len(EXTREME_CASES)), ids=[_extreme_id(c) for c in EXTREME_CASES])
def test_extreme_runtime_scalars(index, extreme_runner):
    status, message = extreme_runner.result(index)
    if status != "ok":
        pytest.fail(f"{_extreme_id(EXTREME_CASES[index])}: {status}: {message}", pytrace=False)


if __name__ == "__main__" and sys.argv[1:2] == ["--extreme-worker"]:
    _worker_main([int(a) for a in sys.argv[2:]])
