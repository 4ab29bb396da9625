"""The float64 reference is differentiable: it is the oracle for gradients (dq, dk, dv and float
tensor parameters such as ``sink`` or ``table``).

* gradcheck (finite differences) of the reference for library variants and examples;
* cross-checks against independent torch formulas: ``scaled_dot_product_attention`` for
  softmax/causal (GQA, n_q ≠ n_kv), hand-written materialized formulas for softcap, ALiBi,
  softmax_sink and relative_bias, a clamped tensor read, and ties of ``max``;
* rows with no kept key: values as without grad, gradients finite and exactly 0 there, and the
  other rows' gradients as if those rows were not there;
* dropped pairs whose values overflow (and the untaken branch of ``x if c else y``) give no NaN;
* with grad, values are bit-identical to the no-grad call.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnc

F64 = torch.float64
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@functools.cache
def lib(name):
    return attnc.load(name).cascade


@functools.cache
def spec(src):
    return attnc.compile(src).cascade


def qkv(B, Hq, Hkv, Nq, Nkv, D, Dv=None, *, seed=0, spread=1.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = spread * torch.randn(B, Hq, Nq, D, generator=g, dtype=F64)
    k = spread * torch.randn(B, Hkv, Nkv, D, generator=g, dtype=F64)
    v = torch.randn(B, Hkv, Nkv, Dv or D, generator=g, dtype=F64)
    return tuple(t.to(dtype).requires_grad_() for t in (q, k, v))


def finite_lse(lse):
    """lse with the −inf of empty rows as 0 (a constant), so finite differences are defined."""
    return torch.where(torch.isfinite(lse), lse, 0.0)


def run(cascade, q, k, v, **params):
    """out and lse (or only out) of the reference, as a tuple of tensors."""
    if not cascade.has_lse:
        return (attnc.reference(cascade, q, k, v, **params),)
    out, lse = attnc.reference(cascade, q, k, v, return_lse=True, **params)
    return out, finite_lse(lse)


def grads(outputs, inputs, seed=1):
    """Gradients of Σ cotangent · output for a fixed random cotangent per output."""
    g = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=g, dtype=F64)).sum() for o in outputs)
    return torch.autograd.grad(total, inputs)


def close(a, b, tol=1e-11):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item()), (a, b)


# ----------------------------------------------------------------------------- gradcheck

H, NQ, NKV = 2, 4, 5


def _sink(g):
    return {"sink": torch.randn(H, generator=g, dtype=F64)}


def _table(g):
    return {"table": torch.randn(H, NQ + NKV - 1, generator=g, dtype=F64)}


# (name, heads (Hq, Hkv), Nq, Nkv, scalar params, tensor params (requiring grad), q/k spread)
GRADCHECK = [
    ("softmax", (2, 1), 4, 5, {}, None, 1.0),
    ("causal", (2, 1), 3, 5, {}, None, 1.0),
    ("causal", (2, 2), 5, 3, {}, None, 1.0),  # rows 0 and 1 keep no key
    ("sigmoid_attention", (2, 1), 4, 5, {}, None, 1.0),
    ("softcap", (2, 1), 4, 5, {"cap": 1.5}, None, 2.0),  # tanh well into its curve
    ("softmax_sink", (2, 1), 4, 5, {}, _sink, 1.0),
    ("relative_bias", (2, 1), NQ, NKV, {}, _table, 1.0),
    ("alibi", (2, 2), 4, 5, {}, None, 1.0),
    ("clipped_softmax", (2, 1), 4, 5, {"zeta": 1.1, "gamma": -0.1}, None, 2.0),  # clamp at 0 active
    ("relu", (2, 1), 4, 5, {}, None, 1.0),
    ("sliding_window", (2, 1), 5, 4, {"window": 2}, None, 1.0),  # dropped pairs and an empty row
    ("ex:softpick", (2, 1), 4, 5, {}, None, 1.0),  # max with 0, abs, relu; causal
]


@pytest.mark.parametrize("name, heads, nq, nkv, scalars, tensors, spread", GRADCHECK,
                         ids=[f"{c[0]}-{c[2]}x{c[3]}" for c in GRADCHECK])
def test_gradcheck(name, heads, nq, nkv, scalars, tensors, spread):
    cascade = attnc.compile(str(EXAMPLES / "softpick.attn")).cascade if name == "ex:softpick" else lib(name)
    q, k, v = qkv(1, *heads, nq, nkv, 4, seed=3, spread=spread)
    g = torch.Generator().manual_seed(4)
    tparams = {key: t.requires_grad_() for key, t in (tensors(g) if tensors else {}).items()}
    names = list(tparams)

    def f(q, k, v, *ts):
        return run(cascade, q, k, v, **scalars, **dict(zip(names, ts, strict=True)))

    if name == "clipped_softmax":  # the clamp must bind somewhere, or this checks plain softmax
        clipped = 1.2 * torch.softmax(0.5 * q @ k.transpose(-1, -2), -1) - 0.1
        assert (clipped < 0).any() and ((clipped > 0) & (clipped < 1)).any()
    assert torch.autograd.gradcheck(f, (q, k, v, *tparams.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------- against independent torch formulas


def mask_bottom_right(nq, nkv):
    i = torch.arange(nq)[:, None]
    j = torch.arange(nkv)[None, :]
    return j <= i + (nkv - nq)


@pytest.mark.parametrize("name, nq, nkv, scale", [("softmax", 5, 7, None), ("softmax", 4, 4, 0.7),
                                                  ("causal", 6, 6, None), ("causal", 4, 7, None),
                                                  ("causal", 1, 5, 0.3)])
def test_matches_sdpa_gradients(name, nq, nkv, scale):
    q, k, v = qkv(2, 4, 2, nq, nkv, 4, Dv=3, seed=7)  # GQA: query heads 0, 1 read kv head 0
    out = attnc.reference(lib(name), q, k, v, scale=scale)
    mask = mask_bottom_right(nq, nkv) if name == "causal" else None
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                              attn_mask=mask, scale=scale)
    close(out, expected)
    for got, want in zip(grads([out], (q, k, v)), grads([expected], (q, k, v)), strict=True):
        close(got, want)


def materialized(q, k, v, score_fn, *, nkv_heads, mask=None, sink=None):
    """Softmax attention written out: scores [B, Hq, Nq, Nkv], optional mask and sink logits."""
    group = q.shape[1] // nkv_heads
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = score_fn(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    if sink is not None:  # one more logit per row that weighs no value
        s = torch.cat([s, sink.view(1, -1, 1, 1).expand(*s.shape[:3], 1)], -1)
        v = torch.cat([v, v.new_zeros(*v.shape[:2], 1, v.shape[-1])], -2)
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def same_values_and_grads(got, want, inputs):
    """Outputs equal, and so are their gradients with respect to ``inputs``."""
    for a, b in zip(got, want, strict=True):
        close(a, b)
    for a, b in zip(grads(got, inputs), grads(want, inputs), strict=True):
        close(a, b)


def test_softcap_matches_materialized():
    q, k, v = qkv(1, 4, 2, 4, 6, 4, seed=11, spread=2.0)
    cap = 1.25
    got = run(lib("softcap"), q, k, v, cap=cap)
    want = materialized(q, k, v, lambda s: cap * torch.tanh(s / cap), nkv_heads=2)
    same_values_and_grads(got, want, (q, k, v))


def test_alibi_matches_materialized():
    Hq, nq, nkv = 4, 4, 6
    q, k, v = qkv(1, Hq, 2, nq, nkv, 4, seed=12)
    slope = torch.tensor([2.0 ** (-8.0 * (h + 1) / Hq) for h in range(Hq)], dtype=F64).view(1, Hq, 1, 1)
    dist = (torch.arange(nkv)[None, :] - (torch.arange(nq)[:, None] + nkv - nq)).to(F64)
    got = run(lib("alibi"), q, k, v)
    want = materialized(q, k, v, lambda s: s + slope * dist, nkv_heads=2)
    same_values_and_grads(got, want, (q, k, v))


def test_softmax_sink_and_relative_bias_parameter_gradients():
    Hq, nq, nkv = 2, 3, 5
    q, k, v = qkv(1, Hq, 1, nq, nkv, 4, seed=13)
    g = torch.Generator().manual_seed(14)
    sink = torch.randn(Hq, generator=g, dtype=F64).requires_grad_()
    table = torch.randn(Hq, nq + nkv - 1, generator=g, dtype=F64).requires_grad_()

    got = run(lib("softmax_sink"), q, k, v, sink=sink)
    want = materialized(q, k, v, lambda s: s, nkv_heads=1, sink=sink)
    for a, b in zip(got + grads(got, (q, k, v, sink)), want + grads(want, (q, k, v, sink)), strict=True):
        close(a, b)

    offset = torch.arange(nkv)[None, :] - torch.arange(nq)[:, None] + nq - 1  # table[h, j − i + n_q − 1]
    got = run(lib("relative_bias"), q, k, v, table=table)
    want = materialized(q, k, v, lambda s: s + table[:, offset].unsqueeze(0), nkv_heads=1)
    for a, b in zip(got + grads(got, (q, k, v, table)), want + grads(want, (q, k, v, table)), strict=True):
        close(a, b)


SHIFTED_BIAS = "score shifted_bias(bias: tensor[_] float) = score + bias[kv_idx - 1]\n"


def test_clamped_tensor_index_gets_the_gradient_of_the_clamped_read():
    q, k, v = qkv(1, 2, 1, 3, 6, 4, seed=15)
    bias = torch.tensor([0.3, -0.2, 0.5], dtype=F64, requires_grad=True)  # 3 entries for 6 keys
    idx = (torch.arange(6) - 1).clamp(0, 2)  # key 0 reads bias[0]; keys 3, 4, 5 read bias[2]
    got = run(spec(SHIFTED_BIAS), q, k, v, bias=bias)
    want = materialized(q, k, v, lambda s: s + bias[idx], nkv_heads=1)
    for a, b in zip(got + grads(got, (q, k, v, bias)), want + grads(want, (q, k, v, bias)), strict=True):
        close(a, b)


MAX_TIMES_SUM = """
norm max_times_sum:
    m[i] = max(s[i, j] for j)
    out[i] = sum(v[j] for j) * m[i]
