"""Key-tile skipping, measured on real kernel runs under Triton's interpreter.

The interpreter runs 16 x 8 tiles here (D = 32), so every shape tells what it is. Its builder is
instrumented: every ``tl.dot`` with a [BLOCK_M, BLOCK_N] result is one visited key tile; the tile
evaluated a mask if a [BLOCK_N] comparison (the key range) came just before that dot or a
[BLOCK_M, BLOCK_N] comparison (the mask) after it. The expected counts come from evaluating the mask pair by pair here,
independently of ``ir/bounds.py``: a tile is *needed* when it holds an allowed pair of a valid
row, *full* when every pair of its valid rows is allowed and in range.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from triton.runtime import interpreter

import attnc
from attnc.runtime.compiler import interpreter_tiles

BM, BN = 16, 8
D = 32


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))
    with interpreter_tiles(BM, BN):
        yield


class Counter:
    """Per visited score tile: did it evaluate a pair-shaped comparison?"""

    def __init__(self, monkeypatch):
        self.tiles: list[bool] = []
        self.pending = False  # a key-range comparison since the last score tile
        dot = interpreter.InterpreterBuilder.create_dot

        def create_dot(builder, a, b, d, *args):
            out = dot(builder, a, b, d, *args)
            if out.data.shape == (BM, BN):
                self.tiles.append(self.pending)
                self.pending = False
            return out

        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
        for name in dir(interpreter.InterpreterBuilder):
            if name.startswith("create_icmp"):
                monkeypatch.setattr(interpreter.InterpreterBuilder, name,
                                    self._icmp(getattr(interpreter.InterpreterBuilder, name), name.endswith("SLT")))

    def _icmp(self, fn, less_than):
        # Any [BLOCK_M, BLOCK_N] integer comparison is mask work (the interpreter's own overflow
        # checks of pair index arithmetic included); of [BLOCK_N] ones only ``offs_n < n_kv``
        # counts, since the interpreter checks ``start_n + arange`` for overflow on every tile.
        def create_icmp(builder, a, b):
            out = fn(builder, a, b)
            if out.data.shape == (BM, BN) and self.tiles:
                self.tiles[-1] = True
            elif out.data.shape == (BN,) and less_than:
                self.pending = True
            return out
        return create_icmp

    @property
    def visited(self) -> int:
        return len(self.tiles)

    @property
    def masked(self) -> int:
        return sum(self.tiles)


def expected_tiles(allowed: np.ndarray) -> tuple[int, int]:
    """(needed, partial) tiles of a [Nq, Nkv] boolean mask."""
    nq, nkv = allowed.shape
    needed = partial = 0
    for i0 in range(0, nq, BM):
        rows = allowed[i0:i0 + BM]
        for j0 in range(0, nkv, BN):
            tile = rows[:, j0:j0 + BN]
            if tile.any():
                needed += 1
                if not (tile.all() and j0 + BN <= nkv):
                    partial += 1
    return needed, partial


def run(attn, nq, nkv, params, monkeypatch):
    g = torch.Generator().manual_seed(nq * 1000 + nkv)
    q = torch.randn(1, 1, nq, D, generator=g)
    k = torch.randn(1, 1, nkv, D, generator=g)
    v = torch.randn(1, 1, nkv, D, generator=g)
    attn(q, k, v, **params)  # compile outside the count
    counter = Counter(monkeypatch)
    out = attn(q, k, v, **params)
    ref = attnc.reference(attn.cascade, q, k, v, **params)
    assert (out.double() - ref).norm() <= 1e-5 * ref.norm().clamp_min(1e-30)
    return counter


MASKS = {
    # name: (spec text or library name, params, allowed(i, j, nq, nkv, params))
    "causal": ("causal", {}, lambda i, j, nq, nkv, p: j <= i + nkv - nq),
    "sliding_window": ("sliding_window", {"window": 20},
                       lambda i, j, nq, nkv, p: (0 <= i + nkv - nq - j) & (i + nkv - nq - j < p["window"])),
    "band": ("attention band(w: int = 7):\n    mask = kv_idx <= q_idx and q_idx - kv_idx < w\n", {"w": 7},
             lambda i, j, nq, nkv, p: (j <= i) & (i - j < p["w"])),
    "strided": ("attention strided:\n    mask = 2 * kv_idx <= q_idx + 3 and q_idx >= 5\n", {},
                lambda i, j, nq, nkv, p: (2 * j <= i + 3) & (i >= 5)),
    "full": ("softmax", {}, lambda i, j, nq, nkv, p: np.ones_like(i + j, dtype=bool)),
}


def _load(spec):
    return attnc.compile(spec) if "\n" in spec else attnc.load(spec)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(MASKS)), nq=st.sampled_from([1, 15, 17, 40, 64]),
       nkv=st.sampled_from([1, 15, 17, 40, 64]), window=st.integers(1, 70))
def test_visits_exactly_the_needed_tiles_and_masks_only_boundary_tiles(name, nq, nkv, window):
    spec, params, allowed_fn = MASKS[name]
    params = {k: window for k in params}
    i, j = np.meshgrid(np.arange(nq), np.arange(nkv), indexing="ij")
    needed, partial = expected_tiles(allowed_fn(i, j, nq, nkv, params))
    with pytest.MonkeyPatch.context() as mp:
        counter = run(_load(spec), nq, nkv, params, mp)
    assert counter.visited == needed, f"{name} nq={nq} nkv={nkv} {params}: visited {counter.visited} tiles, needed {needed}"
    assert counter.masked == partial, f"{name} nq={nq} nkv={nkv} {params}: masked {counter.masked} tiles, partial {partial}"


def test_causal_square_counts(monkeypatch):
    # 64 x 64 in 16 x 8 tiles: per query tile r, key tiles 0..2r+1 are visited, of which the
    # last two straddle the diagonal; the 28 tiles above it are never loaded.
    counter = run(attnc.load("causal"), 64, 64, {}, monkeypatch)
    assert (counter.visited, counter.masked) == (2 + 4 + 6 + 8, 8)


def test_document_masks_are_classified_at_run_time(monkeypatch):
    # causal and a document test: the bounds cannot decide the document atom, so the tiles are
    # classified at run time (runtime/sparsity.py): exactly the needed tiles are visited, and
    # only partial ones evaluate the mask — the result stays exact (run() checks it).
    attn = attnc.compile("attention a(doc: tensor[B, N_KV] int):\n"
                         "    mask = kv_idx <= q_idx and doc[b, q_idx] == doc[b, kv_idx]\n")
    ids = np.array([0] * 20 + [1] * 30 + [2] * 14)
    doc = torch.tensor(ids).view(1, -1)
    i, j = np.arange(64)[:, None], np.arange(64)[None, :]
    needed, partial = expected_tiles((j <= i) & (ids[:, None] == ids[None, :]))
    counter = run(attn, 64, 64, {"doc": doc}, monkeypatch)
    assert (counter.visited, counter.masked) == (needed, partial)
