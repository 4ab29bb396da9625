"""Backward derivation: the forward cascade differentiated into a backward plan.

Nothing here knows a normalization by name. Per query row ``i`` the forward computes

    r_k[i]   = Σ_j{keep} body_k(s_ij, …)         (sum reductions; max/min reductions alike)
    acc_a[i] = Σ_j{keep} w_a(s_ij, …) · v_j       (contractions)
    out[i]   = Σ_a c_a[i] · acc_a[i],   lse[i] = …  (row maps, linear in the contractions)

With upstream gradients dO and dL (of lse), the row-level loss is ``L_row = Σ_a c_a·D_a +
dL·lse`` where ``D_a = Σ_f dO_f·acc_a,f = Σ_j w_a·dOv_ij`` and ``dOv_ij = dO_i·v_j``. Reverse mode
gives each reduction its adjoint ``G_k`` (a row value), built in reverse cascade order from

    ∂L_row/∂r_k  +  Σ_j Σ_l G_l·∂body_l/∂r_k  +  Σ_j Σ_a C_a·dOv_ij·∂w_a/∂r_k.

A j-sum in there is the backward's extra row pass. It is avoided by an **identity** when
``(∂body_l/∂r_k) / body_l`` simplifies (sympy) to some ``g`` free of ``j``: then the sum is
``g·r_l`` (or ``g·D_a`` for a contraction) — softmax's ``Σ_j p_ij·dP_ij = dO_i·O_i``. With one
contraction and ``D = Dout/c`` free of new divisions (``Dout = Σ_f dO·out`` from the saved output),
``D`` needs no key pass either. What remains becomes a backward j-sum (``T``), computed by the row
kernel in as many passes as its dependencies need. A max/min reduction gets no gradient route of
its own: its adjoint must simplify to 0 (the result is invariant to it, as softmax is to ``m``),
otherwise the variant is refused.

Per pair, with the adjoints held fixed, ``ℓ_ij = Σ_k G_k·body_k + Σ_a C_a·dOv_ij·w_a`` gives
``ds = ∂ℓ/∂s``, ``dqk = ds·∂s/∂qk``, the value weight ``W = Σ_a C_a·w_a`` (``dv_j = Σ_i W_ij·dO_i``)
and the gradient of each float tensor parameter read: per row when it is free of ``j`` and the
identity applies, else per pair. The forward saves per row only the reductions' final values and
whether the row kept a key (O(N)), never the score matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp

from ..dsl.errors import SpecError
from . import nodes as n
from .passes import _SYMPY_FUNCS, OPAQUE, _prove_online, _reduction_deps, _Symbolic, _simplify, _to_ir
from .printer import expr_text


_BWD_FUNCS = {**_SYMPY_FUNCS, **OPAQUE}  # σ, softplus, ...: derivatives that cannot overflow

# Names of the backward's own values in IR ``Ref``s: a dot cannot occur in a spec identifier.
DOV, DOUT, DL, DS = "bwd.dov", "bwd.dout", "bwd.dl", "bwd.ds"


@dataclass(frozen=True)
class RowStep:
    """A per-row value of the backward, computed by the row kernel after pass ``level``."""

    name: str  # "bwd.G.<stage>" adjoint, "bwd.C.<stage>" coefficient, "bwd.D.<stage>" contraction
    expr: n.Expr
    level: int
    what: str


@dataclass(frozen=True)
class JSum:
    """``Σ_j{keep} body``: a backward reduction over the keys, in row-kernel pass ``level``."""

    name: str  # "bwd.T<k>"
    body: n.Expr
    level: int
    what: str


@dataclass(frozen=True)
class LoadGrad:
    """The gradient of one read ``tensor[indices]``: a per-row part and/or a per-pair part."""

    load: n.Load
    row: n.Expr | None
    pair: n.Expr | None


@dataclass(frozen=True)
class ScanGrad:
    """The adjoint of a partial sum ``c[i, j] = Σ_{k kept, k rel j} body[i, k]``: at the body's pair
    (i, k), ``A = Σ_{j kept, k rel j} u[i, j]`` with ``u = ∂ℓ/∂c`` — the partial sum the other way
    along the row, computed in the forward sum's key order as ``total − (u's running sum, k
    included) (+ u at k when rel is inclusive)``, ``total = Σ_j{keep} u`` (a backward sum)."""

    stage: str  # the Scan stage
    adjoint: str  # "bwd.A.<stage>", a pair value the pair expressions read
    u: n.Expr  # pair
    total: str  # the "bwd.T<k>" row value Σ_j{keep} u


@dataclass(frozen=True)
class BackwardPlan:
    stats: tuple[str, ...]  # the forward's reductions saved per row (then has_key)
    rows: tuple[RowStep, ...]  # in computation order
    jsums: tuple[JSum, ...]
    num_row_passes: int
    coefs: tuple[str, ...]  # row values the pair kernels read (stored by the row kernel)
    temps: tuple[tuple[str, n.Expr], ...]  # pair temporaries ("bwd.x<k>") the pair values share
    ds: n.Expr  # pair
    dqk: n.Expr  # pair, over Ref(DS)
    dv_weight: n.Expr  # pair
    load_grads: tuple[LoadGrad, ...]
    uses_dout: bool
    uses_dl: bool
    identities: tuple[str, ...] = field(default=())
    # (side, ∂map/∂element): dq = (Σ_j dqk·k̃) ⊙ φ'(q), dk = (Σ_i dqk·q̃) ⊙ ψ'(k) (the chain rule
    # through each feature map, elementwise)
    feature_grads: tuple[tuple[str, n.Expr], ...] = field(default=())
    # float tensors read inside a feature map: constants to this backward (no gradient of their own;
    # the runtime refuses a call in which one requires grad)
    map_tensors: tuple[str, ...] = field(default=())
    # (stage, gradient) of the further Dot stages (qk2, ...: slices of q̃·k̃ the scores read), pair
    # expressions like dqk: dq += Σ_j dqk_t·k̃[j, slice t], dk += Σ_i dqk_t·q̃[i, slice t]
    dqk_more: tuple[tuple[str, n.Expr], ...] = field(default=())
    # partial sums' adjoints: with any, the rows kernel also accumulates dK and dV (atomics), in
    # the partial sums' key order, since no key tile's values are known without the others
    scans: tuple[ScanGrad, ...] = field(default=())

    def ranks(self) -> dict[str, tuple[str, ...]]:
        out = {DOV: n.PAIR, DS: n.PAIR, DOUT: n.ROW, DL: n.ROW, **{g.adjoint: n.PAIR for g in self.scans}}
        for r in self.rows:
            out[r.name] = n.ROW
        for t in self.jsums:
            out[t.name] = n.ROW
        for name, _ in self.temps:
            out[name] = n.PAIR
        return out


class BackwardError(SpecError):
    """A cascade whose backward attnc cannot derive (the span points at the stage)."""


class _Sym(_Symbolic):
    """The forward's sympy translation, with int and bool sub-expressions opaque (never
    differentiated: masks and index arithmetic are piecewise constant) and the functions with a
    derivative of their own (``dsl/functions.py``) opaque."""

    def __init__(self, c: n.Cascade):
        super().__init__(c)
        self.funcs = _BWD_FUNCS
        self.opaque: dict[sp.Symbol, n.Expr] = {}

    def expr(self, e: n.Expr, subst: dict) -> sp.Expr:
        if e.type in (n.INT, n.BOOL) and not isinstance(e, n.Const):
            key = ("opaque", e)
            if key not in self._leaf:
                ranks = n.free_ranks(e, {st: s.ranks for st, s in self.stages.items()})
                text = expr_text(e)
                sym = sp.Symbol(f"⟨{text}⟩", real=True) if e.type == n.INT else sp.Symbol(f"⟨{text}⟩")
                self._leaf[key] = sym
                if "j" in ranks:
                    self.j_syms.add(sym)
                self.opaque[sym] = n.Call("float", (e,), n.FLOAT) if e.type == n.INT else e
            return self._leaf[key]
        return super().expr(e, subst)

    def names(self) -> dict:
        out = dict(self.opaque)
        for key, s in self._leaf.items():
            kind = key[0]
            if kind == "red" and key[2] is None:
                out[s] = n.Ref(key[1], n.FLOAT)
            elif kind == "param":
                out[s] = n.Param(key[1], n.FLOAT)
            elif kind == "var":
                out[s] = n.Var(key[1], n.FLOAT)
            elif kind == "load":
                out[s] = key[1]
            elif kind == "stage":
                out[s] = n.Ref(key[1], n.FLOAT)
            elif kind == "feature":
                out[s] = n.Feature(key[1])
        return out


def _clean(x: sp.Expr, where: n.Stage) -> sp.Expr:
    """Derivatives of floor/ceil are 0 almost everywhere; any other unevaluated one is refused."""
    def zero_or_fail(d):
        if isinstance(d.expr, (sp.floor, sp.ceiling)):
            return sp.Integer(0)
        raise BackwardError(f"cannot differentiate {d.expr} in `{where.name}`", where.span)
    if x.has(sp.Derivative):
        x = x.replace(lambda e: isinstance(e, sp.Derivative), zero_or_fail)
    return x


def _j_free(x: sp.Expr, j_syms) -> bool:
    return not (x.free_symbols & j_syms)


def _ratio(d: sp.Expr, body: sp.Expr, j_syms) -> sp.Expr | None:
    """``d / body`` when it simplifies to something free of j (the identity), else None."""
    if body == 0:
        return None
    g = sp.powsimp(d / body, combine="exp")
    if not _j_free(g, j_syms):
        try:
            g = _simplify(g)
        except Exception:  # sympy gave up: no identity, so the j-sum
            return None
    return g if _j_free(g, j_syms) and g.is_finite is not False else None


def derive_backward(c: n.Cascade) -> BackwardPlan:
    """The backward plan of ``c`` (cached per cascade); raises ``BackwardError`` when the
    result depends on a max/min reduction other than through an invariant shift."""
    return _derive_cached(c)


@lru_cache(maxsize=256)
def _derive_cached(c: n.Cascade) -> BackwardPlan:
    try:
        return _Derivation(c).run()
    except ValueError as err:  # a derivative with no IR spelling (passes._to_ir)
        out = c.stage("out")
        raise BackwardError(f"cannot write the gradient of `{out.name}` as kernel code: {err}", out.span) from err


class _Derivation:
    def __init__(self, c: n.Cascade):
        self.c = c
        self.sym = _Sym(c)
        self.reds = [st for st in c.stages if isinstance(st.expr, n.Reduce)]
        self.cons = [st for st in c.stages if isinstance(st.expr, n.Contract)]
        self.rowdef: dict[sp.Symbol, sp.Expr] = {}  # G / C / D symbols → their row expression
        self.jsumdef: dict[sp.Symbol, sp.Expr] = {}  # T symbols → their pair body
        self.what: dict[sp.Symbol, str] = {}
        self.identities: list[str] = []
        self.irnames: dict[sp.Symbol, n.Expr] = {}

    def new(self, name: str) -> sp.Symbol:
        s = sp.Symbol(name, real=True)
        self.irnames[s] = n.Ref(name, n.FLOAT)
        return s

    def run(self) -> BackwardPlan:
        c, sym = self.c, self.sym
        s_leaf = sym.leaf(("stage", "s"), "s", True)
        qk_leaf = sym.leaf(("stage", "qk"), "qk", True)
        S = sym.expr(c.stage("s").expr, {})
        self.dov, self.dout, self.dl = self.new(DOV), self.new(DOUT), self.new(DL)
        body = {st.name: _clean(sym.expr(st.expr.body, {}), st) for st in self.reds}
        weight = {st.name: _clean(sym.expr(st.expr.weight, {}), st) for st in self.cons}
        rsym = {st.name: sym.reduction_symbol(st.name) for st in self.reds + self.cons}

        # out = Σ_a c_a · acc_a
        out_st = c.stage("out")
        out = sym.expr(n.Ref("out", n.VEC), {})
        coef = {a.name: sp.diff(out, rsym[a.name]) for a in self.cons}
        rest = sp.expand(out - sum(coef[a] * rsym[a] for a in coef))
        if rest != 0 or any(cf.free_symbols & {rsym[a.name] for a in self.cons} for cf in coef.values()):
            raise BackwardError("out[i] must be linear in its sums over v[j] for the backward", out_st.span)
        lse = sym.expr(n.Ref("lse", n.FLOAT), {}) if c.has_lse else sp.Integer(0)

        # Contraction coefficients C_a and D_a = Σ_f dO·acc_a
        C, D = {}, {}
        for a in self.cons:
            C[a.name] = self.new(f"bwd.C.{a.name}")
            self.rowdef[C[a.name]] = coef[a.name]
            self.what[C[a.name]] = f"the factor of the sum {a.name} in out"
        if len(self.cons) == 1:
            a = self.cons[0].name
            ident = sp.cancel(self.dout / coef[a]) if coef[a] != 0 else None
            if ident is not None and sp.fraction(ident)[1].is_Number:
                D[a] = ident
                self.identities.append(f"Σ_f dO·{a} = {_short(ident)} (from out, no pass over the keys)")
        for a in self.cons:
            if a.name not in D:
                t = self.new_jsum(weight[a.name] * self.dov, f"Σ_f dO·{a.name}")
                D[a.name] = t
        Dsyms = {a.name: sp.Symbol(f"D_{a.name}", real=True) for a in self.cons}
        L_row = sum(coef[a] * Dsyms[a] for a in coef) + self.dl * lse
        d_subst = {Dsyms[a]: D[a] for a in D}

        def row_partial(x):
            return _clean(sp.diff(L_row, x), out_st).xreplace(d_subst)

        # Adjoints of the reductions, last first.
        G: dict[str, sp.Symbol] = {}
        for st in reversed(self.reds):
            r = rsym[st.name]
            row = row_partial(r)
            residual = sp.Integer(0)
            for later in self.reds[self.reds.index(st) + 1:]:
                if later.name not in G:
                    continue
                d = _clean(sp.diff(body[later.name], r), later)
                row, residual = self.split(d, body[later.name], G[later.name], rsym[later.name], row, residual,
                                           f"Σ_j ∂{later.name}/∂{st.name}")
            for a in self.cons:
                d = _clean(sp.diff(weight[a.name], r), a)
                row, residual = self.split(d, weight[a.name], C[a.name] * self.dov, C[a.name] * D[a.name], row,
                                           residual, f"Σ_j ∂{a.name}/∂{st.name}", contract=True)
            if st.expr.op in ("max", "min"):
                if not self.is_zero(row, residual) and not self.invariant(st, out, lse, rsym):
                    raise BackwardError(
                        f"the result depends on `{st.name}` = {st.expr.op}_j(...) beyond a shift it is invariant "
                        f"to, and attnc derives no gradient through a {st.expr.op} over the keys (the forward runs: call "
                        f"it under torch.no_grad(), or with inputs that do not require grad)", st.span)
                self.identities.append(f"∂out/∂{st.name} = 0: the result is invariant to {st.name}")
                continue
            if residual != 0:
                row = row + self.new_jsum(residual, f"part of the adjoint of {st.name}")
            g = self.new(f"bwd.G.{st.name}")
            self.rowdef[g] = row
            self.what[g] = f"the adjoint of {st.name}"
            G[st.name] = g

        # Per pair: ℓ = Σ G_k·body_k + Σ C_a·dOv·w_a
        ell = sum((G[k] * body[k] for k in G), sp.Integer(0)) + sum(
            (C[a] * self.dov * weight[a] for a in C), sp.Integer(0))
        # Partial sums: leaves of ℓ; the adjoint A_c of one reaches what its body reads, at (i, k).
        scan_body: dict[sp.Symbol, sp.Expr] = {}
        self.scans = []
        for st in c.stages:
            if not st.is_scan:
                continue
            if c.stages[0].expr.k_map is not None:
                raise BackwardError("a partial sum with a feature map of k has no backward yet (the forward runs: "
                                    "call it under torch.no_grad())", st.span)
            u = _clean(sp.diff(ell, sym.leaf(("stage", st.name), st.name, True)), st)
            adjoint = self.new(f"bwd.A.{st.name}")
            scan_body[adjoint] = _clean(sym.expr(st.expr.body, {}), st)
            self.scans.append((st.name, adjoint, u, self.new_jsum(u, f"Σ_j ∂ℓ/∂{st.name}, for its adjoint")))

        def through_scans(x, full=False):  # full: the score s inlined (a parameter read in s)
            return sum((a * sp.diff(b.xreplace({s_leaf: S}) if full else b, x) for a, b in scan_body.items()),
                       sp.Integer(0))

        ds = sp.diff(ell, s_leaf) + through_scans(s_leaf)
        ds_sym = self.new(DS)
        dqk = ds_sym * _clean(sp.diff(S, qk_leaf), c.stage("s")) + sp.diff(ell, qk_leaf) + through_scans(qk_leaf)
        self.dqk_more = []
        for st in c.dots[1:]:
            leaf = sym.leaf(("stage", st.name), st.name, True)
            self.dqk_more.append((st.name, ds_sym * _clean(sp.diff(S, leaf), c.stage("s")) + _clean(sp.diff(ell, leaf), st)
                                  + through_scans(leaf)))
        dv_weight = sum((C[a] * weight[a] for a in C), sp.Integer(0))

        # Float tensor parameters: through the score and through the bodies.
        full_body = {k: body[k].xreplace({s_leaf: S}) for k in body}
        full_weight = {a: weight[a].xreplace({s_leaf: S}) for a in weight}
        load_grads = []
        for key, x in list(sym._leaf.items()):
            if key[0] != "load" or key[1].type != n.FLOAT:
                continue
            load = key[1]
            row = row_partial(x)
            if x in sym.j_syms:  # per pair: through s (ds is at hand), and read in the norm itself
                residual = ds_sym * sp.diff(S, x) + sp.diff(ell, x) + through_scans(x)
                load_grads.append((load, row, residual))
                continue
            residual = sp.Integer(0)
            for k in G:
                d = sp.diff(full_body[k], x)
                row, residual = self.split(d, full_body[k], G[k], rsym[k], row, residual, None)
            for a in C:
                d = sp.diff(full_weight[a], x)
                row, residual = self.split(d, full_weight[a], C[a] * self.dov, C[a] * D[a], row, residual,
                                           None, contract=True)
            residual = residual + through_scans(x, full=True)
            if self.is_zero(row, residual):  # e.g. a sink read only inside softmax's shift m: exactly 0
                self.identities.append(f"∂out/∂{expr_text(load)} = 0")
                continue
            load_grads.append((load, row, residual.xreplace({S: s_leaf}) if S != s_leaf else residual))
        return self.finish(ds, dqk, dv_weight, load_grads)

    def invariant(self, red: n.Stage, out: sp.Expr, lse: sp.Expr, rsym: dict) -> bool:
        """Whether out and lse stay the same when ``red`` (a max or min) takes another value: every
        sum and contraction that reads it scales by a factor free of j (the forward's online
        proof), and out and lse with their sums so scaled do not change. Softpick's shifted form
        passes where the derivative test cannot (sympy does not see that H(x)·x = relu(x))."""
        c, sym = self.c, self.sym
        old, new = sym.reduction_symbol(red.name, "old"), sym.reduction_symbol(red.name, "new")
        scaled = {rsym[red.name]: new}
        for st in self.reds + self.cons:
            if st is red or red.name not in _reduction_deps(c, st.name):
                continue
            if isinstance(st.expr, n.Reduce) and st.expr.op in ("max", "min"):
                return False  # a max of values that move with red: no scaling argument
            proof = _prove_online(sym, st, (red.name,))
            if not proof.ok:
                return False
            scaled[rsym[st.name]] = (proof.factor if proof.factor is not None else 1) * rsym[st.name]
        try:
            return all(_simplify(e.xreplace({rsym[red.name]: old}) - e.xreplace(scaled)) == 0
                       for e in (out, lse) if e != 0)
        except Exception:  # sympy gave up: no proof
            return False

    def split(self, d, body, coef_pair, coef_row_sum, row, residual, what, contract=False):
        """Add ``Σ_j coef·d`` to (row, residual): by the identity when ``d/body`` is free of j."""
        if d == 0:
            return row, residual
        g = _ratio(d, body, self.sym.j_syms)
        if g is not None:
            try:
                _to_ir(g, {**self.sym.names(), **self.irnames})
            except ValueError:
                g = None
        if g is None:
            return row, residual + coef_pair * d
        if what:
            self.identities.append(f"{what} = ({_short(g)}) · {'Σ_j w·dO·v' if contract else coef_row_sum}")
        if contract:
            return row + g * coef_row_sum, residual
        return row + coef_pair * g * coef_row_sum, residual

    def new_jsum(self, body: sp.Expr, what: str) -> sp.Symbol:
        t = self.new(f"bwd.T{len(self.jsumdef) + 1}")
        self.jsumdef[t] = body
        self.what[t] = what
        return t

    def inline(self, x: sp.Expr) -> sp.Expr:
        for _ in range(64):
            y = x.xreplace(self.rowdef)
            if y == x:
                return y
            x = y
        return x

    def is_zero(self, row: sp.Expr, residual: sp.Expr) -> bool:
        """Whether ``row + Σ_j residual`` is identically 0, j-sums (T) expanded where linear."""
        e_row = self.inline(row)
        pair = self.inline(residual)
        for t, tb in self.jsumdef.items():
            k = sp.diff(e_row, t)
            if k != 0:
                pair = pair + k * self.inline(tb)
        e_row = e_row.xreplace({t: 0 for t in self.jsumdef})
        if pair.free_symbols & set(self.jsumdef):
            return False
        try:
            return _simplify(sp.expand(e_row)) == 0 and _simplify(sp.expand(pair)) == 0
        except Exception:
            return False

    def smaller(self, x: sp.Expr, names: dict) -> sp.Expr:
        """``x`` with the row values it reads inlined and simplified, when that is shorter and
        still has an IR form (a per-row bias's gradient under softmax is just dL)."""
        if x == 0 or x.free_symbols & set(self.jsumdef):
            return x
        try:
            full = self.inline(x)
            cand = _simplify(full)
            # no new exponentials: simplify may trade exp(sink − max(r, sink)) for exp(sink) / …,
            # which overflows in fp32 where the original, shifted form cannot
            new_exps = {e.args[0] for e in cand.atoms(sp.exp)} - {e.args[0] for e in full.atoms(sp.exp)}
            if not new_exps and sp.count_ops(cand) < sp.count_ops(x):
                _to_ir(cand, names)
                return cand
        except Exception:  # no shorter form with an IR spelling: keep x
            pass
        return x

    def feature_grads(self) -> tuple[tuple[str, n.Expr], ...]:
        """The derivative of each feature map by its element, as kernel expressions."""
        dot = self.c.stages[0].expr
        out = []
        for side in ("q", "k"):
            m = dot.map(side)
            if m is None:
                continue
            x = self.sym.expr(m, {})
            element = self.sym.leaf(("feature", side), f"{side} element", False)
            d = _clean(sp.diff(x, element), self.c.stage("qk"))
            out.append((side, _to_ir(sp.powsimp(d, combine="exp"), {**self.sym.names(), **self.irnames})))
        return tuple(out)

    def finish(self, ds, dqk, dv_weight, load_grads) -> BackwardPlan:
        names = {**self.sym.names(), **self.irnames}
        self.rowdef = {s: self.smaller(e, names) for s, e in self.rowdef.items()}
        load_grads = [(load, self.smaller(row, names), pair) for load, row, pair in load_grads]

        def ir(x):
            # exp(a)·exp(−b) → exp(a − b): sympy splits exponentials, which overflow apart in fp32.
            return _to_ir(sp.powsimp(sp.sympify(x), combine="exp"), names)
        # What the pair kernels read, and everything those need, transitively.
        more = [x for _, x in self.dqk_more]
        us = [u for _, _, u, _ in self.scans]
        pair_exprs = [ds, dqk, dv_weight] + more + us + [p for _, _, p in load_grads]
        need: set[sp.Symbol] = set()
        todo = [s for e in pair_exprs + [r for _, r, _ in load_grads] for s in sp.sympify(e).free_symbols]
        todo += [t for _, _, _, t in self.scans]  # the partial sums' totals (their adjoints read them)
        while todo:
            s = todo.pop()
            if s in need:
                continue
            need.add(s)
            if s in self.rowdef:
                todo.extend(self.rowdef[s].free_symbols)
            if s in self.jsumdef:
                todo.extend(self.jsumdef[s].free_symbols)
        level: dict[sp.Symbol, int] = {}

        def lvl(s) -> int:
            if s not in level:
                deps = (self.rowdef.get(s) or self.jsumdef.get(s) or sp.Integer(0)).free_symbols
                base = max((lvl(d) for d in deps if d in self.rowdef or d in self.jsumdef), default=0)
                level[s] = base + 1 if s in self.jsumdef else base
            return level[s]

        rows = tuple(RowStep(str(s), ir(e), lvl(s), self.what[s]) for s, e in self.rowdef.items() if s in need)
        rows = tuple(sorted(rows, key=lambda r: r.level))  # stable: definition order within a level
        jsums = tuple(JSum(str(t), ir(b), lvl(t), self.what[t]) for t, b in self.jsumdef.items() if t in need)
        pair_syms = set().union(*(sp.sympify(e).free_symbols for e in pair_exprs), {t for _, _, _, t in self.scans})
        coefs = tuple(r.name for r in rows if sp.Symbol(r.name, real=True) in pair_syms)
        grads = tuple(LoadGrad(load, None if row == 0 else ir(row), None if pair == 0 else ir(pair))
                      for load, row, pair in load_grads if row != 0 or pair != 0)
        used = set().union(*(e.free_symbols for e in [sp.sympify(x) for x in [ds, dqk, dv_weight] + more + us]),
                           *(self.rowdef[s].free_symbols for s in need if s in self.rowdef),
                           *(self.jsumdef[s].free_symbols for s in need if s in self.jsumdef),
                           *(sp.sympify(r).free_symbols for _, r, _ in load_grads))
        # Common sub-expressions of the pair values (exp(s − m) in both ds and W) are computed once.
        pair_list = [sp.powsimp(sp.sympify(x), combine="exp") for x in [ds, dv_weight] + more + us + [p for _, _, p in load_grads]]
        counter = iter(range(1, 10**6))
        repl, reduced = sp.cse(pair_list, symbols=(self.new(f"bwd.x{next(counter)}") for _ in iter(int, 1)))
        names.update(self.irnames)
        temps = tuple((str(t), ir(e)) for t, e in repl)
        ds, dv_weight = reduced[0], reduced[1]
        more, us = reduced[2:2 + len(more)], reduced[2 + len(more):2 + len(more) + len(us)]
        load_grads = [(load, row, p) for (load, row, _), p in zip(load_grads, reduced[2 + len(more) + len(us):], strict=True)]
        return BackwardPlan(
            stats=tuple(st.name for st in self.reds), temps=temps,
            rows=rows, jsums=jsums, num_row_passes=max((j.level for j in jsums), default=0), coefs=coefs,
            ds=ir(ds), dqk=ir(dqk), dv_weight=ir(dv_weight), load_grads=grads,
            uses_dout=self.dout in used, uses_dl=self.dl in used, identities=tuple(self.identities),
            feature_grads=self.feature_grads(), dqk_more=tuple((name, ir(x)) for (name, _), x in zip(self.dqk_more, more, strict=True)),
            scans=tuple(ScanGrad(stage, str(a), ir(u), str(t)) for (stage, a, _, t), u in zip(self.scans, us, strict=True)),
            map_tensors=tuple(sorted({x.tensor for side in "qk" if self.c.stages[0].expr.map(side) is not None
                                      for x in n.walk(self.c.stages[0].expr.map(side))
                                      if isinstance(x, n.Load) and x.type == n.FLOAT})))


def _short(x, limit: int = 60) -> str:
    text = str(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def backward_text(c: n.Cascade, plan: BackwardPlan) -> str:
    """Human-readable backward plan, as ``attnc explain`` prints it."""
    ranks = {**{st.name: st.ranks for st in c.stages}, **plan.ranks()}
    show = lambda e: expr_text(e, ranks).replace("bwd.", "")  # noqa: E731
    stats = ", ".join((*plan.stats, "has_key"))
    lines = [f"saves per row: {stats} ({len(plan.stats) + 1} fp32; the score matrix is never stored)",
             f"{plan.num_row_passes} backward pass{'es' if plan.num_row_passes != 1 else ''} over the keys "
             f"for per-row sums{' (none needed: identities below)' if not plan.num_row_passes else ''}"]
    for level in range(0, plan.num_row_passes + 1):
        for r in plan.rows:
            if r.level == level:
                lines.append(f"  {r.name[4:]}[i] = {show(r.expr)}    ({r.what})")
        for t in plan.jsums:
            if t.level == level + 1:
                lines.append(f"  pass {t.level}: {t.name[4:]}[i] = sum_j{{keep}}({show(t.body)})    ({t.what})")
    if plan.identities:
        lines.append("identities used:")
        lines += [f"  {x.replace('bwd.', '')}" for x in plan.identities]
    lines.append("per pair, in the dQ and dK/dV kernels (dov = dO·v, W weighs dO into dV):")
    for name, e in plan.temps:
        lines.append(f"  {name[4:]} = {show(e)}")
    lines += [f"  ds = {show(plan.ds)}", f"  dqk = {show(plan.dqk)}"]
    lines += [f"  d{name} = {show(x)}" for name, x in plan.dqk_more]
    for g in plan.scans:
        rel = {">": "<", ">=": "<=", "<": ">", "<=": ">="}[c.stage(g.stage).expr.rel]
        lines.append(f"  {g.adjoint[4:]} = sum_{{k {rel} j}}{{keep}}(u[i, k]),  u = {show(g.u)}    (the adjoint of "
                     f"{g.stage}: {g.total[4:]} − u's running sum in the forward's key order; dK, dV by atomics)")
    lines.append(f"  W = {show(plan.dv_weight)}")
    for side, d in plan.feature_grads:
        acc = "Σ_j dqk·k̃[j]" if side == "q" else "Σ_i dqk·q̃[i]"
        lines.append(f"  d{side} = ({acc}) ⊙ {show(d)}    (through the feature map of {side})")
    for g in plan.load_grads:
        where = " + ".join(w for w, x in (("per row", g.row), ("per pair", g.pair)) if x is not None)
        lines.append(f"  ∂/∂{expr_text(g.load)} ({where}, fp32 atomics):")
        if g.row is not None:
            lines.append(f"    per row: {show(g.row)}")
        if g.pair is not None:
            lines.append(f"    per pair: {show(g.pair)}")
    return "\n".join(lines)
