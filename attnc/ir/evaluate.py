"""Plain-Python evaluation of size expressions: parameter defaults, tensor dimensions and
constant subexpressions. Same meaning as the reference interpreter (floor ``//`` and ``%``,
total at zero; shift counts clamped into 0..31); used by lowering (constant checks) and by the
runtime (defaults, shapes).
"""

from __future__ import annotations

import math

from ..dsl.functions import FUNCTIONS, fold
from . import nodes as n


def _pow(a, b) -> float:
    try:
        value = float(a) ** b
    except (OverflowError, ZeroDivisionError):
        return math.inf
    return value if isinstance(value, float) else math.nan  # a complex result is no number


def eval_size_expr(e: n.Expr, sizes: dict, params: dict):
    """Evaluate a parameter default or a tensor dimension (over sizes and scalar parameters)."""
    if isinstance(e, n.Const):
        return e.value
    if isinstance(e, n.Var):
        return sizes[e.name]
    if isinstance(e, n.Param):
        return params[e.name]
    if isinstance(e, n.Unary):
        x = eval_size_expr(e.operand, sizes, params)
        return (not x) if e.op == "not" else -x
    if isinstance(e, n.Select):
        c = eval_size_expr(e.cond, sizes, params)
        return eval_size_expr(e.then if c else e.other, sizes, params)
    if isinstance(e, n.Binary):
        a, b = eval_size_expr(e.left, sizes, params), eval_size_expr(e.right, sizes, params)
        if e.op in ("//", "%"):
            if b == 0:
                return 0 if e.op == "//" else a
            return a // b if e.op == "//" else a % b
        if e.op == "/":
            return a / b if b != 0 else math.copysign(math.inf, a) if a else math.nan
        if e.op in ("<<", ">>"):
            k = min(max(b, 0), n.SHIFT_MAX)
            return a << k if e.op == "<<" else a >> k
        ops = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "**": lambda: _pow(a, b),
               "<": lambda: a < b, "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b,
               "==": lambda: a == b, "!=": lambda: a != b, "and": lambda: a and b, "or": lambda: a or b,
               "&": lambda: a & b, "|": lambda: a | b, "^": lambda: a ^ b}
        return ops[e.op]()
    if isinstance(e, n.Call):
        args = [eval_size_expr(x, sizes, params) for x in e.args]
        f = FUNCTIONS[e.fn]
        return fold(f, args, f.scalar)
    raise TypeError(f"not a size expression: {e!r}")