"""


def test_tied_max_splits_the_gradient_evenly():
    q = torch.ones(1, 1, 2, 4, dtype=F64, requires_grad=True)
    k = torch.tensor([[2.0] * 4, [2.0] * 4, [0.0] * 4], dtype=F64).view(1, 1, 3, 4).requires_grad_()
    v = torch.randn(1, 1, 3, 2, dtype=F64)
    out = attnc.reference(spec(MAX_TIMES_SUM), q, k, v)
    (dk,) = torch.autograd.grad(out.sum(), (k,))
    # Σ out = Σ_i m[i] · Σ v; m[i] = scale · q[i]·k[0] = scale · q[i]·k[1] (a tie), so each of
    # k[0], k[1] gets half of Σ_i Σ v · scale · q[i] = 2 rows · Σ v · 0.5 · 1
    assert torch.equal(dk[0, 0, 0], dk[0, 0, 1])
    close(dk[0, 0, 0], torch.full((4,), v.sum().item() * 2 * 0.5 / 2, dtype=F64))
    assert torch.equal(dk[0, 0, 2], torch.zeros(4, dtype=F64))


# ----------------------------------------------------------------------------- empty rows

CAUSAL_SINK = """
attention causal_sink(sink: tensor[H] float):
    mask = causal
    norm = softmax_sink(sink)
