"""Key-tile bounds from a mask: which key tiles a query tile must visit, and which need no mask.

The mask ``keep[i, j]`` is split into its top-level ``and`` atoms. An atom that is an integer
comparison *affine* in ``i`` and ``j`` — ``a·i + b·j + c ⋈ 0`` with integer constants ``a, b`` and
``c`` free of ``i, j`` (sizes, runtime parameters, ``b``/``h``, tensor values indexed by them) —
becomes a *constraint* ``a·i + b·j + c >= 0``. Over a tile ``[i0, i1] × [j0, j1]`` an affine
function takes its minimum at a corner that the signs of ``a`` and ``b`` pick, so

* a constraint with ``b > 0`` (``b < 0``) bounds the keys from below (above) for the whole query
  tile: key tiles outside ``[lo, hi)`` hold no kept pair and are never loaded;
* the key tiles where every constraint holds at the worst corner form one interval
  ``[full_lo, full_hi)``: there the affine atoms are all true and are not evaluated.

Every other atom (``or``, ``//``, ``%``, tensor-valued indices, ...) is *residual*: it is still
evaluated on every visited tile. Causal, sliding-window and bottom-right-aligned masks are pure
conjunctions of affine atoms; a full tile classification of arbitrary masks is later work.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import nodes as n

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class Constraint:
    """``a·i + b·j + c >= 0`` with integer ``a``, ``b`` and ``c`` an int expression free of i, j."""

    a: int
    b: int
    c: n.Expr


@dataclass(frozen=True)
class TileBounds:
    constraints: tuple[Constraint, ...]
    residual: tuple[n.Expr, ...]  # atoms still evaluated on every visited tile

    @property
    def masked(self) -> bool:
        return bool(self.constraints or self.residual)


def _atoms(e: n.Expr) -> list[n.Expr]:
    if isinstance(e, n.Binary) and e.op == "and":
        return _atoms(e.left) + _atoms(e.right)
    return [e]


def _affine(e: n.Expr) -> tuple[int, int, list[tuple[int, n.Expr]]] | None:
    """``e`` as ``a·i + b·j + Σ k·rest`` (integer a, b, k; rest free of i, j), or None."""
    if e.type != n.INT:
        return None
    if isinstance(e, n.Var) and e.name in ("i", "j"):
        return (1, 0, []) if e.name == "i" else (0, 1, [])
    if isinstance(e, n.Const):
        return 0, 0, [(1, e)]
    if not _uses_ij(e):
        return 0, 0, [(1, e)]
    if isinstance(e, n.Unary) and e.op == "-":
        inner = _affine(e.operand)
        return None if inner is None else _scale(inner, -1)
    if isinstance(e, n.Binary) and e.op in ("+", "-"):
        left, right = _affine(e.left), _affine(e.right)
        if left is None or right is None:
            return None
        if e.op == "-":
            right = _scale(right, -1)
        return left[0] + right[0], left[1] + right[1], left[2] + right[2]
    if isinstance(e, n.Binary) and e.op == "*":
        for const, other in ((e.left, e.right), (e.right, e.left)):
            if isinstance(const, n.Const) and isinstance(const.value, int) and not isinstance(const.value, bool):
                inner = _affine(other)
                return None if inner is None else _scale(inner, const.value)
    return None


def _scale(form, k: int):
    a, b, rest = form
    return a * k, b * k, [(c * k, x) for c, x in rest]


def _uses_ij(e: n.Expr) -> bool:
    # Stage values (Ref, Running, Dot) vary with the query, and maybe with the key.
    return any((isinstance(x, n.Var) and x.name in ("i", "j")) or isinstance(x, (n.Ref, n.Running, n.Dot, n.ValueRow))
               for x in n.walk(e))


def _sum(terms: list[tuple[int, n.Expr]]) -> n.Expr:
    """The IR of ``Σ k·x`` (an int expression)."""
    out: n.Expr | None = None
    const = 0
    for k, x in terms:
        if isinstance(x, n.Const):
            const += k * int(x.value)
            continue
        term = x if abs(k) == 1 else n.Binary("*", n.Const(abs(k), n.INT), x, n.INT)
        if out is None:
            out = term if k > 0 else n.Unary("-", term, n.INT)
        else:
            out = n.Binary("+" if k > 0 else "-", out, term, n.INT)
    if out is None:
        return n.Const(const, n.INT)
    if const:
        out = n.Binary("+" if const > 0 else "-", out, n.Const(abs(const), n.INT), n.INT)
    return out


def _constraints(atom: n.Expr) -> list[Constraint] | None:
    """The constraints an atom means, or None when it is not an affine comparison."""
    if isinstance(atom, n.Unary) and atom.op == "not" and isinstance(atom.operand, n.Binary) \
            and atom.operand.op in ("<", "<=", ">", ">="):
        inner = atom.operand
        negated = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[inner.op]
        atom = n.Binary(negated, inner.left, inner.right, n.BOOL)
    if not (isinstance(atom, n.Binary) and atom.op in ("<", "<=", ">", ">=", "==")):
        return None
    if atom.left.type != n.INT or atom.right.type != n.INT:
        return None
    diff = _affine(n.Binary("-", atom.left, atom.right, n.INT))
    if diff is None:
        return None
    a, b, rest = diff
    if a == 0 and b == 0:
        return None  # free of i and j: a per-program condition, left to the mask
    # d = left - right; normalise d ⋈ 0 to g >= 0 over the integers.
    if atom.op == "==":
        return [Constraint(a, b, _sum(rest)), Constraint(-a, -b, _sum(_scale((0, 0, rest), -1)[2]))]
    if atom.op == ">=":
        return [Constraint(a, b, _sum(rest))]
    if atom.op == ">":
        return [Constraint(a, b, _sum(rest + [(-1, n.Const(1, n.INT))]))]
    neg = [(-k, x) for k, x in rest]
    if atom.op == "<=":
        return [Constraint(-a, -b, _sum(neg))]
    return [Constraint(-a, -b, _sum(neg + [(-1, n.Const(1, n.INT))]))]  # "<"


def tile_bounds(c: n.Cascade) -> TileBounds:
    """The constraints and residual atoms of ``c``'s mask (none when it has no mask)."""
    if not c.has_stage("keep"):
        return TileBounds((), ())
    constraints: list[Constraint] = []
    residual: list[n.Expr] = []
    for atom in _atoms(c.stage("keep").expr):
        if isinstance(atom, n.Const) and atom.value is True:
            continue
        found = _constraints(atom)
        if found is None:
            residual.append(atom)
        else:
            constraints += found
    return TileBounds(tuple(constraints), tuple(residual))
