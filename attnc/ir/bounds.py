"""Key-tile bounds from a mask: which key tiles a query tile must visit, and which need no mask.

The mask ``keep[i, j]`` is rewritten into a disjunction of *clauses* (DNF over its ``and``/``or``/
``not``), each a conjunction of atoms. Comparisons with ``abs``/``min``/``max``/``clamp`` on the
key side become ``and``/``or`` of plain comparisons first (``|d| <= w`` is ``d <= w and -d <= w``).
An atom of a clause is then

* a *constraint* ``b·j + g >= 0``: a comparison linear in ``j`` with an integer coefficient
  ``b != 0``, where ``g`` is any int expression of the query alone (``i``, sizes, runtime
  parameters, tensor values not indexed by ``j``). ``X // c ⋈ Y`` with ``X`` linear in ``j``, ``Y``
  free of ``j`` and ``c`` a literal or parameter gives one per sign of ``c`` (``X // c >= Y`` is
  ``X >= c·Y`` for ``c > 0``, ``X <= c·Y`` for ``c < 0``), each *guarded* by its sign at run time,
  and a condition for ``c = 0``: exact for every ``c``;
* a *condition* free of ``j`` (a bool of the query alone): a row where it fails keeps nothing;
* a *congruence* ``(s·j + g) % m == 0`` (``s = ±1``): it moves each row's interval ends onto
  kept keys (dilated windows). It is also residual: a full tile still evaluates it;
* *residual*: anything else, evaluated on every visited tile.

In the kernel, each clause gives every query row an exact key interval ``[lo_r, hi_r)`` (from its
constraints, conditions and congruences), the query tile visits the hull of the rows' intervals,
and the key tiles inside every row's interval are *full*: no constraint needs evaluating there.
The tile ranges of several clauses are merged into disjoint pieces, so a tile is visited once.
Causal, sliding window, chunked, prefix-LM, sink + window and dilated windows visit exactly the
tiles that hold a kept pair (dilated: when the dilation is at most the tile size); see
``codegen/generate.py: key_range``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import nodes as n

MAX_CLAUSES = 4  # a mask whose DNF has more clauses keeps its `or`s whole, as residual atoms

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_CMP = tuple(_FLIP)


@dataclass(frozen=True)
class Constraint:
    """``b·j + g >= 0`` with an integer ``b != 0`` and ``g`` an int expression free of ``j``;
    only valid where ``guard`` (free of ``i`` and ``j``) holds, when there is one."""

    b: int
    g: n.Expr
    guard: n.Expr | None = None


@dataclass(frozen=True)
class Congruence:
    """``(s·j + g) % m == 0`` with ``s = ±1``, ``g`` free of ``j`` and ``m`` free of ``i``, ``j``."""

    s: int
    g: n.Expr
    m: n.Expr


@dataclass(frozen=True)
class Clause:
    constraints: tuple[Constraint, ...] = ()
    conditions: tuple[n.Expr, ...] = ()  # bools free of j
    congruences: tuple[Congruence, ...] = ()
    residual: tuple[n.Expr, ...] = ()  # atoms evaluated on every visited tile of this clause
    opaque: bool = False  # a residual atom of indices and inputs only: classified at run time
    congruence_atoms: tuple[n.Expr, ...] = ()  # the residual atom of each congruence, in order

    @property
    def bounded(self) -> bool:
        return bool(self.constraints or self.conditions or self.congruences)

    @property
    def lower_bounded(self) -> bool:
        return any(c.b > 0 for c in self.constraints) or bool(self.congruences)

    @property
    def interval(self) -> bool:
        """Whether each row's key interval is exactly this clause (constraints and conditions only)."""
        return self.bounded and not (self.residual or self.congruences or self.opaque)

    @property
    def exact_ends(self) -> bool:
        """Whether the clause is its constraints, conditions and congruences only: each row's
        interval ends, moved onto kept keys, hold a kept key exactly when the row keeps one."""
        return self.bounded and not self.opaque and set(self.residual) <= set(self.congruence_atoms)


