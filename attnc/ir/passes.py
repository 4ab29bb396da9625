"""Pass analysis: how many sweeps over the keys a cascade needs, and why.

A j-reduction ``R`` whose body uses another j-reduction ``r`` cannot, naively, start before
``r`` is complete: that is a pass boundary (FuseMax's read-after-full-reduction dependency).
It may instead run *online*, in the same pass as ``r``, when a change of the running value of
``r`` changes every term of ``R`` by the same factor — a factor free of anything that varies
with the key ``j``:

* ``sum`` and the contraction with V: ``body(r_new) / body(r_old)`` must be j-free; then
  ``R ← R · φ + Σ_tile body(r_new)`` with ``φ`` that ratio (FlashAttention's rescale);
* ``max``/``min``: ``body(r_new) − body(r_old)`` must be j-free; then ``R ← max(R + δ, …)``.

The proof is symbolic: the body is rebuilt in sympy with every pair-level stage inlined, row
maps inlined down to the reductions they come from, and each j-dependent leaf (``s``, ``j``, a
tensor read indexed by ``j``) a distinct symbol. ``sympy.simplify`` of the ratio (difference)
must leave none of those symbols. Nothing here looks at names: softmax's ``exp(m_old − m_new)``
is derived, and so is the failure for a nonlinearity after normalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from ..dsl.functions import FUNCTIONS
from . import nodes as n
from .printer import expr_text


@dataclass(frozen=True)
class Reduction:
    """A j-reduction scheduled in a pass; ``rescale`` is None when no running input changes."""

    stage: str
    op: str  # sum | max | min | contract
    pass_index: int
    online_over: tuple[str, ...]  # reductions of the same pass it reads while they still change
    rescale: n.Expr | None  # factor (sum/contract) or shift (max/min) over Running(old/new) values
    rescale_kind: str | None  # "scale" | "shift" | None


@dataclass(frozen=True)
class Boundary:
    """Why pass ``before_pass`` exists: ``stage`` needs ``needs`` complete."""

    before_pass: int
    stage: str
    needs: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class PassPlan:
    num_passes: int
    reductions: tuple[Reduction, ...]
    boundaries: tuple[Boundary, ...]

    def in_pass(self, k: int) -> tuple[Reduction, ...]:
        return tuple(r for r in self.reductions if r.pass_index == k)

    def reduction(self, stage: str) -> Reduction:
        for r in self.reductions:
            if r.stage == stage:
                return r
        raise KeyError(stage)


# ---------------------------------------------------------------------------- IR → sympy


class _Symbolic:
    """Translate cascade expressions to sympy, inlining maps; remember which symbols vary with j."""

    def __init__(self, c: n.Cascade):
        self.c = c
        self.stages = {st.name: st for st in c.stages}
        self.j_syms: set[sp.Symbol] = set()
        self._leaf: dict = {}
        self.funcs = _SYMPY_FUNCS

    def leaf(self, key, name: str, j_dep: bool) -> sp.Symbol:
        if key not in self._leaf:
            sym = sp.Symbol(name, real=True)
            self._leaf[key] = sym
            if j_dep:
                self.j_syms.add(sym)
        return self._leaf[key]

    def reduction_symbol(self, stage: str, when: str | None = None) -> sp.Symbol:
        # sympy symbols are equal when their names are: the names of what is not a stage's own
        # value carry a space, which no spec name has (`m (old)`, `param z`)
        name = stage if when is None else f"{stage} ({when})"
        return self.leaf(("red", stage, when), name, False)

    def expr(self, e: n.Expr, subst: dict[str, sp.Expr]) -> sp.Expr:
        """``subst`` maps reduction stage names to the sympy value to use for them."""
        f = lambda x: self.expr(x, subst)  # noqa: E731
        if isinstance(e, n.Const):
            if e.type == n.BOOL:
                return sp.true if e.value else sp.false
            v = e.value
            return sp.Integer(int(v)) if float(v).is_integer() and abs(v) < 2**53 else sp.Float(v)
        if isinstance(e, n.Var):
            return self.leaf(("var", e.name), e.name, e.name == "j")
        if isinstance(e, n.Param):
            return self.leaf(("param", e.name), f"param {e.name}", False)
        if isinstance(e, n.Load):
            ranks = n.free_ranks(e, {st: s.ranks for st, s in self.stages.items()})
            return self.leaf(("load", e), expr_text(e), "j" in ranks)
        if isinstance(e, n.Feature):  # in a feature map: the element of q or k
            return self.leaf(("feature", e.side), f"{e.side} element", False)
        if isinstance(e, n.Running):
            return self.reduction_symbol(e.stage, e.when)
        if isinstance(e, n.Ref):
            st = self.stages[e.stage]
            if st.is_reduction:
                return subst.get(e.stage, self.reduction_symbol(e.stage))
            if e.stage == "s":  # the score is an opaque per-pair value
                return self.leaf(("stage", "s"), "s", True)
            if isinstance(st.expr, (n.Dot, n.Scan)):  # q̃·k̃ (or a slice of it), a partial sum: opaque per pair
                return self.leaf(("stage", e.stage), e.stage, True)
            return self.expr(st.expr, subst)
        if isinstance(e, n.ValueRow):
            return sp.Integer(1)
        if isinstance(e, n.Unary):
            x = f(e.operand)
            return sp.Not(x) if e.op == "not" else -x
        if isinstance(e, n.Binary):
            a, b = f(e.left), f(e.right)
            op = e.op
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            if op == "**":
                return a**b
            if op == "//":
                return sp.floor(a / b)
            if op == "%":
                return sp.Mod(a, b)
            if op in n.BITWISE:  # uninterpreted: equal only for equal operands
                return sp.Function(f"bitwise{n.BITWISE.index(op)}")(a, b)
            if op == "and":
                return sp.And(a, b)
            if op == "or":
                return sp.Or(a, b)
            return {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne}[op](a, b)
        if isinstance(e, n.Select):
            return sp.Piecewise((f(e.then), f(e.cond)), (f(e.other), True))
        if isinstance(e, n.Call):
            args = [f(a) for a in e.args]
            return self.funcs[e.fn](*args)
        if isinstance(e, n.Reduce):
            return f(e.body)
        if isinstance(e, n.Contract):
            return f(e.weight)
        raise TypeError(f"no sympy form for {e!r}")


_SYMPY_FUNCS = {f.name: f.sympy for f in FUNCTIONS.values()}


def _opaque(f):
    """``f`` as a sympy function the backward does not expand: its derivative is the row's."""
    def fdiff(self, argindex=1):
        return f.derivative(self.args[0], self, OPAQUE.__getitem__)
    return type(f.name.capitalize(), (sp.Function,), {"is_real": True, "fdiff": fdiff, "__doc__": f.math})


