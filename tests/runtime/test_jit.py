"""``@attnc.jit``: FlexAttention-style Python functions traced to attnc specs.

The mask_mods and score_mods below are written the way attention-gym and the FlexAttention docs
and blog write them, and the same Python functions are handed both to ``attnc.jit`` and to torch's
``flex_attention`` (eager, CPU), which is the oracle:

* float32 kernels (Triton interpreter) vs flex in float32: relative error ≤ 1e-5 (out and lse);
  float16 kernels vs flex in float32 on the same (fp16-rounded) inputs: ≤ 2e-3; and every jit
  callable also agrees with ``attnc.reference(attn.cascade, ...)`` (float64).
* Rows whose mask keeps no key are compared only on attnc's side (out = 0, lse = -inf), as in
  tests/library/test_against_torch.py; with n_q != n_kv flex, like attnc, uses absolute indices.
* Captured tensors become tensor parameters of the cascade. To pass them to ``attnc.reference``
  and to the round-tripped ``attnc.compile(attn.spec_text)`` these tests look them up by name
  (``tensor_params``): the parameter is assumed to be named after the captured Python variable
  (or, when the cascade has a single tensor parameter, it is that one).
* Errors: tracing errors must be ``attnc.SpecError`` naming the offending function and
  ``test_jit.py:<line>`` of the offending statement (found with ``inspect``, not hard-coded).
  Tracing may happen at decoration or at the first call; the error tests allow either.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

import attnc

pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.usefixtures("poison")]

TOL32 = 1e-5
TOL16 = 2e-3
D = 16
THIS_FILE = os.path.basename(__file__)  # test_jit.py

# The library's sigmoid norm (attnc/library/sigmoid.attn): out_i = Σ_j σ(s_ij + bias) v_j, bias = 0.0.
SIGMOID_DEFAULT_BIAS = 0.0


# ============================================================================ the user's functions
#
# Written as attention-gym / the FlexAttention docs write them (module-level constants and
# tensors are "captured": globals, read at call time).

SLIDING_WINDOW = 5
PREFIX_LENGTH = 7
softcap = 5  # the FlexAttention blog's `soft_cap` uses a global int `softcap` (20 there)


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window_causal(b, h, q_idx, kv_idx):
    causal_mask = q_idx >= kv_idx
    window_mask = q_idx - kv_idx <= SLIDING_WINDOW
    return causal_mask & window_mask


def prefix_lm_causal(b, h, q_idx, kv_idx):
    prefix_mask = kv_idx < PREFIX_LENGTH
    causal_mask = q_idx >= kv_idx
    return prefix_mask | causal_mask


# Document masking for packed sequences: document_id[t] is the document of token t.
DOC_LENGTHS = [5, 9, 3, 7]  # 24 tokens
document_id = torch.repeat_interleave(torch.arange(len(DOC_LENGTHS)), torch.tensor(DOC_LENGTHS))


def document_causal_mask(b, h, q_idx, kv_idx):
    causal_mask = q_idx >= kv_idx
    document_mask = document_id[q_idx] == document_id[kv_idx]
    return causal_mask & document_mask


# attention-gym's generate_doc_mask_mod: any mask_mod applied in per-document ("logical")
# coordinates, with closures over the offsets and document ids.
def _offsets_to_doc_ids_tensor(offsets):
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32), counts)


def _length_to_offsets(lengths):
    offsets = [0]
    offsets.extend(lengths)
    offsets = torch.tensor(offsets, dtype=torch.int32)
    return torch.cumsum(offsets, dim=-1)


def generate_doc_mask_mod(mask_mod, offsets):
    document_id = _offsets_to_doc_ids_tensor(offsets)

    def doc_mask_mod(b, h, q_idx, kv_idx):
        same_doc = document_id[q_idx] == document_id[kv_idx]
        q_logical = q_idx - offsets[document_id[q_idx]]
        kv_logical = kv_idx - offsets[document_id[kv_idx]]
        inner_mask = mask_mod(b, h, q_logical, kv_logical)
        return same_doc & inner_mask

    return doc_mask_mod


def generate_sliding_window(window_size):
    def sliding_window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx <= window_size

    def sliding_window_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & sliding_window(b, h, q_idx, kv_idx)

    return sliding_window_causal


# Key padding: per-batch sequence lengths, indexed by b.
seq_lengths = torch.tensor([24, 13])


def padding_mask(b, h, q_idx, kv_idx):
    return kv_idx < seq_lengths[b]


# A mask using % ~ | and an explicit exclusion.
def strided_local(b, h, q_idx, kv_idx):
    causal_mask = q_idx >= kv_idx
    local = q_idx - kv_idx < 4
    strided = (q_idx - kv_idx) % 4 == 0
    return causal_mask & (local | strided) & ~(kv_idx == 1)


# ALiBi as in the FlexAttention blog: per-head slopes captured from the enclosing scope.
H_ALIBI = 4
alibi_slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / H_ALIBI) for i in range(H_ALIBI)])


def alibi(score, b, h, q_idx, kv_idx):
    bias = alibi_slopes[h] * (kv_idx - q_idx)
    return score + bias


# Tanh soft-capping as in the FlexAttention blog.
def soft_cap(score, b, h, q_idx, kv_idx):
    score = score / softcap
    score = torch.tanh(score)
    score = score * softcap
    return score


# Masking inside a score_mod, the way flex users often write it (and test_against_torch.py's
# via_score_mod path): -inf where the mask drops the pair.
def causal_score_mod(score, b, h, q_idx, kv_idx):
    return torch.where(q_idx >= kv_idx, score, -float("inf"))


# Learned relative-position bias table [H, 2N - 1], indexed by head and (shifted) distance.
N_REL = 24
bias_table = torch.randn(2, 2 * N_REL - 1, generator=torch.Generator().manual_seed(7))


def relative_bias(score, b, h, q_idx, kv_idx):
    return score + bias_table[h, q_idx - kv_idx + N_REL - 1]


# Most of the idioms at once: abs, //, clamp, %, where, sigmoid, exp, log, minimum, maximum,
# unary minus, reflected operators, int/float mixing.
def kitchen_sink(score, b, h, q_idx, kv_idx):
    dist = torch.abs(q_idx - kv_idx)
    bucket = torch.clamp(dist // 3, 0, 4)
    parity = (q_idx + kv_idx) % 2
    bonus = torch.where(parity == 0, torch.sigmoid(score), torch.exp(-0.5 * torch.abs(score)))
    damp = torch.log(1.0 + bucket)
    capped = torch.minimum(score, torch.maximum(score * 0.5, score - 1.0))
    return capped + 0.25 * bonus - 0.1 * damp - (h + 1) * 0.05


# Runtime scalar parameters: extra parameters after the standard ones.
def sliding(b, h, q_idx, kv_idx, window: int = 4):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < window)


def prefix_lm(b, h, q_idx, kv_idx, prefix: int = 0):
    return (kv_idx < prefix) | (q_idx >= kv_idx)


def capped(score, b, h, q_idx, kv_idx, cap: float = 20.0):
    return cap * torch.tanh(score / cap)


# A fixed-size buffer of document ids, refilled in place by the property test.
MAX_N = 40
doc_buffer = torch.zeros(MAX_N, dtype=torch.int64)


def buffered_documents(b, h, q_idx, kv_idx):
    return doc_buffer[q_idx] == doc_buffer[kv_idx]


# ============================================================================ helpers


def make_qkv(B, Hq, Hkv, Nq, Nkv, *, seed=0, temperature=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g) * temperature
    k = torch.randn(B, Hkv, Nkv, D, generator=g)
    v = torch.randn(B, Hkv, Nkv, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def dense_keep(mask_mod, B, Hq, Nq, Nkv) -> torch.Tensor:
    """A mask_mod evaluated on broadcast index grids: [B, Hq, Nq, Nkv] bool (all True if None)."""
    if mask_mod is None:
        return torch.ones(B, Hq, Nq, Nkv, dtype=torch.bool)
    b = torch.arange(B).view(-1, 1, 1, 1)
    h = torch.arange(Hq).view(1, -1, 1, 1)
    i = torch.arange(Nq).view(1, 1, -1, 1)
    j = torch.arange(Nkv).view(1, 1, 1, -1)
    return torch.as_tensor(mask_mod(b, h, i, j)).expand(B, Hq, Nq, Nkv)


def run_flex(q, k, v, *, mask_mod=None, score_mod=None, via_score_mod=False, scale=None):
    """flex_attention (eager, CPU): the mask as a block mask, or as a score_mod returning -inf."""
    B, Hq, Nq, _ = q.shape
    Nkv = k.shape[2]
    block_mask = None
    if mask_mod is not None and not via_score_mod:
        block_mask = create_block_mask(mask_mod, B, Hq, Nq, Nkv, device="cpu")
    elif mask_mod is not None:
        inner = score_mod

        def score_mod(score, b, h, q_idx, kv_idx):
            s = score if inner is None else inner(score, b, h, q_idx, kv_idx)
            return torch.where(mask_mod(b, h, q_idx, kv_idx), s, -math.inf)

    out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                              enable_gqa=q.shape[1] != k.shape[1], return_aux=AuxRequest(lse=True))
    return out, aux.lse


def tensor_params(attn, **captured) -> dict:
    """The cascade's tensor parameters bound to captured tensors.

    Assumption (the API does not say how captured tensors are named in the spec): a captured
    tensor becomes a tensor parameter named after its Python variable (or containing it); a
    cascade with a single tensor parameter and a single captured tensor needs no name match.
    """
    names = [p.name for p in attn.cascade.params if p.kind == "tensor"]
    assert len(names) == len(captured), f"tensor parameters {names}, captured {list(captured)}"
    if len(names) == 1:
        return {names[0]: next(iter(captured.values()))}
    bound = {}
    for name in names:
        hits = [var for var in captured if var == name] or [var for var in captured if var in name]
        assert len(hits) == 1, f"cannot tell which captured tensor parameter `{name}` is: {list(captured)}"
        bound[name] = captured[hits[0]]
    return bound


def check_against_flex(attn, *, mask_mod=None, score_mod=None, shape=(1, 2, 2, 24, 24), params=None, captured=None,
                       seed=0, temperature=1.0, via_score_mod=False, fp16=True, reference=True):
    """attn vs flex (fp32 and fp16) and vs attnc.reference; ``mask_mod``/``score_mod`` are the
    torch-side functions (bound to the same parameters as ``params``)."""
    assert isinstance(attn, attnc.Attention)
    params = dict(params or {})
    B, Hq, Hkv, Nq, Nkv = shape
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nkv, seed=seed, temperature=temperature)
    keep = dense_keep(mask_mod, B, Hq, Nq, Nkv)
    rows = keep.any(-1)

    has_lse = attn.cascade.has_lse
    got = attn(q, k, v, return_lse=has_lse, **params)
    out, lse = got if has_lse else (got, None)
    assert out.shape == (B, Hq, Nq, D) and out.dtype == torch.float32
    assert not torch.isnan(out).any()
    f_out, f_lse = run_flex(q, k, v, mask_mod=mask_mod, score_mod=score_mod, via_score_mod=via_score_mod)
    e = rel_err(out[rows], f_out[rows])
    assert e <= TOL32, f"{attn.name}: fp32 out vs flex rel err {e:.3g}"
    assert (out[~rows] == 0).all()
    if has_lse:
        e = rel_err(lse[rows], f_lse[rows])
        assert e <= TOL32, f"{attn.name}: fp32 lse vs flex rel err {e:.3g}"
        assert (lse[~rows] == -math.inf).all()

    if reference:
        ref = attnc.reference(attn.cascade, q.double(), k.double(), v.double(), **params,
                              **tensor_params(attn, **(captured or {})))
        e = rel_err(out, ref)
        assert e <= TOL32, f"{attn.name}: fp32 out vs attnc.reference rel err {e:.3g}"

    if fp16:
        q16, k16, v16 = q.half(), k.half(), v.half()
        out16 = attn(q16, k16, v16, **params)
        assert out16.dtype == torch.float16 and not torch.isnan(out16).any()
        f_out, _ = run_flex(q16.float(), k16.float(), v16.float(), mask_mod=mask_mod, score_mod=score_mod,
                            via_score_mod=via_score_mod)
        e = rel_err(out16[rows], f_out[rows])
        assert e <= TOL16, f"{attn.name}: fp16 out vs flex (fp32) rel err {e:.3g}"
    return out


def line_of(fn, marker: str) -> int:
    """The source line of ``fn`` that contains ``marker`` (exactly one)."""
    lines, start = inspect.getsourcelines(fn)
    hits = [start + n for n, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, f"{marker!r} found {len(hits)} times in {fn.__name__}"
    return hits[0]


def assert_names_line(err: BaseException, line: int) -> None:
    msg = str(err)
    assert re.search(rf"{re.escape(THIS_FILE)}:{line}\b", msg), f"expected {THIS_FILE}:{line} in: {msg}"


def trace(fn, **kwargs):
    """Decorate ``fn`` and call it once (tracing may happen at either point)."""
    attn = attnc.jit(**kwargs)(fn) if kwargs else attnc.jit(fn)
    q, k, v = make_qkv(1, 1, 1, 4, 4)
    attn(q, k, v)
    return attn


# ============================================================================ 1. attention-gym vs flex


def _doc_sliding():
    offsets = _length_to_offsets([6, 10, 8])
    return generate_doc_mask_mod(generate_sliding_window(3), offsets)


# name -> (mask_mod or None, score_mod or None, shape (B, Hq, Hkv, Nq, Nkv), temperature)
GYM = {
    "causal": (causal, None, (1, 2, 2, 24, 24), 1.0),
    "causal_gqa_nq_ne_nkv": (causal, None, (1, 4, 2, 17, 29), 1.0),
    "sliding_window_causal": (sliding_window_causal, None, (1, 2, 1, 33, 33), 1.0),
    "prefix_lm_causal": (prefix_lm_causal, None, (1, 2, 2, 24, 24), 1.0),
    "document_causal_mask": (document_causal_mask, None, (1, 2, 2, 24, 24), 1.0),
    "doc_sliding_window": (_doc_sliding, None, (1, 2, 2, 24, 24), 1.0),
    "padding_mask": (padding_mask, None, (2, 2, 2, 20, 24), 1.0),
    "strided_local": (strided_local, None, (1, 2, 2, 24, 24), 1.0),
    "alibi": (None, alibi, (1, 4, 2, 24, 24), 1.0),
    "soft_cap": (None, soft_cap, (1, 2, 2, 24, 24), 6.0),
    "causal_score_mod": (None, causal_score_mod, (1, 2, 2, 24, 24), 1.0),
    "relative_bias": (None, relative_bias, (1, 2, 2, 24, 24), 1.0),
    "kitchen_sink": (None, kitchen_sink, (2, 2, 1, 21, 19), 2.0),
}


def _captured_for(name):
    return {"document_causal_mask": {"document_id": document_id},
            "padding_mask": {"seq_lengths": seq_lengths},
            "alibi": {"alibi_slopes": alibi_slopes},
            "relative_bias": {"bias_table": bias_table}}.get(name, {})


@pytest.mark.parametrize("name", list(GYM))
def test_gym_function_matches_flex(name):
    mask_mod, score_mod, shape, temperature = GYM[name]
    if mask_mod is _doc_sliding:
        mask_mod = _doc_sliding()  # closures over offsets/document_id, built like attention-gym
        captured = dict(zip(("document_id", "offsets"), _closure_tensors(mask_mod)))
    else:
        captured = _captured_for(name)
    attn = attnc.jit(mask_mod if mask_mod is not None else score_mod)
    check_against_flex(attn, mask_mod=mask_mod, score_mod=score_mod, shape=shape, captured=captured,
                       temperature=temperature)


def _closure_tensors(fn):
    """document_id and offsets from generate_doc_mask_mod's closure, in that order."""
    cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
    return cells["document_id"], cells["offsets"]


