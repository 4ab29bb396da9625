"""``verify()``: the structural invariants every cascade must keep after every pass.

A failure here is a compiler bug, not a user error, so it raises ``IRError`` (an
``AssertionError``) naming the stage and the broken rule.
"""

from __future__ import annotations

from . import nodes as n

_ARITH = {"+", "-", "*", "/", "//", "%", "**", *n.BITWISE}
_CMP = {"<", "<=", ">", ">=", "==", "!="}


class IRError(AssertionError):
    pass


def _type_of(e: n.Expr, types: dict[str, str], params: dict[str, n.ParamSpec], where: str) -> str:
    """Recompute the type of ``e`` bottom-up and check it against the stored one."""

    def fail(msg):
        raise IRError(f"{where}: {msg} in {e!r}"[:2000])

    if isinstance(e, n.Const):
        ok = {n.INT: int, n.FLOAT: float, n.BOOL: bool}[e.type]
        if not isinstance(e.value, ok) or (e.type == n.INT and isinstance(e.value, bool)):
            fail("constant of the wrong Python type")
        return e.type
    if isinstance(e, n.Var):
        if e.name not in n.INDEX_VARS + n.SIZE_VARS + n.DIM_VARS:
            fail(f"unknown variable {e.name}")
        return e.type
    if isinstance(e, n.Param):
        p = params.get(e.name)
        if p is None or p.kind != e.type:
            fail(f"undeclared or mistyped parameter {e.name}")
        return e.type
    if isinstance(e, n.Load):
        p = params.get(e.tensor)
        if p is None or p.kind != "tensor" or len(p.dims) != len(e.indices) or p.elem != e.type:
            fail(f"bad load of {e.tensor}")
        for i in e.indices:
            if _type_of(i, types, params, where) != n.INT:
                fail("non-integer index")
        return e.type
    if isinstance(e, n.Ref):
        if e.stage not in types or types[e.stage] != e.type:
            fail(f"reference to {e.stage}, which is not an earlier stage of type {e.type}")
        return e.type
    if isinstance(e, (n.Dot, n.ValueRow, n.Running, n.Feature)):
        return e.type
    kids = [_type_of(k, types, params, where) for k in n.children(e)]
    if isinstance(e, n.Unary):
        want = {n.BOOL} if e.op == "not" else {n.INT, n.FLOAT, n.VEC}
        if kids[0] not in want or kids[0] != e.type:
            fail("ill-typed unary")
    elif isinstance(e, n.Binary):
        a, b = kids
        if e.op in ("and", "or"):
            ok = a == b == e.type == n.BOOL
        elif e.op in _CMP:
            ok = e.type == n.BOOL and a == b and (a in n.NUMERIC or (a == n.BOOL and e.op in ("==", "!=")))
        elif n.VEC in (a, b):
            ok = e.type == n.VEC and ((e.op in "+-" and a == b) or (e.op == "*" and {a, b} == {n.VEC, n.FLOAT})
                                      or (e.op == "/" and a == n.VEC and b == n.FLOAT))
        elif e.op in ("//", "%") or e.op in n.BITWISE:
            ok = a == b == e.type == n.INT
        else:
            ok = a == b == e.type and a in n.NUMERIC and (e.op not in ("/", "**") or a == n.FLOAT)
        if not ok:
            fail(f"ill-typed {e.op}")
    elif isinstance(e, n.Select):
        if kids[0] != n.BOOL or kids[1] != kids[2] or kids[1] != e.type:
            fail("ill-typed select")
    elif isinstance(e, n.Call):
        if any(k not in n.NUMERIC for k in kids):
            fail(f"non-numeric argument to {e.fn}")
    elif isinstance(e, n.Reduce):
        if e.op not in n.REDUCE_OPS or kids[0] != n.FLOAT:
            fail("ill-typed reduction")
    elif isinstance(e, n.Contract):
        if kids[0] != n.FLOAT:
            fail("contraction weight must be a float")
    elif isinstance(e, n.Scan):
        if e.rel not in n.SCAN_RELS or kids[0] != n.FLOAT or e.type != n.FLOAT:
            fail("ill-typed partial sum")
    return e.type


def _pair_closure(c: n.Cascade, e: n.Expr) -> set[str]:
    """The stages ``e`` reads, through the pair stages (not through reductions or scans)."""
    out: set[str] = set()
    todo = list(n.refs(e))
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        st = c.stage(name)
        if st.ranks == n.PAIR and not isinstance(st.expr, (n.Scan, n.Dot)):
            todo.extend(n.refs(st.expr))
    return out


