"""The generated backward kernels against torch.autograd through the float64 reference.

``attn(q, k, v, **params)`` is differentiable in q, k, v and in float tensor parameters
(``runtime/autograd.py``: two custom ops, the backward derived from the cascade by
``ir/backward.py``). The oracle is ``attn.reference`` on the same dtype-rounded inputs in
float64, differentiated by torch.autograd, with the same upstream gradients. Every test runs with
``Attention.POISON`` on, so out, lse, dq, dk and dv start as NaN and an element a kernel fails to
write cannot pass.

* every library variant (the list is checked to be the whole library), hypothesis over B, GQA/MQA
  heads, n_q != n_kv, D != D_V, fp32/fp16/bf16 and drawn parameters: dq, dk, dv and the gradients
  of float tensor parameters, with random upstream gradients for out and lse;
* rows that keep no key: dq exactly 0 there, everything finite, the rest as the reference;
* ``return_lse=True`` with only lse used, and with out and lse used;
* variants written only here (a new score, a temperature softmax with a learned per-head tensor,
  a sigmoid² norm, a multi-pass norm with a nonlinearity after normalization): the backward is
  derived, not written per variant;
* a norm whose result depends on a max/min over the keys beyond a shift: BackwardError naming the
  stage, and the forward still runs without grad;
* gradient buffers are overwritten (POISON gives finite, and bit-identical, gradients; keys no
  query keeps get exact zeros);
* a parameter's gradient has the parameter's dtype; only tensors that require grad get one.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attnc
import attnc.library
import attnc.testing as at
from attnc.ir.backward import BackwardError, derive_backward

F64 = torch.float64

# Bounds on the relative gradient error of `rel_err`, per input dtype.
BOUND = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
# Floors of rel_err's denominator, as fractions of the call's gradient scale (see rel_err).
REL_FLOOR = 1e-2  # dq, dk, dv
PARAM_FLOOR = 1.0  # gradients of tensor parameters

HEADS = ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4))  # (Hq, Hkv): MHA, GQA and MQA
DIMS = range(1, 33)  # D and D_V drawn independently, so they differ most of the time

# hypothesis without its explain phase (it reruns every example traced: slow for interpreted kernels)
FEW = settings(max_examples=3, deadline=None, phases=[p for p in Phase if p is not Phase.explain],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def poison():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attnc.Attention, "POISON", True)
        yield


# ----------------------------------------------------------------------------- helpers


def rel_err(got: torch.Tensor, want: torch.Tensor, floor: float) -> float:
    """The relative error of one gradient tensor: ``max|got − want| / max(max|want|, floor)``.

    A max-norm: the largest elementwise difference over the reference gradient's largest
    magnitude, but never over less than ``floor``. `assert_gradients_match` sets the floor from
    the call's gradient scale S, the largest magnitude of any of its reference gradients (dq, dk,
    dv, tensor parameters):

    * dq, dk, dv: ``REL_FLOOR·S`` (1 %). A gradient that cancels to (nearly) 0 everywhere — dq and
      dk when every row keeps a single key and the norm's result does not depend on the score
      then — is measured against the call's natural size, not its own rounding noise (1e-17
      against an exact 0 would be "100 %").
    * tensor parameters: ``PARAM_FLOOR·S`` (the scale itself). Such a gradient is a sum over
      every (b, i, j) pair that reads the element, with terms of either sign that largely cancel:
      a temperature's is a covariance ``Σ_j p_ij·(dP_ij − D_i)·s_ij`` (softmax). The kernel
      computes ``D_i = dO_i·out_i`` from the output it returned, rounded to fp16/bf16, as
      FlashAttention does, and that rounding is multiplied by the terms, not by their cancelled
      sum. Measured: `thresholded`'s bf16 sharp gradient (0.02, the call's scale 1.2) off by 1e-3;
      a temperature's bf16 gradient off by up to 7 % of itself while the largest gradient of the
      call — `test_rounded_out_explains_low_precision_parameter_errors` shows that all of it is
      the rounded out (1e-6 once the reference uses it), so for that variant the hypothesis
      test also accepts the reference of the rounded output (`with_rounded_out`).

    When every reference gradient is exactly 0 (every row empty), the kernel's must be too. NaN
    or inf in ``got``, or a shape mismatch, is an infinite error."""
    if got.shape != want.shape or not torch.isfinite(got).all():
        return float("inf")
    if got.numel() == 0:
        return 0.0
    diff = (got.double() - want).abs().max().item()
    denom = max(want.abs().max().item(), floor)
    if denom == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / denom


def float_tensors(params: dict) -> list[str]:
    return [name for name, x in params.items() if isinstance(x, torch.Tensor) and x.is_floating_point()]


def grads_of(fn, q, k, v, params, dout, dlse, *, precise, use_out, use_lse, grad_params):
    """Gradients of ``Σ dout·out + Σ dlse·lse`` (the parts used) through ``fn`` (the kernel, or
    with ``precise`` the reference on the same values in float64), with respect to q, k, v and the
    float tensor parameters ``grad_params``: (dict name → gradient or None, out, lse)."""
    conv = (lambda t: t.detach().to(F64)) if precise else (lambda t: t.detach().clone())
    ins = [conv(t).requires_grad_() for t in (q, k, v)]
    ps = dict(params)
    for name in grad_params:
        ps[name] = conv(params[name]).requires_grad_()
    if use_lse:
        out, lse = fn(*ins, return_lse=True, **ps)
    else:
        out, lse = fn(*ins, **ps), None
    outputs, upstream_ = [], []
    if use_out:
        outputs.append(out)
        upstream_.append(dout.to(F64) if precise else dout)
    if use_lse:
        outputs.append(lse)
        upstream_.append(dlse.to(F64) if precise else dlse)
    grads = torch.autograd.grad(outputs, ins + [ps[name] for name in grad_params], upstream_, allow_unused=True)
    names = ["dq", "dk", "dv", *grad_params]
    return dict(zip(names, grads, strict=True)), out.detach(), (None if lse is None else lse.detach())


def gradients(attn, q, k, v, params, dout, dlse, *, use_out=True, use_lse=None, grad_params=None):
    """Kernel and reference gradients (see `grads_of`; ``grad_params`` defaults to every float
    tensor parameter, ``use_lse`` to whether the variant has lse).

    Returns (kernel, reference, (out, lse, ref_out, ref_lse))."""
    opts = {"use_out": use_out, "use_lse": attn.cascade.has_lse if use_lse is None else use_lse,
            "grad_params": float_tensors(params) if grad_params is None else grad_params}
    kernel, out, lse = grads_of(attn, q, k, v, params, dout, dlse, precise=False, **opts)
    ref, ref_out, ref_lse = grads_of(attn.reference, q, k, v, params, dout, dlse, precise=True, **opts)
    return kernel, ref, (out, lse, ref_out, ref_lse)


def with_rounded_out(attn, q, k, v, params, dout, dlse, values):
    """Reference gradients of the kernel's own computation for a softmax-family norm
    (``out = Σ_j e_ij·v_j / z_i``, ``lse = m_i + log z_i``): the kernel's ``D_i = dO_i·out_i`` reads
    its rounded output, which adds ``δ_i·∂lse_i/∂θ`` with ``δ_i = dO_i·(out_i − rounded out_i)`` to
    every gradient — exactly the reference's gradient with ``dlse + δ`` as lse's upstream."""
    out, _lse, ref_out, ref_lse = values
    delta = (dout.to(F64) * (ref_out - out.to(F64))).sum(-1)
    corrected = torch.where(torch.isfinite(ref_lse), dlse.to(F64) + delta, dlse.to(F64))
    ref, _, _ = grads_of(attn.reference, q, k, v, params, dout, corrected, precise=True, use_out=True,
                         use_lse=True, grad_params=float_tensors(params))
    return ref


def upstream(B, Hq, Nq, Dv, dtype, seed):
    """Random upstream gradients: for out in the input dtype (the kernel receives it so), for lse fp32."""
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    return torch.randn(B, Hq, Nq, Dv, generator=g).to(dtype), torch.randn(B, Hq, Nq, generator=g)


def assert_gradients_match(kernel, ref, dtype, what=""):
    """Every kernel gradient exists, is finite and has `rel_err` ≤ BOUND[dtype]."""
    scale = max((g.abs().max().item() for g in ref.values() if g is not None and g.numel()), default=0.0)
    errors = {}
    for name, want in ref.items():
        got = kernel[name]
        assert got is not None, f"{what}: no kernel gradient for {name}"
        assert torch.isfinite(got).all(), f"{what}: non-finite kernel {name}: {got}"
        if want is None:  # the reference's result does not depend on it at all
            want = torch.zeros_like(got, dtype=F64)
        floor = (REL_FLOOR if name in ("dq", "dk", "dv") else PARAM_FLOOR) * scale
        errors[name] = rel_err(got, want, floor)
    bound = BOUND[dtype]
    bad = {k: e for k, e in errors.items() if not e <= bound}
    assert not bad, (f"{what}: gradient errors {', '.join(f'{k} {e:.2e}' for k, e in errors.items())} "
                     f"(bound {bound:.0e}, gradient scale {scale:.3g})")


def qkv(B, Hq, Hkv, Nq, Nkv, D, Dv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Nkv, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Nkv, Dv, generator=g).to(dtype)
    return q, k, v


def check_problem(attn, problem: at.Problem, what="", rounded_out=False):
    """Kernel gradients vs the reference's on ``problem``; with ``rounded_out`` (softmax-family
    norms only) the reference may instead be that of the kernel's rounded output (`with_rounded_out`)."""
    q, k, v, params = problem.inputs()
    dout, dlse = upstream(problem.B, problem.Hq, problem.Nq, problem.Dv, problem.dtype, problem.seed)
    kernel, ref, values = gradients(attn, q, k, v, params, dout, dlse)
    what = f"{what or attn.name} {problem!r}"
    if rounded_out:
        try:
            assert_gradients_match(kernel, ref, problem.dtype, what)
            return
        except AssertionError:
            ref = with_rounded_out(attn, q, k, v, params, dout, dlse, values)
            what += " (reference with D from the kernel's rounded out)"
    assert_gradients_match(kernel, ref, problem.dtype, what)


