"""The reference against torch: SDPA and (eager, CPU, float64) FlexAttention.

Every library variant that torch can express is rebuilt here on the torch side from the formula in
its spec comment — masks as ``mask_mod`` functions, score variants as ``score_mod`` functions or
additive SDPA biases — and compared with ``attnc.reference`` on random shapes (GQA/MQA, n_q ≠ n_kv,
Dv ≠ D) and parameters.

Conventions checked against torch 2.13 (CPU):

* ``flex_attention(..., return_aux=AuxRequest(lse=True))`` returns lse in the natural log: the
  kernels keep it in base 2 internally and ``_finalize_outputs`` multiplies by ln 2 before
  returning; ``test_flex_lse_is_natural_log`` pins this against ``torch.logsumexp``.
* Rows whose mask keeps no key: attnc gives ``out = 0`` and ``lse = -inf``. torch 2.13's flex
  (block mask or a ``-inf`` score_mod) and SDPA's math backend (bool mask, "safe softmax") happen
  to give 0 / -inf too, but that is not promised across versions, so outputs are compared only on
  rows that keep at least one key (computed from the torch-side mask), and attnc's convention on
  the empty rows is asserted separately.
* torch's ``is_causal=True`` is top-left aligned; attnc's ``causal`` is bottom-right aligned, the
  same as ``torch.nn.attention.bias.causal_lower_right``, which is used as a second oracle.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

import attnc
from tests.library import strategies as S

TOL = 1e-6
F64 = torch.float64

# Max relative error seen per (variant, oracle, quantity); printed by the report script.
MAX_REL_ERR: dict[tuple[str, str, str], float] = defaultdict(float)


def _record(key, err):
    MAX_REL_ERR[key] = max(MAX_REL_ERR[key], err)


# ----------------------------------------------------------------------------- torch side


def dense_mask(mask_mod, s: S.Shape) -> torch.Tensor:
    """Evaluate a mask_mod on broadcast index grids: [B, Hq, Nq, Nkv] bool."""
    b = torch.arange(s.B).view(-1, 1, 1, 1)
    h = torch.arange(s.Hq).view(1, -1, 1, 1)
    i = torch.arange(s.Nq).view(1, 1, -1, 1)
    j = torch.arange(s.Nkv).view(1, 1, 1, -1)
    return torch.as_tensor(mask_mod(b, h, i, j)).expand(s.B, s.Hq, s.Nq, s.Nkv)


def dense_bias(score_bias, s: S.Shape) -> torch.Tensor:
    """Evaluate an additive score bias (b, h, i, j) -> float on broadcast grids: [B, Hq, Nq, Nkv]."""
    b = torch.arange(s.B).view(-1, 1, 1, 1)
    h = torch.arange(s.Hq).view(1, -1, 1, 1)
    i = torch.arange(s.Nq).view(1, 1, -1, 1)
    j = torch.arange(s.Nkv).view(1, 1, 1, -1)
    return torch.as_tensor(score_bias(b, h, i, j), dtype=F64).expand(s.B, s.Hq, s.Nq, s.Nkv)


def run_flex(p: S.Problem, mask_mod=None, score_mod=None, via_score_mod=False):
    s = p.shape
    block_mask = None
    if mask_mod is not None and not via_score_mod:
        block_mask = create_block_mask(mask_mod, s.B, s.Hq, s.Nq, s.Nkv, device="cpu")
    if mask_mod is not None and via_score_mod:
        inner = score_mod

        def score_mod(score, b, h, i, j):
            x = score if inner is None else inner(score, b, h, i, j)
            return torch.where(mask_mod(b, h, i, j), x, -math.inf)

    out, aux = flex_attention(p.q, p.k, p.v, score_mod=score_mod, block_mask=block_mask,
                              enable_gqa=s.Hq != s.Hkv, return_aux=AuxRequest(lse=True))
    return out, aux.lse


def run_sdpa(p: S.Problem, mask=None, bias=None):
    s = p.shape
    attn_mask = mask
    if bias is not None:
        attn_mask = bias if mask is None else bias.masked_fill(~mask, -math.inf)
    return F.scaled_dot_product_attention(p.q, p.k, p.v, attn_mask=attn_mask, enable_gqa=s.Hq != s.Hkv)


# ----------------------------------------------------------------------------- the variants, torch side
#
# Each builder takes (shape, params) and returns a TorchSide: mask_mod (or None = keep all),
# score_mod for flex (or None), and score_bias (b, h, i, j) -> float for SDPA (None when the
# score change is not additive, e.g. softcap: then only flex is an oracle).


@dataclass
class TorchSide:
    mask_mod: Callable | None = None
    score_mod: Callable | None = None
    score_bias: Callable | None = None
    sdpa: bool = True


def _full(s, prm):
    return TorchSide()


def _causal(s, prm):
    off = s.off
    return TorchSide(mask_mod=lambda b, h, i, j: j <= i + off)


def _sliding_window(s, prm):
    off, w = s.off, prm["window"]
    return TorchSide(mask_mod=lambda b, h, i, j: ((i + off - j) >= 0) & ((i + off - j) < w))


def _chunked(s, prm):
    off, c = s.off, prm["chunk"]
    # as written in chunked.attn: floor(p / chunk) == floor(j / chunk), p = i + n_kv - n_q
    return TorchSide(mask_mod=lambda b, h, i, j: torch.div(i + off, c, rounding_mode="floor") == torch.div(j, c, rounding_mode="floor"))


def _prefix_lm(s, prm):
    off, pre = s.off, prm["prefix"]
    return TorchSide(mask_mod=lambda b, h, i, j: (j < pre) | (j <= i + off))


def _document(s, prm):
    off, doc = s.off, prm["doc"]
    return TorchSide(mask_mod=lambda b, h, i, j: doc[b, i + off] == doc[b, j])


def _sink_window(s, prm):
    off, sinks, w = s.off, prm["sinks"], prm["window"]

    def mm(b, h, i, j):
        pos = i + off
        return (j <= pos) & ((j < sinks) | (pos - j < w))

    return TorchSide(mask_mod=mm)


def _dilated_window(s, prm):
    off, w, d = s.off, prm["window"], prm["dilation"]

    def mm(b, h, i, j):
        dist = i + off - j
        return (dist.abs() <= w * d) & (torch.remainder(dist, d) == 0)

    return TorchSide(mask_mod=mm)


def _alibi_slopes(H: int) -> torch.Tensor:
    # Press et al. 2022: for H heads the slopes are the geometric sequence 2^(-8/H), 2^(-16/H), ...
    ratio = 2.0 ** (-8.0 / H)
    return torch.tensor([ratio ** (h + 1) for h in range(H)], dtype=F64)


def _alibi(s, prm):
    off, slopes = s.off, _alibi_slopes(s.Hq)

    def bias(b, h, i, j):
        return slopes[h] * (j - (i + off))

    return TorchSide(score_mod=lambda score, b, h, i, j: score + bias(b, h, i, j), score_bias=bias)


def _softcap(s, prm):
    cap = prm["cap"]
    return TorchSide(score_mod=lambda score, b, h, i, j: cap * torch.tanh(score / cap), sdpa=False)


def _relative_bias(s, prm):
    table, nq = prm["table"], s.Nq

    def bias(b, h, i, j):
        return table[h, j - i + nq - 1]

    return TorchSide(score_mod=lambda score, b, h, i, j: score + bias(b, h, i, j), score_bias=bias)


@functools.lru_cache(maxsize=None)
def _library(name: str):
    return attnc.library_cascade(name)


@functools.lru_cache(maxsize=None)
def _composed_cascade(text: str):
    return attnc.spec_from_text(text).cascade("a")


def _no_params(s):
    return st.just({})


# name -> (cascade factory, params strategy (shape -> strategy), torch builder, shape strategy)
VARIANTS = {
    "full": (functools.partial(_library, "full"), _no_params, _full, S.shapes()),
    "softmax": (functools.partial(_library, "softmax"), _no_params, _full, S.shapes()),
    "causal": (functools.partial(_library, "causal"), _no_params, _causal, S.shapes()),
    "sliding_window": (functools.partial(_library, "sliding_window"), S.window_params, _sliding_window, S.shapes()),
    "chunked": (functools.partial(_library, "chunked"), S.chunk_params, _chunked, S.shapes()),
    "prefix_lm": (functools.partial(_library, "prefix_lm"), S.prefix_params, _prefix_lm, S.shapes()),
    # doc has length N_KV and queries are its last n_q tokens, so n_q <= n_kv here
    "document": (functools.partial(_library, "document"), S.document_params, _document, S.shapes(nq_le_nkv=True)),
    "sink_window": (functools.partial(_library, "sink_window"), S.sink_window_params, _sink_window, S.shapes()),
    "dilated_window": (functools.partial(_library, "dilated_window"), S.dilated_window_params, _dilated_window, S.shapes()),
    "alibi": (functools.partial(_library, "alibi"), _no_params, _alibi, S.shapes()),
    "softcap": (functools.partial(_library, "softcap"), S.softcap_params, _softcap, S.shapes()),
    "relative_bias": (functools.partial(_library, "relative_bias"), S.relative_bias_params, _relative_bias, S.shapes()),
}


# ----------------------------------------------------------------------------- comparison


def check_against(name: str, p: S.Problem, cascade, params: dict, side: TorchSide, *, oracles=("flex", "sdpa"),
                  via_score_mod: bool = False):
    s = p.shape
    out, lse = attnc.reference(cascade, p.q, p.k, p.v, return_lse=True, **params)
    assert out.dtype == F64 and lse.dtype == F64
    assert out.shape == (s.B, s.Hq, s.Nq, s.Dv) and lse.shape == (s.B, s.Hq, s.Nq)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()

    keep = dense_mask(side.mask_mod, s) if side.mask_mod is not None else torch.ones(s.B, s.Hq, s.Nq, s.Nkv, dtype=torch.bool)
    rows = keep.any(-1)
    # attnc's convention on rows with no kept key: out exactly 0, lse exactly -inf
    assert (out[~rows] == 0).all()
    assert (lse[~rows] == -math.inf).all()
    assert torch.isfinite(lse[rows]).all()

    if "flex" in oracles:
        f_out, f_lse = run_flex(p, side.mask_mod, side.score_mod, via_score_mod=via_score_mod)
        e = S.rel_err(out[rows], f_out[rows])
        _record((name, "flex", "out"), e)
        assert e <= TOL, f"{name}: out vs flex rel err {e:.3g}"
        e = S.rel_err(lse[rows], f_lse[rows])
        _record((name, "flex", "lse"), e)
        assert e <= TOL, f"{name}: lse vs flex rel err {e:.3g}"
    if "sdpa" in oracles and side.sdpa:
        mask = keep if side.mask_mod is not None else None
        bias = dense_bias(side.score_bias, s) if side.score_bias is not None else None
        o = run_sdpa(p, mask, bias)
        e = S.rel_err(out[rows], o[rows])
        _record((name, "sdpa", "out"), e)
        assert e <= TOL, f"{name}: out vs SDPA rel err {e:.3g}"
    return out, lse, rows


@pytest.mark.parametrize("name", list(VARIANTS))
@settings(deadline=None, max_examples=15, derandomize=True)
@given(data=st.data())
def test_variant_matches_torch(name, data):
    factory, params_strategy, builder, shape_strategy = VARIANTS[name]
    p = data.draw(S.problems(shape_strategy), label="problem")
    params = data.draw(params_strategy(p.shape), label="params")
    # flex gets the mask either as a block mask or as a score_mod returning -inf
    via_score_mod = data.draw(st.booleans(), label="via_score_mod")
    check_against(name, p, factory(), params, builder(p.shape, params), via_score_mod=via_score_mod)


# --- extra oracles for the variants torch has a native spelling of


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
@settings(deadline=None, max_examples=20, derandomize=True)
@given(p=S.problems())
def test_causal_matches_torch_lower_right_bias(p):
    """torch's own bottom-right causal (CausalBias LOWER_RIGHT) — and, for n_q == n_kv, is_causal."""
    s = p.shape
    out = attnc.reference(_library("causal"), p.q, p.k, p.v)
    rows = torch.arange(s.Nq) + s.off >= 0  # query i keeps key 0 iff 0 <= i + off
    o = F.scaled_dot_product_attention(p.q, p.k, p.v, attn_mask=causal_lower_right(s.Nq, s.Nkv), enable_gqa=s.Hq != s.Hkv)
    e = S.rel_err(out[:, :, rows], o[:, :, rows])
    _record(("causal", "sdpa-lower-right", "out"), e)
    assert e <= TOL
    assert (out[:, :, ~rows] == 0).all()
    if s.Nq == s.Nkv:
        o = F.scaled_dot_product_attention(p.q, p.k, p.v, is_causal=True, enable_gqa=s.Hq != s.Hkv)
        assert S.rel_err(out, o) <= TOL


