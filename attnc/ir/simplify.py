"""Local simplification of IR expressions.

Constant folding and neutral elements (``x + 0``, ``x * 1``, ``True and x``) keep inlined
specs small; integer index arithmetic (``+ - *`` over ints) is put into sympy's canonical
polynomial form, which is exact for integers and makes equal index expressions print equally.
Float arithmetic is not reassociated: that would change rounding.
"""

from __future__ import annotations

import math
import operator

import sympy as sp

from . import nodes as n

_FOLD = {
    "+": operator.add, "-": operator.sub, "*": operator.mul,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "&": operator.and_, "|": operator.or_, "^": operator.xor,
    "<<": lambda a, k: a << min(max(k, 0), n.SHIFT_MAX), ">>": lambda a, k: a >> min(max(k, 0), n.SHIFT_MAX),
}
_MAX_FOLDED_INT = 2**31 - 1


def _fold(e: n.Expr) -> n.Expr:
    if isinstance(e, n.Unary) and isinstance(e.operand, n.Const):
        v = e.operand.value
        return n.Const((not v) if e.op == "not" else -v, e.type)
    if isinstance(e, n.Binary):
        a, b = e.left, e.right
        if isinstance(a, n.Const) and isinstance(b, n.Const):
            if e.op in ("and", "or"):
                return n.Const(bool(a.value and b.value) if e.op == "and" else bool(a.value or b.value), n.BOOL)
            if e.op in _FOLD and a.type != n.BOOL:
                value = _FOLD[e.op](a.value, b.value)
                if e.type == n.INT and abs(value) > _MAX_FOLDED_INT:
                    return e
                if e.type == n.FLOAT and not math.isfinite(value):
                    return e
                return n.Const(value if e.type != n.FLOAT else float(value), e.type)
            if e.op in ("==", "!=") and a.type == b.type == n.BOOL:
                return n.Const((a.value == b.value) == (e.op == "=="), n.BOOL)
        if e.op == "and":
            for x, y in ((a, b), (b, a)):
                if isinstance(x, n.Const):
                    return y if x.value else n.Const(False, n.BOOL)
        if e.op == "or":
            for x, y in ((a, b), (b, a)):
                if isinstance(x, n.Const):
                    return n.Const(True, n.BOOL) if x.value else y
        if e.type in n.NUMERIC and a.type == b.type == e.type:
            zero = n.Const(0 if e.type == n.INT else 0.0, e.type)
            one = n.Const(1 if e.type == n.INT else 1.0, e.type)
            if e.op == "+" and a == zero:
                return b
            if e.op in ("+", "-") and b == zero:
                return a
            if e.op == "*" and a == one:
                return b
            if e.op in ("*", "/") and b == one:
                return a
    if isinstance(e, n.Select) and isinstance(e.cond, n.Const):
        return e.then if e.cond.value else e.other
    if isinstance(e, n.Call) and e.fn == "float" and isinstance(e.args[0], n.Const) and abs(e.args[0].value) <= _MAX_FOLDED_INT:
        return n.Const(float(e.args[0].value), n.FLOAT)
    return e


# ---- integer polynomial canonical form


def _is_int_poly(e: n.Expr) -> bool:
    if e.type != n.INT:
        return False
    if isinstance(e, n.Binary):
        return e.op in ("+", "-", "*") and _is_int_poly(e.left) and _is_int_poly(e.right)
    if isinstance(e, n.Unary):
        return e.op == "-" and _is_int_poly(e.operand)
    return True  # a leaf or an opaque int subexpression (its own subtree is simplified separately)


def _to_sympy(e: n.Expr, leaves: dict) -> sp.Expr:
    if isinstance(e, n.Const):
        return sp.Integer(int(e.value))
    if isinstance(e, n.Binary) and e.op in ("+", "-", "*"):
        a, b = _to_sympy(e.left, leaves), _to_sympy(e.right, leaves)
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b
    if isinstance(e, n.Unary) and e.op == "-":
        return -_to_sympy(e.operand, leaves)
    for sym, leaf in leaves.items():
        if leaf == e:
            return sym
    sym = sp.Symbol(f"x{len(leaves)}", integer=True)
    leaves[sym] = e
    return sym