# ----------------------------------------------------------------------------- 1. the whole library

# Scalar parameters drawn per library variant (at.problems keeps a default unless it is named
# here; tensor parameters — doc, table, sink — come from their declared types).
SCALARS = {
    "alibi": {}, "causal": {}, "full": {}, "none": {}, "softmax": {}, "softmax_off_by_one": {},
    "document": {}, "relative_bias": {}, "softmax_sink": {},
    "chunked": {"chunk": st.integers(-2, 42)},
    "clipped_softmax": {"zeta": st.floats(1.0, 1.3), "gamma": st.floats(-0.3, 0.0)},
    "dilated_window": {"window": st.integers(0, 8), "dilation": st.integers(0, 4)},
    "natten1d": {"kernel": st.integers(1, 5), "dilation": st.integers(1, 3), "causal": st.booleans()},
    "natten2d": {"width": st.integers(1, 8), "kernel_h": st.integers(1, 5), "kernel_w": st.integers(1, 5),
                 "dilation_h": st.integers(1, 3), "dilation_w": st.integers(1, 3),
                 "causal_h": st.booleans(), "causal_w": st.booleans()},
    "natten3d": {"height": st.integers(1, 3), "width": st.integers(1, 4),
                 "kernel_d": st.integers(1, 3), "kernel_h": st.integers(1, 3), "kernel_w": st.integers(1, 3),
                 "dilation_d": st.integers(1, 2), "dilation_h": st.integers(1, 2), "dilation_w": st.integers(1, 2),
                 "causal_d": st.booleans(), "causal_h": st.booleans(), "causal_w": st.booleans()},
    "prefix_lm": {"prefix": st.integers(0, 42)},
    "relu": {"divisor": st.floats(0.5, 40.0)},
    "sigmoid": {"bias": st.floats(-4.0, 2.0)},
    "sigmoid_attention": {"bias": st.floats(-4.0, 2.0)},
    "sink_window": {"sinks": st.integers(0, 5), "window": st.integers(0, 42)},
    "sliding_window": {"window": st.integers(0, 42)},
    "softcap": {"cap": st.floats(0.5, 30.0)},
    "linear_attention": {"causal": st.booleans(), "eps": st.floats(1e-6, 1e-2)},
    "gpsa": {"width": st.integers(1, 8)},
    "differential": {"causal": st.booleans()},
    "stick_breaking": {"attend_current": st.booleans()},
    "stick_breaking_bias": {"attend_current": st.booleans()},
}
LIBRARY = attnc.library.names()


