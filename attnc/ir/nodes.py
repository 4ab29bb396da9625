"""The Einsum-cascade IR: frozen, hashable dataclasses.

A ``Cascade`` is a list of ``Stage``s, each an Einsum over some of the ranks

    b (batch), h (query head), i (query), j (key), d (q·k feature), f (value feature).

Every value is implicitly over ``b, h``; a stage is *per query* (``[i]``), *per pair*
(``[i, j]``), or a per-query *vector* over ``f`` (``[i, f]``). The first stages are always

    qk[i, j]   = Σ_d q̃[i, d] · k̃[j, d]          (``Dot``; q̃ = φ(q), k̃ = ψ(k) the feature maps, if any)
    s[i, j]    = the score function of ``scale * qk``
    keep[i, j] = the mask                        (absent when every pair is kept)

and the normalization follows: pair maps, j-reductions filtered by ``keep`` (``Reduce``), the
contraction with V (``Contract``), row maps, and the outputs ``out[i, f]`` and optional
``lse[i]``. Expression types are ``int``, ``float``, ``bool`` and ``vec`` (a float vector over f,
only ever linear in ``v[j]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..dsl.errors import Span

INT, FLOAT, BOOL, VEC = "int", "float", "bool", "vec"
NUMERIC = (INT, FLOAT)

ROW = ("i",)
PAIR = ("i", "j")

# Built-in index and size variables. ``i``/``j`` are the query/key positions (``q_idx``/``kv_idx``
# in specs); sizes are runtime values, never specialization keys.
INDEX_VARS = ("b", "h", "i", "j")
SIZE_VARS = ("n_q", "n_kv", "head_dim", "n_heads", "n_kv_heads", "scale")
# Upper-case names usable in tensor shapes; ``D_V`` is the value head dim.
DIM_VARS = ("B", "H", "H_KV", "N_Q", "N_KV", "D", "D_V")

REDUCE_OPS = ("sum", "max", "min")
# Integer bitwise operators (int32 two's complement, as in the kernels). A shift count outside
# 0..SHIFT_MAX is taken as the nearest end of that range, in every backend.
BITWISE = ("&", "|", "^", "<<", ">>")
SHIFT_MAX = 31


@dataclass(frozen=True)
class Const:
    value: int | float | bool
    type: str


@dataclass(frozen=True)
class Var:
    """A built-in index (b, h, i, j), size (n_q, …, scale) or shape symbol (B, N_KV, …)."""

    name: str
    type: str


@dataclass(frozen=True)
class Param:
    """A scalar runtime parameter of the cascade."""

    name: str
    type: str


@dataclass(frozen=True)
class Load:
    """``tensor[indices]`` for a tensor parameter; out-of-range indices are clamped."""

    tensor: str
    indices: tuple["Expr", ...]
    type: str


@dataclass(frozen=True)
class Ref:
    """The value of an earlier stage at the current (b, h, i[, j])."""

    stage: str
    type: str


@dataclass(frozen=True)
class ValueRow:
    """``v[j]``: the value vector of key j (only inside a ``Contract``'s weight extraction)."""

    type: str = VEC


@dataclass(frozen=True)
class Feature:
    """In a feature map: the element ``q[b, h, i, d]`` (side "q") or ``k[b, hkv, j, d]`` ("k")."""

    side: str
    type: str = FLOAT


@dataclass(frozen=True)
class Dot:
    """``Σ_d q̃[b, h, i, d] · k̃[b, h // (n_heads // n_kv_heads), j, d]``, where ``q̃ = q_map`` and
    ``k̃ = k_map`` are the feature maps: elementwise pre-stages over ``[i, d]`` and ``[j, d]``
    (expressions over ``Feature``, the indices and parameters; None: q and k themselves).
    ``lo``/``hi`` (int expressions of sizes and scalar parameters; None: 0 and the head dim) limit
    the sum to the features ``lo <= d < hi``: a cascade may hold several Dot stages (``qk``,
    ``qk2``, ...), one per slice its scores read (differential attention's two halves of D)."""

    type: str = FLOAT
    q_map: "Expr | None" = None
    k_map: "Expr | None" = None
    lo: "Expr | None" = None
    hi: "Expr | None" = None

    def map(self, side: str) -> "Expr | None":
        return self.q_map if side == "q" else self.k_map

    @property
    def sliced(self) -> bool:
        return self.lo is not None or self.hi is not None


@dataclass(frozen=True)
class Unary:
    op: str  # "-" | "not"
    operand: "Expr"
    type: str


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % **  < <= > >= == !=  and or
    left: "Expr"
    right: "Expr"
    type: str


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple["Expr", ...]
    type: str


@dataclass(frozen=True)
class Select:
    cond: "Expr"
    then: "Expr"
    other: "Expr"
    type: str


@dataclass(frozen=True)
class Reduce:
    """``op_j{keep} body``: a reduction over the keys the mask keeps (empty: sum 0, max −inf)."""

    op: str
    body: "Expr"
    type: str = FLOAT


@dataclass(frozen=True)
class Scan:
    """``Σ_{k kept, k rel j} body[i, k]``: per pair, a partial sum of ``body`` (a pair expression,
    read at key k) along the row — ``rel`` "<" / "<=" from the first key (a prefix sum, exclusive /
    inclusive), ">" / ">=" from the last (a suffix sum). Only at the top of a pair stage."""

    rel: str
    body: "Expr"
    type: str = FLOAT

    @property
    def descending(self) -> bool:
        """Whether the kernels visit the keys last first (a suffix sum)."""
        return self.rel in (">", ">=")

    @property
    def inclusive(self) -> bool:
        return self.rel in ("<=", ">=")


SCAN_RELS = ("<", "<=", ">", ">=")


@dataclass(frozen=True)
class Contract:
    """``Σ_j{keep} weight[i, j] · v[j, f]``: the contraction with V."""

    weight: "Expr"
    type: str = VEC


@dataclass(frozen=True)
class Running:
    """In a rescale factor: a running reduction's value before ("old") or after ("new") a tile."""

    stage: str
    when: str  # "old" | "new"
    type: str = FLOAT


Expr = Union[Const, Var, Param, Load, Ref, ValueRow, Feature, Dot, Unary, Binary, Call, Select, Reduce, Contract, Running,
             Scan]


# A tensor dimension declared ``_``: any size (the kernel clamps indices by the runtime size).
ANY_DIM = Var("_", INT)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # int | float | bool | tensor
    elem: str | None = None  # element type of a tensor
    dims: tuple[Expr, ...] = ()  # tensor shape, over DIM_VARS and int params
    default: Expr | None = None  # over SIZE_VARS; evaluated at call time
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Stage:
    name: str
    ranks: tuple[str, ...]  # ROW or PAIR
    expr: Expr
    span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def type(self) -> str:
        return self.expr.type

    @property
    def is_reduction(self) -> bool:
        return isinstance(self.expr, (Reduce, Contract))

    @property
    def is_scan(self) -> bool:
        return isinstance(self.expr, Scan)


@dataclass(frozen=True)
class Grid:
    """The tokens form a row-major grid (``grid (y, x) = (height, width)``): token ``t`` sits at
    coordinate ``(t // width, t % width)``. ``sizes`` and ``dilated`` are int expressions over
    scalar parameters and ``n_q``/``n_kv``, evaluated per call. The grid never changes what a spec
    means (coordinates are plain index arithmetic in the stages); it lets the runtime permute the
    tokens into small 2-D/3-D tiles, residues modulo ``dilated`` together (``ir/layout.py``)."""

    axes: tuple[str, ...]
    sizes: tuple[Expr, ...]
    dilated: tuple[Expr, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Cascade:
    name: str
    params: tuple[ParamSpec, ...]
    stages: tuple[Stage, ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    grid: Grid | None = None

    def stage(self, name: str) -> Stage:
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(name)

    @property
    def dots(self) -> tuple[Stage, ...]:
        """The Dot stages (``qk`` first): the products of q and k the scores read."""
        return tuple(st for st in self.stages if isinstance(st.expr, Dot))

    def has_stage(self, name: str) -> bool:
        return any(st.name == name for st in self.stages)

    @property
    def has_mask(self) -> bool:
        return self.has_stage("keep")

    @property
    def has_lse(self) -> bool:
        return self.has_stage("lse")

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


# ---------------------------------------------------------------------------- traversal


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Select):
        return (e.cond, e.then, e.other)
    if isinstance(e, Reduce):
        return (e.body,)
    if isinstance(e, Contract):
        return (e.weight,)
    if isinstance(e, Scan):
        return (e.body,)
    return ()


def rebuild(e: Expr, kids: tuple[Expr, ...]) -> Expr:
    """``e`` with its children replaced (same order as ``children``)."""
    if isinstance(e, Load):
        return Load(e.tensor, kids, e.type)
    if isinstance(e, Unary):
        return Unary(e.op, kids[0], e.type)
    if isinstance(e, Binary):
        return Binary(e.op, kids[0], kids[1], e.type)
    if isinstance(e, Call):
        return Call(e.fn, kids, e.type)
    if isinstance(e, Select):
        return Select(kids[0], kids[1], kids[2], e.type)
    if isinstance(e, Reduce):
        return Reduce(e.op, kids[0], e.type)
    if isinstance(e, Contract):
        return Contract(kids[0])
    if isinstance(e, Scan):
        return Scan(e.rel, kids[0], e.type)
    return e


def walk(e: Expr):
    """Every distinct node of ``e`` (by identity), pre-order; shared subtrees are visited once."""
    stack = [e]
    seen: set[int] = set()
    keep = []  # hold the nodes so ids stay unique while walking
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        yield node
        stack.extend(reversed(children(node)))


def transform(e: Expr, fn, _memo: dict | None = None) -> Expr:
    """Bottom-up rewrite: ``fn`` sees each node after its children were rewritten.

    Inlining shares subtrees (a `let` used twice is one object), so results are memoized by
    node identity: the work is linear in the DAG, not in the tree it stands for.
    """
    memo = {} if _memo is None else _memo
    key = id(e)
    if key in memo:
        return memo[key][1]
    kids = children(e)
    out = e
    if kids:
        new = tuple(transform(k, fn, memo) for k in kids)
        if any(a is not b for a, b in zip(new, kids)):
            out = rebuild(e, new)
    out = fn(out)
    memo[key] = (e, out)  # keep e alive so its id is not reused during this walk
    return out


def tree_size(e: Expr, _memo: dict | None = None) -> int:
    """The number of nodes of ``e`` as a tree (shared subtrees counted at every use)."""
    memo = {} if _memo is None else _memo
    key = id(e)
    if key not in memo:
        memo[key] = (e, 1 + sum(tree_size(k, memo) for k in children(e)))
    return memo[key][1]


def tree_depth(e: Expr) -> int:
    """The number of nodes on ``e``'s longest root-to-leaf path (without recursion: this is what
    bounds every recursive pass after it)."""
    depth: dict[int, int] = {}
    stack = [(e, False)]
    while stack:
        x, expanded = stack.pop()
        if id(x) in depth:
            continue
        kids = children(x)
        if expanded:
            depth[id(x)] = 1 + max((depth[id(k)] for k in kids), default=0)
        else:
            stack.append((x, True))
            stack.extend((k, False) for k in kids if id(k) not in depth)
    return depth[id(e)]


def refs(e: Expr) -> set[str]:
    return {n.stage for n in walk(e) if isinstance(n, Ref)}


def free_ranks(e: Expr, stage_ranks: dict[str, tuple[str, ...]], _memo: dict | None = None) -> set[str]:
    """The query/key ranks (``i``, ``j``) ``e`` varies over; reductions remove ``j``."""
    memo = {} if _memo is None else _memo
    if id(e) in memo:
        return memo[id(e)][1]
    out = _free_ranks(e, stage_ranks, memo)
    memo[id(e)] = (e, out)
    return out


def _free_ranks(e: Expr, stage_ranks, memo) -> set[str]:
    if isinstance(e, Var):
        return {e.name} if e.name in ("i", "j") else set()
    if isinstance(e, Ref):
        return set(stage_ranks.get(e.stage, ()))
    if isinstance(e, (Dot, Scan)):
        return {"i", "j"}
    if isinstance(e, ValueRow):
        return {"j"}
    if isinstance(e, (Reduce, Contract)):
        return free_ranks(children(e)[0], stage_ranks, memo) - {"j"} | {"i"}
    out: set[str] = set()
    for k in children(e):
        out |= free_ranks(k, stage_ranks, memo)
    return out
