"""Grid layouts at run time: tile shapes, the token permutation, and the permuted call.

A cascade with a ``grid`` (``ir/layout.py``) runs its kernel on the tokens permuted into small
grid tiles: ``GridPlan.for_call`` picks a tile shape of exactly the kernel's tile size (powers of
two over the axes) and builds the position of every token in the padded, permuted order. Which
shape is best depends on the mask (a 7×7 window in 16×16 frames wants flat tiles, a 13×13 window
square ones), so the runtime classifies the mask for every shape and keeps the one whose kernel
visits the fewest tiles (milliseconds, once per sizes and scalar parameters). Queries, keys and
values are scattered into that order (padding rows are zeros and are masked off), the permuted
cascade runs, and the outputs are gathered back: the caller sees its own token order. Both moves are ``index_copy`` /
``index_select``, so autograd goes through them.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..ir import nodes as n
from ..ir.evaluate import eval_size_expr
from ..ir.layout import TABLES, TOKENS, table_columns
from ..ir.printer import expr_text
from .validate import sizes_of


def tile_shapes(block: int, lengths: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every tile shape of ``block`` tokens (power-of-two extents) over sub-grids of ``lengths``,
    best first by the static preference: the least padded volume, then the most cubic, then the
    larger extents on the inner axes."""
    rank = len(lengths)
    k = block.bit_length() - 1
    shapes = []
    for exps in itertools.product(range(k + 1), repeat=rank):
        if sum(exps) != k:
            continue
        ext = tuple(1 << e for e in exps)
        shapes.append(((_padded(lengths, ext), max(exps) - min(exps), tuple(-e for e in reversed(exps))), ext))
    return [ext for _, ext in sorted(shapes)]


