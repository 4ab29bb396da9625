"""Attention mechanisms from the literature against formulas written from the papers.

Each formula below is plain torch float64, transcribed from the paper's equation (quoted), with
its own GQA expansion and masks — never from attnc's cascades. Forward in fp32/fp16/bf16 and the
gradients of q, k, v and of every float tensor parameter, over hypothesis-drawn shapes including
GQA and Nq ≠ Nkv, through the interpreted kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attnc

F64 = torch.float64
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"
FWD = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
BWD = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
FEW = settings(max_examples=4, deadline=None, phases=[p for p in Phase if p is not Phase.explain],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(attnc.Attention, "POISON", True)


# ----------------------------------------------------------------------------- helpers


def expand(t: torch.Tensor, Hq: int) -> torch.Tensor:
    """GQA: query head h reads key/value head h // (Hq // Hkv)."""
    return t.repeat_interleave(Hq // t.shape[1], dim=1)


def causal_keep(Nq: int, Nkv: int) -> torch.Tensor:
    """Bottom-right aligned: query i sits at key position i + Nkv − Nq."""
    i = torch.arange(Nq).view(-1, 1)
    j = torch.arange(Nkv).view(1, -1)
    return j <= i + (Nkv - Nq)


def scores(q, k, scale=None):
    """s_ij = scale·q_i·k_j in float64, [B, Hq, Nq, Nkv]."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return scale * q @ expand(k, q.shape[1]).transpose(-1, -2)


def rel_err(got, want, floor=0.0):
    got, want = got.detach().double(), want.detach()
    return float((got - want).norm() / max(want.norm().item(), floor, 1e-30))


shapes = st.tuples(
    st.integers(1, 2), st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]), st.integers(1, 21), st.integers(1, 21),
    st.sampled_from([4, 8, 16]), st.sampled_from([4, 8, 16]))
dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


def check(attn, formula, shape, dtype, seed, params=None, *, temperature=1.0, what="", constants=()):
    """attn's forward and gradients (q, k, v, float tensor parameters) against ``formula`` (float64
    autograd on the same rounded inputs)."""
    B, (Hq, Hkv), Nq, Nkv, D, Dv = shape
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, Hq, Nq, D, generator=g) * temperature).to(dtype)
    k = torch.randn(B, Hkv, Nkv, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Nkv, Dv, generator=g).to(dtype)
    params = dict(params(B, Hq, Hkv, Nq, Nkv, D, g) if callable(params) else params or {})
    leaves = {"q": q, "k": k, "v": v, **{n: t for n, t in params.items()
                                          if isinstance(t, torch.Tensor) and t.is_floating_point()
                                          and n not in constants}}
    mine = {n: t.detach().clone().requires_grad_() for n, t in leaves.items()}
    ref = {n: t.detach().to(F64).requires_grad_() for n, t in leaves.items()}
    out = attn(mine["q"], mine["k"], mine["v"], **{**params, **{n: mine[n] for n in params if n in mine}})
    want = formula(ref["q"], ref["k"], ref["v"], **{**params, **{n: ref[n] for n in params if n in ref}})
    label = f"{what} B={B} Hq={Hq} Hkv={Hkv} Nq={Nq} Nkv={Nkv} D={D} Dv={Dv} {dtype} seed={seed}"
    assert torch.isfinite(out).all(), label
    assert rel_err(out, want) <= FWD[dtype], f"{label}: forward rel err {rel_err(out, want):.2e}"
    dout = torch.randn(out.shape, generator=g).to(dtype)
    got = torch.autograd.grad(out, list(mine.values()), dout, allow_unused=True)
    exp = torch.autograd.grad(want, list(ref.values()), dout.to(F64), allow_unused=True)
    scale = max((e.abs().max().item() for e in exp if e is not None and e.numel()), default=0.0)
    for name, a, b in zip(mine, got, exp):
        b = torch.zeros_like(ref[name]) if b is None else b
        assert a is not None and torch.isfinite(a).all(), f"{label}: d{name} missing or not finite"
        err = rel_err(a, b, floor=1e-2 * scale * math.sqrt(b.numel()))
        assert err <= BWD[dtype], f"{label}: d{name} rel err {err:.2e}"


# ----------------------------------------------------------------------------- softpick


def softpick_formula(q, k, v, eps=1e-6):
    """Zuhri et al., 2025, eq. (1), unshifted: Softpick(x)_i = ReLU(e^{x_i} − 1) / (Σ_j |e^{x_j} − 1| + ε),
    over the causally visible keys."""
    s = scores(q, k)
    keep = causal_keep(q.shape[2], k.shape[2])
    e = torch.where(keep, torch.expm1(s), torch.zeros_like(s))
    w = torch.relu(e) / (e.abs().sum(-1, keepdim=True) + eps)
    return w @ expand(v, q.shape[1])


@FEW
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16))
def test_softpick_trains(shape, dtype, seed):
    """The max-shifted form (examples/softpick.attn) gets gradients: out does not depend on the
    shift, so the backward holds it constant."""
    attn = attnc.compile(EXAMPLES / "softpick.attn", "causal_softpick")
    check(attn, softpick_formula, shape, dtype, seed, temperature=2.0, what="softpick")


# ----------------------------------------------------------------------------- linear attention

RELU_LINEAR = """
attention relu_linear(eps: float = 1e-6, causal: bool = False):
    q = relu(q)
    k = relu(k)
    score = dot
    mask = kv_idx <= q_idx + (n_kv - n_q) or not causal
    norm = linear_norm(eps)