OPAQUE = {f.name: _opaque(f) for f in FUNCTIONS.values() if f.derivative is not None}


def _reads(c: n.Cascade, start, through) -> set[str]:
    """The stages reachable from the names ``start`` by following the references of those for which
    ``through(stage)`` holds (the start names included)."""
    stages = {st.name: st for st in c.stages}
    todo, seen = list(start), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            if through(stages[name]):
                todo.extend(n.refs(stages[name].expr))
    return seen


def _reduction_deps(c: n.Cascade, stage: str) -> set[str]:
    """Reductions the body of ``stage`` reads, through any number of maps (not through reductions)."""
    reads = _reads(c, n.refs(c.stage(stage).expr), lambda st: not st.is_reduction)
    return {name for name in reads if c.stage(name).is_reduction}


# ---------------------------------------------------------------------------- proofs


def _is_j_free(x: sp.Expr, j_syms: set[sp.Symbol]) -> bool:
    return not (x.free_symbols & j_syms)


def _pull_positive(m: sp.Expr) -> sp.Expr:
    """``max(c·x, c·y) = c·max(x, y)`` (and min) for a factor ``c`` sympy proves positive.

    sympy leaves ``Max(0, exp(-m)·(exp(s) - 1))`` alone, so a ReLU of rescaled weights (softpick)
    would hide the ``exp(-m)`` the online proof needs; pulling it out lets the ratio cancel.
    """
    common = None
    for a in m.args:
        if a == 0:
            continue
        parts = set(sp.Mul.make_args(sp.factor_terms(sp.expand_power_exp(a))))
        common = parts if common is None else common & parts
    c = sp.Mul(*[f for f in (common or ()) if f.is_positive and f.free_symbols])
    if c == 1:
        return m
    return c * m.func(*[sp.factor_terms(sp.expand_power_exp(a)) / c for a in m.args])


