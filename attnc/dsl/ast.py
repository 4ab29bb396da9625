"""The typed syntax tree of a spec file: frozen dataclasses, each carrying the span it came from.

Spans are excluded from equality, so ``parse(print(ast)) == ast`` is the round-trip property.
No lark object appears here; ``parser.py`` is the only module that sees lark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .errors import Span

# ---------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Name:
    id: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Num:
    value: int | float
    is_int: bool
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Unary:
    op: str  # "-", "+" or "~"
    operand: "Expr"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / // % ** & | ^ << >>
    left: "Expr"
    right: "Expr"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Compare:
    """A (possibly chained) comparison: ``a < b <= c`` means ``a < b and b <= c``."""

    ops: tuple[str, ...]
    operands: tuple["Expr", ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" / "or"
    left: "Expr"
    right: "Expr"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    operand: "Expr"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class IfExp:
    cond: "Expr"
    then: "Expr"
    other: "Expr"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    func_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Index:
    base: str
    indices: tuple["Expr", ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    base_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Reduce:
    """``op(body for var)``; only ``var == "j"`` (the key index) is meaningful. A partial sum
    ``sum(body for k > j)`` also has ``rel`` (``<``, ``<=``, ``>``, ``>=``) and ``bound`` (``j``):
    per pair (i, j), the sum over the kept keys k with ``k rel j``."""

    op: str
    body: "Expr"
    var: str
    span: Span | None = field(default=None, compare=False, repr=False)
    var_span: Span | None = field(default=None, compare=False, repr=False)
    rel: str | None = None
    bound: str | None = None
    bound_span: Span | None = field(default=None, compare=False, repr=False)


Expr = Union[Name, Num, Bool, Unary, BinOp, Compare, BoolOp, Not, IfExp, Call, Index, Reduce]

# An expression larger than this, once definitions and lets are inlined (``ir/lower.py``) or as
# traced (``dsl/trace.py``), is almost surely a runaway definition: refused before any pass,
# printer or hash walks it (a chain of `x = x + x` doubles the tree 60 times over).
MAX_EXPR_NODES = 4000

# ---------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ScalarType:
    kind: str  # "int" | "float" | "bool"
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TensorType:
    dims: tuple[Expr, ...]
    elem: str  # "int" | "float" | "bool"
    span: Span | None = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Param:
    name: str
    type: ScalarType | TensorType
    default: Expr | None
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Assign:
    """``score = ...``, ``mask = ...`` or ``norm = ...`` inside a body."""

    target: str
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)
    target_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class StageAssign:
    """A cascade line of a norm: ``name[i] = ...`` or ``name[i, j] = ...``."""

    name: str
    indices: tuple[str, ...]
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)
    target_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Grid:
    """``grid (y, x) = (height, width) [dilated (dy, dx)]``: the tokens form a row-major grid."""

    axes: tuple[str, ...]
    sizes: tuple[Expr, ...]
    dilated: tuple[Expr, ...] | None
    span: Span | None = field(default=None, compare=False, repr=False)
    axes_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)


Stmt = Union[Let, Assign, StageAssign, Grid]

# ---------------------------------------------------------------------------- top level

DEF_KINDS = ("mask", "score", "norm", "attention")


@dataclass(frozen=True)
class Def:
    kind: str  # one of DEF_KINDS
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Import:
    source: str | None  # a quoted path, or None for the library
    names: tuple[Name, ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    source_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Module:
    items: tuple[Import | Def, ...]
    path: str = field(default="<string>", compare=False)

    @property
    def defs(self) -> tuple[Def, ...]:
        return tuple(i for i in self.items if isinstance(i, Def))

    @property
    def imports(self) -> tuple[Import, ...]:
        return tuple(i for i in self.items if isinstance(i, Import))