"""


def linear_formula(phi):
    def formula(q, k, v, eps=1e-6, causal=False):
        """Katharopoulos et al., 2020, eq. (4)/(9): V'_i = φ(Q_i)ᵀ Σ_j φ(K_j) V_jᵀ / (φ(Q_i)ᵀ Σ_j φ(K_j)),
        the sums over j ≤ i when causal; with the reference code's eps in the denominator."""
        qf, kf = phi(q), expand(phi(k), q.shape[1])
        sim = qf @ kf.transpose(-1, -2)
        if causal:
            sim = torch.where(causal_keep(q.shape[2], k.shape[2]), sim, torch.zeros_like(sim))
        return (sim @ expand(v, q.shape[1])) / (sim.sum(-1, keepdim=True) + eps)
    return formula


@FEW
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16), causal=st.booleans(),
       relu=st.booleans())
def test_linear_attention_matches_the_paper(shape, dtype, seed, causal, relu):
    if relu:
        attn = attnc.compile(RELU_LINEAR, "relu_linear")
        phi = torch.relu
    else:
        attn = attnc.load("linear_attention")
        phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    eps = 1e-6 if not relu else 1e-2  # ReLU features can make a whole row's similarities 0
    check(attn, linear_formula(phi), shape, dtype, seed, {"eps": eps, "causal": causal},
          what=f"linear ({'relu' if relu else 'elu+1'}, causal={causal})")


# ----------------------------------------------------------------------------- ConViT GPSA


def gpsa_formula(q, k, v, width, gate, vpos):
    """d'Ascoli et al., 2021 (ConViT), eq. (5)–(6) as their code computes it: rel_indices[i, j] =
    (x_j − x_i, y_j − y_i, (x_j − x_i)² + (y_j − y_i)²) for patches laid out in rows of `width`,
    pos_score = softmax_j(rel_indices · v_pos^h), patch_score = softmax_j(q_i·k_j·scale),
    attn = (1 − σ(λ_h))·patch_score + σ(λ_h)·pos_score, out = attn @ v."""
    Nq, Nkv = q.shape[2], k.shape[2]
    pi, pj = torch.arange(Nq), torch.arange(Nkv)
    dx = ((pj % width).view(1, -1) - (pi % width).view(-1, 1)).to(F64)
    dy = ((pj // width).view(1, -1) - (pi // width).view(-1, 1)).to(F64)
    rel = torch.stack([dx, dy, dx * dx + dy * dy], -1)  # [Nq, Nkv, 3]
    pos = torch.einsum("ijc,hc->hij", rel, vpos).unsqueeze(0)  # [1, H, Nq, Nkv]
    patch = torch.softmax(scores(q, k), -1)
    g = torch.sigmoid(gate).view(1, -1, 1, 1)
    attn = (1 - g) * patch + g * torch.softmax(pos, -1)
    return attn @ expand(v, q.shape[1])


@FEW
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16), width=st.integers(1, 6))
def test_convit_gpsa_matches_the_paper(shape, dtype, seed, width):
    attn = attnc.load("gpsa")

    def params(B, Hq, Hkv, Nq, Nkv, D, g):
        return {"width": width, "gate": torch.randn(Hq, generator=g),
                "vpos": (0.3 * torch.randn(Hq, 3, generator=g))}
    check(attn, gpsa_formula, shape, dtype, seed, params, what=f"gpsa width={width}")


# ----------------------------------------------------------------------------- differential attention


