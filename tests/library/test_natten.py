"""natten1d / natten2d / natten3d against an independent brute-force NATTEN (tests/library/strategies.py).

The oracle is ``S.natten_axis_allowed`` / ``S.natten_nd_mask``: per axis, explicit loops over
NATTEN's definition of a neighborhood (dilation groups; a non-causal window of ``kernel`` group
positions, ⌊kernel/2⌋ left of a centre clamped into the group — shifted, not truncated, at the
borders, even kernels one shorter on the right; a causal window ending at the query, truncated at
the start), combined over the axes of a row-major grid. It is not derived from the .attn files.

* the oracle itself: its windows against the literal transcription of NATTEN's ``get_window_start``
  (odd kernels) and closed-form properties (counts, causal reach, the query in its own window);
* the float64 reference of every variant: the mask it implies (uniform weights: q = 0, v = I) is
  the oracle's on 1-D/2-D/3-D grids up to 200 tokens — dilation, per-axis causal flags, borders,
  mixed and even kernels, dilation groups shorter than the kernel — and the allowed-key count per
  query is the closed form (kernel product with no causal axis); out and lse are softmax restricted
  to the oracle's mask; special cases equal other library variants (full, sliding_window, chunked);
* the generated kernels (Triton interpreter, poisoned outputs) on grids of ≤ 64 tokens, fp32 and
  one fp16 case: out and lse against the masked softmax in float64; one backward (dq, dk, dv
  against torch.autograd of the masked softmax in float64);
* errors: a grid that does not tile the tokens, and n_q != n_kv, are ValueErrors naming the grid.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.check import TOLERANCE
from tests.library import strategies as S

F64, F32, F16 = torch.float64, torch.float32, torch.float16
NAMES = ("natten1d", "natten2d", "natten3d")
REF_TOL = 1e-9  # float64 reference vs float64 torch: only summation order differs

REFERENCE = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# the interpreter runs about 1–2 s per natten2d/natten3d call at these sizes
KERNEL = settings(REFERENCE, max_examples=5, database=None)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(attnc.Attention, "POISON", True)


LIB = {name: attnc.load(name) for name in NAMES}


# ----------------------------------------------------------------------------- helpers


def axis_count(length: int, kernel: int, dilation: int, causal: bool, x: int) -> int:
    """How many keys position x of an axis is allowed, in closed form: its dilation group holds
    ⌈(length − g)/dilation⌉ positions, x is the (x // dilation)-th; a causal window is truncated at
    the start, a non-causal one is shifted (so only a group shorter than the kernel cuts it)."""
    group = (length - x % dilation + dilation - 1) // dilation
    return min(kernel, x // dilation + 1) if causal else min(kernel, group)


def expected_counts(case: S.NattenNDCase) -> torch.Tensor:
    counts = []
    for crd in _coords(case.shape):
        c = 1
        for a, x in enumerate(crd):
            c *= axis_count(case.shape[a], case.kernels[a], case.dilations[a], case.causals[a], x)
        counts.append(c)
    return torch.tensor(counts)


def _coords(shape):
    """Grid coordinates in row-major token order (the last axis fastest)."""
    return list(itertools.product(*(range(L) for L in shape)))


def uniform_weights(name: str, n: int, **params) -> torch.Tensor:
    """The weights the reference implies, [n, n]: q = 0 gives every kept key the weight 1/count and
    v = I reads them out (as tests/library/test_hand_formulas.py's attnc_weights)."""
    q = torch.zeros(1, 1, n, 8, dtype=F64)
    k = torch.randn(1, 1, n, 8, generator=S.seeded(0), dtype=F64)
    v = torch.eye(n, dtype=F64).view(1, 1, n, n)
    return LIB[name].reference(q, k, v, **params)[0, 0]


def masked_softmax(q, k, v, keep, scale=None):
    """float64 softmax attention restricted to ``keep`` [Nq, Nkv] (GQA: query head h reads
    key/value head h // (Hq // Hkv)): (out, lse)."""
    q, k, v = (t.to(F64) for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (scale * q @ k.transpose(-1, -2)).masked_fill(~keep, -math.inf)
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def rel(got, want) -> float:
    return S.rel_err(got.to(F64), want)


def describe(case: S.NattenNDCase) -> str:
    return f"{case.name} shape={case.shape} params={case.params}"


def qkv(seed, B, Hq, Hkv, n, D=16, Dv=16, dtype=F64, temperature=1.0):
    g = S.seeded(seed)
    q = (torch.randn(B, Hq, n, D, generator=g, dtype=F64) * temperature).to(dtype)
    k = torch.randn(B, Hkv, n, D, generator=g, dtype=F64).to(dtype)
    v = torch.randn(B, Hkv, n, Dv, generator=g, dtype=F64).to(dtype)
    return q, k, v


# ----------------------------------------------------------------------------- the oracle itself


def test_axis_oracle_agrees_with_natten_get_window_start():
    """Odd kernels with every group ≥ kernel: the definition-based windows are exactly the literal
    transcription of NATTEN's get_window_start (S.natten_axis_neighbors), two independent oracles."""
    checked = 0
    for L in range(1, 26):
        for K in (1, 3, 5, 7):
            for d in (1, 2, 3, 4):
                if L < K * d:
                    continue
                want = [sorted(keys) for keys in S.natten_axis_neighbors(L, K, d)]
                assert S.natten_axis_allowed(L, K, d) == want, (L, K, d)
                checked += 1
    assert checked > 150


@pytest.mark.parametrize("causal", [False, True])
def test_axis_oracle_properties(causal):
    for L in range(1, 20):
        for K in range(7):
            for d in range(1, 5):
                for x, keys in enumerate(S.natten_axis_allowed(L, K, d, causal)):
                    assert keys == sorted(set(keys)) and all(0 <= j < L and j % d == x % d for j in keys)
                    assert len(keys) == axis_count(L, K, d, causal, x), (L, K, d, x)
                    if K >= 1:
                        assert x in keys
                    if causal:  # the window ends at the query and steps back by the dilation
                        assert keys == [x - t * d for t in range(K) if x - t * d >= 0][::-1]
                    elif len(keys) == K and K >= 1:  # a full window: contiguous in the group
                        assert keys == list(range(keys[0], keys[0] + K * d, d))
                        # centred when the centred window fits (even: one more on the left)
                        lo, hi = x - (K // 2) * d, x + (K - 1 - K // 2) * d
                        if lo >= 0 and hi < L:
                            assert keys[0] == lo


def test_nd_oracle_generalizes_natten2d_mask():
    for H, W, K, d in [(3, 3, 3, 1), (5, 7, 3, 1), (6, 7, 3, 2), (9, 10, 3, 3), (7, 5, 5, 1), (10, 12, 5, 2)]:
        assert torch.equal(S.natten_nd_mask((H, W), K, d), S.natten2d_mask(H, W, K, d)), (H, W, K, d)


def test_nd_oracle_is_the_product_of_its_axes():
    """A 3-D grid: keep[i, j] is the AND of the three axis windows of the row-major coordinates."""
    shape, ks, ds, cs = (3, 4, 5), (2, 3, 1), (1, 2, 1), (True, False, False)
    keep = S.natten_nd_mask(shape, ks, ds, cs)
    axes = [S.natten_axis_keep(L, k, d, c) for L, k, d, c in zip(shape, ks, ds, cs, strict=True)]
    for i, (z, y, x) in enumerate(_coords(shape)):
        assert i == (z * 4 + y) * 5 + x
        for j, (z2, y2, x2) in enumerate(_coords(shape)):
            assert keep[i, j] == (axes[0][z, z2] and axes[1][y, y2] and axes[2][x, x2])


# ----------------------------------------------------------------------------- the reference: masks


def _check_mask(case: S.NattenNDCase, params: dict | None = None):
    weights = uniform_weights(case.name, case.n, **(case.params if params is None else params))
    keep = weights > 0
    want = case.mask()
    bad = (keep != want).nonzero()
    assert bad.numel() == 0, (f"{describe(case)}: {len(bad)} mismatching pairs, first (query, key) = "
                              f"{bad[0].tolist()}: reference keeps it: {bool(keep[tuple(bad[0])])}")
    counts = expected_counts(case)
    assert torch.equal(keep.sum(-1), counts), describe(case)
    # each kept key gets weight 1/count: nothing but the mask shapes the weights
    assert torch.allclose(weights.sum(-1), torch.ones(case.n, dtype=F64), rtol=1e-12)
    assert torch.allclose(weights[keep], (1.0 / counts.to(F64))[keep.nonzero()[:, 0]], rtol=1e-12)
    return counts


@settings(REFERENCE, max_examples=60)
@given(case=S.natten_nd_cases(max_tokens=200))
def test_reference_mask_is_natten(case):
    """1-D/2-D/3-D, kernels 1–5 (even too), dilations 1–3, per-axis causal flags, every group of a
    non-causal axis ≥ kernel: the reference keeps exactly the oracle's pairs; the count per query
    is the closed form, and with no causal axis it is the product of the kernels."""
    counts = _check_mask(case)
    if not any(case.causals):
        assert (counts == math.prod(case.kernels)).all()


@settings(REFERENCE, max_examples=30)
@given(case=S.natten_nd_cases(max_tokens=200, causal=(False,), short_groups=True))
def test_reference_mask_with_groups_shorter_than_the_kernel(case):
    """Outside NATTEN's precondition: a non-causal dilation group shorter than the kernel is seen
    whole (the library's comment says so, and NATTEN's flex mask does so through its clamp)."""
    _check_mask(case)


@pytest.mark.parametrize("name, n, params, per_axis", [
    # borders: the window shifts at both ends (1-D, the kernel nearly the axis)
    ("natten1d", 9, {"kernel": 7}, ((9,), (7,), (1,), (False,))),
    # even kernel with dilation: the group 0 of 11 has 4 positions, group 1 has 4, group 2 has 3
    ("natten1d", 11, {"kernel": 2, "dilation": 3}, ((11,), (2,), (3,), (False,))),
    ("natten1d", 13, {"kernel": 4, "dilation": 3, "causal": True}, ((13,), (4,), (3,), (True,))),
    # mixed per-axis kernels, dilations and causal flags
    ("natten2d", 42, {"width": 7, "kernel_h": 5, "kernel_w": 2, "dilation_w": 3, "causal_h": True},
     ((6, 7), (5, 2), (1, 3), (True, False))),
    ("natten2d", 40, {"width": 8, "kernel_h": 1, "kernel_w": 8}, ((5, 8), (1, 8), (1, 1), (False, False))),
    ("natten2d", 36, {"width": 4, "kernel_h": 3, "kernel_w": 4, "dilation_h": 3, "causal_w": True},
     ((9, 4), (3, 4), (3, 1), (False, True))),
    # video: causal time axis, dilated height
    ("natten3d", 60, {"height": 4, "width": 5, "kernel_d": 2, "kernel_h": 2, "kernel_w": 3, "dilation_h": 2,
                      "causal_d": True}, ((3, 4, 5), (2, 2, 3), (1, 2, 1), (True, False, False))),
    ("natten3d", 90, {"height": 6, "width": 3, "kernel_d": 5, "kernel_h": 3, "kernel_w": 3, "dilation_h": 2,
                      "causal_w": True, "causal_h": True}, ((5, 6, 3), (5, 3, 3), (1, 2, 1), (False, True, True))),
], ids=lambda x: x if isinstance(x, str) else None)
def test_reference_mask_examples(name, n, params, per_axis):
    """Called with the parameters as written (dilation 1 and causal False by default)."""
    case = S.NattenNDCase(*per_axis)
    assert case.name == name and case.n == n
    spelled = {key: params.get(key, 1 if key.startswith("dilation") else False if key.startswith("causal") else None)
               for key in case.params}
    assert spelled == case.params, "the example's parameters and its per-axis description disagree"
    _check_mask(case, params)


@pytest.mark.parametrize("name, n, params, per_axis", [
    ("natten1d", 12, {}, ((12,), (7,), (1,), (False,))),
    ("natten2d", 80, {"width": 8}, ((10, 8), (7, 7), (1, 1), (False, False))),
    ("natten3d", 64, {"height": 4, "width": 4}, ((4, 4, 4), (3, 3, 3), (1, 1, 1), (False, False, False))),
])
def test_reference_defaults(name, n, params, per_axis):
    """natten1d: kernel 7; natten2d: 7 × 7; natten3d: 3 × 3 × 3; dilation 1, not causal."""
    case = S.NattenNDCase(*per_axis)
    weights = uniform_weights(name, n, **params)
    assert torch.equal(weights > 0, case.mask())


# ----------------------------------------------------------------------------- the reference: values


@settings(REFERENCE, max_examples=30)
@given(case=S.natten_nd_cases(max_tokens=120), seed=st.integers(0, 2**31 - 1),
       heads=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]), B=st.integers(1, 2),
       temperature=st.sampled_from([0.5, 1.0, 3.0]), scale=st.sampled_from([None, 0.3]))
def test_reference_is_masked_softmax(case, seed, heads, B, temperature, scale):
    q, k, v = qkv(seed, B, heads[0], heads[1], case.n, D=8, Dv=6, temperature=temperature)
    out, lse = LIB[case.name].reference(q, k, v, scale=scale, return_lse=True, **case.params)
    want, want_lse = masked_softmax(q, k, v, case.mask(), scale)
    assert rel(out, want) <= REF_TOL, describe(case)
    assert rel(lse, want_lse) <= REF_TOL, describe(case)


def test_reference_special_cases_are_other_variants():
    """Cross-checks through other library variants (not through the oracle): a causal natten1d is
    a sliding window, a window as large as the axis is full (causal: causal) attention, a 2-D
    window 1 × width is attention within image rows (chunked), kernel 1 everywhere is v itself."""
    q, k, v = qkv(5, 2, 2, 1, 24, D=8, Dv=8)

    def ref(name, **params):
        return attnc.load(name).reference(q, k, v, return_lse=True, **params)

    def same(a, b, what):
        assert rel(a[0], b[0]) <= REF_TOL and rel(a[1], b[1]) <= REF_TOL, what

    for K in (1, 3, 4, 9):
        same(ref("natten1d", kernel=K, causal=True), ref("sliding_window", window=K), f"causal natten1d {K}")
    same(ref("natten1d", kernel=24), ref("full"), "natten1d kernel = n")
    same(ref("natten1d", kernel=24, causal=True), ref("causal"), "causal natten1d kernel = n")
    same(ref("natten2d", width=6, kernel_h=4, kernel_w=6), ref("full"), "natten2d kernel = image")
    same(ref("natten3d", height=3, width=4, kernel_d=2, kernel_h=3, kernel_w=4), ref("full"), "natten3d kernel = volume")
    same(ref("natten2d", width=6, kernel_h=1, kernel_w=6), ref("chunked", chunk=6), "natten2d rows")
    same(ref("natten3d", height=2, width=3, kernel_d=1, kernel_h=2, kernel_w=3), ref("chunked", chunk=6),
         "natten3d slices")
    out = LIB["natten3d"].reference(q, k, v, height=2, width=3, kernel_d=1, kernel_h=1, kernel_w=1)
    assert rel(out, v.repeat_interleave(2, 1)) <= REF_TOL
    # dilation ≥ the axis: every group is one position, so each token sees only itself
    out = LIB["natten1d"].reference(q, k, v, kernel=3, dilation=24)
    assert rel(out, v.repeat_interleave(2, 1)) <= REF_TOL


# ----------------------------------------------------------------------------- kernels


def _kernel_check(case: S.NattenNDCase, seed: int, heads, dtype, temperature=1.0):
    q, k, v = qkv(seed, 1, heads[0], heads[1], case.n, dtype=dtype, temperature=temperature)
    out, lse = LIB[case.name](q, k, v, return_lse=True, **case.params)
    want, want_lse = masked_softmax(q, k, v, case.mask())  # of the dtype-rounded inputs
    what = f"{describe(case)} {dtype} heads={heads} seed={seed}"
    assert out.dtype == dtype and out.shape == want.shape, what
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), f"{what}: NaN (an unwritten element)"
    assert rel(out, want) <= TOLERANCE[dtype], f"{what}: out rel err {rel(out, want):.3e}"
    assert rel(lse, want_lse) <= TOLERANCE[dtype], f"{what}: lse rel err {rel(lse, want_lse):.3e}"


@KERNEL
@given(case=S.natten_nd_cases(max_tokens=48), seed=st.integers(0, 2**31 - 1),
       heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]))