@lru_cache(maxsize=4096)
def _simplify(x: sp.Expr) -> sp.Expr:
    """A canonical simpler form. Memoized: a file's definitions share norms, so the proofs (and the
    backward's simplifications) meet the same expressions again, and sympy's simplify is the
    cost of explaining a file (18 ms a definition without it)."""
    x = sp.powsimp(sp.powdenest(x, force=False), combine="exp")
    if x.free_symbols:
        x = x.replace(lambda e: isinstance(e, (sp.Max, sp.Min)), _pull_positive)
        x = sp.simplify(x)
    return x


@dataclass(frozen=True)
class _Proof:
    ok: bool
    factor: sp.Expr | None
    reason: str


def _prove_online(sym: _Symbolic, red: n.Stage, running: tuple[str, ...]) -> _Proof:
    body = red.expr.weight if isinstance(red.expr, n.Contract) else red.expr.body
    old = {r: sym.reduction_symbol(r, "old") for r in running}
    new = {r: sym.reduction_symbol(r, "new") for r in running}
    b_old = sym.expr(body, old)
    b_new = sym.expr(body, new)
    is_sum = isinstance(red.expr, n.Contract) or red.expr.op == "sum"
    relation = "ratio" if is_sum else "difference"
    try:
        if b_old == b_new:
            return _Proof(True, None, "independent of the running values")
        if is_sum:
            if b_old == 0:
                return _Proof(False, None, "the body is zero")
            x = _simplify(b_new / b_old)
        else:
            x = _simplify(b_new - b_old)
    except Exception as err:  # sympy gave up: no proof, so the conservative plan
        return _Proof(False, None, f"sympy could not simplify the {relation} ({type(err).__name__})")
    if _is_j_free(x, sym.j_syms):
        # The running state is multiplied by the ratio (or shifted by the difference), so the
        # ratio must be provably positive and finite — exp(·) is; m_new / m_old is not (m_old may
        # be 0) — and a shift provably finite.
        if is_sum and not (x.is_positive and x.is_finite):
            return _Proof(False, x, f"the ratio {_short(x, 90)} is free of j but not provably positive and finite")
        if not is_sum and not x.is_finite:
            return _Proof(False, x, f"the difference {_short(x, 90)} is free of j but not provably finite")
        return _Proof(True, x, f"{relation} {x} is free of j")
    varying = sorted(str(s) for s in x.free_symbols & sym.j_syms)
    return _Proof(
        False, x,
        f"the {relation} of its terms under a change of {', '.join(running)} still depends on "
        f"{', '.join(varying)}, which varies with j ({relation}: {_short(x, 90)})",
    )