def _padded(lengths: tuple[int, ...], ext: tuple[int, ...]) -> int:
    return math.prod(-(-max(L, 1) // e) * e for L, e in zip(lengths, ext, strict=True))


def tile_shape(block: int, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """The statically preferred tile shape (``tile_shapes``' first)."""
    return tile_shapes(block, lengths)[0]


def _rescale(ext: tuple[int, ...], block: int) -> tuple[int, ...]:
    """``ext`` grown or shrunk to ``block`` tokens, innermost axes first (key tiles that differ
    in size from the query tiles keep their shape's proportions as far as they can)."""
    ext = list(ext)
    while math.prod(ext) < block:
        ext[-1] *= 2
    a = len(ext) - 1
    while math.prod(ext) > block:
        while ext[a] == 1:
            a -= 1
        ext[a] //= 2
    return tuple(ext)


@dataclass(frozen=True)
class Side:
    """One side's permutation: tile extents, tiles per residue group, ``pos[t]`` (the permuted
    position of token ``t``; ``padded`` positions in all) and the kernel's position table
    (``ir/layout.py``'s ``table_columns``, int32 [padded, 3 · rank + 1], token −1 at padding)."""

    ext: tuple[int, ...]
    ntiles: tuple[int, ...]
    padded: int
    pos: torch.Tensor  # int64 [n]
    table: torch.Tensor  # int32 [padded, 3 · rank + 1]


def _lengths(sizes, groups) -> tuple[int, ...]:
    return tuple(-(-s // g) for s, g in zip(sizes, groups, strict=True))  # the longest residue group


def _side(sizes: tuple[int, ...], groups: tuple[int, ...], ext: tuple[int, ...]) -> Side:
    block = math.prod(ext)
    lengths = _lengths(sizes, groups)
    ntiles = tuple(-(-L // e) for L, e in zip(lengths, ext, strict=True))
    rank = len(sizes)
    # position p = ((group · tiles + tile) · block + cell), each part row-major over the axes
    p = torch.arange(math.prod(groups) * math.prod(ntiles) * block, dtype=torch.int64)
    inner, rest = p % block, p // block
    tile, cell = [None] * rank, [None] * rank
    for a in reversed(range(rank)):
        tile[a], rest = rest % ntiles[a], rest // ntiles[a]
        cell[a], inner = (inner % ext[a], inner // ext[a]) if a else (inner, None)
    group = [None] * rank
    for a in reversed(range(rank)):
        group[a], rest = (rest % groups[a], rest // groups[a]) if a else (rest, None)
    within = [tile[a] * ext[a] + cell[a] for a in range(rank)]
    coords = [within[a] * groups[a] + group[a] for a in range(rank)]
    valid = torch.ones_like(p, dtype=torch.bool)
    token = torch.zeros_like(p)
    for a in range(rank):
        valid &= coords[a] < sizes[a]
        token = token * sizes[a] + coords[a]
    pos = torch.empty(math.prod(sizes), dtype=torch.int64)
    pos[token[valid]] = p[valid]
    cols = table_columns(rank)
    table = torch.zeros((p.numel(), len(cols)), dtype=torch.int32)
    for a in range(rank):
        table[:, cols[f"coord{a}"]] = coords[a]
        table[:, cols[f"group{a}"]] = group[a]
        table[:, cols[f"within{a}"]] = within[a]
    table[:, cols["token"]] = torch.where(valid, token, -1)
    return Side(ext, ntiles, int(p.numel()), pos, table)


def grid_dims(c: n.Cascade, sizes: dict, values: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The grid's axis sizes and ``dilated`` values for a call, checked: the grid holds exactly
    the call's tokens (n_q = n_kv = the product of the sizes) and every ``dilated`` is ≥ 1.
    The reference checks the same, so a call that does not fit the grid fails everywhere alike."""
    g = c.grid
    where = f"{c.name}: the grid ({', '.join(g.axes)}) = ({', '.join(expr_text(x, {}, False) for x in g.sizes)})"
    dims = tuple(int(eval_size_expr(x, sizes, values)) for x in g.sizes)
    groups = tuple(int(eval_size_expr(x, sizes, values)) for x in g.dilated)
    nq, nkv = sizes["n_q"], sizes["n_kv"]
    if nq != nkv:
        raise ValueError(f"{where} needs self-attention over its tokens, but n_q = {nq} and n_kv = {nkv}")
    if any(d < 0 for d in dims) or math.prod(dims) != nkv:
        raise ValueError(f"{where} is {' × '.join(map(str, dims))} = {math.prod(dims)} tokens for these "
                         f"parameters, but the inputs hold n_q = n_kv = {nkv}; the sizes must multiply to the "
                         f"token count")
    if any(d < 1 for d in groups):
        raise ValueError(f"{where} is dilated by ({', '.join(map(str, groups))}); each `dilated` value "
                         f"({', '.join(expr_text(x, {}, False) for x in g.dilated)}) must be at least 1")
    return dims, groups


def grid_params(c: n.Cascade) -> tuple[str, ...]:
    """The int scalar parameters the grid's sizes or ``dilated`` values read (directly or through
    another parameter's default), in declaration order."""
    if c.grid is None:
        return ()
    read = {x.name for e in (*c.grid.sizes, *c.grid.dilated) for x in n.walk(e) if isinstance(x, n.Param)}
    for p in c.params:  # a default over a grid parameter: the parameter it reads sizes the grid too
        if p.name in read and p.default is not None:
            read |= {x.name for x in n.walk(p.default) if isinstance(x, n.Param)}
    return tuple(p.name for p in c.params if p.name in read and p.kind == n.INT)


def fit_grid(c: n.Cascade, lengths, fixed: dict, choose=()) -> list[tuple[int, dict]]:
    """Token counts from ``lengths`` with values for the int parameters ``choose`` that make
    ``c``'s grid whole (its sizes multiply to the count, every ``dilated`` ≥ 1): ``[(n, {name:
    value})]``, best first — a count whose axes can all be at least 2 before one that cannot,
    then the order of ``lengths``, then the most even axes. ``fixed`` holds the other scalar
    parameters (defaults are evaluated per count). A chosen parameter that the sizes read ranges
    over the divisors of the count (an axis, or a product of axes); one only ``dilated`` reads,
    over 1 and 2."""
    in_sizes = {x.name for e in c.grid.sizes for x in n.walk(e) if isinstance(x, n.Param)}
    found = []
    for rank, count in enumerate(lengths):
        x = torch.empty(1, 1, count, 1, device="meta")
        sizes = sizes_of(x, x, x, None)  # a self-attention of `count` tokens
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        ranges = [divisors if name in in_sizes else (1, 2) for name in choose]
        for picked in itertools.product(*ranges):
            values = {**fixed, **dict(zip(choose, picked))}
            try:
                for p in c.params:
                    if p.kind != "tensor" and p.name not in values and p.default is not None:
                        values[p.name] = eval_size_expr(p.default, sizes, values)
                dims = [int(eval_size_expr(x, sizes, values)) for x in c.grid.sizes]
                groups = [int(eval_size_expr(x, sizes, values)) for x in c.grid.dilated]
            except (ZeroDivisionError, KeyError, ValueError):
                continue
            if math.prod(dims) == count and min(dims) >= 1 and min(groups, default=1) >= 1:
                found.append(((min(dims) < 2, rank, max(dims) / min(dims)), count, dict(zip(choose, picked))))
    return [(count, values) for _, count, values in sorted(found, key=lambda f: f[0])]


class GridPlan:
    """The permutation of one call's grid: hidden parameter values and both sides' positions."""

    def __init__(self, sizes, groups, q: Side, k: Side):
        self.sizes, self.groups, self.q, self.k = sizes, groups, q, k
        self._tables: dict = {}  # device → the position tables there

    @classmethod
    def for_call(cls, c: n.Cascade, sizes: dict, values: dict, block_m: int, block_n: int, count,
                 cache: OrderedDict, count_key=()) -> "GridPlan":
        """The plan of one call of ``c``: every tile shape is tried and the one whose kernel visits
        the fewest tiles (``count``: plan → tiles) wins, ties to the static preference. The choice
        is kept in ``cache`` (the variant's own) under the sizes, tiles and ``count_key`` (what
        the count depends on beyond them)."""
        dims, groups = grid_dims(c, sizes, values)
        groups = tuple(min(d, s) for d, s in zip(groups, dims, strict=True))  # more groups than cells: singletons
        key = (dims, groups, block_m, block_n, count_key)
        plan = cache.get(key)
        if plan is not None:
            cache.move_to_end(key)
            return plan
        lengths = _lengths(dims, groups)
        shapes = tile_shapes(block_m, lengths)
        # shapes padding the grid much more than the least padded one cost memory and time for
        # nothing (their padding is empty tiles): not tried
        least = _padded(lengths, shapes[0])
        shapes = [ext for ext in shapes if 4 * _padded(lengths, ext) <= 5 * least]
        best = None
        for rank_, ext in enumerate(shapes):
            q = _side(dims, groups, ext)
            k = q if block_n == block_m else _side(dims, groups, _rescale(ext, block_n))
            candidate = cls(dims, groups, q, k)
            score = (count(candidate), rank_)
            if best is None or score < best[0]:
                best = (score, candidate)
        plan = cache[key] = best[1]
        while len(cache) > 32:
            cache.popitem(last=False)
        return plan

    def hidden(self, device) -> dict:
        """The permuted cascade's hidden parameters for this plan."""
        tables = self._tables.get(device)
        if tables is None:
            tables = self._tables[device] = (self.q.table.to(device), self.k.table.to(device))
        return {TOKENS: math.prod(self.sizes), TABLES["i"]: tables[0], TABLES["j"]: tables[1]}


def scatter(x: torch.Tensor, side: Side) -> torch.Tensor:
    """``[B, H, n, D]`` in token order → ``[B, H, padded, D]`` in permuted order, zeros elsewhere."""
    pos = side.pos.to(x.device)
    return x.new_zeros((*x.shape[:2], side.padded, *x.shape[3:])).index_copy(2, pos, x)


def gather(x: torch.Tensor, side: Side) -> torch.Tensor:
    """The inverse of ``scatter`` (padding dropped)."""
    return x.index_select(2, side.pos.to(x.device))
