"""Interval arithmetic over IR expressions: what values an expression can take.

Two users:

* code generation asks whether a contraction's weight is bounded (``weight_range``): fp16 kernels
  round the weights to fp16 before ``tl.dot`` with V, which is exact enough for softmax-like
  weights ``exp(s − m) ∈ [0, 1]`` but turns a ReLU or linear weight above 65504 into ``inf``;
* the runtime asks, for concrete sizes and scalar parameters, whether an integer sub-expression
  can leave int32 (``int32_overflows``), since kernels compute masks and indices in 32 bits.

Intervals are sound over-approximations; anything not understood is ``(-inf, inf)``. One fact
beyond plain intervals: ``x − m`` where ``m`` is a max over the keys of ``x`` (possibly with other
terms, ``max(max_j x, c)``) is ≤ 0, the step that makes softmax's weights bounded.
"""

from __future__ import annotations

import math

from ..dsl.functions import FUNCTIONS, fold
from . import nodes as n

INF = math.inf
ALL = (-INF, INF)
INT32 = (-(2**31), 2**31 - 1)


def _mul(a, b):
    products = [x * y for x in a for y in b if not (math.isinf(x) and y == 0 or math.isinf(y) and x == 0)]
    return (min(products, default=0.0), max(products, default=0.0))


def _is_max_over(m: n.Expr, x: n.Expr, stages: dict[str, n.Stage]) -> bool:
    """``m >= x`` for every kept key: m is ``max_j x`` or a max of terms one of which is."""
    if isinstance(m, n.Ref) and m.stage in stages:
        return _is_max_over(stages[m.stage].expr, x, stages)
    if isinstance(m, n.Reduce) and m.op == "max":
        return m.body == x
    if isinstance(m, n.Call) and m.fn == "max":
        return any(_is_max_over(a, x, stages) for a in m.args)
    return False


class _Ranges:
    def __init__(self, stages: dict[str, n.Stage], env: dict[str, tuple[float, float]]):
        self.stages = stages
        self.env = env  # Var / Param name → interval
        self.seen: list[tuple[n.Expr, tuple[float, float]]] = []  # every int sub-expression

    def __call__(self, e: n.Expr) -> tuple[float, float]:
        r = self._range(e)
        if e.type == n.INT:
            self.seen.append((e, r))
        return r

    def _range(self, e: n.Expr) -> tuple[float, float]:
        if isinstance(e, n.Const):
            v = float(e.value)
            return (v, v)
        if isinstance(e, (n.Var, n.Param)):
            return self.env.get(e.name, ALL)
        if isinstance(e, n.Ref):
            st = self.stages.get(e.stage)
            return self(st.expr) if st is not None and not isinstance(st.expr, n.Contract) else ALL
        if isinstance(e, n.Unary):
            a = self(e.operand)
            return (-a[1], -a[0]) if e.op == "-" else (0.0, 1.0)
        if isinstance(e, n.Select):
            self(e.cond)
            a, b = self(e.then), self(e.other)
            return (min(a[0], b[0]), max(a[1], b[1]))
        if isinstance(e, n.Reduce):
            a = self(e.body)
            if e.op == "max":  # an empty reduction is -inf (max) / +inf (min)
                return (-INF, a[1])
            if e.op == "min":
                return (a[0], INF)
            return (-INF if a[0] < 0 else 0.0, INF if a[1] > 0 else 0.0)  # a sum of any number of terms
        if isinstance(e, n.Binary):
            return self._binary(e)
        if isinstance(e, n.Call):
            return self._call(e)
        for k in n.children(e):
            self(k)
        return ALL

    def _binary(self, e: n.Binary) -> tuple[float, float]:
        if e.op == "-" and _is_max_over(e.right, e.left, self.stages):
            self(e.left), self(e.right)
            return (-INF, 0.0)
        a, b = self(e.left), self(e.right)
        if e.type == n.BOOL:
            return (0.0, 1.0)
        if e.op == "+":
            return (a[0] + b[0], a[1] + b[1])
        if e.op == "-":
            return (a[0] - b[1], a[1] - b[0])
        if e.op == "*":
            return _mul(a, b)
        if e.op == "/":
            if b[0] > 0 or b[1] < 0:  # a divisor of one sign: 1/b lies in [1/b_hi, 1/b_lo]
                return _mul(a, (1 / b[1], 1 / b[0]))
            return ALL
        if e.op == "//":  # |a // b| <= |a| (and x // 0 = 0); the sign follows a·b
            m = max(abs(a[0]), abs(a[1]))
            return (-m, m)
        if e.op == "%":  # floor modulo: in [0, b) for b > 0, in (b, 0] for b < 0; x % 0 = x
            lo, hi = min(b[0] + 1, 0.0), max(b[1] - 1, 0.0)
            return (min(a[0], lo), max(a[1], hi)) if b[0] <= 0 <= b[1] else (lo, hi)
        if e.op in n.BITWISE:
            return bitwise_interval(e.op, a, b)
        return ALL  # **

    def _call(self, e: n.Call) -> tuple[float, float]:
        return call_interval(FUNCTIONS[e.fn], [self(a) for a in e.args])