def _short(x: sp.Expr, limit: int = 120) -> str:
    text = str(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_ir(x, names: dict) -> n.Expr:
    """A sympy expression back into IR over ``names`` (symbol → IR leaf): float, or bool for
    conditions. Raises ``ValueError`` for anything without an IR form."""
    F = n.FLOAT
    if x in names:
        return names[x]
    if x is sp.true or x is sp.false:
        return n.Const(bool(x), n.BOOL)
    if x.is_Number:
        if not x.is_finite:
            raise ValueError(f"no IR form for {x}")
        return n.Const(float(x), F)
    if x.is_Add:
        # Positive terms first, then subtract the negative ones: exp(m_old - m_new), not exp(-m_new + m_old).
        terms = sorted(x.args, key=lambda t: (bool(t.as_coeff_Mul()[0].is_negative), sp.default_sort_key(t)))
        out = None
        for t in terms:
            neg = bool(t.as_coeff_Mul()[0].is_negative)
            part = _to_ir(-t if neg else t, names)
            if out is None:
                out = n.Unary("-", part, F) if neg else part
            else:
                out = n.Binary("-" if neg else "+", out, part, F)
        return out
    if x.is_Mul:
        coeff, rest = x.as_coeff_Mul()
        if coeff == -1:
            return n.Unary("-", _to_ir(rest, names), F)
        num, den = [], []
        for t in sorted(x.args, key=sp.default_sort_key):
            if t.is_Pow and t.exp.is_Number and t.exp < 0:
                den.append(t.base ** -t.exp)  # x / y, not x * (1 / y)
            else:
                num.append(t)
        out = _product([_to_ir(t, names) for t in num]) if num else n.Const(1.0, F)
        if den:
            out = n.Binary("/", out, _product([_to_ir(t, names) for t in den]), F)
        return out
    if x.is_Pow:
        base, e = x.args
        if base == 2:
            return n.Call("exp2", (_to_ir(e, names),), F)
        if e == -1:
            return n.Binary("/", n.Const(1.0, F), _to_ir(base, names), F)
        if e == sp.Rational(1, 2):
            return n.Call("sqrt", (_to_ir(base, names),), F)
        if e == sp.Rational(-1, 2):
            return n.Call("rsqrt", (_to_ir(base, names),), F)
        if e.is_Integer and 2 <= int(e) <= 4:
            b = _to_ir(base, names)
            return _product([b] * int(e))
        if e.is_Integer and -4 <= int(e) <= -2:
            b = _to_ir(base, names)
            return n.Binary("/", n.Const(1.0, F), _product([b] * -int(e)), F)
        return n.Binary("**", _to_ir(base, names), _to_ir(e, names), F)
    if isinstance(x, (sp.Max, sp.Min)):
        args = tuple(_to_ir(a, names) for a in sorted(x.args, key=sp.default_sort_key))
        return n.Call("max" if isinstance(x, sp.Max) else "min", args, F)
    if isinstance(x, sp.Heaviside):  # the derivative of max/min/relu/clamp; ties split evenly, as in torch
        a = _to_ir(x.args[0], names)
        zero = n.Const(0.0, F)
        return n.Select(n.Binary(">", a, zero, n.BOOL), n.Const(1.0, F),
                        n.Select(n.Binary("<", a, zero, n.BOOL), zero, n.Const(0.5, F), F), F)
    if isinstance(x, sp.sign):
        a = _to_ir(x.args[0], names)
        zero = n.Const(0.0, F)
        return n.Select(n.Binary(">", a, zero, n.BOOL), n.Const(1.0, F),
                        n.Select(n.Binary("<", a, zero, n.BOOL), n.Const(-1.0, F), zero, F), F)
    if isinstance(x, sp.Piecewise):
        *pieces, (last, cond) = x.args
        if cond is not sp.true:
            raise ValueError(f"no IR form for a Piecewise without a default: {x}")
        out = _to_ir(last, names)
        for value, c in reversed(pieces):
            out = n.Select(_to_ir(c, names), _to_ir(value, names), out, F)
        return out
    if isinstance(x, sp.core.relational.Relational):
        op = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">", sp.GreaterThan: ">=",
              sp.Equality: "==", sp.Unequality: "!="}[type(x)]
        return n.Binary(op, _to_ir(x.lhs, names), _to_ir(x.rhs, names), n.BOOL)
    if isinstance(x, (sp.And, sp.Or)):
        out = None
        for a in x.args:
            part = _to_ir(a, names)
            out = part if out is None else n.Binary("and" if isinstance(x, sp.And) else "or", out, part, n.BOOL)
        return out
    if isinstance(x, sp.Not):
        return n.Unary("not", _to_ir(x.args[0], names), n.BOOL)
    if isinstance(x, (sp.floor, sp.ceiling)):
        inner = n.Call("floor" if isinstance(x, sp.floor) else "ceil", (_to_ir(x.args[0], names),), n.INT)
        return n.Call("float", (inner,), F)
    fn = _IR_FUNCS.get(type(x).__name__)
    if fn is not None:
        return n.Call(fn, tuple(_to_ir(a, names) for a in x.args), F)
    raise ValueError(f"no IR form for {x}")


def _ir_functions() -> dict[str, str]:
    """sympy function class name → built-in: the opaque ones, and the rows whose sympy form is
    one sympy function of the argument (exp, log, tanh, Abs, ...)."""
    out = {cls.__name__: name for name, cls in OPAQUE.items()}
    x = sp.Symbol("x", real=True)
    for f in FUNCTIONS.values():
        if f.typing in ("float", "same") and f.arity == (1, 1):  # abs: `same`, float in a derivative
            app = f.sympy(x)
            if isinstance(app, sp.Function) and app.args == (x,):
                out.setdefault(type(app).__name__, f.name)
    return out


_IR_FUNCS = _ir_functions()


def _product(parts: list[n.Expr]) -> n.Expr:
    out = parts[0]
    for t in parts[1:]:
        out = n.Binary("*", out, t, n.FLOAT)
    return out