def test_softcap_score_mod_with_causal_mask_mod():
    """Gemma-2 style: soft-cap score_mod + causal mask_mod, the mask given as keyword."""
    attn = attnc.jit(mask_mod=causal)(soft_cap)
    check_against_flex(attn, mask_mod=causal, score_mod=soft_cap, shape=(1, 2, 1, 24, 24), temperature=6.0)


def test_mask_mod_decorated_with_score_mod_keyword_and_name():
    """The other way round: a mask_mod decorated, its score_mod given as keyword; `name=`."""

    @attnc.jit(score_mod=alibi, name="alibi_window")
    def window_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= SLIDING_WINDOW)

    assert isinstance(window_causal, attnc.Attention)
    assert window_causal.name == "alibi_window"
    check_against_flex(window_causal, mask_mod=lambda b, h, q_idx, kv_idx: (q_idx >= kv_idx) & (q_idx - kv_idx <= 5),
                       score_mod=alibi, shape=(1, 4, 4, 24, 24), captured={"alibi_slopes": alibi_slopes},
                       via_score_mod=True)


def test_bare_decorator_closure_constants_gqa_scale_and_lse():
    """`@attnc.jit` bare, on a function closing over local Python constants; scale= override."""
    window, sink = 6, 2

    @attnc.jit
    def sink_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & ((q_idx - kv_idx < window) | (kv_idx < sink))

    def oracle(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & ((q_idx - kv_idx < window) | (kv_idx < sink))

    assert isinstance(sink_window, attnc.Attention)
    q, k, v = make_qkv(1, 4, 1, 22, 22, seed=3)
    out, lse = sink_window(q, k, v, scale=0.3, return_lse=True)
    f_out, f_lse = run_flex(q, k, v, mask_mod=oracle, scale=0.3)
    assert rel_err(out, f_out) <= TOL32
    assert rel_err(lse, f_lse) <= TOL32


# ---------------------------------------------------------------------------- as Flex calls them (issue 18)
# FlexAttention passes a score_mod's and a mask_mod's arguments by position, so their names are the
# user's; torch's own and_masks / or_masks / noop_mask start from `b.new_ones(())`.
from torch.nn.attention.flex_attention import and_masks, noop_mask, or_masks  # noqa: E402


def _score_any_names(qk, bb, hh, qi, ki):
    return qk * 0.5 + torch.where(qi >= ki, (qi - ki) * 0.03, -0.2)


def _window3(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() <= 3


def _diag_blocks(b, h, q_idx, kv_idx):
    return q_idx // 8 == kv_idx // 8


def _morton_xy(z):  # a Z-order index → its 2-D coordinates (3 bits each), as a Morton NATTEN writes it
    return ((z & 1) | ((z >> 1) & 2) | ((z >> 2) & 4), ((z >> 1) & 1) | ((z >> 2) & 2) | ((z >> 3) & 4))


def _natten_morton(b, h, q_idx, kv_idx):
    (qx, qy), (kx, ky) = _morton_xy(q_idx), _morton_xy(kv_idx)
    return ((qx - kx).abs() <= 1) & ((qy - ky).abs() <= 2) | (q_idx ^ kv_idx == 0)


def _bitwise_score(score, b, h, q_idx, kv_idx):
    bits = (q_idx ^ kv_idx) % 5 - (~kv_idx & 3) + torch.bitwise_left_shift(1, h) + (q_idx << 2) * kv_idx.bitwise_and(1)
    return score + bits * 0.05 + torch.where(torch.logical_xor(q_idx > kv_idx, (q_idx | kv_idx) > 7), 0.2, 0.0) \
        + (torch.bitwise_right_shift(q_idx, kv_idx % 7) & 1)


FLEX_FORMS = {
    "score_mod with its own names": (None, _score_any_names),
    "lambda score_mod": (None, lambda s, b, h, q, k: s * 0.8 + torch.where(q > k, 0.1, 0.0)),
    "and_masks": (and_masks(causal, _window3), None),
    "or_masks": (or_masks(_window3, _diag_blocks), None),
    "nested combinators": (and_masks(or_masks(_window3, _diag_blocks), causal), None),
    "noop_mask": (noop_mask, None),
    "partial mask_mod": (functools.partial(sliding, window=5), None),
    "bitwise: Morton-order NATTEN": (_natten_morton, None),
    "bitwise: integer score terms": (None, _bitwise_score),
}


@pytest.mark.parametrize("form", list(FLEX_FORMS))
def test_flex_calling_conventions_and_combinators_match_flex(form):
    mask_mod, score_mod = FLEX_FORMS[form]
    attn = attnc.jit(mask_mod if mask_mod is not None else score_mod)
    check_against_flex(attn, mask_mod=mask_mod, score_mod=score_mod, shape=(1, 2, 1, 20, 24))
    # gradients of q, k, v against torch's autograd through flex's semantics, computed densely in
    # float64 from the same functions on index tensors (flex has no CPU backward)
    q, k, v = make_qkv(1, 2, 1, 20, 24, seed=3)
    w = torch.randn(1, 2, 20, D, generator=torch.Generator().manual_seed(4))
    x32 = [t.clone().requires_grad_() for t in (q, k, v)]
    x64 = [t.double().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad((attn(*x32) * w).sum(), x32)
    want = torch.autograd.grad((_dense_flex(*x64, mask_mod, score_mod) * w.double()).sum(), x64)
    for name, g, f in zip("qkv", grads, want):
        assert rel_err(g.double(), f) <= 1e-4, f"{form}: d{name} vs dense autograd rel err {rel_err(g.double(), f):.3g}"


def _dense_flex(q, k, v, mask_mod, score_mod):
    """FlexAttention's definition, materialized: the functions called once on broadcast index tensors."""
    B, Hq, Nq, _ = q.shape
    k, v = (t.repeat_interleave(Hq // t.shape[1], dim=1) for t in (k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    idx = (torch.arange(B).view(-1, 1, 1, 1), torch.arange(Hq).view(1, -1, 1, 1),
           torch.arange(Nq).view(1, 1, -1, 1), torch.arange(k.shape[2]).view(1, 1, 1, -1))
    if score_mod is not None:
        s = score_mod(s, *idx)
    if mask_mod is not None:
        s = s.masked_fill(~torch.as_tensor(mask_mod(*idx)).expand(s.shape), -math.inf)
    return torch.softmax(s, dim=-1) @ v


_BIAS4 = torch.randn(1, 2, 20, 24, generator=torch.Generator().manual_seed(11))
_TABLE2 = torch.randn(2, 48, generator=torch.Generator().manual_seed(12))
_IDS2 = torch.arange(20 * 24).view(20, 24) % 5


def _bias_in_steps(score, b, h, q_idx, kv_idx):
    return score + _BIAS4[b][h][q_idx][kv_idx]


def _bias_in_two_groups(score, b, h, q_idx, kv_idx):
    return score + _BIAS4[b, h][q_idx, kv_idx] - _TABLE2[h][q_idx - kv_idx + 23]


def _ids_partial_mask(b, h, q_idx, kv_idx):
    return _IDS2[q_idx][kv_idx] != 3


@pytest.mark.parametrize("fn", [_bias_in_steps, _bias_in_two_groups, _ids_partial_mask], ids=lambda f: f.__name__)
def test_captured_tensors_indexed_in_steps_match_flex(fn):
    role = "mask" if fn is _ids_partial_mask else "score"
    attn = attnc.jit(fn)
    # the test helpers build the dense mask on broadcast index tensors, where `t[q][kv]` means
    # something else than flex's per-pair `t[q][kv]`: the oracle gets the one-step spelling
    kw = {"mask_mod": lambda b, h, q_idx, kv_idx: _IDS2[q_idx, kv_idx] != 3} if role == "mask" else {"score_mod": fn}
    check_against_flex(attn, shape=(1, 2, 1, 20, 24), reference=False, **kw)
    # one tensor parameter per captured tensor, however many steps index it
    assert len([p for p in attn.cascade.params if p.kind == "tensor"]) == (2 if fn is _bias_in_two_groups else 1)


def test_zero_dim_captured_tensors_are_runtime_values_with_gradients():
    offset = torch.tensor(2)
    temperature = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    t32 = temperature.detach().float().requires_grad_()

    def shifted(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    def tempered(score, b, h, q_idx, kv_idx):
        return score * t32 + torch.where(q_idx > kv_idx, t32, 0.0)

    attn = attnc.jit(tempered, mask_mod=shifted)
    q, k, v = make_qkv(1, 2, 1, 12, 16, seed=5)
    dense = lambda t: _dense_flex(q.double(), k.double(), v.double(), shifted,  # noqa: E731
                                  lambda s, b, h, qi, ki: s * t + torch.where(qi > ki, t, 0.0))
    out = attn(q, k, v)
    assert rel_err(out.detach().double(), dense(temperature).detach()) <= 1e-5
    (g,) = torch.autograd.grad(out.sum(), t32)
    (want,) = torch.autograd.grad(dense(temperature).sum(), temperature)
    assert abs(g.item() - want.item()) <= 1e-4 * max(1.0, abs(want.item()))
    # changed in place: read at the next call, no new kernel
    builds = attnc.compile_count()
    with torch.no_grad():
        t32.fill_(1.3)
        offset.fill_(0)
    out = attn(q, k, v).detach()
    assert attnc.compile_count() == builds
    def expected(shift):
        return _dense_flex(q.double(), k.double(), v.double(), lambda b, h, qi, ki: ki <= qi + shift,
                           lambda s, b, h, qi, ki: s * 1.3 + torch.where(qi > ki, 1.3, 0.0))
    assert rel_err(out.double(), expected(0)) <= 1e-5
    assert rel_err(out.double(), expected(2)) > 1e-3  # the offset it was traced with is not baked in


_MEANS = torch.randn(24, 3, generator=torch.Generator().manual_seed(13))
_ROPE = torch.randn(1, 2, 24, 4, generator=torch.Generator().manual_seed(14))
_W2 = torch.rand(2, generator=torch.Generator().manual_seed(15))

TRAILING = {  # reductions over a captured tensor's last dimension, as attention-gym and Flex tests write them
    "distance": lambda score, b, h, q_idx, kv_idx: score - (_MEANS[q_idx] - _MEANS[kv_idx]).pow(2).sum(-1).sqrt(),
    "torch.dot": lambda score, b, h, q_idx, kv_idx: score + torch.dot(_ROPE[b, h, q_idx], _ROPE[b, h, kv_idx]),
    "norm(dim=-1)": lambda score, b, h, q_idx, kv_idx: score - (_MEANS[q_idx] - _MEANS[kv_idx]).norm(dim=-1),
    "vector_norm": lambda score, b, h, q_idx, kv_idx: score - torch.linalg.vector_norm(_MEANS[q_idx], dim=-1),
    "weighted": lambda score, b, h, q_idx, kv_idx: score + (_W2[h] * _MEANS[q_idx] * _MEANS[kv_idx]).sum(-1),
    "elementwise exp": lambda score, b, h, q_idx, kv_idx: score + torch.exp(-_MEANS[q_idx].abs()).sum(),
}


@pytest.mark.parametrize("form", list(TRAILING))
def test_reductions_over_a_trailing_dimension_match_flex(form):
    fn = TRAILING[form]
    check_against_flex(attnc.jit(fn), score_mod=fn, shape=(1, 2, 1, 20, 24), reference=False)


def test_gradients_through_a_trailing_dimension_reduction():
    means = _MEANS.clone().requires_grad_()

    def dist(score, b, h, q_idx, kv_idx):  # (+ 1: sqrt has no derivative at a zero distance)
        return score - ((means[q_idx] - means[kv_idx]).pow(2).sum(-1) + 1.0).sqrt()

    attn = attnc.jit(dist)
    q, k, v = make_qkv(1, 2, 1, 20, 24, seed=6)
    x32 = [t.clone().requires_grad_() for t in (q, k, v)] + [means]
    x64 = [t.double().requires_grad_() for t in (q, k, v, _MEANS)]
    grads = torch.autograd.grad(attn(*x32[:3]).pow(2).sum(), x32)
    dense = _dense_flex(*x64[:3], None, lambda s, b, h, qi, ki: s - ((x64[3][qi] - x64[3][ki]).pow(2).sum(-1) + 1.0).sqrt())
    want = torch.autograd.grad(dense.pow(2).sum(), x64)
    for name, g, f in zip(("q", "k", "v", "means"), grads, want):
        assert rel_err(g.double(), f) <= 1e-4, f"d{name} vs dense autograd rel err {rel_err(g.double(), f):.3g}"


def test_an_error_inside_a_torch_function_names_it_at_the_users_line():
    import torch.nn.functional as F

    def dropped(score, b, h, q_idx, kv_idx):
        return F.dropout(score, 0.1)  # MARK
    with pytest.raises(attnc.SpecError, match=r"inside torch's `dropout` \(torch/nn/functional.py\), called here: "
                                              r"`torch.dropout` has no spec meaning") as err:
        trace(dropped)
    assert_names_line(err.value, line_of(dropped, "MARK"))


_EMB = torch.randn(24, 4, generator=torch.Generator().manual_seed(16))
_NEG = torch.tensor(-float("inf"))

FLEX_SEMANTICS = {  # forms whose meaning Flex gives per pair, each once wrong or refused in the tracer
    "-inf in a 0-d tensor masks": (lambda score, b, h, q_idx, kv_idx: torch.where(q_idx >= kv_idx + 4, score, _NEG)),
    "constant negative index": (lambda score, b, h, q_idx, kv_idx: score * _EMB[kv_idx][-1]),
    "unpacked vector": (lambda score, b, h, q_idx, kv_idx: score + sum(_EMB[q_idx]) * 0.1),
    "2 ** vector": (lambda score, b, h, q_idx, kv_idx: score + (2 ** _EMB[q_idx]).sum(-1) * 0.1),
    "vector @ vector": (lambda score, b, h, q_idx, kv_idx: score + _EMB[q_idx] @ _EMB[kv_idx]),
    "torch.mul(number, vector)": (lambda score, b, h, q_idx, kv_idx: torch.mul(score, _EMB[q_idx]).sum(-1)),
    "sum of one number": (lambda score, b, h, q_idx, kv_idx: score + _EMB[q_idx, 0].sum()),
    "logical_and of a condition and an int": (lambda score, b, h, q_idx, kv_idx: torch.where(
        torch.logical_and(kv_idx <= q_idx, kv_idx % 3), score, score * 0.5)),
    "bitwise method with other=": (lambda score, b, h, q_idx, kv_idx: score + q_idx.bitwise_and(other=kv_idx) * 0.1),
}


@pytest.mark.parametrize("form", list(FLEX_SEMANTICS))
def test_flex_per_pair_semantics(form):
    fn = FLEX_SEMANTICS[form]
    q, k, v = make_qkv(1, 2, 1, 20, 24, seed=9)
    out = attnc.jit(fn)(q, k, v)
    want, lse = flex_attention(q, k, v, score_mod=fn, enable_gqa=True, return_aux=AuxRequest(lse=True))
    assert rel_err(out, want) <= TOL32, f"{form}: rel err {rel_err(out, want):.3g}"


def test_the_norm_of_a_zero_difference_has_torchs_gradient():
    """torch's norm has gradient 0 at the zero vector (q_idx == kv_idx here); sqrt's would be NaN."""
    pos = _EMB.clone().requires_grad_()

    def dist(score, b, h, q_idx, kv_idx):
        return score - (pos[q_idx] - pos[kv_idx]).norm(dim=-1)

    q, k, v = make_qkv(1, 2, 1, 20, 24, seed=10)
    (g,) = torch.autograd.grad(attnc.jit(dist)(q, k, v).sum(), pos)
    p64 = _EMB.double().requires_grad_()
    dense = _dense_flex(q.double(), k.double(), v.double(), None,
                        lambda s, b, h, qi, ki: s - (p64[qi] - p64[ki]).norm(dim=-1))
    (want,) = torch.autograd.grad(dense.sum(), p64)
    assert torch.isfinite(g).all() and rel_err(g.double(), want) <= 1e-4


def test_refused_or_checked_by_the_tracer():
    def out_of_range(score, b, h, q_idx, kv_idx):
        return score * _EMB[kv_idx][7]  # MARK
    with pytest.raises(attnc.SpecError, match=r"index 7 is out of range for dimension 1") as err:
        trace(out_of_range)
    assert_names_line(err.value, line_of(out_of_range, "MARK"))

    class Clip(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return g.clamp(-1, 1)

    def on_a_vector(score, b, h, q_idx, kv_idx):
        return score + Clip.apply(_EMB[q_idx]).sum(-1)
    with pytest.raises(attnc.SpecError, match=r"`Clip.apply\(...\)`"):
        trace(on_a_vector)

    log_t = torch.tensor(0.3, requires_grad=True)

    def computed(score, b, h, q_idx, kv_idx):
        return score * log_t.exp()  # MARK
    with pytest.raises(attnc.SpecError, match=r"computed inside the function from one that requires grad") as err:
        trace(computed)
    assert_names_line(err.value, line_of(computed, "MARK"))


def test_annotated_standard_arguments_keep_their_role():
    def m(b: int, h: int, q_idx: int, kv_idx: int) -> bool:
        return q_idx >= kv_idx

    def s(score: float, b: int, h: int, q_idx: int, kv_idx: int) -> float:
        return score * 0.5

    from attnc.dsl.trace import role_of
    assert (role_of(m), role_of(s)) == ("mask", "score")
    check_against_flex(attnc.jit(s, mask_mod=m), mask_mod=m, score_mod=s, shape=(1, 2, 2, 12, 12), reference=False)


def test_a_partly_indexed_tensor_used_as_a_value_says_what_is_missing():
    def bad(score, b, h, q_idx, kv_idx):
        return score + _BIAS4[b, h]  # MARK
    with pytest.raises(attnc.SpecError, match=r"indexed in 2 of its 4 dimensions is used as a value") as err:
        trace(bad)
    assert_names_line(err.value, line_of(bad, "MARK"))


def test_a_combinator_over_sizes_other_than_a_scalar_says_what_it_made():
    def bad(b, h, q_idx, kv_idx):
        return b.new_ones((2,), dtype=torch.bool) & (q_idx >= kv_idx)  # MARK
    with pytest.raises(attnc.SpecError, match=r"new_ones\(\(2,\)\)` makes a tensor of several numbers") as err:
        trace(bad)
    assert_names_line(err.value, line_of(bad, "MARK"))


def test_an_autograd_function_in_a_score_mod_is_refused_at_its_line():
    class Straight(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):  # not the derivative of the forward: attnc could not honour it
            return g

    def scored(score, b, h, q_idx, kv_idx):
        return Straight.apply(score)  # MARK
    with pytest.raises(attnc.SpecError, match=r"`Straight.apply\(...\)`: a torch.autograd.Function's own backward") as err:
        trace(scored)
    assert_names_line(err.value, line_of(scored, "MARK"))
    x = torch.ones(3, requires_grad=True)  # outside a trace, Function.apply is torch's own again
    Straight.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def test_a_mask_mod_extra_without_annotation_is_asked_for_one():
    def windowed(b, h, q_idx, kv_idx, window):  # MARK
        return q_idx - kv_idx <= window
    with pytest.raises(attnc.SpecError, match="extra parameter `window` needs an int/float/bool annotation"):
        trace(windowed)


# ============================================================================ 2. random layouts (hypothesis)


@st.composite
def layouts(draw):
    Hq, Hkv = draw(st.sampled_from([(2, 2), (2, 1)]))  # GQA 4:2 and 4:1 are in the fixed cases
    B = draw(st.integers(1, 2))
    nkv = draw(st.integers(1, MAX_N))
    nq = draw(st.one_of(st.just(nkv), st.integers(1, MAX_N)))
    return (B, Hq, Hkv, nq, nkv)


@functools.lru_cache(maxsize=None)
def _jitted(name):
    """One traced callable per test function (tracing is not what these tests vary)."""
    return {"sliding": lambda: attnc.jit(sliding), "prefix_lm": lambda: attnc.jit(prefix_lm),
            "buffered_documents": lambda: attnc.jit(buffered_documents)}[name]()


@settings(max_examples=6, deadline=None)
@given(shape=layouts(), data=st.data(), seed=st.integers(0, 2**16), via_score_mod=st.booleans())
def test_random_windows_match_flex(shape, data, seed, via_score_mod):
    window = data.draw(st.integers(0, shape[4] + 2), label="window")
    check_against_flex(_jitted("sliding"), mask_mod=functools.partial(sliding, window=window), shape=shape,
                       params={"window": window}, seed=seed, via_score_mod=via_score_mod, fp16=False)


@settings(max_examples=6, deadline=None)
@given(shape=layouts(), data=st.data(), seed=st.integers(0, 2**16), via_score_mod=st.booleans())
def test_random_prefixes_match_flex(shape, data, seed, via_score_mod):
    prefix = data.draw(st.integers(0, shape[4] + 2), label="prefix")
    check_against_flex(_jitted("prefix_lm"), mask_mod=functools.partial(prefix_lm, prefix=prefix), shape=shape,
                       params={"prefix": prefix}, seed=seed, via_score_mod=via_score_mod, fp16=False)


@settings(max_examples=6, deadline=None)
@given(shape=layouts(), lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8), seed=st.integers(0, 2**16),
       via_score_mod=st.booleans())
def test_random_document_layouts_match_flex(shape, lengths, seed, via_score_mod):
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[:MAX_N]
    doc_buffer.fill_(len(lengths))  # tokens past the packed documents: one more document
    doc_buffer[: len(ids)] = ids
    check_against_flex(_jitted("buffered_documents"), mask_mod=buffered_documents, shape=shape,
                       captured={"doc_buffer": doc_buffer}, seed=seed, via_score_mod=via_score_mod, fp16=False)


# ============================================================================ 3. captured tensors updated in place


def test_captured_tensor_updated_in_place_without_recompiling():
    ids = torch.zeros(24, dtype=torch.int64)

    def doc(b, h, q_idx, kv_idx):
        return ids[q_idx] == ids[kv_idx]

    attn = attnc.jit(doc)
    ids[:] = torch.repeat_interleave(torch.arange(3), torch.tensor([8, 8, 8]))
    first = check_against_flex(attn, mask_mod=doc, captured={"ids": ids}, fp16=False)
    builds = attnc.compile_count()

    ids[:] = torch.repeat_interleave(torch.arange(4), torch.tensor([3, 11, 2, 8]))  # in place
    second = check_against_flex(attn, mask_mod=doc, captured={"ids": ids}, fp16=False)
    assert attnc.compile_count() == builds
    assert not torch.equal(first, second)


def test_captured_float_tensor_updated_in_place():
    slopes = torch.tensor([0.5, 0.25])

    def alibi_local(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    attn = attnc.jit(alibi_local)
    first = check_against_flex(attn, score_mod=alibi_local, captured={"slopes": slopes}, fp16=False)
    builds = attnc.compile_count()
    slopes.mul_(-3.0)
    second = check_against_flex(attn, score_mod=alibi_local, captured={"slopes": slopes}, fp16=False)
    assert attnc.compile_count() == builds
    assert not torch.allclose(first, second)


# ============================================================================ 4. runtime scalar parameters


def test_runtime_int_parameter_default_override_no_recompile():
    attn = attnc.jit(sliding)
    assert "window" in {p.name for p in attn.cascade.params}
    default = check_against_flex(attn, mask_mod=sliding, fp16=False)  # window=4, the Python default
    builds = attnc.compile_count()
    wider = check_against_flex(attn, mask_mod=functools.partial(sliding, window=9), params={"window": 9}, fp16=False)
    assert attnc.compile_count() == builds
    assert not torch.equal(default, wider)
    q, k, v = make_qkv(1, 2, 2, 24, 24)
    assert torch.equal(attn(q, k, v), attn(q, k, v, window=4))
    with pytest.raises(TypeError):
        attn(q, k, v, windw=3)


def test_runtime_params_of_both_roles():
    """A score_mod with a float parameter, decorated with a mask_mod that has an int parameter."""
    attn = attnc.jit(mask_mod=sliding)(capped)
    assert {"window", "cap"} <= {p.name for p in attn.cascade.params}
    check_against_flex(attn, mask_mod=sliding, score_mod=capped, temperature=4.0, fp16=False)
    builds = attnc.compile_count()
    check_against_flex(attn, mask_mod=functools.partial(sliding, window=7), score_mod=functools.partial(capped, cap=1.5),
                       params={"window": 7, "cap": 1.5}, temperature=4.0, fp16=False)
    assert attnc.compile_count() == builds


# ============================================================================ 5. other norms


def _dense_scores(q, k, v, score_mod, mask_mod):
    """float64 s' = score_mod(scale q·k) and the keep mask, by broadcasting the Python functions."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, Nq, Dq = q.shape
    Hkv, Nkv = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(Dq)
    b = torch.arange(B).view(-1, 1, 1, 1)
    h = torch.arange(Hq).view(1, -1, 1, 1)
    i = torch.arange(Nq).view(1, 1, -1, 1)
    j = torch.arange(Nkv).view(1, 1, 1, -1)
    s = score_mod(s, b, h, i, j) if score_mod is not None else s
    return s, dense_keep(mask_mod, B, Hq, Nq, Nkv), v


def test_sigmoid_norm_with_score_mod():
    """out = Σ_j σ(s'_ij + bias) v_j over kept keys, bias = the library default."""
    attn = attnc.jit(norm="sigmoid", mask_mod=causal)(alibi)
    q, k, v = make_qkv(1, 4, 2, 20, 20, seed=5)
    s, keep, v64 = _dense_scores(q, k, v, alibi, causal)
    want = (torch.sigmoid(s + SIGMOID_DEFAULT_BIAS) * keep) @ v64
    out = attn(q, k, v)
    assert rel_err(out, want) <= TOL32
    out16 = attn(q.half(), k.half(), v.half())
    s, keep, v64 = _dense_scores(q.half(), k.half(), v.half(), alibi, causal)
    assert rel_err(out16, (torch.sigmoid(s + SIGMOID_DEFAULT_BIAS) * keep) @ v64) <= TOL16
    ref = attnc.reference(attn.cascade, q.double(), k.double(), v.double(), **tensor_params(attn, alibi_slopes=alibi_slopes))
    assert rel_err(out, ref) <= TOL32


def test_sigmoid_norm_score_mod_only():
    attn = attnc.jit(norm="sigmoid")(soft_cap)
    q, k, v = make_qkv(2, 2, 2, 18, 23, seed=6, temperature=6.0)
    s, keep, v64 = _dense_scores(q, k, v, soft_cap, None)
    assert rel_err(attn(q, k, v), torch.sigmoid(s + SIGMOID_DEFAULT_BIAS) @ v64) <= TOL32


# Assumption: `norm=` spec text is a whole `norm NAME:` definition, as in a spec file.
RELU_SQUARED = """norm relu_squared:
    out[i] = sum(relu(s[i, j]) ** 2 * v[j] for j) / n_kv
"""


def test_norm_given_as_spec_text():
    attn = attnc.jit(norm=RELU_SQUARED)(causal)
    q, k, v = make_qkv(1, 2, 2, 20, 20, seed=8)
    s, keep, v64 = _dense_scores(q, k, v, None, causal)
    want = (torch.relu(s) ** 2 * keep) @ v64 / 20
    assert rel_err(attn(q, k, v), want) <= TOL32


# ============================================================================ 6. errors


def bad_if(b, h, q_idx, kv_idx):
    if q_idx > kv_idx:
        return q_idx - kv_idx < 3
    return q_idx == kv_idx


def bad_and(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx and q_idx - kv_idx < 3


def bad_math_exp(score, b, h, q_idx, kv_idx):
    scaled = score * 0.5
    return math.exp(scaled)


def bad_sort(score, b, h, q_idx, kv_idx):
    bias = q_idx - kv_idx
    ranked = torch.sort(score)
    return ranked.values + bias


def not_a_mask(b, h, q_idx, kv_idx):
    offset = q_idx + 1
    return offset - kv_idx


# fn -> (marker of the offending line, a word the message must contain besides name and line)
TRACING_ERRORS = {
    bad_if: ("if q_idx > kv_idx:", None),
    bad_and: ("q_idx >= kv_idx and", None),
    bad_math_exp: ("math.exp(scaled)", None),
    bad_sort: ("torch.sort(score)", "sort"),
    not_a_mask: ("return offset - kv_idx", "bool"),
}


@pytest.mark.parametrize("fn", list(TRACING_ERRORS), ids=lambda f: f.__name__)
def test_tracing_error_names_function_and_line(fn):
    marker, word = TRACING_ERRORS[fn]
    with pytest.raises(attnc.SpecError) as info:
        trace(fn)
    msg = str(info.value)
    assert fn.__name__ in msg, msg
    assert_names_line(info.value, line_of(fn, marker))
    if word is not None:
        assert word in msg.lower(), msg


def test_tracing_error_in_keyword_role_names_that_function():
    """The bad function is the mask_mod given as keyword; the decorated score_mod is fine."""
    with pytest.raises(attnc.SpecError) as info:
        trace(soft_cap, mask_mod=bad_if)
    assert "bad_if" in str(info.value)
    assert_names_line(info.value, line_of(bad_if, "if q_idx > kv_idx:"))


def three_params(q_idx, kv_idx, h):
    return q_idx >= kv_idx


def no_params():
    return True


@pytest.mark.parametrize("fn", [three_params, no_params], ids=lambda f: f.__name__)
def test_wrong_signature(fn):
    with pytest.raises((attnc.SpecError, TypeError)) as info:
        trace(fn)
    assert fn.__name__ in str(info.value)


def test_wrong_signature_in_keyword_role():
    with pytest.raises((attnc.SpecError, TypeError)) as info:
        trace(soft_cap, mask_mod=three_params)
    assert "three_params" in str(info.value)


def test_jit_rejects_non_callables_and_unknown_norm():
    with pytest.raises((attnc.SpecError, TypeError)):
        attnc.jit(42)
    with pytest.raises(attnc.SpecError):
        trace(causal, norm="softmaks")


# ============================================================================ 7. spec_text round trip


ROUND_TRIP = {
    "causal": (lambda: attnc.jit(causal), {}, {}),
    "sliding(window=7)": (lambda: attnc.jit(sliding), {"window": 7}, {}),
    "kitchen_sink": (lambda: attnc.jit(kitchen_sink), {}, {}),
    "alibi+causal": (lambda: attnc.jit(mask_mod=causal)(alibi), {}, {"alibi_slopes": alibi_slopes}),
    "document": (lambda: attnc.jit(document_causal_mask), {}, {"document_id": document_id}),
    "sigmoid+softcap": (lambda: attnc.jit(norm="sigmoid", mask_mod=sliding)(capped), {"window": 5, "cap": 2.0}, {}),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_spec_text_round_trip(name):
    make, params, captured = ROUND_TRIP[name]
    attn = make()
    text = attn.spec_text
    assert isinstance(text, str) and "\n" in text
    again = attnc.compile(text)
    assert {p.name for p in again.cascade.params} == {p.name for p in attn.cascade.params}
    q, k, v = make_qkv(1, 4, 2, 16, 24, seed=11)
    tensors = tensor_params(attn, **captured)
    assert torch.equal(attn(q, k, v, **params), again(q, k, v, **params, **tensors))


def test_tracing_works_under_a_profiler():
    # tracing must neither need nor disturb sys.setprofile (cProfile installs a non-callable)
    import cProfile

    def causal_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    prof = cProfile.Profile()
    attn = prof.runcall(attnc.jit, causal_mod)
    assert "q_idx >= kv_idx" in attn.spec_text


def activations(score, b, h, q_idx, kv_idx):
    """torch's activations and special functions, each a row of attnc's function table."""
    import torch.nn.functional as F

    a = F.elu(score) + F.silu(score) - F.gelu(score) + F.gelu(score, approximate="tanh")
    a = a + F.logsigmoid(score) + torch.erf(score) + torch.special.expm1(score * 0.5) + score.sign() * 0.1
    return a + torch.tan(torch.tanh(score)) + F.relu(score) + torch.special.expit(score)


def test_activations_trace_to_the_function_table():
    attn = attnc.jit(mask_mod=causal)(activations)
    text = attnc.explain(attn.cascade) if hasattr(attnc, "explain") else ""
    q, k, v = make_qkv(1, 2, 1, 17, 17, seed=9)
    s, keep, v64 = _dense_scores(q, k, v, activations, causal)
    want = torch.softmax(s.masked_fill(~keep, -math.inf), -1) @ v64
    assert rel_err(attn(q, k, v), want) <= TOL32, text


def test_an_activation_with_other_arguments_is_refused_by_name():
    import torch.nn.functional as F

    with pytest.raises(attnc.SpecError, match="gelu"):
        attnc.jit(lambda score, b, h, q_idx, kv_idx: F.gelu(score, approximate="cubic"))
    with pytest.raises(attnc.SpecError, match="elu"):
        attnc.jit(lambda score, b, h, q_idx, kv_idx: F.elu(score, alpha=2.0))
