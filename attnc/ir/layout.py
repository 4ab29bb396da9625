"""Grid layouts: per-axis coordinates, and the tile permutation of a grid's tokens.

A spec that declares ``grid (y, x) = (height, width)`` sees token ``t`` at row-major coordinates
``q_y = t // width``, ``q_x = t % width`` (``coord``): plain index arithmetic, so the reference
interpreter and an unpermuted kernel need nothing else. Neighbourhoods of a grid are far from
contiguous in row-major order, though: a 7×7 window of a 64-wide image touches 7 separate runs
of keys. As NATTEN's fused kernels and GNA do, the runtime therefore runs the kernel on the
tokens *permuted* into small grid tiles (8×8 for 64-token tiles, 4×4×4 in 3-D), and for a
``dilated (dy, dx)`` grid also grouped by residue (``y % dy``, ``x % dx``), so that a dilated
neighbourhood, too, is a few dense tiles.

``permute`` rewrites a cascade for that kernel. Its ``q_idx``/``kv_idx`` are *positions* in the
permuted order; a hidden int table per side (``_qpos``/``_kpos``, built by the runtime, one row
per position) gives each position's coordinates, residue groups, within-group positions and
token index, and every use of the user's index or coordinates becomes a read of it; so does
``coordinate % dilated`` (the group) and ``coordinate // dilated`` (the within-group position).
Tables rather than index arithmetic: a few loads per tile instead of a dozen integer divisions
per use, and the runtime tile classification reads exact per-tile ranges off them. The axes are
padded to whole tiles; padded positions (token −1) are masked off. Query and key tables differ
when the kernel's query and key tiles differ in size. Position order, outermost first: residue
groups, then tiles, then the cells inside a tile, each row-major.
"""

from __future__ import annotations

from dataclasses import replace

from . import nodes as n
from .simplify import simplify

_I, _J = n.Var("i", n.INT), n.Var("j", n.INT)


def _bin(op: str, a: n.Expr, b: n.Expr, typ: str = n.INT) -> n.Expr:
    return n.Binary(op, a, b, typ)


def _product(xs) -> n.Expr | None:
    out = None
    for x in xs:
        out = x if out is None else _bin("*", out, x)
    return out


def coord(sizes: tuple[n.Expr, ...], index: n.Expr, axis: int) -> n.Expr:
    """Row-major coordinate ``axis`` of token ``index`` in a grid of ``sizes``."""
    stride = _product(sizes[axis + 1:])
    x = index if stride is None else _bin("//", index, stride)
    return x if axis == 0 else _bin("%", x, sizes[axis])


TABLES = {"i": "_qpos", "j": "_kpos"}  # hidden int tensor parameters [positions, 3 · rank + 1]
TOKENS = "_tokens"  # hidden int parameter: the grid's token count (n_q = n_kv for the spec)


def table_columns(rank: int) -> dict[str, int]:
    """Columns of a position table: per axis the coordinate, residue group and within-group
    position, then the token index (−1 at padding positions)."""
    cols = {}
    for a in range(rank):
        cols[f"coord{a}"], cols[f"group{a}"], cols[f"within{a}"] = a, rank + a, 2 * rank + a
    cols["token"] = 3 * rank
    return cols