def _factor_ir(sym: _Symbolic, factor: sp.Expr) -> n.Expr | None:
    names: dict[sp.Symbol, n.Expr] = {}
    for key, s in sym._leaf.items():
        kind = key[0]
        if kind == "red" and key[2] is not None:
            names[s] = n.Running(key[1], key[2])
        elif kind == "red":
            names[s] = n.Ref(key[1], n.FLOAT)
        elif kind == "param":
            names[s] = n.Param(key[1], n.FLOAT)
        elif kind == "var":
            names[s] = n.Call("float", (n.Var(key[1], n.INT),), n.FLOAT) if key[1] != "scale" else n.Var("scale", n.FLOAT)
        elif kind == "load":
            names[s] = key[1] if key[1].type == n.FLOAT else n.Call("float", (key[1],), n.FLOAT)
    try:
        return _to_ir(factor, names)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- planning


def plan_passes(c: n.Cascade) -> PassPlan:
    """Assign every j-reduction of ``c`` to a pass, proving online rescaling where it holds."""
    return _plan_cached(c)


@lru_cache(maxsize=256)
def _plan_cached(c: n.Cascade) -> PassPlan:
    sym = _Symbolic(c)
    pass_of: dict[str, int] = {}
    plans: list[Reduction] = []
    boundaries: list[Boundary] = []
    for st in c.stages:
        if not st.is_reduction:
            continue
        op = "contract" if isinstance(st.expr, n.Contract) else st.expr.op
        deps = _reduction_deps(c, st.name)
        if not deps:
            pass_of[st.name] = 1
            plans.append(Reduction(st.name, op, 1, (), None, None))
            continue
        latest = max(pass_of[d] for d in deps)
        running = tuple(sorted(d for d in deps if pass_of[d] == latest))
        proof = _prove_online(sym, st, running)
        if proof.ok:
            pass_of[st.name] = latest
            factor = None
            if proof.factor is not None:
                factor = _factor_ir(sym, proof.factor)
            kind = None if proof.factor is None else ("scale" if op in ("sum", "contract") else "shift")
            plans.append(Reduction(st.name, op, latest, running, factor, kind))
        else:
            pass_of[st.name] = latest + 1
            plans.append(Reduction(st.name, op, latest + 1, (), None, None))
            boundaries.append(Boundary(latest + 1, st.name, running, proof.reason))
    num = max(pass_of.values(), default=1)
    return PassPlan(num, tuple(plans), tuple(boundaries))


def pass_scans(c: n.Cascade, plan: PassPlan, k: int) -> list[str]:
    """The partial sums (Scan stages) the reductions of pass ``k`` read: the pass visits the keys in
    their order (last first for a suffix sum; one cascade's partial sums share a direction)."""
    own = {r.stage for r in plan.in_pass(k)}
    reads = _reads(c, own, lambda st: st.name in own or (st.ranks == n.PAIR and not st.is_reduction))
    return sorted(name for name in reads if c.stage(name).is_scan)


def plan_text(c: n.Cascade, plan: PassPlan) -> str:
    """Human-readable pass plan, as ``attnc explain`` prints it."""
    lines = [f"{plan.num_passes} pass{'es' if plan.num_passes != 1 else ''} over the keys"]
    ranks = {st.name: st.ranks for st in c.stages}
    for k in range(1, plan.num_passes + 1):
        scans = pass_scans(c, plan, k)
        order = "" if not scans else (
            f" (keys visited {'last' if c.stage(scans[0]).expr.descending else 'first'} first, for the partial "
            f"sum{'s' if len(scans) > 1 else ''} {', '.join(scans)})")
        lines.append(f"  pass {k}:{order}")
        for b in plan.boundaries:
            if b.before_pass == k:
                lines.append(f"    needs {', '.join(b.needs)} complete: {b.stage} cannot run online, because {b.reason}")
        for r in plan.in_pass(k):
            lhs = f"{r.stage}[i, f]" if r.op == "contract" else f"{r.stage}[i]"
            what = f"    {lhs} = {'sum of weights · v' if r.op == 'contract' else r.op} over j"
            if r.rescale is not None:
                word = "rescaled by" if r.rescale_kind == "scale" else "shifted by"
                what += f", online in {', '.join(r.online_over)}: {word} {expr_text(r.rescale, ranks)}"
            elif r.online_over:
                what += f", online in {', '.join(r.online_over)} (no rescale needed)"
            else:
                what += ", no rescale"
            lines.append(what)
    return "\n".join(lines)