@dataclass(frozen=True)
class TileBounds:
    """The mask as ``clauses[0] or clauses[1] or ...`` (one clause, empty, when unmasked)."""

    clauses: tuple[Clause, ...] = field(default_factory=lambda: (Clause(),))

    @property
    def masked(self) -> bool:
        return len(self.clauses) > 1 or self.clauses[0] != Clause()

    @property
    def bounded(self) -> bool:
        """Whether the kernel computes key ranges (else every query tile visits every key tile)."""
        return len(self.clauses) > 1 or self.clauses[0].bounded

    @property
    def interval_mask(self) -> bool:
        """Whether each row's key interval is the mask itself (one clause of constraints and
        conditions only): boundary tiles then test ``lo_r <= j < hi_r`` instead of the mask."""
        return len(self.clauses) == 1 and self.clauses[0].interval

    @property
    def intervals_only(self) -> bool:
        """Whether every clause is exactly its rows' intervals: a row keeps a key iff one of its
        intervals is not empty, and a tile inside one clause's intervals for every row is full."""
        return all(cl.interval for cl in self.clauses)

    @property
    def exact_rows(self) -> bool:
        """Whether a row keeps a key exactly when one of its clause intervals is not empty (every
        clause is intervals and congruences only, ``Clause.exact_ends``)."""
        return all(cl.exact_ends for cl in self.clauses)

    @property
    def runtime(self) -> bool:
        """Whether tiles are classified at run time (``runtime/sparsity.py``) instead: some atom
        the bounds cannot decide reads only indices, sizes and inputs (document ids, `%` of both
        indices), so interval arithmetic over a tile can."""
        return any(cl.opaque for cl in self.clauses)

    @property
    def full_residual(self) -> tuple[n.Expr, ...]:
        """What a full tile evaluates: the single clause's residual atoms; with several clauses,
        or with runtime classification (full there means the whole mask holds), nothing."""
        if self.runtime:
            return ()
        if len(self.clauses) == 1:
            return self.clauses[0].residual
        return ()


# -- expressions ---------------------------------------------------------------------------------

def _has_j(e: n.Expr) -> bool:
    return any(isinstance(x, n.Var) and x.name == "j" for x in n.walk(e))


def _row_only(e: n.Expr) -> bool:
    """Free of ``j`` and of stage values: printable where the key range is computed."""
    return not any((isinstance(x, n.Var) and x.name == "j") or isinstance(x, (n.Ref, n.Running, n.Dot, n.ValueRow))
                   for x in n.walk(e))


def _program_only(e: n.Expr) -> bool:
    """Free of ``i`` as well: one value per program (a guard or a divisor)."""
    return _row_only(e) and not any(isinstance(x, n.Var) and x.name == "i" for x in n.walk(e))