def permute(c: n.Cascade) -> n.Cascade:
    """The cascade the permuted-layout kernel runs (see the module docstring)."""
    g = c.grid
    assert g is not None
    rank = len(g.axes)
    cols = table_columns(rank)

    def read(name: str, col: str) -> n.Expr:
        return n.Load(TABLES[name], (n.Var(name, n.INT), n.Const(cols[col], n.INT)), n.INT)

    coords = {name: [read(name, f"coord{a}") for a in range(rank)] for name in TABLES}
    # the user's coordinates, as lowering wrote them (and as simplify may have left them)
    coord_of = {}
    for name in TABLES:
        for a in range(rank):
            raw = coord(g.sizes, n.Var(name, n.INT), a)
            coord_of[raw] = coord_of[simplify(raw)] = (name, a)
    markers = {(name, a): n.Var(f"_coord_{name}{a}", n.INT) for name in TABLES for a in range(rank)}
    unmark = {m.name: coords[name][a] for (name, a), m in markers.items()}

    def mark(e: n.Expr) -> n.Expr:  # first, before their indices are rewritten: whole coordinates
        hit = coord_of.get(e)
        return markers[hit] if hit is not None else e

    def rewrite(e: n.Expr) -> n.Expr:
        if isinstance(e, n.Var):
            if e.name in unmark:
                return unmark[e.name]
            if e.name in TABLES:
                return read(e.name, "token")
            if e.name in ("n_q", "n_kv"):
                return n.Param(TOKENS, n.INT)
        if isinstance(e, n.Binary) and e.op in ("%", "//"):  # coordinate % dilated, coordinate // dilated
            for name in TABLES:
                for a in range(rank):
                    if e.left is coords[name][a] and e.right == g.dilated[a]:
                        return read(name, f"group{a}" if e.op == "%" else f"within{a}")
        return e

    def port(e: n.Expr) -> n.Expr:
        return simplify(n.transform(n.transform(e, mark, {}), rewrite, {}))

    valid = _bin("and", _bin(">=", read("i", "token"), n.Const(0, n.INT), n.BOOL),
                 _bin(">=", read("j", "token"), n.Const(0, n.INT), n.BOOL), n.BOOL)
    stages = ported_stages(c, port, valid)
    # tensor shapes were checked against the caller's sizes before the permutation
    params = [replace(p, default=None) for p in loose(c).params]
    params += [n.ParamSpec(TOKENS, n.INT)]
    params += [n.ParamSpec(t, "tensor", n.INT, (n.ANY_DIM, n.ANY_DIM)) for t in TABLES.values()]
    return n.Cascade(c.name, tuple(params), stages, c.span, None)


def ported_stages(c: n.Cascade, port, valid: n.Expr) -> tuple[n.Stage, ...]:
    """``c``'s stages with every expression rewritten by ``port`` — feature maps and slice bounds
    too, which read positions and sizes — and ``valid`` (which positions exist) conjoined to the
    mask, or made the mask."""
    stages = []
    for st in c.stages:
        if st.name == "keep":
            st = replace(st, expr=simplify(_bin("and", valid, port(st.expr), n.BOOL)))
        elif not isinstance(st.expr, n.Dot):
            st = replace(st, expr=port(st.expr))
        else:
            st = replace(st, expr=replace(st.expr, **{f"{side}_map": port(st.expr.map(side)) for side in "qk"
                                                       if st.expr.map(side) is not None},
                                          **{b: port(getattr(st.expr, b)) for b in ("lo", "hi")
                                             if getattr(st.expr, b) is not None}))
        stages.append(st)
        if st.name == "s" and not c.has_mask:
            stages.append(n.Stage("keep", n.PAIR, valid))
    return tuple(stages)


def sized_by_length(dim: n.Expr) -> bool:
    """Whether a tensor dimension is written with ``N_Q``/``N_KV``: sized by the sequence."""
    return any(isinstance(x, n.Var) and x.name in ("N_Q", "N_KV") for x in n.walk(dim))


def loose(c: n.Cascade) -> n.Cascade:
    """``c`` with its sequence-sized tensor dimensions of any size (a rewritten cascade's tensors
    were checked against the caller's sizes before)."""
    params = tuple(replace(p, dims=tuple(n.ANY_DIM if sized_by_length(d) else d for d in p.dims)) for p in c.params)
    return replace(c, params=params)


def kernel_cascade(c: n.Cascade) -> n.Cascade:
    """The cascade whose kernels really run for ``c``: its permuted form when it has a grid."""
    return permute(c) if c.grid is not None else c