def test_the_parametrization_is_the_whole_library():
    on_disk = sorted(p.stem for p in attnc.library.LIBRARY_DIR.glob("*.attn"))
    assert LIBRARY == on_disk and len(LIBRARY) == 27
    assert set(SCALARS) == set(LIBRARY)  # a new variant needs its parameter ranges here


# natten3d's index arithmetic costs the interpreter most: smaller problems (its three examples
# took 39 s at the defaults, 18 s with these)
SIZES = {"natten3d": {"heads": ((1, 1), (2, 1), (2, 2)), "max_len": 24, "max_batch": 1}}


def library_problems(name):
    attn = attnc.load(name)
    sizes = {"heads": HEADS, "max_len": 40, **SIZES.get(name, {})}
    # a grid variant's problems form its whole grid: the kit draws lengths to fit (fit_grid)
    return attn, at.problems(attn, head_dims=DIMS, value_dims=DIMS, params=SCALARS[name], **sizes)


@pytest.mark.parametrize("name", LIBRARY)
def test_library_gradients_match_the_reference(name):
    attn, problems = library_problems(name)

    @FEW
    @given(problems)
    def check(problem):
        check_problem(attn, problem)

    check()


# ----------------------------------------------------------------------------- 2. rows with no kept key

GATED_SINK = """
attention gated_sink(active: tensor[B, N_Q] bool, sink: tensor[H] float):
    mask = active[b, q_idx]
    norm = softmax_sink(sink)
"""


