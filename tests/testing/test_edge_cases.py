"""Numerical edge cases, kernel vs the float64 reference and vs hand formulas (issue 4, part 3).

* huge logits: ``scale·q·k`` spread over ±1e4, or a ``score + shift`` of ±1e4, in fp16/bf16, for
  every library norm and softcap: the kernel matches the reference and a float64 formula written
  here, and in the saturated regime the limits hold exactly as the math says (softmax = value of
  the arg-max key, sigmoid = sum of the values of the positive logits, a sink far above every
  logit leaves out = 0 and lse = sink);
* rows with no kept key, for every norm (window ≤ 0, causal/chunked/dilated/prefix_lm with
  n_q > n_kv, sink_window(0, 0), natten2d kernel 0, a document mask whose query document has no
  key): out exactly 0, lse −inf, never NaN. The library's ``document`` cannot leave a row empty
  (query i is token i + n_kv − n_q, itself a key; with n_q > n_kv its index clamps to token 0),
  so the document case uses separate query/key ids, FlexAttention style;
* degenerate shapes: one key, one query, 300 queries on 1–3 keys and the reverse;
* parameters at their boundaries (window 0/1/≥ N/2**31−1, chunk 0/1/≥ N, dilation 0/1/≥ N,
  natten kernel 1/full, sinks 0/≥ N, softcap caps tiny/huge, sink −inf, clipped softmax ζ=1 γ=0).

Representability: fp16 tops out at 65504. ``none`` and ``relu`` outputs grow with the logits, so
their values are scaled (v / n_kv for ``none``) to keep every output representable; a test that
wants an output the dtype cannot hold would test nothing. Their *weights* (the logits themselves)
may exceed 65504 while the output fits: that case has its own test.

Every kernel output is poisoned (filled with NaN before the launch), so an element the kernel
never writes cannot pass for a correct one.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.check import TOLERANCE
from tests.library import strategies as S

F64 = torch.float64
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
NEG_INF = -math.inf

settings.register_profile(
    "edge", deadline=None, database=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
EDGE = settings.get_profile("edge")


def examples(n: int):
    return settings(EDGE, max_examples=n)


@pytest.fixture(autouse=True)
def _poison(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- compiled variants
# Compiling is cheap; kernels are built at the first call and then cached in memory, so every
# Attention below is built at most once per dtype for the whole module.

# Each library norm with its arguments, as an attention spec writes it (name, extra params, call).
NORMS = {
    "softmax": ("", "softmax"),
    "softmax_off_by_one": ("", "softmax_off_by_one"),
    "softmax_sink": (", sink: tensor[H] float", "softmax_sink(sink)"),
    "clipped_softmax": ("", "clipped_softmax"),
    "sigmoid": ("", "sigmoid"),
    "relu": ("", "relu"),
    "none": ("", "none"),
}
LSE_NORMS = ("softmax", "softmax_off_by_one", "softmax_sink")


def _big(norm: str):
    extra, call = NORMS[norm]
    return attnc.compile(f"attention big_{norm}(shift: float{extra}):\n"
                         f"    score = score + shift\n    mask = causal\n    norm = {call}\n")


# logits pushed by `scale` or `shift`; causal (bottom-right) so full, boundary and skipped tiles occur
BIG = {norm: _big(norm) for norm in NORMS}
BIG["softcap"] = attnc.compile("attention big_softcap(shift: float, cap: float = 50.0):\n"
                               "    score = score + shift\n    score = softcap(cap)\n    mask = causal\n")


def _docwin(norm: str):
    extra, call = NORMS[norm]
    return attnc.compile(
        f"attention docwin_{norm}(window: int, qdoc: tensor[B, N_Q] int, kdoc: tensor[B, N_KV] int{extra}):\n"
        f"    mask = qdoc[b, q_idx] == kdoc[b, kv_idx] and sliding_window(window)\n    norm = {call}\n")


# A residual atom (document ids, evaluated on every visited tile) and affine bounds (the
# bottom-right window, which skips tiles): a row can be empty either way.
DOCWIN = {norm: _docwin(norm) for norm in NORMS}

LIB = {name: attnc.load(name) for name in (
    "causal", "sliding_window", "chunked", "dilated_window", "natten2d", "sink_window", "prefix_lm",
    "softcap", "softmax", "softmax_sink", "clipped_softmax", "full")}


# ----------------------------------------------------------------------------- helpers


def draw_qkv(seed: int, B: int, Hq: int, Hkv: int, Nq: int, Nkv: int, dtype, D: int = 16, Dv: int = 16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Nkv, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Nkv, Dv, generator=g).to(dtype)
    return q, k, v


def expand(t: torch.Tensor, Hq: int) -> torch.Tensor:
    """GQA: query head h reads key/value head h // (Hq // Hkv)."""
    return t.to(F64).repeat_interleave(Hq // t.shape[1], dim=1)


def raw_qk(q, k) -> torch.Tensor:
    """q·k in float64 of the (already rounded) inputs, [B, Hq, Nq, Nkv]."""
    return q.to(F64) @ expand(k, q.shape[1]).transpose(-1, -2)


def positions(Nq: int, Nkv: int):
    """(p, j) broadcastable [Nq, 1] and [1, Nkv]: query i sits at p = i + (Nkv − Nq)."""
    return torch.arange(Nq).view(-1, 1) + (Nkv - Nq), torch.arange(Nkv).view(1, -1)


def causal_keep(Nq: int, Nkv: int) -> torch.Tensor:
    p, j = positions(Nq, Nkv)
    return j <= p


def window_keep(Nq: int, Nkv: int, window: int) -> torch.Tensor:
    p, j = positions(Nq, Nkv)
    return (p - j >= 0) & (p - j < window)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    diff = (got.to(F64) - want).norm()
    scale = want.norm()
    return float(diff / scale) if scale > 0 else float(diff)


def _where(got: torch.Tensor, want: torch.Tensor) -> str:
    diff = (got.to(F64) - want).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    idx = tuple(int(x) for x in torch.unravel_index(diff.argmax(), diff.shape))
    return f"worst element {idx}: kernel {float(got[idx]):.6g}, expected {float(want[idx]):.6g}"


def assert_close(got: torch.Tensor, want: torch.Tensor, bound: float, what: str) -> None:
    """Relative error (Frobenius norm of the difference over that of ``want``) within ``bound``."""
    assert not torch.isnan(got).any(), f"{what}: NaN in the kernel's result; {_where(got, want)}"
    rel = _rel(got, want)
    assert rel <= bound, f"{what}: relative error {rel:.3e} > {bound:.0e}; {_where(got, want)}"


def run(attn, q, k, v, *, scale=None, keep=None, what="", **params):
    """Kernel and reference on one call; the kit's checks plus exact empty rows against ``keep``
    (a hand-written mask broadcastable to [B, Hq, Nq, Nkv]). Returns (out, lse, ref, ref_lse)."""
    has_lse = attn.cascade.has_lse
    got = attn(q, k, v, scale=scale, return_lse=has_lse, **params)
    ref = attn.reference(q, k, v, scale=scale, return_lse=has_lse, **params)
    (out, lse), (rout, rlse) = (got, ref) if has_lse else ((got, None), (ref, None))
    B, Hq, Nq, _ = q.shape
    what = f"{attn.name} {str(q.dtype)[6:]} B={B} Hq={Hq} Hkv={k.shape[1]} Nq={Nq} Nkv={k.shape[2]} " \
           f"scale={scale} {what} {', '.join(f'{n}={_short(x)}' for n, x in params.items())}"
    assert out.dtype == q.dtype and out.shape == rout.shape, what
    bound = TOLERANCE[q.dtype]
    assert_close(out, rout, bound, f"{what}: out vs reference")
    if lse is not None:
        assert not torch.isnan(lse).any(), f"{what}: NaN in lse"
        assert torch.equal(torch.isneginf(lse), torch.isneginf(rlse)), f"{what}: lse is -inf on other rows"
        finite = torch.isfinite(rlse)
        assert torch.isfinite(lse[finite]).all(), f"{what}: lse infinite where the reference is finite"
        assert_close(lse[finite], rlse[finite], bound, f"{what}: lse vs reference")
    if keep is not None:
        empty = ~keep.expand(B, Hq, Nq, k.shape[2]).any(-1)
        assert (rout[empty] == 0).all(), f"{what}: the reference's empty rows are not 0"
        assert (out[empty] == 0).all(), f"{what}: a row with no kept key is not exactly 0"
        if lse is not None:
            assert torch.equal(torch.isneginf(lse), empty), f"{what}: lse is not -inf exactly on the empty rows"
    return out, lse, rout, rlse


def _short(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{list(x.shape)}" if x.numel() > 4 else str(x.tolist())
    return repr(x)


def hand(norm: str, s: torch.Tensor, keep: torch.Tensor, v: torch.Tensor, *, sink=None,
         zeta: float = 1.003, gamma: float = -0.003):
    """float64 (out, lse or None) from the library formulas, written here with torch:
    s [B, H, Nq, Nkv] the final logits, keep broadcastable to s, v [B, H, Nkv, Dv] expanded."""
    keep = keep.expand(s.shape)
    empty = ~keep.any(-1)
    B, H, Nq, Nkv = s.shape
    lse = None
    if norm in ("softmax", "softmax_off_by_one", "softmax_sink", "clipped_softmax"):
        kept = torch.where(keep, s, torch.tensor(NEG_INF, dtype=F64))
        extra = {"softmax_off_by_one": torch.zeros(B, H, Nq, 1, dtype=F64),
                 "softmax_sink": None if sink is None else sink.to(F64).view(1, H, 1, 1).expand(B, H, Nq, 1)}.get(norm)
        cols = kept if extra is None else torch.cat([kept, extra], -1)
        lse = torch.logsumexp(cols, -1)
        w = torch.exp(kept - torch.where(empty, 0.0, lse)[..., None])  # 0 on dropped keys
        if norm == "clipped_softmax":
            w = torch.clamp((zeta - gamma) * w + gamma, 0.0, 1.0) * keep
            lse = None
    elif norm == "sigmoid":
        w = torch.sigmoid(s) * keep
    elif norm == "relu":
        w = torch.relu(s) * keep / Nkv
    elif norm == "none":
        w = s * keep
    else:
        raise ValueError(norm)
    out = torch.where(empty[..., None], 0.0, w @ v)
    if lse is not None:
        lse = torch.where(empty, NEG_INF, lse)
    return out, lse


# 17 first: the first (simplest) example hypothesis draws spans two key tiles and a ragged edge
LENGTHS = st.one_of(st.sampled_from((17, 1, 15, 16, 33)), st.integers(1, 40))
HEADS = st.sampled_from(((1, 1), (2, 1), (2, 2)))
SEEDS = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- huge logits


@pytest.mark.parametrize("regime", ["scale", "shift"])
@pytest.mark.parametrize("norm", sorted(BIG))
@examples(2)
@given(dtype=st.sampled_from((F16, BF16)), heads=HEADS, Nq=LENGTHS, Nkv=LENGTHS, seed=SEEDS,
       sign=st.sampled_from((1.0, -1.0)), sink_at=st.sampled_from(("far above", "-inf", "far below", "0", "near")))
def test_logits_around_1e4(norm, regime, dtype, heads, Nq, Nkv, seed, sign, sink_at):
    """|logits| ≈ 1e4, by ``scale`` (logits spread over ±1e4) or by ``score + shift`` (logits
    1e4 ± a few: only fp32 differences of nearly equal numbers tell the keys apart)."""
    Hq, Hkv = heads
    B = 1
    q, k, v = draw_qkv(seed, B, Hq, Hkv, Nq, Nkv, dtype)
    if norm == "none":  # Σ s·v grows with n_kv: keep every output inside fp16's range
        v = (v.float() / Nkv).to(dtype)
    qk = raw_qk(q, k)
    L = 1e4
    if regime == "scale":
        scale, shift = sign * L / float(qk.abs().max()), 0.0
    else:
        scale, shift = None, sign * L
    s = (qk / math.sqrt(q.shape[-1]) if scale is None else scale * qk) + shift  # float64 logits
    keep = causal_keep(Nq, Nkv)
    params = {"shift": shift}
    sink = None
    if norm == "softmax_sink":
        value = {"-inf": NEG_INF, "far below": -4 * L, "0": 0.0, "far above": 4 * L, "near": shift + 1.0}[sink_at]
        sink = torch.full((Hq,), value) + (torch.arange(Hq) if math.isfinite(value) else 0)
        params["sink"] = sink
    out, lse, _, _ = run(BIG[norm], q, k, v, scale=scale, keep=keep, what=f"{regime} sign={sign}", **params)

    # an independent float64 formula
    hand_norm = "softmax" if norm == "softcap" else norm
    hs = 50.0 * torch.tanh(s / 50.0) if norm == "softcap" else s
    want, want_lse = hand(hand_norm, hs, keep, expand(v, Hq), sink=sink)
    bound = TOLERANCE[dtype]
    assert_close(out, want, bound, f"{norm} {regime}: out vs hand formula")
    if lse is not None:
        finite = torch.isfinite(want_lse)
        assert_close(lse[finite], want_lse[finite], bound, f"{norm} {regime}: lse vs hand formula")

    # the saturated limits, row by row
    ve = expand(v, Hq)
    kept = torch.where(keep, hs, NEG_INF).expand(B, Hq, Nq, Nkv)
    top2 = kept.topk(min(2, Nkv), -1).values
    gap = top2[..., 0] - (top2[..., 1] if Nkv > 1 else torch.full_like(top2[..., 0], NEG_INF))
    arg = kept.argmax(-1)
    argmax_value = torch.gather(ve, 2, arg[..., None].expand(B, Hq, Nq, ve.shape[-1]))
    m = top2[..., 0]
    row_ok = torch.isfinite(m)
    if norm in ("softmax", "clipped_softmax", "softmax_off_by_one") or \
            (norm == "softmax_sink" and sink_at in ("-inf", "far below")):
        others = {"softmax_off_by_one": torch.zeros_like(m),
                  "softmax_sink": None if sink is None else sink.to(F64).view(1, Hq, 1).expand_as(m)}.get(norm)
        rival = gap if others is None else torch.minimum(gap, m - others)
        one_hot = row_ok & (rival > 40)  # every other weight < e^-40: out is v[argmax] to fp64 precision
        for idx in one_hot.nonzero().tolist():
            b, h, i = idx
            assert_close(out[b, h, i], argmax_value[b, h, i], bound, f"{norm}: row {idx} is not v[argmax]")
            if lse is not None:
                assert abs(float(lse[b, h, i]) - float(m[b, h, i])) <= 1e-5 * abs(float(m[b, h, i])) + 1e-2, \
                    f"{norm}: row {idx} lse {float(lse[b, h, i])} is not the max logit {float(m[b, h, i])}"
    if norm == "softmax_off_by_one":  # every logit ≤ −40: exp(s) vanishes against the 1
        for b, h, i in (row_ok & (m < -40)).nonzero().tolist():
            assert (out[b, h, i].abs() <= 1e-6).all() and abs(float(lse[b, h, i])) <= 1e-6
    if norm == "softmax_sink" and sink_at == "far above":  # the sink takes all the mass
        assert (out[row_ok.expand_as(out[..., 0])] == 0).all(), "a sink 1e4 above every logit must leave out = 0"
        sink_rows = sink.to(lse.dtype).view(1, Hq, 1).expand_as(lse)[row_ok]
        assert torch.allclose(lse[row_ok], sink_rows, rtol=1e-6, atol=0.0)
    if norm == "sigmoid":  # every |s| ≥ 40: weights are exactly 0 or 1
        decided = row_ok & torch.where(keep, s.abs() >= 40, True).all(-1)
        positive = (keep & (s > 0)).to(F64)
        sums = positive @ ve
        for b, h, i in decided.nonzero().tolist():
            assert_close(out[b, h, i], sums[b, h, i], bound, f"sigmoid: row {(b, h, i)} is not Σ v over s > 0")


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("norm", ["relu", "none"])
def test_weights_beyond_fp16_range_with_a_representable_output(norm, dtype):
    """relu/none weights are the logits themselves. With logits up to 1e5 and values of ~0.01,
    every output is ~1e3, well inside fp16's range (the float64 reference says so below), so the
    kernel must return it, not ±inf/NaN: unnormalized weights must not be rounded to the value
    dtype on the way (bf16 has the range and passes; fp16 does not). Deterministic on purpose:
    a failing hypothesis test here spends minutes shrinking interpreter runs."""
    Nkv = 5
    q, k, v = draw_qkv(3, 1, 2, 1, 4, Nkv, dtype)
    v = (v.float() / (100 * (Nkv if norm == "none" else 1))).to(dtype)
    scale = 1e5 / float(raw_qk(q, k).abs().max())
    ref = BIG[norm].reference(q, k, v, scale=scale, shift=0.0)
    assert 1e2 < ref.abs().max() < 6e4, "the outputs are large but fit fp16 (test precondition)"
    run(BIG[norm], q, k, v, scale=scale, keep=causal_keep(4, Nkv), shift=0.0)


# ----------------------------------------------------------------------------- empty rows


EMPTY_SCENARIOS = ("window <= 0", "before key 0", "query doc missing", "late keys", "random docs")


@st.composite
def empty_row_cases(draw, scenario: str):
    """(Nq, Nkv, window, docs) for one way of leaving rows empty."""
    Nq, Nkv = draw(LENGTHS), draw(LENGTHS)
    window = draw(st.sampled_from((3, 1, 17, INT_MAX)))
    docs = "same"
    if scenario == "window <= 0":
        window = draw(st.sampled_from((0, -1, INT_MIN)))
    elif scenario == "before key 0":  # bottom-right: queries i < n_q − n_kv sit before key 0
        Nq = Nkv + draw(st.integers(1, 24))
        window = draw(st.sampled_from((INT_MAX, Nq, 5)))
    elif scenario == "late keys":  # needs more than one key tile and a window reaching back
        Nkv = draw(st.integers(17, 40))
        window = draw(st.sampled_from((INT_MAX, Nkv)))
        docs = scenario
    else:
        docs = scenario
    return Nq, Nkv, window, docs


@pytest.mark.parametrize("scenario", EMPTY_SCENARIOS)
@pytest.mark.parametrize("norm", sorted(NORMS))
@examples(2)
@given(data=st.data(), dtype=st.sampled_from((F32, F16, BF16)), heads=HEADS, B=st.integers(1, 2), seed=SEEDS,
       logit_scale=st.sampled_from((None, 1e3)), sink_value=st.sampled_from((0.0, NEG_INF, 1e4, -1e4)))
def test_rows_without_keys_are_zero_with_lse_minus_inf(norm, scenario, data, dtype, heads, B, seed, logit_scale,
                                                       sink_value):
    """Every norm: a row the mask leaves empty — its window is empty (window ≤ 0), it sits before
    key 0 (n_q > n_kv, bottom-right), or its document has no key — is exactly 0 with lse −inf,
    and a row whose first visited key tiles keep nothing ("late keys") is still exact."""
    Nq, Nkv, window, docs = data.draw(empty_row_cases(scenario), label="Nq, Nkv, window, docs")
    Hq, Hkv = heads
    q, k, v = draw_qkv(seed, B, Hq, Hkv, Nq, Nkv, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    if docs == "same":
        qdoc, kdoc = torch.zeros(B, Nq, dtype=torch.int64), torch.zeros(B, Nkv, dtype=torch.int64)
    elif docs == "query doc missing":  # keys in docs 0–1, queries alternate between doc 1 and doc 2
        kdoc = torch.randint(0, 2, (B, Nkv), generator=g)
        qdoc = 1 + torch.arange(Nq).repeat(B, 1) % 2
    elif docs == "late keys":  # only the last 3 keys share the queries' document: the first key
        # tiles a row visits keep nothing for it (its running max stays -inf across tiles)
        kdoc = (torch.arange(Nkv) >= Nkv - 3).to(torch.int64).repeat(B, 1)
        qdoc = torch.ones(B, Nq, dtype=torch.int64)
    else:
        kdoc, qdoc = torch.randint(0, 3, (B, Nkv), generator=g), torch.randint(0, 3, (B, Nq), generator=g)
    scale = None if logit_scale is None else logit_scale / float(raw_qk(q, k).abs().max())
    if norm in ("none", "relu") and dtype == F16 and logit_scale is not None:
        v = (v.float() / Nkv).to(dtype)  # keep Σ s·v inside fp16's range
    keep = (qdoc[:, None, :, None] == kdoc[:, None, None, :]) & window_keep(Nq, Nkv, window)
    params = {"window": window, "qdoc": qdoc, "kdoc": kdoc}
    if norm == "softmax_sink":
        params["sink"] = torch.full((Hq,), sink_value)
    _, lse, _, _ = run(DOCWIN[norm], q, k, v, scale=scale, keep=keep, what=f"docs={docs}", **params)
    empty = ~keep.expand(B, Hq, Nq, Nkv).any(-1)
    if scenario in ("window <= 0", "before key 0") or (docs == "query doc missing" and Nq > 1):
        assert empty.any(), "the construction leaves rows empty"
    if norm in LSE_NORMS:
        assert torch.isfinite(lse[~empty]).all()


EMPTY_MASKS = {
    # name: (params for (Nq, Nkv), hand keep [Nq, Nkv])
    "causal": (lambda Nq, Nkv: {}, lambda p, j, prm: j <= p),
    "sliding_window": (lambda Nq, Nkv: {"window": 0}, lambda p, j, prm: (p - j >= 0) & (p - j < 0)),
    "chunked": (lambda Nq, Nkv: {"chunk": 4},
                lambda p, j, prm: torch.div(p, 4, rounding_mode="floor") == torch.div(j, 4, rounding_mode="floor")),
    "sink_window": (lambda Nq, Nkv: {"sinks": 0, "window": 0}, lambda p, j, prm: (j <= p) & (j < 0)),
    "dilated_window": (lambda Nq, Nkv: {"window": 1, "dilation": 2},
                       lambda p, j, prm: ((p - j).abs() <= 2) & ((p - j) % 2 == 0)),
    "prefix_lm": (lambda Nq, Nkv: {"prefix": 0}, lambda p, j, prm: (j < 0) | (j <= p)),
}


@pytest.mark.parametrize("name", sorted(EMPTY_MASKS))
@examples(3)
@given(dtype=st.sampled_from((F32, F16)), Nkv=st.integers(1, 20), extra=st.integers(3, 30), seed=SEEDS)
def test_library_masks_with_empty_rows(name, dtype, Nkv, extra, seed):
    """n_q > n_kv: with bottom-right alignment the first n_q − n_kv queries sit before key 0 (and
    window 0 / sinks 0 leave every row empty)."""
    Nq = Nkv + extra
    q, k, v = draw_qkv(seed, 1, 2, 1, Nq, Nkv, dtype)
    make_params, make_keep = EMPTY_MASKS[name]
    params = make_params(Nq, Nkv)
    p, j = positions(Nq, Nkv)
    keep = make_keep(p, j, params)
    run(LIB[name], q, k, v, keep=keep, **params)
    assert (~keep.any(-1)).any(), "the construction leaves rows empty"


@pytest.mark.parametrize("dilation", [1, 2])
def test_natten_kernel_zero_leaves_every_row_empty(dilation):
    q, k, v = draw_qkv(7, 1, 2, 2, 20, 20, F32)
    out, lse, _, _ = run(LIB["natten2d"], q, k, v, keep=torch.zeros(20, 20, dtype=torch.bool),
                         width=5, kernel_h=0, kernel_w=0, dilation_h=dilation, dilation_w=dilation)
    assert (out == 0).all() and torch.isneginf(lse).all()


# ----------------------------------------------------------------------------- extreme shapes


SHAPES = [(1, 1), (1, 17), (17, 1), (300, 1), (300, 2), (300, 3), (1, 300), (2, 300), (3, 300)]
# every shape twice, the norms, dtypes and windows (2**31−1: plain causal) dealt round-robin over them
_DEAL = [(shape, sorted(NORMS)[n % 7], (F32, F16, BF16)[n % 3], (INT_MAX, 1, 5, 2)[n % 4])
         for n, shape in enumerate(SHAPES + SHAPES)]


@pytest.mark.parametrize("shape, norm, dtype, window", _DEAL,
                         ids=[f"{s[0]}x{s[1]}-{nm}-{str(dt)[6:]}-w{w}" for s, nm, dt, w in _DEAL])
@examples(1)
@given(seed=SEEDS)
def test_degenerate_shapes_every_norm(shape, norm, dtype, window, seed):
    """One key, one query, 300 queries on 1–3 keys and 1–3 queries on 300 keys, through a causal
    sliding window and every norm (documents all equal), against the reference and a hand formula."""
    Nq, Nkv = shape
    q, k, v = draw_qkv(seed, 1, 2, 1, Nq, Nkv, dtype)
    params = {"window": window, "qdoc": torch.zeros(1, Nq, dtype=torch.int64),
              "kdoc": torch.zeros(1, Nkv, dtype=torch.int64)}
    sink = None
    if norm == "softmax_sink":
        sink = params["sink"] = torch.tensor([0.5, -2.0])
    keep = window_keep(Nq, Nkv, window)
    out, lse, _, _ = run(DOCWIN[norm], q, k, v, keep=keep, **params)
    s = raw_qk(q, k) / math.sqrt(q.shape[-1])
    want, want_lse = hand(norm, s, keep, expand(v, 2), sink=sink)
    assert_close(out, want, TOLERANCE[dtype], f"{norm} {shape}: out vs hand formula")
    if want_lse is not None:
        finite = torch.isfinite(want_lse)
        assert_close(lse[finite], want_lse[finite], TOLERANCE[dtype], f"{norm} {shape}: lse vs hand formula")


_DEAL_LIB = [(shape, ("causal", "sliding_window")[n % 2], (F32, F16)[n // 2 % 2]) for n, shape in enumerate(SHAPES)]


@pytest.mark.parametrize("shape, name, dtype", _DEAL_LIB,
                         ids=[f"{s[0]}x{s[1]}-{nm}-{str(dt)[6:]}" for s, nm, dt in _DEAL_LIB])
@examples(1)
@given(seed=SEEDS)
def test_degenerate_shapes_library_masks(shape, name, dtype, seed):
    """The library's causal and sliding_window (window 1–3) on the same shapes. A single key
    gives weight 1: out is v[0] and lse the logit on every row that keeps it."""
    Nq, Nkv = shape
    q, k, v = draw_qkv(seed, 1, 2, 1, Nq, Nkv, dtype)
    params = {} if name == "causal" else {"window": 1 + seed % 3}
    keep = causal_keep(Nq, Nkv) if name == "causal" else window_keep(Nq, Nkv, params["window"])
    out, lse, _, _ = run(LIB[name], q, k, v, keep=keep, **params)
    if Nkv == 1:
        rows = keep[:, 0]
        assert_close(out[:, :, rows], expand(v, 2)[:, :, :1].expand_as(out[:, :, rows]), TOLERANCE[dtype],
                     f"{name}: one key is not v[0]")
        s = raw_qk(q, k)[..., 0] / math.sqrt(q.shape[-1])
        assert torch.allclose(lse[:, :, rows].double(), s[:, :, rows], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- parameter boundaries


def _qkv_for(seed, Nq, Nkv, dtype, heads=(2, 1)):
    return draw_qkv(seed, 1, heads[0], heads[1], Nq, Nkv, dtype)


@pytest.mark.parametrize("window", ["0", "1", "Nkv-1", "Nkv", "Nq+Nkv", "INT_MAX", "INT_MIN"])
@examples(2)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16)), seed=SEEDS)
def test_sliding_window_boundaries(window, Nq, Nkv, dtype, seed):
    w = {"0": 0, "1": 1, "Nkv-1": Nkv - 1, "Nkv": Nkv, "Nq+Nkv": Nq + Nkv, "INT_MAX": INT_MAX, "INT_MIN": INT_MIN}[window]
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    keep = window_keep(Nq, Nkv, w)
    out, _, _, _ = run(LIB["sliding_window"], q, k, v, keep=keep, window=w)
    if w >= Nkv:  # a window at least as long as the keys is causal
        assert_close(out, LIB["causal"].reference(q, k, v), TOLERANCE[dtype], f"window={w} vs causal")
    if w == 1:  # each query sees only its own position
        p, _ = positions(Nq, Nkv)
        rows = (p[:, 0] >= 0) & (p[:, 0] < Nkv)
        want = expand(v, 2)[:, :, p[rows, 0]]
        assert_close(out[:, :, rows], want, TOLERANCE[dtype], "window=1 is not v[p]")


@pytest.mark.parametrize("chunk", ["0", "1", "-3", "Nkv", "Nq+Nkv", "INT_MAX"])
@examples(2)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16)), seed=SEEDS)
def test_chunked_boundaries(chunk, Nq, Nkv, dtype, seed):
    c = {"0": 0, "1": 1, "-3": -3, "Nkv": Nkv, "Nq+Nkv": Nq + Nkv, "INT_MAX": INT_MAX}[chunk]
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    p, j = positions(Nq, Nkv)
    if c == 0:  # // 0 is 0: one chunk holds everything, every query sees every key
        keep = torch.ones(Nq, Nkv, dtype=torch.bool)
    else:
        keep = torch.div(p, c, rounding_mode="floor") == torch.div(j, c, rounding_mode="floor")
    out, _, _, _ = run(LIB["chunked"], q, k, v, keep=keep, chunk=c)
    if c == 1:
        rows = (p[:, 0] >= 0) & (p[:, 0] < Nkv)
        assert_close(out[:, :, rows], expand(v, 2)[:, :, p[rows, 0]], TOLERANCE[dtype], "chunk=1 is not v[p]")
    if c == 0 or c >= Nq + Nkv:
        rows = keep.any(-1)
        full = LIB["full"].reference(q, k, v)
        assert_close(out[:, :, rows], full[:, :, rows], TOLERANCE[dtype], f"chunk={c} is not full attention")


@pytest.mark.parametrize("wd", [(0, 2), (1, 1), (3, 1), (2, 0), (1, 40), (INT_MAX, 1), (INT_MAX // 40, 40), (4, 3)],
                         ids=lambda wd: f"window={wd[0]},dilation={wd[1]}")
@examples(1)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16)), seed=SEEDS)
def test_dilated_window_boundaries(wd, Nq, Nkv, dtype, seed):
    """window 0 or dilation 0 (`d % 0` is d): only the key at the query's own position; dilation
    1: a plain symmetric band; dilation ≥ n: the own position only (window·dilation kept in int32)."""
    window, dilation = wd
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    p, j = positions(Nq, Nkv)
    d = p - j
    if dilation == 0:
        keep = (d.abs() <= 0) & (d == 0)
    else:
        keep = (d.abs() <= window * dilation) & (d % dilation == 0)
    out, _, _, _ = run(LIB["dilated_window"], q, k, v, keep=keep, window=window, dilation=dilation)
    if window == 0 or dilation == 0 or dilation >= 40:
        rows = (p[:, 0] >= 0) & (p[:, 0] < Nkv)
        assert_close(out[:, :, rows], expand(v, 2)[:, :, p[rows, 0]], TOLERANCE[dtype], "own position only")


