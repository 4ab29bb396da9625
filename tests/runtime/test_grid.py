"""Token grids (``grid (y, x) = (h, w) dilated (dy, dx)``): the spec syntax and its errors, the
tile permutation (``runtime/layout.py``) and the permuted kernel (``ir/layout.py``).

The layout must never change a result: kernels over permuted tokens are compared with the
float64 reference evaluated in the caller's token order, on generated grid specs whose masks
and scores use coordinates, the raw indices and a tensor read; tile counts are taken in the
permuted order by instrumenting a real kernel run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.dsl.errors import SpecError
from attnc.runtime.compiler import Attention, interpreter_tiles
from attnc.runtime.layout import _side, tile_shape
from attnc.runtime.reference import reference_keep
from attnc.testing.tiles import count_tiles

SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- the permutation


@given(block=st.sampled_from([1, 2, 4, 16, 64, 128]), lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3))
def test_tile_shape_has_least_padding(block, lengths):
    ext = tile_shape(block, tuple(lengths))
    assert math.prod(ext) == block and all(e & (e - 1) == 0 for e in ext)
    padded = math.prod(-(-L // e) * e for L, e in zip(lengths, ext, strict=True))
    # brute force over every split of the block into powers of two
    k = block.bit_length() - 1
    best = min(math.prod(-(-L // (1 << e)) * (1 << e) for L, e in zip(lengths, exps, strict=True))
               for exps in np.ndindex(*([k + 1] * len(lengths))) if sum(exps) == k)
    assert padded == best


def test_tile_shapes_of_square_grids():
    assert tile_shape(64, (64, 64)) == (8, 8)
    assert tile_shape(128, (64, 64)) == (8, 16)
    assert tile_shape(64, (16, 16, 16)) == (4, 4, 4)
    assert tile_shape(64, (3, 100)) == (1, 64)  # 384 positions; (4, 16) would pad to 448
    assert tile_shape(64, (6, 100)) == (2, 32)  # ties with (1, 64) at 768: the squarer one


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=3), data=st.data(),
       block=st.sampled_from([4, 16, 64]))
def test_positions_are_a_permutation_and_tables_decode_them(sizes, data, block):
    sizes = tuple(sizes)
    groups = tuple(data.draw(st.integers(1, s)) for s in sizes)
    side = _side(sizes, groups, tile_shape(block, tuple(-(-s // g) for s, g in zip(sizes, groups, strict=True))))
    n, rank = math.prod(sizes), len(sizes)
    assert side.padded % block == 0
    assert sorted(set(side.pos.tolist())) == sorted(side.pos.tolist())  # distinct positions
    table = side.table.long()
    token = table[:, 3 * rank]
    assert (token[side.pos] == torch.arange(n)).all()  # the table names the token at its position
    assert int((token >= 0).sum()) == n
    strides = [math.prod(sizes[a + 1:]) for a in range(rank)]
    for a in range(rank):
        coord = table[side.pos, a]
        assert (coord == torch.arange(n) // strides[a] % sizes[a]).all()
        assert (table[side.pos, rank + a] == coord % groups[a]).all()
        assert (table[side.pos, 2 * rank + a] == coord // groups[a]).all()
    # a tile (block consecutive positions) lies in one residue group
    for a in range(rank):
        g = table[:, rank + a].view(-1, block)
        assert (g == g[:, :1]).all()


# ----------------------------------------------------------------------------- the language


def _cascade(text: str, name: str = "t"):
    return attnc.compile(text, name).cascade


def test_grid_binds_row_major_coordinates():
    c = _cascade("mask t(w: int):\n    grid (y, x) = (n_kv // w, w)\n    mask = q_y == kv_y and kv_x <= q_x\n")
    assert c.grid.axes == ("y", "x")
    q = torch.zeros(1, 1, 12, 4, dtype=torch.float64)
    keep = reference_keep(c, q, q, q, w=4)[0, 0]
    i, j = torch.arange(12)[:, None], torch.arange(12)[None, :]
    assert torch.equal(keep, (i // 4 == j // 4) & (j % 4 <= i % 4))


def test_grid_declared_in_a_called_mask_belongs_to_the_caller():
    c = _cascade("mask g(w: int):\n    grid (y, x) = (n_kv // w, w)\n    mask = q_y == kv_y\n"
                 "attention t(w: int):\n    mask = g(w) and kv_idx <= q_idx\n")
    assert c.grid is not None and c.grid.axes == ("y", "x")


@pytest.mark.parametrize("text, where, message", [
    ("attention t(w: int):\n    grid (y, x) = (w, w)\n    grid (a) = (w)\n", "3:5", "at most one"),
    ("mask g(w: int):\n    grid (y) = (w)\n    mask = q_y >= 0\nattention t(w: int):\n    grid (y, x) = (w, w)\n"
     "    mask = g(w)\n", "6:12", "differs"),
    ("attention t(w: int):\n    grid (a, b, c, d) = (w, w, w, w)\n", "2:5", "1 to 3 axes"),
    ("attention t(w: int):\n    grid (y, x) = (w)\n", "2:20", "gives 1 sizes"),
    ("attention t(w: int):\n    grid (y, x) = (w, w) dilated (2)\n", "2:35", "one value per axis"),
    ("attention t(w: int):\n    grid (y, y) = (w, w)\n", "2:5", "must differ"),
    ("attention t(w: float):\n    grid (y) = (w)\n", "2:17", "must be an integer"),
    ("attention t(w: int):\n    grid (y) = (q_idx)\n", "2:17", "same for every token"),
    ("norm n:\n    grid (y) = (n_kv)\n    out[i] = sum(v[j] for j)\n", "2:5", "belongs in a mask"),
    ("attention t(w: int):\n    let q_y = 1\n    grid (y) = (w)\n", "3:11", "already defined"),
])
def test_grid_errors_name_the_place(text, where, message):
    with pytest.raises(SpecError) as err:
        attnc.compile(text, "t" if "attention t" in text else "n")
    assert f":{where}:" in str(err.value) and message in str(err.value), str(err.value)


def test_grid_keywords_cannot_name_things():
    with pytest.raises(SpecError, match="keyword"):
        attnc.compile("mask grid(w: int) = q_idx < w\n", "grid")


# ----------------------------------------------------------------------------- calls


def test_calls_that_do_not_fit_the_grid_are_refused_alike():
    attn = attnc.load("natten2d")
    q = torch.randn(1, 1, 20, 8)
    for call in (attn, attn.reference):
        with pytest.raises(ValueError, match=r"grid \(y, x\).*3 × 6 = 18 tokens.*n_q = n_kv = 20"):
            call(q, q, q, width=6)
        with pytest.raises(ValueError, match="n_q = 20 and n_kv = 16"):
            call(q, q[:, :, :16], q[:, :, :16], width=4)
        with pytest.raises(ValueError, match="at least 1"):
            call(q, q, q, width=5, dilation_h=0)
    with pytest.raises(ValueError, match="grid"):
        attn.varlen(q[0].transpose(0, 1), q[0].transpose(0, 1), q[0].transpose(0, 1),
                    torch.tensor([0, 20]), torch.tensor([0, 20]), width=5)


def test_empty_grid_call():
    out, lse = attnc.load("natten1d")(*(torch.randn(1, 2, 0, 8) for _ in range(3)), return_lse=True)
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)


def _spec(rank: int, use_score: bool, use_tensor: bool) -> str:
    axes = "zyx"[3 - rank:]
    sizes = ", ".join(f"s{a}" for a in range(rank))
    params = ", ".join(f"s{a}: int, r{a}: int, d{a}: int" for a in range(rank))
    conds = " and ".join(f"abs(q_{x} // d{a} - kv_{x} // d{a}) <= r{a} and q_{x} % d{a} == kv_{x} % d{a}"
                         for a, x in enumerate(axes))
    lines = [f"attention t({params}{', bias: tensor[H, N_KV]' if use_tensor else ''}):",
             f"    grid ({', '.join(axes)}) = ({sizes}) dilated ({', '.join(f'd{a}' for a in range(rank))})",
             f"    mask = {conds} and (kv_idx <= q_idx or q_{axes[0]} != kv_{axes[0]})"]
    if use_score:
        lines.append(f"    score = score - 0.25 * abs(q_{axes[-1]} - kv_{axes[-1]}) + 0.01 * (q_idx % 3)")
    if use_tensor:
        lines.append("    score = score + bias[h, kv_idx]")
    return "\n".join(lines) + "\n"


@settings(SLOW, max_examples=8)
@given(data=st.data(), rank=st.integers(1, 3), use_score=st.booleans(), use_tensor=st.booleans(),
       tiles=st.sampled_from([(16, 16), (16, 32), (32, 16)]))
def test_generated_grid_specs_match_the_reference(data, rank, use_score, use_tensor, tiles):
    """Forward, lse and gradients of a permuted kernel equal the token-order reference."""
    attn = attnc.compile(_spec(rank, use_score, use_tensor), "t")
    sizes = [data.draw(st.integers(1, 7 if rank < 3 else 4)) for _ in range(rank)]
    params = {}
    for a, s in enumerate(sizes):
        params.update({f"s{a}": s, f"r{a}": data.draw(st.integers(0, 2)), f"d{a}": data.draw(st.integers(1, 3))})
    n = math.prod(sizes)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, requires_grad=True) for _ in range(3))
    if use_tensor:
        params["bias"] = torch.randn(2, n, generator=gen)
    Attention.POISON = True
    try:
        with interpreter_tiles(*tiles):
            out, lse = attn(q, k, v, return_lse=True, **params)
            g = torch.randn(out.shape, generator=gen)
            grads = torch.autograd.grad(out, (q, k, v), g)
    finally:
        Attention.POISON = False
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, ref_lse = attn.reference(q64, k64, v64, return_lse=True, **params)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-5, rtol=2e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- tiles


def _row_major(attn: Attention) -> Attention:
    """The same variant without its grid: the kernel runs in token order."""
    return Attention(dataclasses.replace(attn.cascade, grid=None), "test")


@pytest.mark.parametrize("name, n, params, never_worse", [
    ("natten2d", 16 * 16, {"width": 16, "kernel_h": 5, "kernel_w": 5}, True),
    ("natten2d", 16 * 16, {"width": 16, "kernel_h": 5, "kernel_w": 3, "dilation_h": 2, "dilation_w": 3}, False),
    ("natten2d", 15 * 10, {"width": 10, "kernel_h": 5, "kernel_w": 5, "causal_h": True}, False),
    ("natten1d", 500, {"kernel": 15, "dilation": 3}, False),
    ("natten3d", 4 * 8 * 8, {"height": 8, "width": 8, "kernel_d": 3, "kernel_h": 5, "kernel_w": 5,
                             "causal_d": True}, False),
])
def test_grid_tiles_visit_exactly_the_needed_tiles(name, n, params, never_worse):
    """In grid order the kernel visits each needed tile once and nothing else; where the token
    order's tiles are among the shapes tried (two rows of a 16-wide image), no more tiles than
    the same mask in token order. 32-token tiles keep the interpreter runs short."""
    attn = attnc.load(name)
    c = count_tiles(attn, n, n, 32, 32, **params)
    assert c.missed == 0
    np.testing.assert_array_equal(c.visits, c.needed.astype(np.int64))
    q = torch.zeros(1, 1, n, 16)
    assert c.visits.shape[0] * 32 == attn.grid_plan(q, q, q, 32, 32, **params).q.padded
    rm = count_tiles(_row_major(attn), n, n, 32, 32, **params)
    assert rm.missed == 0
    if never_worse:
        assert c.visited <= rm.visited, (c.visited, rm.visited)


@pytest.mark.parametrize("name, fixed", [("natten2d", {}), ("natten3d", {}), ("natten2d", {"width": 4}),
                                         ("natten3d", {"height": 2, "width": 3})])
@pytest.mark.parametrize("defaults", [True, False])
def test_drawn_problems_of_grid_variants_form_their_grid(name, fixed, defaults):
    """Issue 21: ``attnc.testing.problems`` draws the length and the grid's parameters together,
    so every drawn problem is a whole grid (no kernel runs here: the grid's own check decides)."""
    from attnc.runtime.layout import grid_dims
    from attnc.runtime.validate import bind_params, sizes_of
    from attnc.testing import problems

    attn = attnc.load(name)
    seen = set()

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(problem=problems(attn, max_len=40, params=fixed, defaults=defaults))
    def run(problem):
        q, k, v, params = problem.inputs()
        assert problem.Nq == problem.Nkv
        sizes = sizes_of(q, k, v, None)
        dims, _ = grid_dims(attn.cascade, sizes, bind_params(attn.cascade, params, sizes))
        assert all(params[p] == x for p, x in fixed.items())
        seen.add(dims)

    run()
    assert len(seen) >= 3  # several grids drawn, not one


def test_problems_refuse_grid_parameters_no_length_fits():
    from attnc.testing import problems

    with pytest.raises(ValueError, match="no length up to max_len=10 makes its grid whole with width=11"):
        problems(attnc.load("natten2d"), max_len=10, params={"width": 11})
