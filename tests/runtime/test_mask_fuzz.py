"""Generated masks through the tile bounds (``ir/bounds.py``) and the runtime classification
(``runtime/sparsity.py``): for random masks over comparisons linear in ``kv_idx``, ``//`` by
literals and parameters of either sign, ``%`` congruences, ``abs``/``min``/``max``/``clamp``,
``!=``, chained comparisons, ``and``/``or``/``not`` and tensor look-ups, the kernel's output equals
the float64 reference, no needed tile is skipped and no tile is visited twice in a pass.

Regression cases found in review are pinned below the property: a key-range quotient that
overflowed int32, ``0 · inf`` taken for 0, and a tensor index that interval arithmetic could not
narrow to one point read as if it were one."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.compiler import interpreter_tiles
from attnc.testing.tiles import count_tiles

I, J = "q_idx", "kv_idx"
CMP = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
ROW = st.sampled_from([I, f"{I} + w", f"{I} - w", "w", f"2 * {I}", f"{I} // 3", f"{I} - 5", "u", f"{I} + u"])
KEY = st.sampled_from([J, f"{J} + 1", f"-{J}", f"2 * {J}", f"3 * {J} - 1", f"{J} - {I}", f"-2 * {J} + {I}"])
DIVISOR = st.sampled_from(["c", "3", "-3", "-1", "2", "u"])


@st.composite
def atoms(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return f"{draw(KEY)} {draw(CMP)} {draw(ROW)}"
    if kind == 1:
        return f"({draw(KEY)}) // {draw(DIVISOR)} {draw(CMP)} {draw(ROW)}"
    if kind == 2:
        return f"({J} - {I}) % {draw(st.sampled_from(['c', '3', '2', '-2']))} == 0"
    if kind == 3:
        return f"abs({I} - {J}) {draw(CMP)} w"
    if kind == 4:
        return f"{draw(st.sampled_from(['min', 'max']))}({draw(KEY)}, {draw(ROW)}) {draw(CMP)} {draw(ROW)}"
    if kind == 5:
        return f"clamp({J}, w, u) {draw(CMP)} {draw(ROW)}"
    if kind == 6:
        return f"{I} {draw(CMP)} w"
    if kind == 7:
        lt = st.sampled_from(["<", "<="])
        return f"{draw(ROW)} {draw(lt)} {draw(KEY)} {draw(lt)} {draw(ROW)}"
    if kind == 8:
        return f"t[{J} // 4] {draw(CMP)} t[{I} // 4]"  # a tensor look-up: runtime classification
    return f"({J} + {I}) // c {draw(CMP)} {draw(ROW)}"


masks = st.recursive(
    atoms(),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) and ({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) or ({p[1]})"),
        inner.map(lambda m: f"not ({m})"),
    ),
    max_leaves=4,
)


@settings(max_examples=40, deadline=None, phases=[p for p in Phase if p is not Phase.explain],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mask=masks, n_q=st.integers(1, 40), n_kv=st.integers(1, 40),
       w=st.sampled_from([-3, 0, 1, 2, 5, 9, 17]), u=st.sampled_from([-2, 0, 3, 7, 30]),
       c=st.sampled_from([-4, -1, 0, 1, 3, 8, 11]), tiles=st.sampled_from([(8, 8), (4, 16), (16, 4), (1, 8)]))
def test_generated_masks_keep_results_and_never_skip_a_needed_tile(mask, n_q, n_kv, w, u, c, tiles):
    attn = attnc.compile(f"attention a(w: int, u: int, c: int, t: tensor[_] int):\n    mask = {mask}\n")
    params = {"w": w, "u": u, "c": c, "t": torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])}
    counted = count_tiles(attn, n_q, n_kv, *tiles, **params)
    assert counted.missed == 0, f"{mask}: needed tiles skipped"
    assert (counted.visits <= counted.passes).all(), f"{mask}: a tile visited twice in a pass"
    q, k, v = (torch.randn(1, 1, n, 16) for n in (n_q, n_kv, n_kv))
    with interpreter_tiles(*tiles):
        out = attn(q, k, v, **params)
    torch.testing.assert_close(out.double(), attn.reference(q, k, v, **params), rtol=1e-5, atol=1e-5)


def _error(spec: str, n: int, **params) -> float:
    attn = attnc.compile(spec)
    q, k, v = (torch.randn(1, 1, n, 16) for _ in range(3))
    with interpreter_tiles(8, 8):
        out = attn(q, k, v, **params)
    return (out.double() - attn.reference(q, k, v, **params)).abs().max().item()


def test_a_key_range_quotient_beyond_int32_stays_exact():
    # (2·j) // c >= i with c = 2**30 puts c·i in the key range: it wrapped in int32 (rows 4-7
    # and 12-15 kept every key)
    assert _error("attention a(c: int):\n    mask = (2 * kv_idx) // c >= q_idx\n", 16, c=2**30) < 1e-5


def test_zero_times_inf_is_not_taken_for_zero():
    w = torch.tensor([math.inf] * 8 + [0.0] * 8)
    assert _error("attention a(w: tensor[N_KV] float):\n    mask = w[kv_idx] * w[q_idx] <= 0.0\n", 16, w=w) < 1e-5


def test_an_index_interval_that_is_not_a_point_is_read_as_a_range():
    spec = ("attention a(doc: tensor[B, N_KV] int, t: tensor[8] int, p: float):\n"
            "    mask = doc[b, q_idx] == doc[b, kv_idx] and t[floor(sin(p) * 3.0) + 3] > 0\n")
    t = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0])  # sin(1)·3 + 3 = 5.5: t[5] = 0, nothing is kept
    assert _error(spec, 16, doc=torch.zeros(1, 16, dtype=torch.int64), t=t, p=1.0) < 1e-5
    assert _error(spec, 16, doc=torch.zeros(1, 16, dtype=torch.int64), t=t, p=-1.0) < 1e-5  # t[0] = 1: all kept