@pytest.mark.parametrize("window, dilation", [(2**30, 2), (INT_MAX, 2)])
def test_dilated_window_reach_beyond_int32_is_refused(window, dilation):
    """An "unbounded" window (2**30 or 2**31−1, as users write it) with dilation 2: both
    parameters fit int32, but the reach window·dilation does not. Kernels compute integer
    expressions in 32 bits (docs/language.md), so the call must be refused with a message naming
    the expression and the parameters — never answered with a wrapped-around, negative reach that
    drops every key (what the kernel did before the launch-time int32 check)."""
    Nq = Nkv = 17
    q, k, v = _qkv_for(11, Nq, Nkv, F32)
    with pytest.raises(ValueError, match=r"window \* dilation.*beyond int32") as info:
        LIB["dilated_window"](q, k, v, window=window, dilation=dilation)
    assert f"window={window}" in str(info.value) and "dilation=2" in str(info.value)
    # just inside int32 the same mask runs and matches the definition
    p, j = positions(Nq, Nkv)
    keep = (p - j) % dilation == 0
    run(LIB["dilated_window"], q, k, v, keep=keep, window=(2**31 - 1) // dilation, dilation=dilation)


NATTEN_CASES = [  # (height, width, kernel, dilation)
    (5, 5, 1, 1), (3, 5, 1, 2),  # kernel 1: each token alone, with and without dilation
    (5, 5, 5, 1), (3, 3, 3, 1),  # kernel = both axes: full attention
    (5, 3, 3, 1), (6, 6, 3, 2),  # kernel·dilation = the (shorter) axis
    (1, 6, 1, 1), (1, 1, 1, 1),  # a one-row image, a one-token image
]


@pytest.mark.parametrize("case", NATTEN_CASES, ids=lambda c: "h={},w={},kernel={},dilation={}".format(*c))
@examples(1)
@given(dtype=st.sampled_from((F32, F16)), seed=SEEDS)
def test_natten2d_boundaries(case, dtype, seed):
    """NATTEN's window (tests.library's independent transcription) at its edges."""
    height, width, kernel, dilation = case
    N = height * width
    q, k, v = _qkv_for(seed, N, N, dtype)
    keep = S.natten2d_mask(height, width, kernel, dilation)
    out, _, _, _ = run(LIB["natten2d"], q, k, v, keep=keep, width=width, kernel_h=kernel, kernel_w=kernel,
                       dilation_h=dilation, dilation_w=dilation)
    if kernel == 1:
        assert_close(out, expand(v, 2), TOLERANCE[dtype], "natten kernel 1 is not v[i]")
    if kernel == height == width and dilation == 1:
        assert_close(out, LIB["full"].reference(q, k, v), TOLERANCE[dtype], "natten kernel = image is not full")


@pytest.mark.parametrize("sw", [(0, 0), (0, 1), (0, 5), ("Nkv", 0), ("Nkv", 3), (INT_MAX, 0), (2, 0), (0, INT_MAX),
                                (INT_MAX, INT_MAX)], ids=lambda sw: f"sinks={sw[0]},window={sw[1]}")
@examples(1)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16)), seed=SEEDS)
def test_sink_window_boundaries(sw, Nq, Nkv, dtype, seed):
    sinks, window = (Nkv if x == "Nkv" else x for x in sw)
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    p, j = positions(Nq, Nkv)
    keep = (j <= p) & ((j < sinks) | (p - j < window))
    out, _, _, _ = run(LIB["sink_window"], q, k, v, keep=keep, sinks=sinks, window=window)
    bound = TOLERANCE[dtype]
    if sinks == 0:
        assert_close(out, LIB["sliding_window"].reference(q, k, v, window=window), bound, "sinks=0 vs sliding window")
    if sinks >= Nkv or window >= Nkv:
        assert_close(out, LIB["causal"].reference(q, k, v), bound, "sinks/window ≥ n_kv vs causal")