"""


@pytest.mark.parametrize("name, params", [("causal", {}), ("sliding_window", {"window": 2}),
                                          ("sink_window", {"sinks": 1, "window": 2}),
                                          (CAUSAL_SINK, {"sink": None})],
                         ids=["causal", "sliding_window", "sink_window", "causal_sink"])
def test_empty_rows_have_zero_gradients(name, params):
    """n_q = 6 > n_kv = 3 bottom-right: queries 0–2 sit before key 0 and keep no key."""
    cascade = spec(name) if "\n" in name else lib(name)
    q, k, v = qkv(1, 2, 1, 6, 3, 4, seed=21)
    params = dict(params)
    leaves = [q, k, v]
    if "sink" in params:
        params["sink"] = torch.tensor([0.4, -0.7], dtype=F64, requires_grad=True)
        leaves.append(params["sink"])
    out, lse = attnc.reference(cascade, q, k, v, return_lse=True, **params)
    with torch.no_grad():
        out0, lse0 = attnc.reference(cascade, q, k, v, return_lse=True, **params)
    assert torch.equal(out.detach(), out0) and torch.equal(lse.detach(), lse0)
    assert torch.equal(out0[:, :, :3], torch.zeros_like(out0[:, :, :3]))
    assert bool((lse0[:, :, :3] == -math.inf).all()) and bool(torch.isfinite(lse0[:, :, 3:]).all())

    got = grads([out, finite_lse(lse)], leaves)
    assert all(bool(torch.isfinite(g).all()) for g in got)
    assert torch.equal(got[0][:, :, :3], torch.zeros_like(got[0][:, :, :3]))
    # The other inputs' gradients are those of the problem without the empty rows (same
    # positions: query i of 6 and query i − 3 of 3 both sit at i − 3).
    q2 = q.detach()[:, :, 3:].clone().requires_grad_()
    out2, lse2 = attnc.reference(cascade, q2, k, v, return_lse=True, **params)
    g = torch.Generator().manual_seed(1)
    c_out, c_lse = torch.randn(out.shape, generator=g, dtype=F64), torch.randn(lse.shape, generator=g, dtype=F64)
    want = torch.autograd.grad((out2 * c_out[:, :, 3:]).sum() + (lse2 * c_lse[:, :, 3:]).sum(), [q2] + leaves[1:])
    close(got[0][:, :, 3:], want[0])
    for a, b in zip(got[1:], want[1:], strict=True):
        close(a, b)


def test_every_row_empty_gives_zero_gradients():
    q, k, v = qkv(1, 2, 1, 3, 4, 4, seed=22)
    out, lse = attnc.reference(lib("sliding_window"), q, k, v, return_lse=True, window=0)
    assert torch.equal(out.detach(), torch.zeros_like(out)) and bool((lse == -math.inf).all())
    for g in grads([out, finite_lse(lse)], (q, k, v)):
        assert torch.equal(g, torch.zeros_like(g))


def test_no_keys_or_no_queries_stays_in_the_graph():
    for nq, nkv in ((2, 0), (0, 3)):
        q, k, v = qkv(1, 2, 1, nq, nkv, 4, seed=23)
        out, lse = attnc.reference(lib("softmax"), q, k, v, return_lse=True)
        assert out.requires_grad and lse.requires_grad
        for g in torch.autograd.grad(out.sum() + finite_lse(lse).sum(), (q, k, v)):
            assert torch.equal(g, torch.zeros_like(g))


# ------------------------------------------------------ dropped pairs and untaken branches

DROP_LAST = """
attention drop_last:
    mask = kv_idx < n_kv - 1
