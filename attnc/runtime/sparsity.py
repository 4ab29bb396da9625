"""Runtime tile classification: which key tiles each query tile visits, for masks whose bounds
cannot be derived at compile time (``ir/bounds.py``: tensor look-ups such as document ids, `//`
and `%` of both indices, ...).

The mask is evaluated once per (query tile, key tile) by interval arithmetic over the IR: ``i``
and ``j`` range over the tile's rows and columns, every int/float sub-expression becomes a sound
interval ``[lo, hi]`` and every bool a pair (*may*: some pair of the tile can be true, *must*:
every pair is). A tensor read ``t[..., x, ...]`` whose index ``x`` ranges over an interval takes
the range minimum/maximum of ``t`` from a sparse table (O(L log L) for an axis of length L). A
tile is *empty* when the mask cannot be true there, *full* when it must be (and the tile is not
ragged), else *partial*. Cost: O(N log N + N²/(BLOCK_M·BLOCK_N)) time and memory, never O(N²).

Sorted document ids are classified exactly: a query tile and a key tile whose id ranges overlap
share an id. The kernels read a per-query-tile list (partial tiles first, then full ones; the
forward and dQ kernels) and the class matrix (the dK/dV kernel). Results are cached per
``Attention`` and reused while the scalar parameters, sizes, tile sizes and the contents of the
mask's tensors are unchanged (compared with a saved copy: O(N), so an in-place edit or a new tensor
at a recycled address is never mistaken for the old one).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import torch

from ..dsl.functions import FUNCTIONS
from ..ir import nodes as n

BIG = 2**60  # "any integer": |x| > BIG saturates, so sums of two bounds stay inside int64
_I64, _F64 = torch.int64, torch.float64
EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class TileClasses:
    """``classes`` int8 [Bc, Hc, query tiles, key tiles] (Bc/Hc are 1 when the mask does not
    depend on b/h); ``lists`` int32 [Bc, Hc, query tiles, 2 + key tiles]: the number of partial
    and of full tiles, then their key-tile indices, partial first."""

    block_m: int
    block_n: int
    classes: torch.Tensor
    lists: torch.Tensor

    def counts(self) -> dict[str, int]:
        c = self.classes
        return {"empty": int((c == EMPTY).sum()), "partial": int((c == PARTIAL).sum()), "full": int((c == FULL).sum())}


@dataclass
class _Int:  # lo <= every value <= hi, over the tiles (tensors broadcastable to the tile grid)
    lo: torch.Tensor
    hi: torch.Tensor


@dataclass
class _Bool:  # may: some pair of the tile can be true; must: every pair is
    may: torch.Tensor
    must: torch.Tensor


def _t(x, dtype) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype)


def _sat(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-BIG, BIG) if x.dtype == _I64 else x


def _wide(lo: torch.Tensor, hi: torch.Tensor) -> "_Int":
    """An interval whose float bounds may be NaN (inf - inf, 0 · inf): NaN means anything."""
    if lo.dtype == _F64:
        lo = torch.where(torch.isnan(lo), -math.inf, lo)
        hi = torch.where(torch.isnan(hi), math.inf, hi)
    return _Int(lo, hi)


def _unknown(e: n.Expr):
    if e.type == n.BOOL:
        return _Bool(_t(True, torch.bool), _t(False, torch.bool))
    if e.type == n.INT:
        return _Int(_t(-BIG, _I64), _t(BIG, _I64))
    return _Int(_t(-math.inf, _F64), _t(math.inf, _F64))


def _mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype != _I64:
        return a * b  # 0 · inf is NaN: _corners widens the interval to anything
    wide = a.to(_F64) * b.to(_F64)  # overflow test in float, exact product in int64
    return torch.where(wide.abs() > BIG, torch.sign(wide).to(_I64) * BIG, a * b)


def _fdiv(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Floor division, total: x // 0 == 0 (the spec language's)."""
    safe = torch.where(c == 0, torch.ones_like(c), c)
    return torch.where(c == 0, torch.zeros_like(a), torch.div(a, safe, rounding_mode="floor"))


def _bit_length(x: torch.Tensor) -> torch.Tensor:
    """The bit length of non-negative int64 values below BIG."""
    return torch.where(x > 0, torch.floor(torch.log2(x.clamp(min=1).to(_F64))).to(_I64) + 1, 0)