@pytest.mark.parametrize("cap", [1e-20, 1e-7, 1e6, 1e30])
@examples(3)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16, BF16)), seed=SEEDS, big=st.booleans())
def test_softcap_tiny_and_huge_caps(cap, Nq, Nkv, dtype, seed, big):
    """A tiny cap flattens every logit to ±cap: the weights are uniform, out = mean of v. A huge
    cap changes nothing: plain softmax. Logits of ±1e4 (``big``) included."""
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    scale = 1e4 / float(raw_qk(q, k).abs().max()) if big else None
    out, lse, _, _ = run(LIB["softcap"], q, k, v, scale=scale, keep=torch.ones(Nq, Nkv, dtype=torch.bool), cap=cap)
    bound = TOLERANCE[dtype]
    if cap < 1:
        mean = expand(v, 2).mean(2, keepdim=True).expand_as(out)
        assert_close(out, mean, bound, f"cap={cap}: not the mean of v")
        assert torch.allclose(lse.double(), torch.full_like(lse, math.log(Nkv)).double(), rtol=1e-5, atol=1e-5)
    elif not big or cap >= 1e30:  # cap·tanh(s/cap) = s·(1 − s²/3cap² + …): a relative change < 1e-11
        want, want_lse = LIB["full"].reference(q, k, v, scale=scale, return_lse=True)
        assert_close(out, want, bound, f"cap={cap}: not plain softmax")
        assert_close(lse, want_lse, bound, f"cap={cap}: lse not plain softmax")


