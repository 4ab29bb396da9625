"""Stable text for IR expressions and cascades.

The text of a cascade is a cache key (issue 3), so it depends only on the IR value: no ids,
no dict ordering, no spans. Expressions print in the spec language's own syntax.
"""

from __future__ import annotations

from . import nodes as n

_PREC = {"or": 2, "and": 3, "not": 4, "<": 5, "<=": 5, ">": 5, ">=": 5, "==": 5, "!=": 5,
         "|": 6, "^": 7, "&": 8, "<<": 9, ">>": 9,
         "+": 10, "-": 10, "*": 11, "/": 11, "//": 11, "%": 11, "neg": 12, "**": 13}
_ATOM = 14


def _prec(e: n.Expr) -> int:
    if isinstance(e, n.Select):
        return 1
    if isinstance(e, n.Binary):
        return _PREC[e.op]
    if isinstance(e, n.Unary):
        return _PREC["not"] if e.op == "not" else _PREC["neg"]
    if isinstance(e, n.Const) and not isinstance(e.value, bool) and e.value < 0:
        return _PREC["neg"]
    return _ATOM


def _wrap(e: n.Expr, need: int, ctx) -> str:
    text = _text(e, ctx)
    return f"({text})" if _prec(e) < need else text


def const_text(c: n.Const) -> str:
    """The literal of a constant: True/False, an int, a float repr, inf, -inf or nan."""
    if c.type == n.BOOL:
        return "True" if c.value else "False"
    if c.type == n.INT:
        return str(int(c.value))
    v = float(c.value)
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def _ranks(stage_ranks: tuple[str, ...], vec: bool) -> str:
    return "[" + ", ".join(stage_ranks + (("f",) if vec else ())) + "]"


def expr_text(e: n.Expr, ranks: dict[str, tuple[str, ...]] | None = None, masked: bool = True) -> str:
    """Spec-like text of ``e``; with ``ranks`` (stage → ranks), stage refs print their indices."""
    return _text(e, (ranks, masked))


def _text(e: n.Expr, ctx) -> str:
    ranks, masked = ctx
    flt = "{keep}" if masked else ""
    if isinstance(e, n.Const):
        return const_text(e)
    if isinstance(e, (n.Var, n.Param)):
        return e.name
    if isinstance(e, n.Load):
        return f"{e.tensor}[{', '.join(_text(i, ctx) for i in e.indices)}]"
    if isinstance(e, n.Ref):
        if ranks is None or e.stage not in ranks:
            return e.stage
        return f"{e.stage}{_ranks(ranks[e.stage], e.type == n.VEC)}"
    if isinstance(e, n.ValueRow):
        return "v[j]"
    if isinstance(e, n.Dot):
        q = "q̃" if e.q_map is not None else "q"
        k = "k̃" if e.k_map is not None else "k"
        if e.sliced:
            lo = expr_text(e.lo, {}, False) if e.lo is not None else "0"
            hi = expr_text(e.hi, {}, False) if e.hi is not None else "head_dim"
            return f"Σ_{{{lo} ≤ d < {hi}}} {q}[i, d]·{k}[j, d]"
        return f"Σ_d {q}[i, d]·{k}[j, d]"
    if isinstance(e, n.Feature):
        return f"{e.side}[{'i' if e.side == 'q' else 'j'}, d]"
    if isinstance(e, n.Unary):
        if e.op == "not":
            return f"not {_wrap(e.operand, _PREC['not'], ctx)}"
        return f"-{_wrap(e.operand, _PREC['neg'], ctx)}"
    if isinstance(e, n.Binary):
        p = _PREC[e.op]
        if e.op == "**":
            return f"{_wrap(e.left, _ATOM, ctx)} ** {_wrap(e.right, _PREC['neg'], ctx)}"
        if p == 5:  # comparisons don't chain in the IR
            return f"{_wrap(e.left, 6, ctx)} {e.op} {_wrap(e.right, 6, ctx)}"
        return f"{_wrap(e.left, p, ctx)} {e.op} {_wrap(e.right, p + 1, ctx)}"
    if isinstance(e, n.Call):
        return f"{e.fn}({', '.join(_text(a, ctx) for a in e.args)})"
    if isinstance(e, n.Select):
        return f"{_wrap(e.then, 2, ctx)} if {_wrap(e.cond, 2, ctx)} else {_wrap(e.other, 1, ctx)}"
    if isinstance(e, n.Reduce):
        return f"{e.op}_j{flt}({_text(e.body, ctx)})"
    if isinstance(e, n.Contract):
        return f"sum_j{flt}({_text(e.weight, ctx)} · v[j, f])"
    if isinstance(e, n.Scan):  # the body read at key k: its j prints as k
        body = n.transform(e.body, lambda x: n.Var("k", x.type) if isinstance(x, n.Var) and x.name == "j" else x)
        at_k = None if ranks is None else {name: tuple("k" if r == "j" else r for r in rk) for name, rk in ranks.items()}
        return f"sum_{{k {e.rel} j}}{flt}({_text(body, (at_k, masked))})"
    if isinstance(e, n.Running):
        return f"{e.stage}_{e.when}"
    raise TypeError(f"not an IR expression: {e!r}")


def param_text(p: n.ParamSpec) -> str:
    if p.kind == "tensor":
        text = f"{p.name}: tensor[{', '.join(expr_text(d) for d in p.dims)}] {p.elem}"
    else:
        text = f"{p.name}: {p.kind}"
    if p.default is not None:
        text += f" = {expr_text(p.default)}"
    return text


def stage_lhs(st: n.Stage) -> str:
    return f"{st.name}{_ranks(st.ranks, st.type == n.VEC)}"


def cascade_text(c: n.Cascade) -> str:
    """The canonical multi-line text of a cascade (also its cache key)."""
    lines = [f"cascade {c.name}"]
    for p in c.params:
        lines.append(f"  param {param_text(p)}")
    if c.grid is not None:
        g = c.grid
        lines.append(f"  grid ({', '.join(g.axes)}) = ({', '.join(expr_text(x, {}, False) for x in g.sizes)}) "
                     f"dilated ({', '.join(expr_text(x, {}, False) for x in g.dilated)})")
    dot = c.stages[0].expr if c.stages else None
    for side in ("q", "k"):  # the feature maps: pre-stages over [i, d] and [j, d]
        if isinstance(dot, n.Dot) and dot.map(side) is not None:
            lines.append(f"  {side}̃[{'i' if side == 'q' else 'j'}, d] = {expr_text(dot.map(side), {}, False)}")
    width = max((len(stage_lhs(st)) for st in c.stages), default=0)
    ranks = {st.name: st.ranks for st in c.stages}
    for st in c.stages:
        lines.append(f"  {stage_lhs(st).ljust(width)} = {expr_text(st.expr, ranks, c.has_mask)}")
    return "\n".join(lines) + "\n"