def test_flex_lse_is_natural_log():
    """Pins the convention the lse comparisons rely on: flex's lse is log_e Σ exp(score)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 5, 8, generator=g, dtype=F64) * 3
    k = torch.randn(1, 2, 7, 8, generator=g, dtype=F64)
    v = torch.randn(1, 2, 7, 4, generator=g, dtype=F64)
    _, aux = flex_attention(q, k, v, return_aux=AuxRequest(lse=True))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    natural = torch.logsumexp(scores, -1)
    assert torch.allclose(aux.lse, natural, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(aux.lse, natural / math.log(2), rtol=1e-3)
    _, lse = attnc.reference(attnc.library_cascade("full"), q, k, v, return_lse=True)
    assert torch.allclose(lse, natural, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("via_score_mod", [False, True])
def test_empty_rows_torch_convention_agrees_where_defined(via_score_mod):
    """Rows with no kept key. attnc: out 0, lse -inf. torch 2.13 (flex eager, SDPA math with a bool
    mask) gives the same; older SDPA gave NaN, which would be "undefined" and is skipped, but any
    other finite value from torch would be a disagreement worth knowing about."""
    shape = S.Shape(2, 4, 2, 6, 4, 8, 5)  # n_q > n_kv: the first two causal rows keep nothing
    q, k, v = S.make_tensors(shape, 11)
    p = S.Problem(shape, q, k, v, 11)
    side = _causal(shape, {})
    out, lse = attnc.reference(_library("causal"), q, k, v, return_lse=True)
    empty = ~dense_mask(side.mask_mod, shape).any(-1)
    assert empty.sum() == 2 * 4 * 2
    assert (out[empty] == 0).all() and (lse[empty] == -math.inf).all()
    f_out, f_lse = run_flex(p, side.mask_mod, via_score_mod=via_score_mod)
    s_out = run_sdpa(p, dense_mask(side.mask_mod, shape))
    for name, t in (("flex out", f_out[empty]), ("flex lse", f_lse[empty]), ("sdpa out", s_out[empty])):
        if torch.isnan(t).any():
            pytest.skip(f"{name}: this torch gives NaN on empty rows (undefined there)")
    assert (f_out[empty] == 0).all() and (s_out[empty] == 0).all()
    assert (f_lse[empty] == -math.inf).all()


# --- natten2d: flex with a mask_mod built from the independent NATTEN reference


@settings(deadline=None, max_examples=15, derandomize=True)
@given(case=S.natten_cases(kernels=(3, 5), dilations=(1, 2, 3), max_extra=3), data=st.data())
def test_natten2d_matches_flex(case, data):
    n = case.height * case.width
    shape = data.draw(S.shapes(min_n=n, max_n=n, equal_n=True, heads=(1, 2), max_batch=1), label="shape")
    p = data.draw(S.problems(st.just(shape)), label="problem")
    keep = S.natten2d_mask(case.height, case.width, case.kernel, case.dilation)
    side = TorchSide(mask_mod=lambda b, h, i, j: keep[i, j])
    params = {"width": case.width, "kernel_h": case.kernel, "kernel_w": case.kernel,
              "dilation_h": case.dilation, "dilation_w": case.dilation}
    _, _, rows = check_against("natten2d", p, _library("natten2d"), params, side)
    assert rows.all()


# --- compositions of library definitions (spec_from_text), against the same torch pieces


COMPOSED = {
    # ALiBi as in the paper: causal + linear bias
    "causal+alibi": ("attention a:\n    mask = causal\n    score = alibi\n", _no_params,
                     lambda s, prm: TorchSide(mask_mod=_causal(s, prm).mask_mod, score_mod=_alibi(s, prm).score_mod,
                                              score_bias=_alibi(s, prm).score_bias)),
    # causal packing of documents
    "document+causal": ("attention a(doc: tensor[B, N_KV] int):\n    mask = document(doc) and causal\n", S.document_params,
                        lambda s, prm: TorchSide(mask_mod=lambda b, h, i, j: _document(s, prm).mask_mod(b, h, i, j) & _causal(s, prm).mask_mod(b, h, i, j))),
    # Gemma 2 local layer: sliding window + softcap
    "sliding_window+softcap": ("attention a(window: int, cap: float):\n    score = softcap(cap)\n    mask = sliding_window(window)\n",
                               lambda s: st.fixed_dictionaries({"window": st.integers(0, s.Nkv + 1), "cap": st.floats(0.1, 30.0)}),
                               lambda s, prm: TorchSide(mask_mod=_sliding_window(s, prm).mask_mod, score_mod=_softcap(s, prm).score_mod, sdpa=False)),
    # Llama-4-style chunked + causal, with a relative bias on top
    "chunked+causal+relative_bias": ("attention a(chunk: int, table: tensor[H, N_Q + N_KV - 1] float):\n"
                                     "    score = relative_bias(table)\n    mask = chunked(chunk) and causal\n",
                                     None,
                                     lambda s, prm: TorchSide(mask_mod=lambda b, h, i, j: _chunked(s, prm).mask_mod(b, h, i, j) & _causal(s, prm).mask_mod(b, h, i, j),
                                                              score_mod=_relative_bias(s, prm).score_mod, score_bias=_relative_bias(s, prm).score_bias)),
}


@st.composite
def _chunk_and_table(draw, s):
    prm = draw(S.chunk_params(s))
    prm.update(draw(S.relative_bias_params(s)))
    return prm


@pytest.mark.parametrize("name", list(COMPOSED))
@settings(deadline=None, max_examples=10, derandomize=True)
@given(data=st.data())
def test_composed_variants_match_torch(name, data):
    text, params_strategy, builder = COMPOSED[name]
    params_strategy = params_strategy or _chunk_and_table
    shape_strategy = S.shapes(nq_le_nkv=True) if "document" in name else S.shapes()
    p = data.draw(S.problems(shape_strategy), label="problem")
    params = data.draw(params_strategy(p.shape), label="params")
    via_score_mod = data.draw(st.booleans(), label="via_score_mod")
    check_against(name, p, _composed_cascade(text), params, builder(p.shape, params), via_score_mod=via_score_mod)
