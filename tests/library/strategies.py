"""Shared hypothesis strategies (and small independent helpers) for tests/library and tests/runtime.

Nothing here imports attnc: the helpers are written from the formulas in the library's spec
comments and from the papers/NATTEN sources they cite, so they can serve as independent oracles.

* ``shapes``      — attention problem sizes: B 1–2, Hq ∈ {1, 2, 4} with Hkv | Hq (GQA/MQA),
                    Nq, Nkv 1–24 (often different), D ∈ {8, 16}, Dv sometimes ≠ D.
* ``problems``    — a ``Problem``: sizes plus float64 q, k, v drawn from a seeded generator.
* ``*_params``    — parameter dictionaries for the library variants, drawn relative to a shape.
* ``natten_*``    — an independent NATTEN window reference (explicit loops over NATTEN's own
                    ``get_window_start``) and a strategy for valid 2-D NATTEN problems.
"""

from __future__ import annotations

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


# ----------------------------------------------------------------------------- comparisons


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ (0 when both are empty or zero; inf when only ref is zero)."""
    diff = torch.linalg.vector_norm((out - ref).double()).item()
    base = torch.linalg.vector_norm(ref.double()).item()
    if base == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / base