def differential_formula(q, k, v, lam, causal=False):
    """Ye et al., 2024 (Differential Transformer), eq. (1): [Q1; Q2] = Q, [K1; K2] = K split along the
    head dimension into halves of d = D / 2,
    DiffAttn(X) = (softmax(Q1 K1ᵀ / √d) − λ·softmax(Q2 K2ᵀ / √d)) V, λ per head."""
    d = q.shape[-1] // 2
    k = expand(k, q.shape[1])
    a1 = q[..., :d] @ k[..., :d].transpose(-1, -2) / math.sqrt(d)
    a2 = q[..., d:] @ k[..., d:].transpose(-1, -2) / math.sqrt(d)
    keep = causal_keep(q.shape[2], k.shape[2]) if causal else torch.ones(a1.shape[-2:], dtype=torch.bool)
    # masked scores −1e30: exp gives exactly 0; a row with no visible key (Nq > Nkv) is then 0
    p1, p2 = (torch.softmax(a.masked_fill(~keep, -1e30), -1) * keep for a in (a1, a2))
    return (p1 - lam.view(1, -1, 1, 1) * p2) @ expand(v, q.shape[1])


@FEW
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16), causal=st.booleans())
def test_differential_attention_matches_the_paper(shape, dtype, seed, causal):
    attn = attnc.load("differential")

    def params(B, Hq, Hkv, Nq, Nkv, D, g):
        return {"lam": torch.rand(Hq, generator=g) * 0.8 + 0.1, "causal": causal}
    check(attn, differential_formula, shape, dtype, seed, params, what=f"differential causal={causal}")


# ----------------------------------------------------------------------------- stick-breaking


def stick_breaking_formula(q, k, v, bias=None, attend_current=False):
    """Tan et al., 2024 (Scaling Stick-Breaking Attention), eq. (2), as a product (not in log space):
    A_ij = β_ij Π_{j<k<i} (1 − β_ik), β_ij = σ(q_i·k_j / √d + b_h), over the keys j < i (j ≤ i with
    attend_current: the products then run over j < k ≤ i); the row's leftover mass is dropped."""
    s = scores(q, k)
    if bias is not None:
        s = s + bias.view(1, -1, 1, 1)
    Nq, Nkv = s.shape[-2:]
    pos = torch.arange(Nq).view(-1, 1) + (Nkv - Nq)  # query i's position among the keys
    key = torch.arange(Nkv).view(1, -1)
    visible = (key < pos) | ((key == pos) & attend_current)
    beta = torch.sigmoid(s)
    cols = []
    for j in range(Nkv):
        later = visible & (key > j)  # the keys between j and i (the nearer ones), k ≠ j
        rest = torch.where(later, 1 - beta, torch.ones_like(beta)).prod(-1)
        cols.append(torch.where(visible[:, j], beta[..., j] * rest, torch.zeros_like(rest)))
    return torch.stack(cols, -1) @ expand(v, q.shape[1])


@FEW
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16), attend_current=st.booleans(), bias=st.booleans())
def test_stick_breaking_matches_the_paper(shape, dtype, seed, attend_current, bias):
    attn = attnc.load("stick_breaking_bias" if bias else "stick_breaking")

    def params(B, Hq, Hkv, Nq, Nkv, D, g):
        extra = {"bias": torch.randn(Hq, generator=g) - 0.5} if bias else {}
        return {**extra, "attend_current": attend_current}
    check(attn, stick_breaking_formula, shape, dtype, seed, params,
          what=f"stick_breaking bias={bias} attend_current={attend_current}")


def test_stick_breaking_visits_the_nearest_keys_first():
    # The partial sum over the keys after j runs from the last key down (a suffix sum): one pass
    # whose key loops count down, carrying the sum of the tiles already visited.
    from attnc.codegen.generate import Specialization, generate
    from attnc.ir.passes import pass_scans
    c = attnc.load("stick_breaking").cascade
    plan = attnc.plan_passes(c)
    (scan,) = pass_scans(c, plan, 1)
    assert c.stage(scan).expr.descending and plan.num_passes == 1
    text = generate(c, Specialization("float16", False)).text
    assert "start_n = mid_hi - BLOCK_N - t_r * BLOCK_N" in text and "reverse=True" in text