def _active(B, Nq):
    """Rows switched off in the middle of the 16-row tiles and at their edges."""
    a = torch.ones(B, Nq, dtype=torch.bool)
    a[0, [0, 3, 4, 15, 16, 17]] = False
    a[-1, 7:12] = False
    return a


# (variant, Nq, Nkv, params, rows that keep no key: a function of (B, Nq) → bool [B, Nq])
EMPTY = [
    ("causal", 21, 5, {}, lambda B, nq: (torch.arange(nq) < nq - 5).expand(B, nq)),
    ("sliding_window", 9, 12, {"window": 0}, lambda B, nq: torch.ones(B, nq, dtype=torch.bool)),
    ("chunked", 22, 9, {"chunk": 4}, lambda B, nq: (torch.arange(nq) < nq - 9).expand(B, nq)),  # p < 0
    ("prefix_lm", 19, 6, {"prefix": 0}, lambda B, nq: (torch.arange(nq) < nq - 6).expand(B, nq)),
    ("dilated_window", 18, 7, {"window": 0, "dilation": 2}, lambda B, nq: (torch.arange(nq) < nq - 7).expand(B, nq)),
    ("gated_sink", 20, 13, {"active": _active}, lambda B, nq: ~_active(B, nq)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name, nq, nkv, given, empty_rows", EMPTY, ids=[c[0] for c in EMPTY])
def test_rows_with_no_kept_key(name, nq, nkv, given, empty_rows, dtype):
    attn = attnc.compile(GATED_SINK, name) if name == "gated_sink" else attnc.load(name)
    B, Hq, Hkv, D, Dv = 2, 2, 1, 12, 7
    q, k, v = qkv(B, Hq, Hkv, nq, nkv, D, Dv, dtype, seed=11)
    params = {key: (value(B, nq) if callable(value) else value) for key, value in given.items()}
    if name == "gated_sink":
        params["sink"] = torch.randn(Hq, generator=torch.Generator().manual_seed(5)) * 2
    dout, dlse = upstream(B, Hq, nq, Dv, dtype, seed=11)  # nonzero on the empty rows too
    kernel, ref, (out, lse, ref_out, ref_lse) = gradients(attn, q, k, v, params, dout, dlse)

    assert (out.double() - ref_out).abs().max() <= BOUND[dtype] * ref_out.abs().max()
    empty = empty_rows(B, nq)[:, None, :].expand(B, Hq, nq)
    assert empty.any()
    # the reference agrees on which rows are empty (its lse is −inf exactly there)
    assert torch.equal(torch.isneginf(ref_lse), empty)
    assert torch.equal(torch.isneginf(lse), empty) and torch.isfinite(lse[~empty]).all()
    assert (out[empty] == 0).all() and torch.isfinite(out).all()
    assert (kernel["dq"][empty] == 0).all()
    for g in kernel.values():
        assert torch.isfinite(g).all()
    if empty.all():  # no row keeps a key: no gradient anywhere
        for g in kernel.values():
            assert (g == 0).all()
    assert_gradients_match(kernel, ref, dtype, name)


# ----------------------------------------------------------------------------- 3. return_lse

LSE_CASES = [("softmax", {}), ("causal", {}), ("softmax_off_by_one", {}), ("softmax_sink", {"sink": True}),
             ("relative_bias", {"table": True})]


@pytest.mark.parametrize("use", ["lse only", "out and lse"])
@pytest.mark.parametrize("name, tensors", LSE_CASES, ids=[c[0] for c in LSE_CASES])
def test_return_lse_gradients(name, tensors, use):
    attn = attnc.load(name)
    assert attn.cascade.has_lse
    B, Hq, Hkv, Nq, Nkv, D, Dv, dtype = 1, 2, 1, 19, 23, 16, 9, torch.float32
    q, k, v = qkv(B, Hq, Hkv, Nq, Nkv, D, Dv, dtype, seed=3)
    g = torch.Generator().manual_seed(4)
    params = {}
    if "sink" in tensors:
        params["sink"] = torch.randn(Hq, generator=g) * 2
    if "table" in tensors:
        params["table"] = torch.randn(Hq, Nq + Nkv - 1, generator=g)
    dout, dlse = upstream(B, Hq, Nq, Dv, dtype, seed=3)
    kernel, ref, (_, lse, _, ref_lse) = gradients(attn, q, k, v, params, dout, dlse, use_out=use != "lse only",
                                                  use_lse=True)
    assert (lse - ref_lse).abs().max() <= 1e-4
    assert_gradients_match(kernel, ref, dtype, f"{name} ({use})")
    if use == "lse only":  # lse does not depend on v
        assert (kernel["dv"] == 0).all()


def test_return_lse_on_a_variant_without_lse_is_refused():
    attn = attnc.load("sigmoid")
    q, k, v = qkv(1, 1, 1, 3, 3, 4, 4, torch.float32, seed=0)
    with pytest.raises(ValueError, match="lse"):
        attn(q.requires_grad_(), k, v, return_lse=True)


# ----------------------------------------------------------------------------- 4. variants defined only here

CUSTOM = """
# A score in no library file: soft-capped, plus a linear bias in the signed distance.
score capped_slope(cap: float = 5.0, slope: float = 0.1) = cap * tanh(score / cap) + slope * (kv_idx - q_idx)

# Softmax at a learned per-head temperature exp(logt[h]).
norm tempered_softmax(logt: tensor[H] float):
    m[i]    = max(s[i, j] * exp(-logt[h]) for j)
    e[i, j] = exp(s[i, j] * exp(-logt[h]) - m[i])
    z[i]    = sum(e[i, j] for j)
    out[i]  = sum(e[i, j] * v[j] for j) / z[i]
    lse[i]  = m[i] + log(z[i])

# Squared sigmoid weights over 1 + the sum of sigmoids, with a learned per-head bias.
norm sigmoid_sq(bias: tensor[H] float):
    out[i] = sum(sigmoid(s[i, j] + bias[h]) ** 2 * v[j] for j) / (1.0 + sum(sigmoid(s[i, j] + bias[h]) for j))

# Multi-pass: a nonlinearity after normalization (a soft threshold on the probabilities with a
# learned per-head sharpness), renormalized.
norm soft_threshold(sharp: tensor[H] float, tau: float = 0.1):
    m[i]    = max(s[i, j] for j)
    e[i, j] = exp(s[i, j] - m[i])
    z[i]    = sum(e[i, j] for j)
    p[i, j] = e[i, j] / z[i]
    t[i]    = sum(softplus(sharp[h] * (p[i, j] - tau)) for j)
    out[i]  = sum(softplus(sharp[h] * (p[i, j] - tau)) * v[j] for j) / t[i]

attention capped_tempered(logt: tensor[H] float, cap: float = 5.0, slope: float = 0.1):
    score = capped_slope(cap, slope)
    mask  = causal
    norm  = tempered_softmax(logt)

attention local_sigmoid_sq(bias: tensor[H] float, window: int = 8):
    mask = kv_idx <= q_idx + (n_kv - n_q) and q_idx + (n_kv - n_q) - kv_idx < window
    norm = sigmoid_sq(bias)

# Two score maps over overlapping slices of the head dimension (an int parameter in the bounds),
# the second soft-capped by a score definition, mixed per pair with a learned per-head offset.
norm two_map_mix(w: tensor[H] float):
    out[i] = sum(sigmoid(s[i, j]) * tanh(s2[i, j] + w[h]) * v[j] for j) / n_kv

attention sliced_mix(w: tensor[H] float, lo: int = 1):
    score  = scale * dot(lo, head_dim)
    score2 = scale * dot(0, head_dim - lo)
    score2 = capped_slope(4.0, 0.05)
    mask   = causal
    norm   = two_map_mix(w)

# A prefix sum (from the first key, j's own included) of gated scores, a per-head gate read inside
# the partial sum, decaying the weights; a sliding window (one mask clause).
norm prefix_decay(g: tensor[H] float):
    c[i, j] = sum(sigmoid(s[i, k] + g[h]) for k <= j)
    out[i]  = sum(exp(-0.2 * c[i, j]) * tanh(s[i, j]) * v[j] for j) / n_kv

attention windowed_decay(g: tensor[H] float, window: int = 8):
    mask = kv_idx <= q_idx + (n_kv - n_q) and q_idx + (n_kv - n_q) - kv_idx < window
    norm = prefix_decay(g)

# Stick-breaking with a per-head bias inside the norm, within documents (a mask classified at run
# time: every key tile is visited, in order) and normalized by the mass taken.
norm biased_stick(bias: tensor[H] float):
    l[i, j] = logsigmoid(-(s[i, j] + bias[h]))
    c[i, j] = sum(l[i, k] for k >= j)
    w[i, j] = exp(logsigmoid(s[i, j] + bias[h]) + c[i, j] - l[i, j])
    out[i]  = sum(w[i, j] * v[j] for j) / (sum(w[i, j] for j) + 0.5)

attention doc_stick(bias: tensor[H] float, doc: tensor[B, N_KV] int):
    mask = doc[b, q_idx + (n_kv - n_q)] == doc[b, kv_idx] and kv_idx <= q_idx + (n_kv - n_q)
    norm = biased_stick(bias)

attention thresholded(sharp: tensor[H] float, tau: float = 0.1):
    score = capped_slope(8.0, -0.05)
    norm  = soft_threshold(sharp, tau)
"""

CUSTOM_SCALARS = {
    "capped_tempered": {"cap": st.floats(0.5, 20.0), "slope": st.floats(-0.5, 0.5)},
    "local_sigmoid_sq": {"window": st.integers(0, 42)},
    "thresholded": {"tau": st.floats(0.0, 0.5)},
    "sliced_mix": {"lo": st.integers(0, 3)},
    "windowed_decay": {"window": st.integers(0, 42)},
    "doc_stick": {},
}


def test_custom_variants_are_new():
    for name in CUSTOM_SCALARS:
        assert name not in LIBRARY
    thresholded = attnc.compile(CUSTOM, "thresholded")
    assert attnc.plan_passes(thresholded.cascade).num_passes == 2  # t needs p complete
    plan = derive_backward(thresholded.cascade)
    assert plan.jsums  # the backward needs a pass of its own over the keys: no identity covers it
    for name in CUSTOM_SCALARS:  # each tensor parameter gets a gradient route
        c = attnc.compile(CUSTOM, name).cascade
        tensor = next(p.name for p in c.params if p.kind == "tensor")
        assert any(lg.load.tensor == tensor for lg in derive_backward(c).load_grads)


@pytest.mark.parametrize("name", list(CUSTOM_SCALARS))
def test_custom_variant_gradients_match_the_reference(name):
    attn = attnc.compile(CUSTOM, name)

    @FEW
    @given(at.problems(attn, heads=HEADS, max_len=40, head_dims=DIMS, value_dims=DIMS, params=CUSTOM_SCALARS[name]))
    def check(problem):
        # capped_tempered's temperature gradient in fp16/bf16 is dominated by the rounded out in
        # D = dO·out (see rel_err): its norm is softmax-shaped, so that part is modelled exactly
        check_problem(attn, problem, rounded_out=name == "capped_tempered")

    check()


def test_rounded_out_explains_low_precision_parameter_errors():
    """A learned temperature's gradient in bf16, with large scores (cap 16, slope 0.5): matched to
    fp32 accuracy by the gradient of the output the kernel returned (D = dO·rounded out, as
    FlashAttention computes it) — or by the exact one, should a kernel not round there. (Against
    the exact gradient its relative error is 3.5e-2 here, above the bf16 bound; 1e-6 against the
    rounded output's.)"""
    attn = attnc.compile(CUSTOM, "capped_tempered")
    B, Hq, Hkv, Nq, Nkv, D, Dv, dtype = 1, 2, 1, 24, 30, 16, 8, torch.bfloat16
    q, k, v = qkv(B, Hq, Hkv, Nq, Nkv, D, Dv, dtype, seed=22)
    params = {"logt": torch.tensor([-1.0, 0.5]), "cap": 16.0, "slope": 0.5}
    dout, dlse = upstream(B, Hq, Nq, Dv, dtype, seed=22)
    kernel, ref, values = gradients(attn, q, k, v, params, dout, dlse)
    rounded = with_rounded_out(attn, q, k, v, params, dout, dlse, values)
    for name in kernel:
        errors = [rel_err(kernel[name], want[name], 0.0) for want in (ref, rounded)]
        assert min(errors) <= 1e-4 if name == "logt" else min(errors) <= BOUND[dtype], (name, errors)


# ----------------------------------------------------------------------------- 5. no gradient through a max

MINMAX = """
norm minmax:
    mx[i]  = max(s[i, j] for j)
    mn[i]  = min(s[i, j] for j)
    out[i] = sum((s[i, j] - mn[i]) / (mx[i] - mn[i]) * v[j] for j)

attention minmax_scaled:
    norm = minmax
"""


def test_a_result_that_depends_on_a_max_has_no_backward():
    attn = attnc.compile(MINMAX, "minmax_scaled")
    q, k, v = qkv(1, 2, 1, 6, 9, 8, 5, torch.float32, seed=2)
    with pytest.raises(BackwardError) as err:
        out = attn(q.clone().requires_grad_(), k, v)
        out.sum().backward()
    assert isinstance(err.value, attnc.SpecError)
    msg = str(err.value)
    assert re.search(r"`(mn|mx)`", msg), msg  # names the stage...
    assert re.search(r"(mn|mx)\[i\]\s*= (min|max)\(s\[i, j\] for j\)", msg), msg  # ...and shows its line
    # the forward still runs: without grad, and with grad switched off
    ref = attn.reference(q, k, v)
    for out in (attn(q, k, v), _no_grad(attn, q.clone().requires_grad_(), k, v)):
        assert torch.isfinite(out).all()
        assert (out.double() - ref).abs().max() <= 1e-4 * ref.abs().max()


def _no_grad(attn, q, k, v):
    with torch.no_grad():
        return attn(q, k, v)


# ----------------------------------------------------------------------------- 6. buffers are written


def test_poisoned_gradient_buffers_are_overwritten():
    """Keys no query keeps (sliding window, few queries) must get exact zeros in dk/dv, written by
    the kernel; with POISON every gradient is finite and equal, bit for bit, to an unpoisoned run."""
    attn = attnc.load("sliding_window")
    B, Hq, Hkv, Nq, Nkv, D, Dv = 2, 4, 2, 5, 40, 16, 8
    window = 3
    q, k, v = qkv(B, Hq, Hkv, Nq, Nkv, D, Dv, torch.float32, seed=9)
    dout, dlse = upstream(B, Hq, Nq, Dv, torch.float32, seed=9)
    assert attnc.Attention.POISON
    poisoned, ref, _ = gradients(attn, q, k, v, {"window": window}, dout, dlse)
    for g in poisoned.values():
        assert torch.isfinite(g).all()
    never_kept = Nkv - Nq - window + 1  # keys 0 .. never_kept − 1: before every query's window
    assert (poisoned["dk"][:, :, :never_kept] == 0).all() and (poisoned["dv"][:, :, :never_kept] == 0).all()
    assert (poisoned["dk"][:, :, never_kept:] != 0).any()
    assert_gradients_match(poisoned, ref, torch.float32, "sliding_window")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attnc.Attention, "POISON", False)
        clean, _, _ = gradients(attn, q, k, v, {"window": window}, dout, dlse)
    for name in poisoned:
        assert torch.equal(poisoned[name], clean[name]), name


def test_poisoned_gradients_of_a_multi_pass_norm_with_a_parameter_are_finite():
    attn = attnc.compile(CUSTOM, "thresholded")
    B, Hq, Hkv, Nq, Nkv, D, Dv = 1, 2, 1, 33, 17, 9, 20
    q, k, v = qkv(B, Hq, Hkv, Nq, Nkv, D, Dv, torch.float16, seed=1)
    params = {"sharp": torch.tensor([8.0, -3.0])}
    dout, dlse = upstream(B, Hq, Nq, Dv, torch.float16, seed=1)
    kernel, ref, _ = gradients(attn, q, k, v, params, dout, dlse)
    assert all(torch.isfinite(g).all() for g in kernel.values())
    assert_gradients_match(kernel, ref, torch.float16, "thresholded")


# ----------------------------------------------------------------------------- 7. which tensors get gradients


@pytest.mark.parametrize("pdtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_parameter_gradient_has_the_parameters_dtype(pdtype):
    attn = attnc.load("softmax_sink")
    q, k, v = qkv(1, 2, 1, 7, 10, 8, 8, torch.float32, seed=6)
    sink = (torch.randn(2, generator=torch.Generator().manual_seed(1)) * 2).to(pdtype).requires_grad_()
    q.requires_grad_()
    out, lse = attn(q, k, v, return_lse=True, sink=sink)
    (out.sum() + lse.sum()).backward()
    assert sink.grad is not None and sink.grad.dtype == pdtype and sink.grad.shape == sink.shape
    assert q.grad.dtype == q.dtype
    s64 = sink.detach().to(F64).requires_grad_()
    ro, rl = attn.reference(q.detach().to(F64), k.to(F64), v.to(F64), return_lse=True, sink=s64)
    (want,) = torch.autograd.grad(ro.sum() + rl.sum(), [s64])
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(pdtype, 1e-5)  # the gradient's own rounding
    assert (sink.grad.to(F64) - want).abs().max() <= tol * want.abs().max()


def test_gradients_only_for_tensors_that_require_grad():
    attn = attnc.load("softmax_sink")
    q, k, v = qkv(2, 2, 2, 6, 11, 8, 4, torch.float32, seed=8)
    sink = torch.randn(2, generator=torch.Generator().manual_seed(2))

    # q requires grad, the sink does not: no error, no sink gradient
    q1 = q.clone().requires_grad_()
    out = attn(q1, k, v, sink=sink)
    out.sum().backward()
    assert q1.grad is not None and torch.isfinite(q1.grad).all() and sink.grad is None

    # only the sink requires grad: it alone gets one, equal to the reference's
    s1 = sink.clone().requires_grad_()
    out, lse = attn(q, k, v, return_lse=True, sink=s1)
    assert out.requires_grad and lse.requires_grad
    (out.sum() + 2 * lse.sum()).backward()
    assert q.grad is None and k.grad is None and v.grad is None
    s64 = sink.to(F64).requires_grad_()
    ro, rl = attn.reference(q.to(F64), k.to(F64), v.to(F64), return_lse=True, sink=s64)
    (want,) = torch.autograd.grad(ro.sum() + 2 * rl.sum(), [s64])
    assert (s1.grad.to(F64) - want).abs().max() <= 1e-5 * want.abs().max()

    # an int tensor parameter (document ids) is data: the call is differentiable in q, k, v
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]] * 2)
    k1 = k.clone().requires_grad_()
    out = attnc.load("document")(q, k1, v, doc=doc)
    out.sum().backward()
    assert k1.grad is not None and torch.isfinite(k1.grad).all() and doc.grad is None

    # nothing requires grad: a plain tensor
    assert not attn(q, k, v, sink=sink).requires_grad
