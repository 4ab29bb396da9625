"""Shared hypothesis strategies (and small independent helpers) for tests/library and tests/runtime.

Nothing here imports attnc: the helpers are written from the formulas in the library's spec
comments and from the papers/NATTEN sources they cite, so they can serve as independent oracles.

* ``shapes``      — attention problem sizes: B 1–2, Hq ∈ {1, 2, 4} with Hkv | Hq (GQA/MQA),
                    Nq, Nkv 1–24 (often different), D ∈ {8, 16}, Dv sometimes ≠ D.
* ``problems``    — a ``Problem``: sizes plus float64 q, k, v drawn from a seeded generator.
* ``*_params``    — parameter dictionaries for the library variants, drawn relative to a shape.
* ``natten_*``    — an independent NATTEN window reference (explicit loops over NATTEN's own
                    ``get_window_start``) and a strategy for valid 2-D NATTEN problems; an N-D
                    brute force from NATTEN's definition (per-axis windows with dilation groups,
                    even kernels and causal axes: ``natten_axis_allowed``, ``natten_nd_mask``) and
                    strategies for 1-D/2-D/3-D cases (``natten_nd_cases``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

F64 = torch.float64


# ----------------------------------------------------------------------------- shapes / tensors


@dataclass(frozen=True)
class Shape:
    B: int
    Hq: int
    Hkv: int
    Nq: int
    Nkv: int
    D: int
    Dv: int

    @property
    def off(self) -> int:
        """Bottom-right alignment offset: query i sits at position i + off."""
        return self.Nkv - self.Nq


@dataclass(frozen=True)
class Problem:
    shape: Shape
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    seed: int

    def __repr__(self) -> str:  # keep hypothesis' falsifying-example output readable
        return f"Problem({self.shape}, seed={self.seed})"


@st.composite
def shapes(draw, *, min_n: int = 1, max_n: int = 24, equal_n: bool = False, nq_le_nkv: bool = False,
           heads=(1, 2, 4), dims=(8, 16), max_batch: int = 2) -> Shape:
    B = draw(st.integers(1, max_batch))
    Hq = draw(st.sampled_from(heads))
    Hkv = draw(st.sampled_from([h for h in (1, 2, 4) if h <= Hq and Hq % h == 0]))
    Nkv = draw(st.integers(min_n, max_n))
    if equal_n:
        Nq = Nkv
    else:
        # half the time force n_q != n_kv, so both alignments are exercised
        Nq = draw(st.one_of(st.just(Nkv), st.integers(min_n, Nkv if nq_le_nkv else max_n)))
    D = draw(st.sampled_from(dims))
    Dv = draw(st.sampled_from([D, 4, 12]))
    return Shape(B, Hq, Hkv, Nq, Nkv, D, Dv)


def make_tensors(shape: Shape, seed: int, temperature: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    s = shape
    q = torch.randn(s.B, s.Hq, s.Nq, s.D, generator=g, dtype=F64) * temperature
    k = torch.randn(s.B, s.Hkv, s.Nkv, s.D, generator=g, dtype=F64)
    v = torch.randn(s.B, s.Hkv, s.Nkv, s.Dv, generator=g, dtype=F64)
    return q, k, v


@st.composite
def problems(draw, shape_strategy=None, temperatures=(0.5, 1.0, 3.0)) -> Problem:
    """Sizes plus q, k, v. ``temperature`` scales q, so some rows are nearly one-hot."""
    shape = draw(shape_strategy if shape_strategy is not None else shapes())
    seed = draw(st.integers(0, 2**31 - 1))
    temperature = draw(st.sampled_from(temperatures))
    q, k, v = make_tensors(shape, seed, temperature)
    return Problem(shape, q, k, v, seed)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- parameters


def window_params(s: Shape):
    # 0 empties every row; > Nkv keeps the whole causal prefix
    return st.fixed_dictionaries({"window": st.integers(0, s.Nkv + 2)})


def chunk_params(s: Shape):
    return st.fixed_dictionaries({"chunk": st.integers(1, max(s.Nq, s.Nkv) + 2)})


def prefix_params(s: Shape):
    return st.fixed_dictionaries({"prefix": st.integers(0, s.Nkv + 2)})


def sink_window_params(s: Shape):
    return st.fixed_dictionaries({"sinks": st.integers(0, 4), "window": st.integers(0, s.Nkv + 1)})


def dilated_window_params(s: Shape):
    return st.fixed_dictionaries({"window": st.integers(0, 6), "dilation": st.integers(1, 4)})


def softcap_params(s: Shape):
    return st.fixed_dictionaries({"cap": st.floats(0.05, 60.0, allow_nan=False)})


@st.composite
def document_params(draw, s: Shape):
    """doc[b, t]: sorted random segment ids, so documents are contiguous runs."""
    rows = []
    for _ in range(s.B):
        ids = draw(st.lists(st.integers(0, 4), min_size=s.Nkv, max_size=s.Nkv))
        rows.append(sorted(ids))
    return {"doc": torch.tensor(rows, dtype=torch.int64).reshape(s.B, s.Nkv)}


@st.composite
def relative_bias_params(draw, s: Shape):
    seed = draw(st.integers(0, 2**31 - 1))
    return {"table": torch.randn(s.Hq, s.Nq + s.Nkv - 1, generator=seeded(seed), dtype=F64)}


@st.composite
def gpsa_params(draw, s: Shape):
    """ConViT GPSA: an image width, per-head gates and positional weights v_pos[h] (3 each)."""
    g = seeded(draw(st.integers(0, 2**31 - 1)))
    return {"width": draw(st.integers(1, 8)), "gate": torch.randn(s.Hq, generator=g, dtype=F64),
            "vpos": 0.5 * torch.randn(s.Hq, 3, generator=g, dtype=F64)}


@st.composite
def differential_params(draw, s: Shape):
    """Differential attention: λ per head (the paper's λ lies in about (0, 1); negative too), causal
    or not."""
    g = seeded(draw(st.integers(0, 2**31 - 1)))
    return {"lam": torch.rand(s.Hq, generator=g, dtype=F64) * 1.2 - 0.1, "causal": draw(st.booleans())}


def stick_breaking_params(s: Shape):
    return st.fixed_dictionaries({}, optional={"attend_current": st.booleans()})


@st.composite
def stick_breaking_bias_params(draw, s: Shape):
    """A per-head bias on the logits (negative: the stick lasts further back)."""
    g = seeded(draw(st.integers(0, 2**31 - 1)))
    return {"bias": torch.randn(s.Hq, generator=g, dtype=F64) - 0.5, "attend_current": draw(st.booleans())}


@st.composite
def sink_params(draw, s: Shape):
    """Per-head sink logits for softmax_sink, sometimes large enough to take most of the mass."""
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.5, 2.0, 6.0]))
    return {"sink": torch.randn(s.Hq, generator=seeded(seed), dtype=F64) * spread}


# ----------------------------------------------------------------------------- NATTEN (independent)


def natten_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN's ``get_window_start`` (natten/csrc .../natten_commons), transcribed literally."""
    nb = kernel // 2
    if dilation <= 1:
        return max(index - nb, 0) + (index + nb >= length) * (length - index - nb - 1)
    ni = index - nb * dilation
    if ni < 0:
        return index % dilation
    if index + nb * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nb * dilation
        return a + imodd - kernel * dilation
    return ni


def natten_axis_neighbors(length: int, kernel: int, dilation: int) -> list[list[int]]:
    """For each position of an axis, the ``kernel`` positions NATTEN lets it attend to."""
    out = []
    for i in range(length):
        start = natten_window_start(i, length, kernel, dilation)
        out.append([start + t * dilation for t in range(kernel)])
    return out


def natten_axis_mask(length: int, kernel: int, dilation: int) -> torch.Tensor:
    m = torch.zeros(length, length, dtype=torch.bool)
    for i, keys in enumerate(natten_axis_neighbors(length, kernel, dilation)):
        for j in keys:
            m[i, j] = True
    return m


def natten2d_mask(height: int, width: int, kernel: int, dilation: int) -> torch.Tensor:
    """keep[(r, c), (r', c')] for a row-major image: NATTEN's window per axis, combined."""
    rows = natten_axis_mask(height, kernel, dilation)
    cols = natten_axis_mask(width, kernel, dilation)
    keep = rows[:, None, :, None] & cols[None, :, None, :]  # [r, c, r', c']
    return keep.reshape(height * width, height * width)


@dataclass(frozen=True)
class NattenCase:
    height: int
    width: int
    kernel: int
    dilation: int


@st.composite
def natten_cases(draw, kernels=(3, 5, 7), dilations=(1, 2, 3), max_extra: int = 4) -> NattenCase:
    """Odd kernel, dilation 1–3, and each axis long enough (≥ kernel·dilation) that every dilation
    group holds at least ``kernel`` positions — NATTEN's own precondition."""
    kernel = draw(st.sampled_from(kernels))
    dilation = draw(st.sampled_from(dilations))
    lo = kernel * dilation
    height = draw(st.integers(lo, lo + max_extra))
    width = draw(st.integers(lo, lo + max_extra))
    return NattenCase(height, width, kernel, dilation)


# ----------------------------------------------------------------------------- NATTEN, N-D (independent)
#
# Written from NATTEN's definition of a neighborhood (natten/backends/flex.py's mask with stride 1:
# per axis a window size left and right of a centre that is clamped into the dilation group; for
# causal axes the window ends at the query), with explicit loops over positions. Nothing here is
# taken from attnc/library/natten*.attn.


def natten_axis_allowed(length: int, kernel: int, dilation: int = 1, causal: bool = False) -> list[list[int]]:
    """For each position x of an axis of ``length`` positions, the sorted positions it may attend
    to, per NATTEN:

    * x belongs to dilation group ``x mod dilation`` — the positions g, g + d, g + 2d, … < length —
      and only keys of its own group are candidates;
    * causal: key k is allowed iff k <= x and x − k <= (kernel − 1)·dilation: the window ends at
      the query and is truncated (never shifted) at the start of the axis;
    * non-causal: ⌊kernel/2⌋ group positions left of a centre and kernel − 1 − ⌊kernel/2⌋ right
      of it (one fewer on the right for an even kernel); the centre is the query's place in its
      group, moved (clamped) so that the whole window fits inside the group — shifted, not
      truncated, at the borders. A group shorter than the kernel has no such centre: the clamp's
      upper bound wins (``torch.clamp`` with min > max gives max, as NATTEN's flex mask does) and
      the query sees its whole group.
    """
    assert dilation >= 1 and kernel >= 0 and length >= 0
    out = []
    for x in range(length):
        group = [p for p in range(length) if p % dilation == x % dilation]
        keys = []
        if causal:
            for k in group:
                if k <= x and x - k <= (kernel - 1) * dilation:
                    keys.append(k)
        else:
            left = kernel // 2
            right = kernel - 1 - left
            # clamp(place, left, len − 1 − right), the upper bound applied last (it wins)
            centre = min(max(group.index(x), left), len(group) - 1 - right)
            for t, k in enumerate(group):
                if centre - left <= t <= centre + right:
                    keys.append(k)
        out.append(keys)
    return out


def natten_axis_keep(length: int, kernel: int, dilation: int = 1, causal: bool = False) -> torch.Tensor:
    """``natten_axis_allowed`` as a bool [length, length] matrix (query, key)."""
    m = torch.zeros(length, length, dtype=torch.bool)
    for x, keys in enumerate(natten_axis_allowed(length, kernel, dilation, causal)):
        for k in keys:
            m[x, k] = True
    return m


def _per_axis(value, ndim: int, what: str) -> tuple:
    if isinstance(value, (tuple, list)):
        assert len(value) == ndim, f"{what}: {len(value)} values for {ndim} axes"
        return tuple(value)
    return (value,) * ndim


def natten_nd_mask(shape: tuple, kernels, dilations=1, causals=False) -> torch.Tensor:
    """keep [n, n] for tokens laid out row-major on a grid of ``shape`` (last axis fastest,
    n = prod(shape)): query i keeps key j iff on every axis j's coordinate is allowed for i's
    (``natten_axis_allowed``). ``kernels``/``dilations``/``causals``: one per axis, or one for all."""
    shape = tuple(shape)
    ndim = len(shape)
    kernels, dilations = _per_axis(kernels, ndim, "kernels"), _per_axis(dilations, ndim, "dilations")
    causals = _per_axis(causals, ndim, "causals")
    coords = list(itertools.product(*(range(L) for L in shape)))  # row-major
    n = len(coords)
    keep = torch.ones(n, n, dtype=torch.bool)
    for a in range(ndim):
        axis = natten_axis_keep(shape[a], kernels[a], dilations[a], causals[a])
        c = torch.tensor([crd[a] for crd in coords], dtype=torch.long)
        keep &= axis[c[:, None], c[None, :]]
    return keep


AXIS_SUFFIXES = {1: ("",), 2: ("_h", "_w"), 3: ("_d", "_h", "_w")}


def natten_params(shape: tuple, kernels, dilations=1, causals=False) -> tuple[str, dict]:
    """(library variant, its parameters) for a 1-D/2-D/3-D grid: natten1d(kernel, dilation,
    causal), natten2d(width, kernel_h, …, causal_w), natten3d(height, width, kernel_d, …)."""
    ndim = len(shape)
    kernels, dilations = _per_axis(kernels, ndim, "kernels"), _per_axis(dilations, ndim, "dilations")
    causals = _per_axis(causals, ndim, "causals")
    params: dict = {}
    if ndim == 3:
        params["height"] = shape[1]
    if ndim >= 2:
        params["width"] = shape[-1]
    for sfx, k, d, c in zip(AXIS_SUFFIXES[ndim], kernels, dilations, causals, strict=True):
        params[f"kernel{sfx}"] = k
        params[f"dilation{sfx}"] = d
        params[f"causal{sfx}"] = c
    return f"natten{ndim}d", params


@dataclass(frozen=True)
class NattenNDCase:
    shape: tuple  # grid sizes, row-major (1-D: (n,), 2-D: (height, width), 3-D: (depth, height, width))
    kernels: tuple
    dilations: tuple
    causals: tuple

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    @property
    def name(self) -> str:
        return f"natten{len(self.shape)}d"

    @property
    def params(self) -> dict:
        return natten_params(self.shape, self.kernels, self.dilations, self.causals)[1]

    def mask(self) -> torch.Tensor:
        return natten_nd_mask(self.shape, self.kernels, self.dilations, self.causals)


@st.composite
def natten_nd_cases(draw, dims=(1, 2, 3), max_tokens: int = 64, kernels=(1, 2, 3, 4, 5), dilations=(1, 2, 3),
                    causal=(False, True), short_groups: bool = False) -> NattenNDCase:
    """A 1-D/2-D/3-D NATTEN grid of at most ``max_tokens`` tokens with per-axis kernel (odd or
    even), dilation and causal flag. Unless ``short_groups``, a non-causal axis is at least
    kernel·dilation long, so each of its dilation groups holds ≥ kernel positions (NATTEN's own
    precondition; with ``short_groups`` any length ≥ 1). Axes are sized in turn, each from a fair
    share of the tokens the earlier axes left, so 3-D grids are not squeezed into one axis."""
    ndim = draw(st.sampled_from(dims))
    shape, ks, ds, cs = [], [], [], []
    budget = max_tokens
    for a in range(ndim):
        remaining = ndim - a  # this axis and the ones after it
        share = budget if remaining == 1 else max(1, round(budget ** (1.0 / remaining)))
        c = draw(st.sampled_from(causal))
        if c or short_groups:
            d = draw(st.sampled_from(dilations))
            k = draw(st.sampled_from(kernels))
            lo = 1
        else:
            d = draw(st.sampled_from([x for x in dilations if min(kernels) * x <= share] or [1]))
            k = draw(st.sampled_from([x for x in kernels if x * d <= share] or [min(kernels)]))
            lo = k * d
        hi = max(lo, min(budget, share + 1))
        length = draw(st.integers(lo, hi))
        shape.append(length)
        ks.append(k)
        ds.append(d)
        cs.append(c)
        budget = max(1, budget // length)
    return NattenNDCase(tuple(shape), tuple(ks), tuple(ds), tuple(cs))


# ----------------------------------------------------------------------------- comparisons


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ (0 when both are empty or zero; inf when only ref is zero)."""
    diff = torch.linalg.vector_norm((out - ref).double()).item()
    base = torch.linalg.vector_norm(ref.double()).item()
    if base == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / base


# ----------------------------------------------------------------------------- kernel problems
#
# For the generated kernels (tests/codegen): the interpreter's tile is 16 rows/keys, so lengths
# favour one row and the ragged edges around one and two tiles; head dims are mostly 16 with an
# occasional non-power of two (padded in the kernel) or a Dv different from D.

KERNEL_TILE = 16
TILE_EDGE_LENGTHS = (1, KERNEL_TILE - 1, KERNEL_TILE + 1, KERNEL_TILE, 2 * KERNEL_TILE + 1)


def kernel_lengths(max_n: int = 40):
    return st.one_of(st.sampled_from(TILE_EDGE_LENGTHS), st.integers(1, max_n))


@st.composite
def kernel_shapes(draw, *, max_n: int = 40, heads=(1, 2, 4), max_batch: int = 2,
                  dims=(16, 16, 16, 16, 32, 8, 24, 40, 80), nq_le_nkv: bool = False) -> Shape:
    """B 1–``max_batch``; Hq ∈ ``heads`` with Hkv | Hq (MHA, GQA and MQA); Nq, Nkv drawn
    independently from ``kernel_lengths`` (Nq ≤ Nkv when asked); D from ``dims`` (repeats weight
    the draw); Dv = D most of the time, else another of 8, 16, 24, 40, 80."""
    B = draw(st.integers(1, max_batch))
    Hq = draw(st.sampled_from(heads))
    Hkv = draw(st.sampled_from([h for h in (1, 2, 4) if h <= Hq and Hq % h == 0]))
    Nkv = draw(kernel_lengths(max_n))
    Nq = draw(kernel_lengths(max_n))
    if nq_le_nkv:
        Nq = min(Nq, Nkv)
    D = draw(st.sampled_from(dims))
    Dv = draw(st.sampled_from([D, D, D, 8, 16, 24, 40, 80]))
    return Shape(B, Hq, Hkv, Nq, Nkv, D, Dv)


def relu_params(s: Shape):
    """relu's divisor, or its default (n_kv)."""
    return st.one_of(st.just({}), st.fixed_dictionaries({"divisor": st.floats(0.5, 64.0)}))


def sigmoid_params(s: Shape):
    """A sigmoid bias, or the variant's default (0 for sigmoid, −log n_kv for sigmoid_attention)."""
    return st.one_of(st.just({}), st.fixed_dictionaries({"bias": st.floats(-6.0, 3.0)}))


def clipped_softmax_params(s: Shape):
    """ζ ≥ 1 and γ ≤ 0 (the paper's stretch), or the defaults ζ = 1.003, γ = −0.003."""
    return st.one_of(st.just({}), st.fixed_dictionaries({"zeta": st.floats(1.0, 1.2), "gamma": st.floats(-0.2, 0.0)}))


def no_params(s: Shape):
    return st.just({})


def linear_attention_params(s: Shape):
    """Causal or not; eps from the default to 1e-2."""
    return st.fixed_dictionaries({}, optional={"causal": st.booleans(), "eps": st.floats(1e-6, 1e-2)})


# library variant -> parameter strategy (natten1d/2d/3d need their own shapes: see natten_kernel_problems)
LIBRARY_PARAMS = {
    "alibi": no_params, "causal": no_params, "full": no_params, "none": no_params, "softmax": no_params,
    "softmax_off_by_one": no_params,
    "chunked": chunk_params, "dilated_window": dilated_window_params, "document": document_params,
    "prefix_lm": prefix_params, "relative_bias": relative_bias_params, "relu": relu_params,
    "sigmoid": sigmoid_params, "sigmoid_attention": sigmoid_params, "sink_window": sink_window_params,
    "sliding_window": window_params, "softcap": softcap_params, "softmax_sink": sink_params,
    "clipped_softmax": clipped_softmax_params, "linear_attention": linear_attention_params,
    "gpsa": gpsa_params, "differential": differential_params,
    "stick_breaking": stick_breaking_params, "stick_breaking_bias": stick_breaking_bias_params,
}


@st.composite
def natten_kernel_problems(draw, heads=(1, 2), max_extra: int = 1, name: str = "natten2d"):
    """A valid NATTEN grid as a kernel problem, B = 1 (the mask costs the interpreter most),
    Nq = Nkv = the grid's token count, and the variant's parameters.

    * natten2d: an image (see ``natten_cases``) with kernel 3 and dilation 1 or 2, or kernel 5
      undilated, on both axes (9–49 tokens);
    * natten1d: ``natten_nd_cases`` on 1–40 tokens (kernels 1–5, dilations 1–3, causal or not);
    * natten3d: ``natten_nd_cases`` on at most 48 tokens (kernels 1–3, dilations 1–2, per-axis
      causal flags)."""
    if name == "natten2d":
        case = draw(st.one_of(natten_cases(kernels=(3,), dilations=(1, 2), max_extra=max_extra),
                              natten_cases(kernels=(5,), dilations=(1,), max_extra=max_extra)))
        n = case.height * case.width
        params = {"width": case.width, "kernel_h": case.kernel, "kernel_w": case.kernel,
                  "dilation_h": case.dilation, "dilation_w": case.dilation}
    elif name == "natten1d":
        nd = draw(natten_nd_cases(dims=(1,), max_tokens=40))
        n, params = nd.n, nd.params
    elif name == "natten3d":
        nd = draw(natten_nd_cases(dims=(3,), max_tokens=48, kernels=(1, 2, 3), dilations=(1, 2)))
        n, params = nd.n, nd.params
    else:
        raise ValueError(f"not a NATTEN variant: {name}")
    Hq = draw(st.sampled_from(heads))
    Hkv = draw(st.sampled_from([h for h in (1, 2, 4) if h <= Hq and Hq % h == 0]))
    D = draw(st.sampled_from([16, 16, 24]))
    Dv = draw(st.sampled_from([D, 8]))
    shape = Shape(1, Hq, Hkv, n, n, D, Dv)
    return shape, params


# Scalar parameters at the edges of their meaning — zero and negative windows, chunks, prefixes
# and dilations (`//` and `%` by 0 or a negative are total, see docs/semantics.md) — but small
# enough that no product or sum in a library mask leaves int32.
EDGE_PARAMS = {
    "sliding_window": lambda s: st.fixed_dictionaries({"window": st.integers(-3, 0)}),
    "chunked": lambda s: st.fixed_dictionaries({"chunk": st.integers(-4, 0)}),
    "prefix_lm": lambda s: st.fixed_dictionaries({"prefix": st.integers(-3, 0)}),
    "sink_window": lambda s: st.fixed_dictionaries({"sinks": st.integers(-2, s.Nkv + 2), "window": st.integers(-2, 0)}),
    "dilated_window": lambda s: st.fixed_dictionaries({"window": st.integers(-2, 3), "dilation": st.integers(-3, 0)}),
}


def kernel_params(name: str, s: Shape):
    """Parameters for library variant ``name`` on shape ``s``: ``LIBRARY_PARAMS`` mostly, and for
    variants with integer scalars sometimes ``EDGE_PARAMS``."""
    normal = LIBRARY_PARAMS[name](s)
    if name in EDGE_PARAMS:
        return st.one_of(normal, normal, normal, EDGE_PARAMS[name](s))
    return normal