@pytest.mark.parametrize("sink", [NEG_INF, -1e30, -1e4])
@examples(3)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16, BF16)), seed=SEEDS)
def test_softmax_sink_at_minus_infinity_is_softmax(sink, Nq, Nkv, dtype, seed):
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    out, lse, _, _ = run(LIB["softmax_sink"], q, k, v, keep=torch.ones(Nq, Nkv, dtype=torch.bool),
                         sink=torch.full((2,), sink))
    want, want_lse = LIB["softmax"].reference(q, k, v, return_lse=True)
    assert_close(out, want, TOLERANCE[dtype], f"sink={sink}: not softmax")
    assert_close(lse, want_lse, TOLERANCE[dtype], f"sink={sink}: lse not softmax's")


@examples(3)
@given(Nq=LENGTHS, Nkv=LENGTHS, dtype=st.sampled_from((F32, F16)), seed=SEEDS, big=st.booleans())
def test_clipped_softmax_without_clipping_is_softmax(Nq, Nkv, dtype, seed, big):
    """ζ = 1, γ = 0: the clip is the identity on probabilities; with ±1e4 logits (one-hot) too."""
    q, k, v = _qkv_for(seed, Nq, Nkv, dtype)
    scale = 1e4 / float(raw_qk(q, k).abs().max()) if big else None
    out, _, _, _ = run(LIB["clipped_softmax"], q, k, v, scale=scale, keep=torch.ones(Nq, Nkv, dtype=torch.bool),
                       zeta=1.0, gamma=0.0)
    assert_close(out, LIB["softmax"].reference(q, k, v, scale=scale), TOLERANCE[dtype], "ζ=1, γ=0 is not softmax")