"""

DROP_LAST_SINK = """
attention drop_last_sink(sink: tensor[H] float):
    mask = kv_idx < n_kv - 1
    norm = softmax_sink(sink)
"""


@pytest.mark.parametrize("src", [DROP_LAST, DROP_LAST_SINK], ids=["softmax", "softmax_sink"])
def test_an_overflowing_dropped_pair_gives_no_nan(src):
    """The last key is dropped by every row and its score is ~1e4: exp(s − m) overflows there.
    Its k must not matter: values and gradients equal those with an ordinary last key."""
    cascade = spec(src)
    q, k, v = qkv(1, 2, 1, 4, 5, 4, seed=31)
    params = {"sink": torch.tensor([0.2, 1.5], dtype=F64, requires_grad=True)} if "sink" in src else {}
    results = []
    for last in (1e4 * q.detach()[0, 0, 0], torch.zeros(4, dtype=F64)):
        k2 = k.detach().clone()
        k2[0, 0, -1] = last
        k2.requires_grad_()
        leaves = [q, k2, v] + list(params.values())
        got = run(cascade, q, k2, v, **params)
        results.append((got, grads(got, leaves)))
    (out_a, g_a), (out_b, g_b) = results
    for a, b in zip(out_a + g_a, out_b + g_b, strict=True):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    assert torch.equal(g_a[1][0, 0, -1], torch.zeros(4, dtype=F64))  # dk of the dropped key


SQRT_POS = """
attention sqrt_pos:
    score = sqrt(score) if score > 0.0 else score
"""


def test_the_untaken_branch_of_a_select_gives_no_nan():
    """sqrt of a negative score is NaN where the other branch is taken; its derivative must not leak."""
    q, k, v = qkv(1, 2, 1, 4, 5, 4, seed=32)
    got = run(spec(SQRT_POS), q, k, v)

    def score(s):
        pos = s > 0
        return torch.where(pos, torch.sqrt(torch.where(pos, s, 1.0)), s)

    want = materialized(q, k, v, score, nkv_heads=1)
    for a, b in zip(got + grads(got, (q, k, v)), want + grads(want, (q, k, v)), strict=True):
        close(a, b)


INV_DIST = """
attention inv_dist(bias: tensor[H] float):
    score = score + bias[h] / (kv_idx - q_idx)
    mask = kv_idx != q_idx