def _from_sympy(x: sp.Expr, leaves: dict, order: dict) -> n.Expr:
    if x.is_Integer:
        return n.Const(int(x), n.INT)
    if x.is_Symbol:
        return leaves[x]
    if x.is_Mul:
        coeff, rest = x.as_coeff_Mul()
        factors = sorted(sp.Mul.make_args(rest), key=lambda f: order.get(f, len(order)))
        out = _from_sympy(factors[0], leaves, order)
        for f in factors[1:]:
            out = n.Binary("*", out, _from_sympy(f, leaves, order), n.INT)
        if coeff == -1:
            return n.Unary("-", out, n.INT)
        if coeff != 1:
            out = n.Binary("*", n.Const(int(coeff), n.INT), out, n.INT)
        return out
    if x.is_Pow and x.exp.is_Integer and x.exp > 0:
        base = _from_sympy(x.base, leaves, order)
        out = base
        for _ in range(int(x.exp) - 1):
            out = n.Binary("*", out, base, n.INT)
        return out
    if x.is_Add:
        # Keep the user's leaf order (i before n_kv before n_q ...), constants last.
        terms = sorted(sp.Add.make_args(x), key=lambda t: (t.is_Number, _first_leaf(t, order)))
        out = None
        for t in terms:
            coeff, rest = t.as_coeff_Mul()
            neg = coeff < 0
            mag = _from_sympy(-t if neg else t, leaves, order)
            if out is None:
                out = n.Unary("-", mag, n.INT) if neg else mag
            else:
                out = n.Binary("-" if neg else "+", out, mag, n.INT)
        return out
    raise ValueError(f"not a polynomial: {x}")


def _first_leaf(t: sp.Expr, order: dict) -> int:
    syms = [order.get(s, len(order)) for s in t.free_symbols]
    return min(syms) if syms else len(order) + 1


_MAX_TERMS = 32


def _canonical_int(e: n.Expr) -> n.Expr:
    leaves: dict = {}
    raw = _to_sympy(e, leaves)
    if sp.count_ops(raw) > 4 * _MAX_TERMS:
        return e
    x = sp.expand(raw)
    terms = sp.Add.make_args(x)
    # Expanding can blow up ((a + b)^8) or create constants beyond int32: keep the original then.
    if len(terms) > _MAX_TERMS or any(abs(int(c)) > _MAX_FOLDED_INT for c in x.atoms(sp.Integer)):
        return e
    order = {sym: k for k, sym in enumerate(leaves)}
    try:
        return _from_sympy(x, leaves, order)
    except (ValueError, KeyError):
        return e


def simplify(e: n.Expr) -> n.Expr:
    """Fold constants, drop neutral elements, canonicalize integer index arithmetic."""
    e = n.transform(e, _fold)
    e = _canon_top(e)
    return n.transform(e, _fold)


def _canon_top(e: n.Expr) -> n.Expr:
    # Canonicalize maximal integer-polynomial subtrees only, top-down.
    if isinstance(e, (n.Binary, n.Unary)) and _is_int_poly(e):
        leaves_done = _map_poly_leaves(e)
        return _canonical_int(leaves_done)
    kids = n.children(e)
    if not kids:
        return e
    new = tuple(_canon_top(k) for k in kids)
    return n.rebuild(e, new) if new != kids else e


def _map_poly_leaves(e: n.Expr) -> n.Expr:
    if isinstance(e, n.Binary) and e.op in ("+", "-", "*") and e.type == n.INT:
        return n.Binary(e.op, _map_poly_leaves(e.left), _map_poly_leaves(e.right), n.INT)
    if isinstance(e, n.Unary) and e.op == "-" and e.type == n.INT:
        return n.Unary("-", _map_poly_leaves(e.operand), n.INT)
    return _canon_top(e)