def call_interval(f, args: list[tuple[float, float]]) -> tuple[float, float]:
    """An interval holding ``f`` of any arguments in ``args`` (the row's shape and bounds)."""
    lo_b, hi_b = f.bounds
    if f.shape == "monotone":  # non-decreasing in every argument: the ends map to the ends
        lo = fold(f, [a[0] for a in args], f.scalar)
        hi = fold(f, [a[1] for a in args], f.scalar)
    elif f.shape == "even":  # f(|x|), non-decreasing in |x|
        (a,) = args
        m = max(abs(a[0]), abs(a[1]))
        lo, hi = f.scalar(0.0 if a[0] <= 0 <= a[1] else min(abs(a[0]), abs(a[1]))), f.scalar(m)
    else:  # the image of the whole line (NaN, as sin(inf), is no value an interval holds)
        return (lo_b, hi_b)
    return (lo_b if lo != lo else max(lo, lo_b), hi_b if hi != hi else min(hi, hi_b))  # NaN: the bound


def bitwise_interval(op: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """An interval holding ``x op y`` (int32 two's complement, shift counts clamped into
    0..SHIFT_MAX) for x in ``a``, y in ``b``."""
    if op in ("<<", ">>"):  # x·2^k and floor(x / 2^k): monotone in x, and in k for x of one sign
        ks = [2.0 ** min(max(k, 0), n.SHIFT_MAX) for k in b]
        ends = [x * k if op == "<<" else math.floor(x / k) if math.isfinite(x) else x for x in a for k in ks]
        return (min(ends), max(ends))
    if op == "&" and any(r[0] >= 0 and math.isfinite(r[1]) for r in (a, b)):  # x & y in [0, y] for y >= 0
        return (0.0, min(r[1] for r in (a, b) if r[0] >= 0))
    if any(math.isinf(x) for x in a + b):
        return ALL  # a tensor's values: unknown (never counted as an overflow)
    # x in [-2^k, 2^k) exactly when k >= the bit length of x (of ~x = -x - 1 for negative x)
    top = 2.0 ** max((int(x) if x >= 0 else ~int(x)).bit_length() for x in a + b)  # x, y, the result in [-top, top)
    if a[0] >= 0 and b[0] >= 0:  # x ^ y <= x | y <= x + y
        return (max(a[0], b[0]) if op == "|" else 0.0, min(a[1] + b[1], top - 1))
    return (-top, top - 1)


def weight_range(c: n.Cascade, weight: n.Expr) -> tuple[float, float]:
    """An interval holding every value ``weight`` (a contraction's weight) can take."""
    return _Ranges({st.name: st for st in c.stages}, {})(weight)


def int32_overflows(c: n.Cascade, env: dict[str, tuple[float, float]]) -> list[tuple[n.Expr, tuple[float, float]]]:
    """Integer sub-expressions of ``c`` whose interval, for the sizes and parameter values in
    ``env``, leaves int32 (tensor values are unknown and never counted against it)."""
    r = _Ranges({st.name: st for st in c.stages}, env)
    for st in c.stages:
        r(st.expr)
    for p in c.params:
        if p.default is not None:
            r(p.default)
    return [(e, rng) for e, rng in r.seen
            if not math.isinf(rng[0]) and not math.isinf(rng[1]) and (rng[0] < INT32[0] or rng[1] > INT32[1])]


# -- a masked pair ------------------------------------------------------------------------------
# The forward kernel may apply a mask once, by setting q·k to −inf on the pairs it drops, instead
# of selecting every reduction's input (codegen/generate.py). That is exact when each reduction's
# body then evaluates to the reduction's identity (IEEE arithmetic, no NaN): ``at_masked_pair``
# says what a body evaluates to there, over a small domain of values.

NEG_INF, POS_INF, ZERO, POS, NEG, FIN = "-inf", "+inf", "0", "+", "-", "finite"


def at_masked_pair(c: n.Cascade, e: n.Expr) -> str | None:
    """The value of ``e`` at a pair whose raw score ``scale·qk`` is −inf (scale > 0): one of
    NEG_INF, POS_INF, ZERO, POS (finite > 0), NEG (finite < 0), FIN (finite) — or None when it
    cannot be told (possibly NaN). Running maxima and minima count as finite: the kernel
    substitutes 0 for one that is still ∓inf (a row with no kept key so far) when it computes
    the pair values. Other per-row values, parameters and tensor values are not assumed finite."""
    stages = {st.name: st for st in c.stages}
    return _masked(e, stages, 0)


def _masked(e: n.Expr, stages, depth: int) -> str | None:
    if depth > 60:
        return None
    if isinstance(e, n.Binary) and e.op == "*" and {type(e.left), type(e.right)} == {n.Var, n.Ref} and \
            any(isinstance(x, n.Var) and x.name == "scale" for x in (e.left, e.right)) and \
            any(isinstance(x, n.Ref) and x.stage == "qk" for x in (e.left, e.right)):
        return NEG_INF
    if isinstance(e, n.Const):
        v = float(e.value)
        return ZERO if v == 0 else POS if 0 < v < INF else NEG if -INF < v < 0 else POS_INF if v > 0 else NEG_INF \
            if v < 0 else None
    if isinstance(e, n.Var):
        return FIN if e.name in ("b", "h", "i", "j", "n_q", "n_kv", "head_dim", "n_heads", "n_kv_heads") else None
    if isinstance(e, (n.Ref, n.Running)):
        st = stages.get(e.stage)
        if st is None:
            return None
        if isinstance(st.expr, n.Reduce) and st.expr.op in ("max", "min"):
            return FIN  # the kernel's safe substitute of a running max/min
        if st.ranks == n.PAIR and not st.is_reduction and isinstance(e, n.Ref):
            return _masked(st.expr, stages, depth + 1)
        return None
    if isinstance(e, n.Unary) and e.op == "-":
        return {NEG_INF: POS_INF, POS_INF: NEG_INF, ZERO: ZERO, POS: NEG, NEG: POS, FIN: FIN}.get(_masked(e.operand, stages, depth + 1))
    if isinstance(e, n.Binary) and e.op in ("+", "-", "*", "/"):
        a, b = _masked(e.left, stages, depth + 1), _masked(e.right, stages, depth + 1)
        if a is None or b is None:
            return None
        if e.op == "-":
            b = {NEG_INF: POS_INF, POS_INF: NEG_INF, ZERO: ZERO, POS: NEG, NEG: POS, FIN: FIN}[b]
        if e.op in ("+", "-"):
            infs = {a, b} & {NEG_INF, POS_INF}
            if len(infs) == 2:
                return None  # inf − inf
            if infs:
                return infs.pop()
            if a == ZERO or b == ZERO:
                return b if a == ZERO else a
            return a if a == b and a in (POS, NEG) else FIN
        if e.op == "*":
            if {a, b} & {NEG_INF, POS_INF}:
                other = b if a in (NEG_INF, POS_INF) else a
                inf = a if a in (NEG_INF, POS_INF) else b
                if other in (POS, POS_INF):
                    return inf
                if other in (NEG, NEG_INF):
                    return NEG_INF if inf == POS_INF else POS_INF
                return None  # inf · 0 or of unknown sign
            if ZERO in (a, b):
                return ZERO
            if a in (POS, NEG) and b in (POS, NEG):
                return POS if a == b else NEG
            return FIN
        # division: only by a finite non-zero value of known sign, of a finite numerator
        if b not in (POS, NEG) or a in (NEG_INF, POS_INF):
            return None
        return ZERO if a == ZERO else FIN if a == FIN else (POS if a == b else NEG)
    if isinstance(e, n.Call):
        args = [_masked(x, stages, depth + 1) for x in e.args]
        if any(x is None for x in args):
            return None
        x = args[0]
        if e.fn in ("exp", "exp2"):
            return ZERO if x == NEG_INF else POS_INF if x == POS_INF else POS
        if e.fn == "sigmoid":
            return ZERO if x == NEG_INF else POS
        if e.fn == "relu":
            return ZERO if x in (NEG_INF, NEG, ZERO) else x if x in (POS, POS_INF) else FIN
        if e.fn == "abs":
            return POS_INF if x in (NEG_INF, POS_INF) else ZERO if x == ZERO else POS if x in (POS, NEG) else FIN
        return None
    return None


def absorbs(c: n.Cascade, reduction: n.Expr) -> bool:
    """Whether a reduction's input is its identity at every masked pair (``at_masked_pair``): a
    sum's or a contraction's 0, a max's −inf, a min's +inf."""
    if isinstance(reduction, n.Contract):
        return at_masked_pair(c, reduction.weight) == ZERO
    if isinstance(reduction, n.Reduce):
        want = {"sum": ZERO, "max": NEG_INF, "min": POS_INF}[reduction.op]
        return at_masked_pair(c, reduction.body) == want
    return False


# -- tensor indices proven in range ---------------------------------------------------------------
# Kernels clamp every tensor-parameter index into its dimension (the language's semantics for an
# index out of range). Where the index stays inside the dimension for every query i < n_q, key
# j < n_kv, head and batch, whatever the sizes (the runtime checks each tensor's shape against
# its declared dimensions), the clamp is an identity and the kernel drops it.

def index_in_range(index: n.Expr, dim: n.Expr) -> bool:
    """Whether ``0 <= index < dim`` for every valid (b, h, i, j) and every size: ``index`` affine in
    the indices with integer coefficients over sizes and constants, ``dim`` a shape expression of
    sizes (``N_Q``, ``N_KV``, ``H``, ``B``, ... — packed batches' ``N_Q``/``N_KV`` may exceed a
    sequence's ``n_q``/``n_kv``). Anything else is not proven (False)."""
    import sympy as sp

    t = {name: sp.Symbol(f"t_{name}", nonnegative=True) for name in
         ("n_q", "n_kv", "n_heads", "n_kv_heads", "head_dim", "head_dim_v", "batch", "aq", "akv")}
    one = sp.Integer(1)
    size = {"n_q": one + t["n_q"], "n_kv": one + t["n_kv"], "n_heads": one + t["n_heads"],
            "n_kv_heads": one + t["n_kv_heads"], "head_dim": one + t["head_dim"],
            "B": one + t["batch"], "H": one + t["n_heads"], "H_KV": one + t["n_kv_heads"],
            "N_Q": one + t["n_q"] + t["aq"], "N_KV": one + t["n_kv"] + t["akv"],
            "D": one + t["head_dim"], "D_V": one + t["head_dim_v"]}
    idx = {name: sp.Symbol(name) for name in ("i", "j", "h", "b")}
    top = {"i": size["n_q"] - 1, "j": size["n_kv"] - 1, "h": size["n_heads"] - 1, "b": size["B"] - 1}

    def conv(e: n.Expr):
        if isinstance(e, n.Const) and e.type == n.INT:
            return sp.Integer(int(e.value))
        if isinstance(e, n.Var):
            return idx.get(e.name, size.get(e.name))
        if isinstance(e, n.Unary) and e.op == "-":
            x = conv(e.operand)
            return None if x is None else -x
        if isinstance(e, n.Binary) and e.op in ("+", "-", "*") and e.type == n.INT:
            a, b = conv(e.left), conv(e.right)
            if a is None or b is None:
                return None
            return a + b if e.op == "+" else a - b if e.op == "-" else a * b
        return None

    x, d = conv(index), conv(dim)
    if x is None or d is None or any(s in d.free_symbols for s in idx.values()):
        return False
    x = sp.expand(x)
    lo, hi = x, x
    for name, s in idx.items():
        c = x.coeff(s)
        if c.free_symbols or not c.is_Integer or sp.expand(x - c * s).has(s):
            return False  # not affine in this index with a constant coefficient
        if c > 0:
            lo, hi = lo.subs(s, 0), hi.subs(s, top[name])
        elif c < 0:
            lo, hi = lo.subs(s, top[name]), hi.subs(s, 0)
    return _nonnegative(sp.expand(lo)) and _nonnegative(sp.expand(d - 1 - hi))


def _nonnegative(e) -> bool:
    """Whether a polynomial in nonnegative symbols is nonnegative: every coefficient is (sufficient)."""
    import sympy as sp

    poly = sp.Poly(e, *sorted(e.free_symbols, key=str)) if e.free_symbols else None
    if poly is None:
        return bool(e >= 0)
    return all(c >= 0 for c in poly.coeffs())