def _fmod(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return a - _fdiv(a, c) * c


class _Evaluator:
    def __init__(self, values: dict, sizes: dict, tiles_m: int, tiles_n: int, block_m: int, block_n: int,
                 batch: int, heads: int):
        n_q, n_kv = sizes["n_q"], sizes["n_kv"]
        qt = torch.arange(tiles_m, dtype=_I64).view(1, 1, -1, 1) * block_m
        kt = torch.arange(tiles_n, dtype=_I64).view(1, 1, 1, -1) * block_n
        self.index = {
            "i": _Int(qt, torch.minimum(qt + block_m - 1, _t(n_q - 1, _I64))),
            "j": _Int(kt, torch.minimum(kt + block_n - 1, _t(n_kv - 1, _I64))),
            "b": _Int(torch.arange(batch, dtype=_I64).view(-1, 1, 1, 1), torch.arange(batch, dtype=_I64).view(-1, 1, 1, 1)),
            "h": _Int(torch.arange(heads, dtype=_I64).view(1, -1, 1, 1), torch.arange(heads, dtype=_I64).view(1, -1, 1, 1)),
        }
        self.values = values
        self.sizes = sizes
        self.tables: dict = {}

    def __call__(self, e: n.Expr):
        if isinstance(e, n.Const):
            if e.type == n.BOOL:
                return _Bool(_t(bool(e.value), torch.bool), _t(bool(e.value), torch.bool))
            x = _t(e.value, _I64 if e.type == n.INT else _F64)
            return _Int(x, x)
        if isinstance(e, n.Var):
            if e.name in self.index:
                return self.index[e.name]
            x = _t(self.sizes[e.name], _I64 if e.type == n.INT else _F64)
            return _Int(x, x)
        if isinstance(e, n.Param):
            value = self.values[e.name]
            if e.type == n.BOOL:
                return _Bool(_t(bool(value), torch.bool), _t(bool(value), torch.bool))
            x = _t(value, _I64 if e.type == n.INT else _F64)
            return _Int(x, x)
        if isinstance(e, n.Unary):
            x = self(e.operand)
            if e.op == "not":
                return _Bool(~x.must, ~x.may)
            return _Int(-x.hi, -x.lo)
        if isinstance(e, n.Binary):
            return self.binary(e)
        if isinstance(e, n.Select):
            return self.select(e)
        if isinstance(e, n.Call):
            return self.call(e)
        if isinstance(e, n.Load):
            return self.load(e)
        return _unknown(e)  # stage values (the score, ...): anything

    def binary(self, e: n.Binary):
        op = e.op
        if op in ("and", "or"):
            a, b = self(e.left), self(e.right)
            if op == "and":
                return _Bool(a.may & b.may, a.must & b.must)
            return _Bool(a.may | b.may, a.must | b.must)
        a, b = self(e.left), self(e.right)
        if isinstance(a, _Bool) or isinstance(b, _Bool):  # == / != of bools
            if op not in ("==", "!="):
                return _unknown(e)
            a_fixed, b_fixed = a.may == a.must, b.may == b.must
            same = a_fixed & b_fixed & (a.must == b.must)
            differ = a_fixed & b_fixed & (a.must != b.must)
            may, must = (~differ, same) if op == "==" else (~same, differ)
            return _Bool(may, must)
        if op in ("<", "<=", ">", ">="):
            if op in (">", ">="):
                a, b, op = b, a, "<" if op == ">" else "<="
            if op == "<":
                return _Bool(a.lo < b.hi, a.hi < b.lo)
            return _Bool(a.lo <= b.hi, a.hi <= b.lo)
        if op in ("==", "!="):
            meet = (a.lo <= b.hi) & (b.lo <= a.hi)
            one = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
            return _Bool(meet, one) if op == "==" else _Bool(~one, ~meet)
        if op == "+":
            return _wide(_sat(a.lo + b.lo), _sat(a.hi + b.hi))
        if op == "-":
            return _wide(_sat(a.lo - b.hi), _sat(a.hi - b.lo))
        if op == "*":
            return self._corners(a, b, _mul)
        if op == "//" and e.type == n.INT:
            return self.floordiv(a, b)
        if op == "%" and e.type == n.INT:
            return self.mod(a, b)
        if op in n.BITWISE:
            return self.bitwise(op, a, b)
        if op == "/" and e.type == n.FLOAT:
            out = self._corners(a, b, torch.div)
            apart = (b.lo > 0) | (b.hi < 0)  # a divisor range holding 0: anything
            return _Int(torch.where(apart, out.lo, -math.inf), torch.where(apart, out.hi, math.inf))
        return _unknown(e)

    @staticmethod
    def _corners(a: _Int, b: _Int, fn) -> _Int:
        vals = torch.broadcast_tensors(fn(a.lo, b.lo), fn(a.lo, b.hi), fn(a.hi, b.lo), fn(a.hi, b.hi))
        stack = torch.stack(vals)
        if stack.dtype == _F64 and torch.isnan(stack).any():  # inf / inf and the like: anything
            nan = torch.isnan(stack).any(0)
            return _wide(torch.where(nan, math.nan, stack.amin(0)), torch.where(nan, math.nan, stack.amax(0)))
        return _Int(stack.amin(0), stack.amax(0))

    def floordiv(self, a: _Int, c: _Int) -> _Int:
        # monotone in each argument where the divisor keeps one sign: extremes at the corners
        out = self._corners(a, c, _fdiv)
        signed = (c.lo > 0) | (c.hi < 0)
        zero = (c.lo == 0) & (c.hi == 0)
        lo = torch.where(signed, out.lo, torch.where(zero, 0, -BIG))
        hi = torch.where(signed, out.hi, torch.where(zero, 0, BIG))
        return _Int(lo, hi)

    @staticmethod
    def bitwise(op: str, a: _Int, b: _Int) -> _Int:
        """Bounds of ``x op y`` per tile. Shifts: monotone in x, and in the (clamped) count for x of
        one sign. ``& | ^``: the bits above the highest one that differs between an interval's
        ends are the same for all its values (two's complement, ends of one sign); below it, any
        bit may be set, except in a single value, whose own bits are known."""
        if op in ("<<", ">>"):
            k = _Int(b.lo.clamp(0, n.SHIFT_MAX), b.hi.clamp(0, n.SHIFT_MAX))
            return _Evaluator._corners(a, k, lambda x, c: _mul(x, 2**c) if op == "<<" else _fdiv(x, 2**c))
        a_lo, a_hi, b_lo, b_hi = torch.broadcast_tensors(a.lo, a.hi, b.lo, b.hi)
        spread_a, spread_b = a_lo ^ a_hi, b_lo ^ b_hi  # negative: the ends differ in sign
        low = 2 ** _bit_length(torch.maximum(spread_a, spread_b).clamp(min=0)) - 1  # the bits that may vary
        fixed_a, fixed_b = a_lo & ~low, b_lo & ~low
        known_a = torch.where(a_lo == a_hi, a_lo & low, 0)  # low bits set for sure
        known_b = torch.where(b_lo == b_hi, b_lo & low, 0)
        may_a = torch.where(a_lo == a_hi, known_a, low)  # low bits that may be set
        may_b = torch.where(b_lo == b_hi, known_b, low)
        if op == "&":
            lo, hi = (fixed_a | known_a) & (fixed_b | known_b), (fixed_a & fixed_b) | (may_a & may_b)
        elif op == "|":
            lo, hi = fixed_a | fixed_b | known_a | known_b, fixed_a | fixed_b | may_a | may_b
        else:
            lo, hi = fixed_a ^ fixed_b, (fixed_a ^ fixed_b) | low
        unknown = (spread_a < 0) | (spread_b < 0) | (torch.stack([a_lo, a_hi, b_lo, b_hi]).abs() >= BIG).any(0)
        return _Int(torch.where(unknown, -BIG, lo), torch.where(unknown, BIG, hi))

    def mod(self, a: _Int, c: _Int) -> _Int:
        one = c.lo == c.hi
        same_block = one & (_fdiv(a.lo, c.lo) == _fdiv(a.hi, c.lo))  # within one block: monotone
        lo = torch.where(c.lo > 0, 0, torch.where(c.hi < 0, c.lo + 1, -BIG))
        hi = torch.where(c.lo > 0, c.hi - 1, torch.where(c.hi < 0, 0, BIG))
        lo = torch.where(same_block & (c.lo != 0), _fmod(a.lo, c.lo), lo)
        hi = torch.where(same_block & (c.lo != 0), _fmod(a.hi, c.lo), hi)
        zero = one & (c.lo == 0)  # x % 0 == x
        return _Int(torch.where(zero, a.lo, lo), torch.where(zero, a.hi, hi))

    def select(self, e: n.Select):
        cond, a, b = self(e.cond), self(e.then), self(e.other)
        if isinstance(a, _Bool):
            may = torch.where(cond.must, a.may, torch.where(~cond.may, b.may, a.may | b.may))
            must = torch.where(cond.must, a.must, torch.where(~cond.may, b.must, a.must & b.must))
            return _Bool(may, must)
        lo = torch.where(cond.must, a.lo, torch.where(~cond.may, b.lo, torch.minimum(a.lo, b.lo)))
        hi = torch.where(cond.must, a.hi, torch.where(~cond.may, b.hi, torch.maximum(a.hi, b.hi)))
        return _Int(lo, hi)

    def call(self, e: n.Call):
        out = self._call(e)
        if e.type == n.INT and isinstance(out, _Int) and out.lo.is_floating_point():  # sign(i): integer bounds
            lo, hi = torch.floor(out.lo), torch.ceil(out.hi)
            return _Int(lo.nan_to_num(-BIG).clamp(-BIG, BIG).to(_I64), hi.nan_to_num(BIG).clamp(-BIG, BIG).to(_I64))
        return out

    def _call(self, e: n.Call):
        args = [self(x) for x in e.args]
        fn = e.fn
        if any(isinstance(a, _Bool) for a in args):
            return _unknown(e)
        if fn == "abs":
            (x,) = args
            lo = torch.where(x.lo >= 0, x.lo, torch.where(x.hi <= 0, -x.hi, torch.zeros_like(x.lo)))
            return _Int(lo, torch.maximum(x.hi, -x.lo))
        if fn in ("min", "max"):
            pick = torch.minimum if fn == "min" else torch.maximum
            lo, hi = args[0].lo, args[0].hi
            for a in args[1:]:
                lo, hi = pick(lo, a.lo), pick(hi, a.hi)
            return _Int(lo, hi)
        if fn == "clamp":
            x, lo, hi = args
            return _Int(torch.minimum(torch.maximum(x.lo, lo.lo), hi.lo), torch.minimum(torch.maximum(x.hi, lo.hi), hi.hi))
        if fn == "relu":
            zero = torch.zeros((), dtype=args[0].lo.dtype)
            return _Int(torch.maximum(args[0].lo, zero), torch.maximum(args[0].hi, zero))
        if fn in ("floor", "ceil") and e.type == n.INT:
            f = torch.floor if fn == "floor" else torch.ceil
            lo, hi = f(args[0].lo.to(_F64)), f(args[0].hi.to(_F64))
            return _Int(lo.nan_to_num(-BIG).clamp(-BIG, BIG).to(_I64), hi.nan_to_num(BIG).clamp(-BIG, BIG).to(_I64))
        if fn == "float":
            return _Int(args[0].lo.to(_F64), args[0].hi.to(_F64))
        f = FUNCTIONS[fn]
        lo_b, hi_b = f.bounds
        if f.shape == "monotone" and f.arity == (1, 1):  # non-decreasing; NaN (log of a negative) means anything
            lo, hi = f.torch(args[0].lo.to(_F64)), f.torch(args[0].hi.to(_F64))
            return _Int(torch.where(torch.isnan(lo), -math.inf, lo), torch.where(torch.isnan(hi), math.inf, hi))
        if f.shape == "bounded":  # the function's image; NaN at ±inf (sin): anything, unless finite
            finite = torch.isfinite(args[0].lo) & torch.isfinite(args[0].hi)
            return _Int(torch.where(finite, lo_b, -math.inf), torch.where(finite, hi_b, math.inf))
        return _unknown(e)

    def load(self, e: n.Load):
        t = self.values[e.tensor]
        ranges = []
        for axis, ix in enumerate(e.indices):  # indices are clamped into range, as in the kernel
            x = self(ix)
            size = t.shape[axis]
            ranges.append((x.lo.clamp(0, size - 1), x.hi.clamp(0, size - 1)))
        # axes whose index is not one point for some tile: it reads i or j, or an interval that
        # interval arithmetic could not narrow to a point (sin, a division by a range, ...)
        varying = [axis for axis, (lo_i, hi_i) in enumerate(ranges) if bool((lo_i != hi_i).any())]
        if t.numel() == 0 or (t.is_floating_point() and torch.isnan(t).any()):
            return _unknown(e)  # nothing to read, or NaN (false in every comparison, even negated)
        if len(varying) > 1:  # several axes vary within a tile: the whole tensor's range
            lo, hi = t.min(), t.max()
        else:
            shape = torch.broadcast_shapes(*(x.shape for r in ranges for x in r))
            ranges = [(torch.broadcast_to(a, shape), torch.broadcast_to(b, shape)) for a, b in ranges]
            if not varying:  # one element per (b, h): the indices are exact
                lo = hi = t[tuple(a for a, _ in ranges)]
            else:
                axis = varying[0]
                mins, maxs = self._table(e.tensor, axis)
                a, b = ranges[axis]
                b = torch.maximum(a, b)  # a tile past a packed sequence's end: empty interval, never used
                level = torch.floor(torch.log2((b - a + 1).to(_F64))).to(_I64)
                far = b - (1 << level) + 1  # [a, a + 2**level) and [far, b] cover [a, b]
                other = [r[0] for k, r in enumerate(ranges) if k != axis]
                lo = torch.minimum(mins[(level, *other, a)], mins[(level, *other, far)])
                hi = torch.maximum(maxs[(level, *other, a)], maxs[(level, *other, far)])
        if e.type == n.BOOL:
            return _Bool(hi != 0, lo != 0)
        dtype = _I64 if e.type == n.INT else _F64
        return _Int(lo.to(dtype), hi.to(dtype))

    def _table(self, name: str, axis: int):
        """Sparse tables of ``name`` along ``axis``: level k holds min/max over 2**k entries."""
        key = (name, axis)
        if key not in self.tables:
            t = self.values[name]
            t = (t.to(torch.int8) if t.dtype == torch.bool else t).movedim(axis, -1)
            mins, maxs = [t], [t]
            width = 1
            while 2 * width <= t.shape[-1]:
                m, x = mins[-1], maxs[-1]
                mins.append(torch.minimum(m[..., :-width], m[..., width:]))
                maxs.append(torch.maximum(x[..., :-width], x[..., width:]))
                width *= 2
            length = t.shape[-1]  # pad every level to the full length (the padding is never read)
            pad = lambda xs: torch.stack([torch.nn.functional.pad(x, (0, length - x.shape[-1])) for x in xs])
            self.tables[key] = (pad(mins), pad(maxs))
        return self.tables[key]


def _uses(e: n.Expr, name: str) -> bool:
    return any(isinstance(x, n.Var) and x.name == name for x in n.walk(e))


def classify(cascade: n.Cascade, values: dict, sizes: dict, block_m: int, block_n: int) -> TileClasses:
    """Tile classes of ``cascade``'s mask for one call (``values``: parameter name → scalar or
    tensor, on any device; ``sizes`` as ``validate.sizes_of``). Computed on the CPU. Packed
    sequences give ``n_q``/``n_kv`` as int64 tensors [B, 1, 1, 1] (each sequence's lengths) and
    ``N_Q``/``N_KV`` as the longest: tiles past a sequence's end are empty."""
    mask = cascade.stage("keep").expr
    n_q, n_kv = torch.as_tensor(sizes["n_q"]), torch.as_tensor(sizes["n_kv"])
    packed = n_q.dim() > 0
    batch = sizes["B"] if packed or _uses(mask, "b") else 1
    heads = sizes["n_heads"] if _uses(mask, "h") else 1
    tiles_m = -(-sizes["N_Q"] // block_m)
    tiles_n = -(-sizes["N_KV"] // block_n)
    cpu = {k: (v.detach().to("cpu") if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    shape = (batch, heads, tiles_m, tiles_n)
    if tiles_m == 0 or tiles_n == 0:
        classes = torch.zeros(shape, dtype=torch.int8)
    else:
        with torch.no_grad():
            keep = _Evaluator(cpu, sizes, tiles_m, tiles_n, block_m, block_n, batch, heads)(mask)
        may = torch.broadcast_to(keep.may, shape)
        must = torch.broadcast_to(keep.must, shape)
        kt = torch.arange(tiles_n).view(1, 1, 1, -1)
        qt = torch.arange(tiles_m).view(1, 1, -1, 1)
        whole = (kt + 1) * block_n <= n_kv  # not ragged
        inside = (qt * block_m < n_q) & (kt * block_n < n_kv)  # within the (packed) sequence
        classes = torch.where(may & inside, torch.where(must & whole, FULL, PARTIAL), EMPTY).to(torch.int8)
    order = torch.where(classes == PARTIAL, 0, torch.where(classes == FULL, 1, 2))
    idx = torch.sort(order, dim=-1, stable=True).indices.to(torch.int32)
    counts = torch.stack([(classes == PARTIAL).sum(-1), (classes == FULL).sum(-1)], -1).to(torch.int32)
    return TileClasses(block_m, block_n, classes, torch.cat([counts, idx], -1).contiguous())


def rectangles_may_keep(cascade: n.Cascade, values: dict, sizes: dict, rows: list[tuple[int, int]],
                        cols: list[tuple[int, int]]) -> torch.Tensor:
    """bool [len(rows), len(cols)]: may the mask keep some pair of rows ``[lo, hi)`` × keys
    ``[lo, hi)`` (any batch and head)? The tile classifier's interval arithmetic over arbitrary
    rectangles (context parallelism's shards): sound — False only where no pair is kept."""
    if not cascade.has_mask or not rows or not cols:
        return torch.ones(len(rows), len(cols), dtype=torch.bool)
    mask = cascade.stage("keep").expr
    batch = sizes["B"] if _uses(mask, "b") else 1
    heads = sizes["n_heads"] if _uses(mask, "h") else 1
    cpu = {k: (v.detach().to("cpu") if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    ev = _Evaluator(cpu, sizes, 1, 1, 1, 1, batch, heads)
    r = torch.tensor(rows, dtype=_I64).view(1, 1, -1, 2)
    c = torch.tensor(cols, dtype=_I64).t().reshape(1, 1, 2, -1)
    ev.index["i"] = _Int(r[..., :1], r[..., 1:] - 1)
    ev.index["j"] = _Int(c[:, :, :1], c[:, :, 1:] - 1)
    with torch.no_grad():
        may = torch.broadcast_to(ev(mask).may, (batch, heads, len(rows), len(cols)))
    empty = (r[..., 1:] <= r[..., :1]) | (c[:, :, 1:] <= c[:, :, :1])
    return (may & ~empty).flatten(0, 1).any(0)


class TileCache:
    """Classifications of one variant, reused while their inputs are unchanged (LRU)."""

    SIZE = 16

    def __init__(self):
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self.misses = 0

    def get(self, cascade: n.Cascade, values: dict, sizes: dict, block_m: int, block_n: int,
            device: torch.device) -> TileClasses:
        mask = cascade.stage("keep").expr
        used = {x.tensor for x in n.walk(mask) if isinstance(x, n.Load)}
        scalars = tuple(sorted((k, v) for k, v in values.items() if not isinstance(v, torch.Tensor)))
        tensors = {k: values[k] for k in sorted(used)}
        plain = {k: (tuple(v.flatten().tolist()) if isinstance(v, torch.Tensor) else v) for k, v in sizes.items()}
        key = (block_m, block_n, str(device), scalars,
               tuple(sorted(plain.items())), tuple((k, tuple(t.shape), t.dtype) for k, t in tensors.items()))
        hit = self._entries.get(key)
        if hit is not None and all(torch.equal(hit[0][k], t) for k, t in tensors.items()):
            self._entries.move_to_end(key)
            return hit[1]
        self.misses += 1
        found = classify(cascade, values, sizes, block_m, block_n)
        found = TileClasses(block_m, block_n, found.classes.to(device), found.lists.to(device))
        self._entries[key] = ({k: t.detach().clone() for k, t in tensors.items()}, found)
        self._entries.move_to_end(key)
        while len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)
        return found