"""


def test_a_dropped_division_by_zero_gives_no_nan():
    """bias[h] / (j − i) is inf on the dropped diagonal; bias[h] is summed over every pair."""
    q, k, v = qkv(1, 2, 1, 4, 4, 4, seed=33)
    bias = torch.tensor([0.5, -0.25], dtype=F64, requires_grad=True)
    got = run(spec(INV_DIST), q, k, v, bias=bias)
    d = (torch.arange(4)[None, :] - torch.arange(4)[:, None]).to(F64)
    off = d != 0
    want = materialized(q, k, v, lambda s: s + bias.view(1, 2, 1, 1) / torch.where(off, d, 1.0), nkv_heads=1,
                        mask=off)
    for a, b in zip(got + grads(got, (q, k, v, bias)), want + grads(want, (q, k, v, bias)), strict=True):
        close(a, b)


# ------------------------------------------------------------------- values and dtypes

LIBRARY_PARAMS = {
    "alibi": {}, "causal": {}, "chunked": {"chunk": 2}, "clipped_softmax": {}, "dilated_window": {"window": 1},
    "document": {"doc": torch.tensor([[0, 0, 1, 1, 1, 2]])}, "full": {},
    "natten1d": {"kernel": 3, "dilation": 2, "causal": True},
    "natten2d": {"width": 3, "kernel_h": 1, "kernel_w": 1},
    "natten3d": {"height": 1, "width": 3, "kernel_d": 2, "kernel_h": 1, "kernel_w": 2, "causal_d": True},
    "none": {}, "prefix_lm": {"prefix": 2}, "relative_bias": {"table": torch.randn(2, 9, dtype=F64)},
    "relu": {}, "sigmoid": {}, "sigmoid_attention": {}, "sink_window": {"sinks": 1, "window": 2},
    "sliding_window": {"window": 2}, "softcap": {"cap": 2.0}, "softmax": {}, "softmax_off_by_one": {},
    "softmax_sink": {"sink": torch.randn(2, dtype=F64)}, "linear_attention": {"causal": True},
    "gpsa": {"width": 2, "gate": torch.randn(2, dtype=F64), "vpos": torch.randn(2, 3, dtype=F64)},
    "differential": {"lam": torch.rand(2, dtype=F64), "causal": True},
    "stick_breaking": {}, "stick_breaking_bias": {"bias": torch.randn(2, dtype=F64), "attend_current": True},
}


def test_library_covers_every_variant():
    names = {p.stem for p in (Path(attnc.__file__).parent / "library").glob("*.attn")}
    assert names == set(LIBRARY_PARAMS)


@pytest.mark.parametrize("name", sorted(LIBRARY_PARAMS))
def test_values_with_grad_are_bit_identical(name):
    """Differentiating only masks values nothing reads; every returned value is unchanged,
    and the gradients are finite."""
    nq = 6 if name.startswith("natten") else 4  # a NATTEN grid needs n_q = n_kv (6 tokens here)
    q, k, v = qkv(1, 2, 1, nq, 6, 4, seed=41, spread=3.0)
    params = {key: (t.clone().requires_grad_() if t.dtype == F64 else t) if torch.is_tensor(t) else t
              for key, t in LIBRARY_PARAMS[name].items()}
    cascade = lib(name)
    with torch.no_grad():
        want = run(cascade, q, k, v, **params)
    got = run(cascade, q, k, v, **params)
    assert all(o.requires_grad for o in got)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.detach(), b)
    leaves = [q, k, v] + [t for t in params.values() if torch.is_tensor(t) and t.requires_grad]
    for g in grads(got, leaves):
        assert torch.isfinite(g).all()


def test_low_precision_inputs_get_gradients_in_their_dtype():
    q, k, v = qkv(1, 2, 1, 3, 5, 4, seed=42, dtype=torch.float32)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    got = grads(run(lib("causal"), q, k, v), (q, k, v))
    want = grads(run(lib("causal"), q64, k64, v64), (q64, k64, v64))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32
        assert torch.equal(a, b.float())


def test_no_graph_without_grad():
    q, k, v = qkv(1, 2, 1, 3, 5, 4, seed=43)
    with torch.no_grad():
        out = attnc.reference(lib("causal"), q, k, v)
    assert not out.requires_grad
    out = attnc.reference(lib("causal"), q.detach(), k.detach(), v.detach())
    assert not out.requires_grad and out.dtype == F64