@pytest.mark.parametrize("name", ["stick_breaking", "stick_breaking_bias"])
def test_stick_breaking_varlen_equals_each_sequence_alone(name):
    # the rows kernel's fp32 dK/dV buffers are token-major for packed sequences (a view that
    # overlaps itself across sequences: found by review, the copy into it raised)
    attn, g = attnc.load(name), torch.Generator().manual_seed(3)
    lens = [3, 0, 11, 6]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    total, H, D = int(cu[-1]), 2, 8
    q, k, v = (torch.randn(total, H, D, generator=g, requires_grad=True) for _ in range(3))
    params = {"bias": torch.randn(H, generator=g)} if "bias" in name else {}
    out = attn.varlen(q, k, v, cu, cu, **params)
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for b, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if hi == lo:
            continue
        part = [t.detach()[lo:hi].transpose(0, 1).unsqueeze(0).requires_grad_() for t in (q, k, v)]
        one = attn(*part, **params)
        want = torch.autograd.grad(one, part, dout[lo:hi].transpose(0, 1).unsqueeze(0))
        torch.testing.assert_close(out[lo:hi], one[0].transpose(0, 1), atol=1e-5, rtol=1e-4)
        for got, w in zip(grads, want):
            torch.testing.assert_close(got[lo:hi], w[0].transpose(0, 1), atol=1e-5, rtol=1e-4)


def test_a_slice_bound_reading_the_length_on_a_token_grid():
    # grid variants run on permuted (padded) tokens: a slice bound reading n_kv sees the caller's
    # length, as the reference does (found by review: the bound was not ported)
    attn = attnc.compile("""
norm two:
    m1[i] = max(s[i, j] for j)
    e1[i, j] = exp(s[i, j] - m1[i])
    z1[i] = sum(e1[i, j] for j)
    m2[i] = max(s2[i, j] for j)
    e2[i, j] = exp(s2[i, j] - m2[i])
    z2[i] = sum(e2[i, j] for j)
    out[i] = sum(e1[i, j] * v[j] for j) / z1[i] - 0.3 * sum(e2[i, j] * v[j] for j) / z2[i]

attention a(width: int = 5):
    grid (y, x) = (n_kv // width, width) dilated (3, 3)
    score2 = scale * dot(0, n_kv // 4)
    mask = abs(q_y - kv_y) <= 3 and abs(q_x - kv_x) <= 3
    norm = two
""", "a")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 20, 16, generator=g) for _ in range(3))
    want = attn.reference(q.double(), k.double(), v.double())
    assert rel_err(attn(q, k, v), want) < 1e-5


GRID_MAP = """
attention grid_mapped(width: int):
    grid (y, x) = (n_kv // width, width)
    q = q * (1.0 + 0.1 * float(q_idx) + 0.05 * float(q_x))
    k = k * (1.0 + 0.02 * float(kv_idx) - 0.03 * float(kv_y) + 0.001 * float(n_kv))
    mask = abs(q_y - kv_y) <= 1 and abs(q_x - kv_x) <= 1
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_feature_maps_read_original_positions_on_token_grids(dtype):
    """The kernels of a grid variant run on tile-permuted tokens; a map reading q_idx, kv_idx,
    coordinates or n_kv sees the caller's positions, as the reference does (review finding)."""
    attn = attnc.compile(GRID_MAP, "grid_mapped")

    def formula(q, k, v, width):
        n = q.shape[2]
        p = torch.arange(n, dtype=F64).view(-1, 1)
        y, x = p // width, p % width
        qf = q * (1 + 0.1 * p + 0.05 * x)
        kf = k * (1 + 0.02 * p - 0.03 * y + 0.001 * n)
        s = scores(qf, kf)
        keep = ((y - y.T).abs() <= 1) & ((x - x.T).abs() <= 1)
        return torch.softmax(s.masked_fill(~keep, -math.inf), -1) @ expand(v, q.shape[1])
    check(attn, formula, (1, (2, 1), 30, 30, 8, 8), dtype, 3, {"width": 6}, what="grid + maps")


def test_a_tensor_inside_a_map_is_a_constant_to_the_backward():
    attn = attnc.compile("""
attention a(wq: tensor[H] float, bias: tensor[H, N_KV] float):
    q = q * wq[h]
    score = score + bias[h, kv_idx]
""", "a")

    def formula(q, k, v, wq, bias):
        s = scores(q * wq.view(1, -1, 1, 1), k) + bias.unsqueeze(1).unsqueeze(0)
        return torch.softmax(s, -1) @ expand(v, q.shape[1])
    g = torch.Generator().manual_seed(5)
    wq = torch.rand(2, generator=g) + 0.5  # no grad: q, k, v and bias get theirs
    check(attn, formula, (1, (2, 1), 9, 11, 8, 8), torch.float32, 5,
          lambda *a: {"wq": wq, "bias": torch.randn(2, 11, generator=g)}, what="map tensor", constants=("wq",))
    q, k, v = (torch.randn(1, 2, 9, 8, requires_grad=True) for _ in range(3))
    with pytest.raises(attnc.SpecError, match="wq.detach()"):
        attn(q, k, v, wq=wq.clone().requires_grad_(), bias=torch.randn(2, 9))