def _int_const(e: n.Expr) -> int | None:
    if isinstance(e, n.Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return e.value
    return None


def _linear_j(e: n.Expr) -> tuple[int, list[tuple[int, n.Expr]]] | None:
    """``e`` as ``b·j + Σ k·x`` (integers b, k; each x row-only), or None."""
    if e.type != n.INT:
        return None
    if isinstance(e, n.Var) and e.name == "j":
        return 1, []
    if _row_only(e):
        return 0, [(1, e)]
    if isinstance(e, n.Unary) and e.op == "-":
        inner = _linear_j(e.operand)
        return None if inner is None else _scale(inner, -1)
    if isinstance(e, n.Binary) and e.op in ("+", "-"):
        left, right = _linear_j(e.left), _linear_j(e.right)
        if left is None or right is None:
            return None
        if e.op == "-":
            right = _scale(right, -1)
        return left[0] + right[0], left[1] + right[1]
    if isinstance(e, n.Binary) and e.op == "*":
        for const, other in ((e.left, e.right), (e.right, e.left)):
            k = _int_const(const)
            if k is not None:
                inner = _linear_j(other)
                return None if inner is None else _scale(inner, k)
    return None


def _scale(form, k: int):
    b, rest = form
    return b * k, [(c * k, x) for c, x in rest]


def _sum(terms: list[tuple[int, n.Expr]]) -> n.Expr:
    """The IR of ``Σ k·x`` (an int expression)."""
    out: n.Expr | None = None
    const = 0
    for k, x in terms:
        if k == 0:
            continue
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


def _bin(op: str, a: n.Expr, b: n.Expr) -> n.Expr:
    return n.Binary(op, a, b, n.BOOL if op in _CMP or op in ("and", "or") else n.INT)


def _plus(a: n.Expr, k: int) -> n.Expr:
    return a if k == 0 else n.Binary("+" if k > 0 else "-", a, n.Const(abs(k), n.INT), n.INT)


def _neg(a: n.Expr) -> n.Expr:
    return n.Unary("-", a, n.INT)


# -- boolean structure: push `not` down, open abs/min/max/clamp on the key side ------------------

def _normal(e: n.Expr, negate: bool = False) -> n.Expr:
    """``e`` (or ``not e``) with `not` pushed to comparisons and key-side abs/min/max/clamp
    rewritten into and/or of plain comparisons. The result means the same for every (i, j)."""
    if isinstance(e, n.Unary) and e.op == "not":
        return _normal(e.operand, not negate)
    if isinstance(e, n.Binary) and e.op in ("and", "or"):
        op = e.op if not negate else ("or" if e.op == "and" else "and")
        return _bin(op, _normal(e.left, negate), _normal(e.right, negate))
    if isinstance(e, n.Binary) and e.op in _CMP and e.left.type == n.INT and e.right.type == n.INT:
        op = _NEGATE[e.op] if negate else e.op
        return _open(op, e.left, e.right)
    return n.Unary("not", e, n.BOOL) if negate else e


def _open(op: str, x: n.Expr, y: n.Expr) -> n.Expr:
    """``x op y`` with the key side's abs/min/max/clamp opened up (x, y ints)."""
    if not _has_j(x) and _has_j(y):
        x, y, op = y, x, _FLIP[op]
    if not _has_j(x) or _has_j(y) or (op == "!=" and _linear_j(_bin("-", x, y)) is None):
        return _bin(op, x, y)  # nothing to open: free of j, j on both sides, or not linear
    if op == "!=":  # d != 0 is d < 0 or d > 0: two intervals per row
        return _bin("or", _bin("<", x, y), _bin(">", x, y))
    if isinstance(x, n.Call) and x.fn == "clamp":
        x = n.Call("min", (n.Call("max", (x.args[0], x.args[1]), n.INT), x.args[2]), n.INT)
    if isinstance(x, n.Call) and x.fn == "abs" and op != "==":
        a = x.args[0]
        up = op in ("<", "<=")  # |a| <= y ⟺ a <= y and -a <= y;  |a| >= y ⟺ a >= y or -a >= y
        return _bin("and" if up else "or", _open(op, a, y), _open(op, _neg(a), y))
    if isinstance(x, n.Call) and x.fn in ("min", "max") and op != "==":
        # min(a, b) >= y ⟺ both >= y;  min(a, b) <= y ⟺ either <= y;  max the other way round
        both = (x.fn == "min") == (op in (">", ">="))
        out = _open(op, x.args[0], y)
        for a in x.args[1:]:
            out = _bin("and" if both else "or", out, _open(op, a, y))
        return out
    return _bin(op, x, y)


def _dnf(e: n.Expr) -> list[list[n.Expr]] | None:
    """Clauses (lists of atoms) whose disjunction is ``e``; None past ``MAX_CLAUSES``."""
    if isinstance(e, n.Binary) and e.op == "or":
        left, right = _dnf(e.left), _dnf(e.right)
        if left is None or right is None or len(left) + len(right) > MAX_CLAUSES:
            return None
        return left + right
    if isinstance(e, n.Binary) and e.op == "and":
        left, right = _dnf(e.left), _dnf(e.right)
        if left is None or right is None or len(left) * len(right) > MAX_CLAUSES:
            return None
        return [a + b for a in left for b in right]
    return [[e]]


def _flat_and(e: n.Expr) -> list[n.Expr]:
    if isinstance(e, n.Binary) and e.op == "and":
        return _flat_and(e.left) + _flat_and(e.right)
    return [e]


# -- atoms ---------------------------------------------------------------------------------------

def _linear_constraints(op: str, b: int, rest: list, guard: n.Expr | None) -> list[Constraint]:
    """``b·j + Σ rest  op  0`` over the integers as constraints ``b'·j + g >= 0``."""
    if op == ">=":
        return [Constraint(b, _sum(rest), guard)]
    if op == ">":
        return [Constraint(b, _sum(rest + [(-1, n.Const(1, n.INT))]), guard)]
    if op == "<=":
        return [Constraint(-b, _sum([(-k, x) for k, x in rest]), guard)]
    if op == "<":
        return [Constraint(-b, _sum([(-k, x) for k, x in rest] + [(-1, n.Const(1, n.INT))]), guard)]
    assert op == "=="
    return _linear_constraints(">=", b, rest, guard) + _linear_constraints("<=", b, rest, guard)


def _classify(atom: n.Expr) -> tuple[str, object]:
    """("constraints", [...]) | ("condition", e) | ("congruence", Congruence) | ("residual", e)."""
    if _row_only(atom):
        return "condition", atom
    if not (isinstance(atom, n.Binary) and atom.op in _CMP and atom.op != "!="
            and atom.left.type == n.INT and atom.right.type == n.INT):
        return "residual", atom
    x, y, op = atom.left, atom.right, atom.op
    if not _has_j(x):
        x, y, op = y, x, _FLIP[op]
    diff = _linear_j(_bin("-", x, y))
    if diff is not None and diff[0] != 0:
        return "constraints", _linear_constraints(op, diff[0], diff[1], None)
    if _has_j(y) or not _row_only(y):
        return "residual", atom
    if isinstance(x, n.Binary) and x.op == "//" and _program_only(x.right):
        inner = _linear_j(x.left)
        if inner is not None and inner[0] != 0:
            return "floordiv", _floordiv(op, inner, x.right, y)
    if isinstance(x, n.Binary) and x.op == "%" and op == "==" and _int_const(y) == 0 and _program_only(x.right):
        inner = _linear_j(x.left)
        if inner is not None and inner[0] in (1, -1):
            return "congruence", Congruence(inner[0], _sum(inner[1]), x.right)
    return "residual", atom


def _floordiv(op: str, inner, c: n.Expr, y: n.Expr) -> tuple[list[Constraint], list[n.Expr]]:
    """``X // c  op  Y`` (X = inner, linear in j; c free of i, j; Y free of j) as constraints on X
    for each sign of c, guarded by that sign unless c is a literal, and a condition for c = 0
    (x // 0 is 0): exact for every c, so the row intervals stay exact."""
    bj, rest = inner
    k = _int_const(c)
    zero, one = n.Const(0, n.INT), n.Const(1, n.INT)
    conditions = []
    if k is None or k == 0:  # X // 0 == 0: the atom is `0 op Y`, a condition on the row
        cond = _bin(op, zero, y)
        conditions.append(cond if k == 0 else _bin("or", _bin("!=", c, zero), cond))
    if op in (">", "<"):  # X // c > Y ⟺ X // c >= Y + 1 (integers), whatever c
        y, op = _plus(y, 1 if op == ">" else -1), op + "="
    cy = n.Binary("*", c, y, n.INT)
    out: list[Constraint] = []
    for sign in (1, -1):
        if k is not None and (k == 0 or (k > 0) != (sign > 0)):
            continue
        guard = None if k is not None else _bin(">" if sign > 0 else "<", c, zero)
        # c > 0:  X//c >= Y ⟺ X >= c·Y,   X//c <= Y ⟺ X <= c·Y + c − 1
        # c < 0:  X//c >= Y ⟺ X <= c·Y,   X//c <= Y ⟺ X >= c·Y + c + 1
        if op in (">=", "=="):
            out += _linear_constraints(">=" if sign > 0 else "<=", bj, rest + [(-1, cy)], guard)
        if op in ("<=", "=="):
            edge = rest + [(-1, cy), (-1, c), (sign, one)]
            out += _linear_constraints("<=" if sign > 0 else ">=", bj, edge, guard)
    return out, conditions


def _clause(atoms: list[n.Expr]) -> Clause | None:
    """The clause of a conjunction; None when it is constantly false."""
    constraints, conditions, congruences, residual, cong_atoms = [], [], [], [], []
    opaque = False
    for atom in atoms:
        if isinstance(atom, n.Const) and atom.type == n.BOOL:
            if atom.value:
                continue
            return None
        kind, what = _classify(atom)
        if kind == "floordiv":
            constraints += what[0]
            conditions += what[1]
        elif kind == "constraints":
            constraints += what
        elif kind == "condition":
            conditions.append(what)
        elif kind == "congruence":
            congruences.append(what)
            residual.append(atom)
            cong_atoms.append(atom)
        else:
            residual.append(what)
            opaque = opaque or not _reads_stages(what)
    return Clause(tuple(constraints), tuple(conditions), tuple(congruences), tuple(residual), opaque,
                  tuple(cong_atoms))


def _reads_stages(e: n.Expr) -> bool:
    return any(isinstance(x, (n.Ref, n.Running, n.Dot, n.ValueRow)) for x in n.walk(e))


def tile_bounds(c: n.Cascade) -> TileBounds:
    """The clauses of ``c``'s mask (one empty clause when it has no mask)."""
    if not c.has_stage("keep"):
        return TileBounds()
    expr = c.stage("keep").expr
    normal = _normal(expr)
    clauses = _dnf(normal) or [_flat_and(normal)]  # too many clauses: `or`s stay whole, residual
    built = [cl for cl in (_clause(atoms) for atoms in clauses) if cl is not None]
    if not built:  # a mask that is never true: one clause no row satisfies
        return TileBounds((Clause(conditions=(n.Const(False, n.BOOL),)),))
    return TileBounds(tuple(built))