def test_kernel_is_masked_softmax(case, seed, heads):
    _kernel_check(case, seed, heads, F32)


KERNEL_CASES = [
    # 1-D: three 16-row tiles, an even kernel with dilation / a causal dilated window
    (S.NattenNDCase((40,), (4,), (3,), (False,)), F32),
    (S.NattenNDCase((33,), (5,), (2,), (True,)), F32),
    # 2-D: mixed kernels, a dilated row axis and a causal column axis
    (S.NattenNDCase((6, 7), (3, 5), (2, 1), (False, True)), F32),
    # 3-D video: causal time, dilated height
    (S.NattenNDCase((3, 4, 5), (2, 3, 3), (1, 2, 1), (True, False, False)), F32),
    # fp16, 2-D dilated on both axes
    (S.NattenNDCase((8, 8), (3, 3), (2, 2), (False, False)), F16),
]


@pytest.mark.parametrize("case, dtype", KERNEL_CASES, ids=lambda x: describe(x) if isinstance(x, S.NattenNDCase)
                         else str(x)[6:])
def test_kernel_examples(case, dtype):
    _kernel_check(case, 3, (2, 1), dtype, temperature=2.0)


def test_kernel_backward():
    """dq, dk, dv of Σ dout·out + Σ dlse·lse through the kernel vs torch.autograd of the masked
    softmax in float64 (on the same fp32 inputs)."""
    case = S.NattenNDCase((2, 3, 4), (2, 3, 3), (1, 1, 2), (True, False, False))
    q, k, v = qkv(9, 1, 2, 1, case.n, dtype=F32, temperature=1.5)
    g = S.seeded(10)
    dout = torch.randn(1, 2, case.n, 16, generator=g)
    dlse = torch.randn(1, 2, case.n, generator=g)

    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = LIB[case.name](*ins, return_lse=True, **case.params)
    got = torch.autograd.grad((out, lse), ins, (dout, dlse))

    ins64 = [t.detach().to(F64).requires_grad_() for t in (q, k, v)]
    want_out, want_lse = masked_softmax(*ins64, case.mask())
    want = torch.autograd.grad((want_out, want_lse), ins64, (dout.to(F64), dlse.to(F64)))

    assert rel(out.detach(), want_out.detach()) <= TOLERANCE[F32]
    for name, a, b in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == F32 and torch.isfinite(a).all(), name
        assert rel(a, b) <= 1e-4, f"{name}: rel err {rel(a, b):.3e}"