def verify(c: n.Cascade) -> n.Cascade:
    """Check ``c`` and return it unchanged; raise ``IRError`` on the first broken invariant."""
    params = {p.name: p for p in c.params}
    if len(params) != len(c.params):
        raise IRError(f"{c.name}: duplicate parameter names")
    names = [st.name for st in c.stages]
    if len(set(names)) != len(names):
        raise IRError(f"{c.name}: duplicate stage names {names}")
    ndots = len(c.dots)
    if names[0] != "qk" or names[ndots:ndots + 1] != ["s"] or not all(isinstance(st.expr, n.Dot) for st in c.stages[:ndots]):
        raise IRError(f"{c.name}: a cascade starts with its Dot stages (qk first), then s")
    if "out" not in names:
        raise IRError(f"{c.name}: no out stage")
    dot = c.stages[0].expr
    for st in c.dots:
        if (st.expr.q_map, st.expr.k_map) != (dot.q_map, dot.k_map):
            raise IRError(f"{c.name}.{st.name}: every Dot stage shares the feature maps")
        for bound in (st.expr.lo, st.expr.hi):
            if bound is None:
                continue
            if any(isinstance(x, (n.Ref, n.Load, n.Dot, n.Feature)) or (isinstance(x, n.Var) and x.name in ("i", "j", "b", "h"))
                   for x in n.walk(bound)) or _type_of(bound, {}, params, f"{c.name}.{st.name}") != n.INT:
                raise IRError(f"{c.name}.{st.name}: a slice bound is an int of sizes and scalar parameters")
    for side, other in (("q", {"j"}), ("k", {"i", "h"})):
        m = dot.map(side)
        if m is None:
            continue
        where = f"{c.name}.{side}̃"
        for node in n.walk(m):
            if isinstance(node, (n.Ref, n.Dot, n.ValueRow, n.Running, n.Reduce, n.Contract)) or (
                    isinstance(node, n.Feature) and node.side != side) or (isinstance(node, n.Var) and node.name in other):
                raise IRError(f"{where}: a feature map reads only its element, its own index, b, sizes and parameters")
        if _type_of(m, {}, params, where) != n.FLOAT:
            raise IRError(f"{where}: a feature map is a float")
    types: dict[str, str] = {}
    ranks: dict[str, tuple[str, ...]] = {}
    for pos, st in enumerate(c.stages):
        where = f"{c.name}.{st.name}"
        if st.ranks not in (n.ROW, n.PAIR):
            raise IRError(f"{where}: ranks must be [i] or [i, j]")
        top = st.expr
        for node in n.walk(top):
            if node is not top and isinstance(node, (n.Reduce, n.Contract, n.Scan)):
                raise IRError(f"{where}: reductions appear only at the top of a stage")
            if isinstance(node, n.ValueRow) and not isinstance(top, n.Contract):
                raise IRError(f"{where}: v[j] outside a contraction")
            if isinstance(node, n.Running):
                raise IRError(f"{where}: running values belong to pass plans, not cascades")
            if isinstance(node, n.Dot) and (pos >= ndots or node is not top):
                raise IRError(f"{where}: only the Dot stages (qk, qk2, ...) compute dot products")
        if isinstance(top, (n.Reduce, n.Contract)) and st.ranks != n.ROW:
            raise IRError(f"{where}: a reduction over j is per query")
        if isinstance(top, n.Scan):
            if st.ranks != n.PAIR:
                raise IRError(f"{where}: a partial sum is per pair")
            if any(ranks.get(r) == n.ROW or isinstance(c.stage(r).expr, n.Scan) for r in _pair_closure(c, top.body)):
                raise IRError(f"{where}: a partial sum reads only per-pair values")
        _type_of(top, types, params, where)
        body_ranks = n.free_ranks(top, ranks)
        if not body_ranks <= set(st.ranks):
            raise IRError(f"{where}: depends on {sorted(body_ranks)} but is over {list(st.ranks)}")
        if st.name == "keep" and (st.type != n.BOOL or st.ranks != n.PAIR):
            raise IRError(f"{where}: the mask is a bool per pair")
        if st.name == "out" and (st.type != n.VEC or st.ranks != n.ROW):
            raise IRError(f"{where}: out is a value vector per query")
        if st.name == "lse" and (st.type != n.FLOAT or st.ranks != n.ROW):
            raise IRError(f"{where}: lse is a float per query")
        types[st.name] = st.type
        ranks[st.name] = st.ranks
    for p in c.params:
        for d in p.dims:
            if d != n.ANY_DIM:
                _type_of(d, {}, params, f"{c.name}.{p.name}")
        if p.default is not None:
            _type_of(p.default, {}, params, f"{c.name}.{p.name}")
    return c