# ----------------------------------------------------------------------------- errors


def _call(how: str, name: str, n_q: int, n_kv: int, **params):
    q, k, v = (torch.randn(1, 1, n, 16) for n in (n_q, n_kv, n_kv))
    attn = LIB[name]
    return (attn if how == "kernel" else attn.reference)(q, k, v, **params)


@pytest.mark.parametrize("how", ["kernel", "reference"])
@pytest.mark.parametrize("name, n, params", [
    ("natten2d", 10, {"width": 3}),
    ("natten2d", 7, {"width": 8}),  # not even one row
    ("natten2d", 12, {"width": 5, "kernel_h": 1, "kernel_w": 3}),
    ("natten3d", 20, {"height": 2, "width": 3}),
    ("natten3d", 12, {"height": 4, "width": 4}),
    ("natten3d", 30, {"height": 4, "width": 3, "kernel_d": 1}),
])
def test_a_grid_that_does_not_tile_the_tokens_is_a_value_error(how, name, n, params):
    with pytest.raises(ValueError, match="grid"):
        _call(how, name, n, n, **params)


@pytest.mark.parametrize("how", ["kernel", "reference"])
@pytest.mark.parametrize("name, n_q, n_kv, params", [
    ("natten1d", 12, 16, {}),
    ("natten1d", 9, 3, {"kernel": 3}),
    ("natten2d", 12, 16, {"width": 4}),
    ("natten3d", 8, 16, {"height": 2, "width": 2}),
])
def test_n_q_other_than_n_kv_is_a_value_error(how, name, n_q, n_kv, params):
    with pytest.raises(ValueError, match="grid") as info:
        _call(how, name, n_q, n_kv, **params)
    assert str(n_q) in str(info.value) and str(n_kv) in str(info.value)
