"""The one expression printer: IR expressions → Triton source.

Every value in a kernel has one of four shapes, and the printer broadcasts operands to the
shape the consumer needs:

    scalar   b, h, sizes, runtime parameters         plain
    row      per query: [BLOCK_M]                     `x` in row context, `x[:, None]` in pair/vec context
    col      per key: [BLOCK_N]                       `x[None, :]` in pair context
    pair     [BLOCK_M, BLOCK_N]

Integer `//` and `%` are floor division and modulo (the spec language's meaning, total: x // 0
is 0 and x % 0 is x); they and float `**` are small helpers the kernel template defines once.
Built-in functions print as their row of ``dsl/functions.py`` spells them (functions Triton lacks
on some backends are helpers there too), except where a faster spelling exists.
Spec identifiers are never printed as they are: ``names`` maps each parameter and stage to the
generated name (see ``ir/names.py``).
"""

from __future__ import annotations

import math

from ..dsl.functions import ARGS, FUNCTIONS, fold
from ..ir import nodes as n
from ..ir.names import derived_ident, kernel_ident
from ..ir.printer import const_text

_TL_TYPES = {n.INT: "tl.int32", n.FLOAT: "tl.float32", n.BOOL: "tl.int1"}


class ExprPrinter:
    """Prints IR expressions in one of the contexts ``pair``, ``row`` or ``vec``."""

    def __init__(self, stage_ranks: dict[str, tuple[str, ...]], names: dict[str, str], loads,
                 stage_exprs: dict[str, n.Expr] | None = None):
        self.stage_ranks = stage_ranks
        self.names = names  # stage/param → generated identifier
        self.loads = loads  # callable(Load, ctx) → source of the (clamped) load
        self.stage_exprs = stage_exprs or {}  # lets exp() fold log2(e) into a score's scale

    def __call__(self, e: n.Expr, ctx: str) -> str:
        return self.p(e, ctx)

    def wide(self, e: n.Expr) -> str:
        """A scalar int expression in int64: its int leaves are widened before any arithmetic,
        so rearranged bounds such as ``n_q - n_kv + window - 1`` cannot wrap around."""
        self._wide = True
        try:
            return self.p(e, "row")
        finally:
            self._wide = False

    _wide = False
    rows = "offs_m"  # the query positions; key ranges use their own int64 vector
    cols = "offs_n"  # the key positions
    # How the raw score scale·qk prints. The forward kernel folds scale's sign into q (so its
    # qk is sign(scale)·q·k) and prints the raw score as |scale|·qk: the same value, exactly.
    score_scale = "scale"
    # stage → name printed for it in pair context: a masked tile's safe running maxima (generate.py)
    pair_overrides: dict = {}
    # sub-expression → name of its value computed once before a loop (``_Builder.hoist``)
    hoisted: dict = {}
    # side → the tile a feature map's element prints as (``_Builder.feature_map``)
    features: dict = {}
    # tanh by the hardware's tanh.approx (helpers.py.jinja): compiled fp16/bf16 kernels only
    hardware_tanh = False
    # exp's argument computed so a row's largest exponent is exactly 0 (``log2e_times``): the
    # forward's rerun of rows whose exp2 overflowed, and the backward's rows with huge shifts
    exact_exp = False
    # compiled kernels: the exact form's additions as PTX add.rn/sub.rn, which ptxas never fuses
    # into an FMA; the interpreter (numpy) rounds each operation anyway
    asm = False

    def key_range_expr(self, e: n.Expr) -> str:
        """``e`` (free of j) per row of the key-range computation, in int64 (see ``wide``)."""
        self.rows = "rows"
        try:
            return self.wide(e)
        finally:
            self.rows = "offs_m"

    # -- leaves
    def p(self, e: n.Expr, ctx: str) -> str:
        if self.hoisted and ctx in ("pair", "vec"):
            name = self.hoisted.get(e)
            if name is not None:
                return name
        if self._wide and e.type == n.INT and isinstance(e, (n.Var, n.Param, n.Load)):
            self._wide = False
            try:
                return f"{self.p(e, ctx)}.to(tl.int64)"
            finally:
                self._wide = True
        if isinstance(e, n.Const):
            return _const(e)
        if isinstance(e, n.Var):
            if e.name == "i":
                return self.rows if ctx == "row" else f"{self.rows}[:, None]"
            if e.name == "j":
                return f"{self.cols}[None, :]"
            return {"b": "off_b", "h": "off_h", "n_q": "n_q", "n_kv": "n_kv", "head_dim": "head_dim",
                    "n_heads": "n_heads", "n_kv_heads": "n_kv_heads", "scale": "scale"}[e.name]
        if isinstance(e, n.Param):  # bool parameters arrive as int32 kernel arguments
            # by its own prefix, never through the stage names: a parameter and a stage of one
            # name (a parameter `m` beside softmax's `m[i]`) are different values
            ident = kernel_ident(e.name)
            return f"({ident} != 0)" if e.type == n.BOOL else ident
        if isinstance(e, n.Load):
            return self.loads(e, ctx)
        if isinstance(e, n.Feature):
            return self.features[e.side]
        if isinstance(e, n.Ref):
            name = self.names[e.stage]
            if ctx in ("pair", "vec") and e.stage in self.pair_overrides:
                name = self.pair_overrides[e.stage]
            ranks = self.stage_ranks[e.stage]
            if ranks == n.ROW and e.type != n.VEC and ctx in ("pair", "vec"):
                return f"{name}[:, None]"
            return name
        if isinstance(e, n.Running):
            base = self.names[e.stage]
            name = derived_ident(base, "old") if e.when == "old" else base
            return name if ctx == "row" else f"{name}[:, None]"
        if isinstance(e, n.Unary):
            x = self.p(e.operand, ctx)
            return f"({x} == 0)" if e.op == "not" else f"(-{x})"
        if isinstance(e, n.Binary):
            if self.score_scale != "scale" and is_raw_score(e):
                return f"({self.score_scale} * {self.names['qk']})"
            return self.binary(e, ctx)
        if isinstance(e, n.Select):
            return f"tl.where({self.p(e.cond, ctx)}, {self.p(e.then, ctx)}, {self.p(e.other, ctx)})"
        if isinstance(e, n.Call):
            return self.call(e, ctx)
        raise TypeError(f"the kernel printer cannot print {type(e).__name__}")

    def binary(self, e: n.Binary, ctx: str) -> str:
        a, b = self.p(e.left, ctx), self.p(e.right, ctx)
        op = e.op
        if op == "and":
            return f"({a} & {b})"
        if op == "or":
            return f"({a} | {b})"
        if op == "//":
            return f"_fdiv({a}, {b})"
        if op == "%":
            return f"_fmod({a}, {b})"
        if op == "**":
            return f"_pow({a}, {b})"
        if op in ("<<", ">>") and not isinstance(e.right, n.Const):  # lowering checked a constant count
            b = f"tl.minimum(tl.maximum({b}, 0), {n.SHIFT_MAX})"
        if op == "/" and e.type == n.FLOAT:
            if isinstance(e.right, n.Const) and float(e.right.value) == 0.0:
                # x / ±0 is x·(±inf) in IEEE (±inf, NaN at 0), not Python's ZeroDivisionError on
                # the literal 1.0 / 0.0 (the interpreter and Triton's constant folding both raise)
                inf = "float(\"-inf\")" if math.copysign(1.0, float(e.right.value)) < 0 else "float(\"inf\")"
                return f"({a} * {inf})"
            if ctx == "pair" and "j" in n.free_ranks(e.left, self.stage_ranks) and \
                    "j" not in n.free_ranks(e.right, self.stage_ranks):
                # a divisor that is the same along a row: one reciprocal per row (or kernel),
                # then a multiply per element, not a division sequence per element
                return f"({a} * (1.0 / {b}))"
            return f"({a} / {b})"
        return f"({a} {op} {b})"

    def call(self, e: n.Call, ctx: str) -> str:
        args = [self.p(x, ctx) for x in e.args]
        fn = e.fn
        # the spellings that beat the table's on speed (see log2e_times and helpers.py.jinja)
        if fn == "exp":
            return f"tl.exp2({self.log2e_times(e.args[0], ctx)})"
        if fn == "tanh" and self.hardware_tanh:
            return f"_tanh_approx({args[0]})"
        if fn == "sigmoid" and ctx == "pair" and {"i", "j"} <= n.free_ranks(e.args[0], self.stage_ranks):
            return f"_sigmoid_tile({args[0]})"  # on a whole tile, half the reciprocals on the FMA units
        f = FUNCTIONS[fn]
        zero = "0" if e.type == n.INT else "0.0"
        return fold(f, args, lambda *xs: f.triton.format(zero=zero, **dict(zip(ARGS, xs))))


    # -- exp(x) = exp2(x·log2 e), with the constant pushed down to the cheapest operand
    def log2e_times(self, e: n.Expr, ctx: str) -> str:
        """``e · log2(e)`` with the factor moved onto constants, scalars or per-row operands.

        ``exp(s - m)`` with ``s = scale·qk`` prints as ``exp2(qk·(scale·LOG2E) - m·LOG2E)``: the
        per-pair work is one fused multiply-add before ``exp2`` (FlashAttention's folding), and
        the scalar and per-row products are computed once per tile, not per element.
        """
        if self.exact_exp:
            if self._below_max(e):
                # x − max_j x ≤ 0, but the backward's q·k is another kernel's (other tiles, other
                # MMA order) and may round above the saved max: held at 0, never exp2's overflow
                return f"tl.minimum({self.exact(e, ctx)} * {LOG2E_TEXT}, 0.0)"
            return f"({self.exact(e, ctx)} * {LOG2E_TEXT})"
        if isinstance(e, n.Const):
            return _const(n.Const(float(e.value) * LOG2E, n.FLOAT))
        if is_raw_score(e):
            return f"(({self.score_scale} * {LOG2E_TEXT}) * {self.names['qk']})"
        if isinstance(e, n.Unary) and e.op == "-":
            return f"(-{self.log2e_times(e.operand, ctx)})"
        if isinstance(e, n.Binary) and e.op in ("+", "-") and e.type == n.FLOAT:
            return f"({self.log2e_times(e.left, ctx)} {e.op} {self.log2e_times(e.right, ctx)})"
        if isinstance(e, n.Binary) and e.op in ("*", "/") and e.type == n.FLOAT:
            # scale the operand that varies least: a constant, a scalar, then a per-row value
            sides = [(e.left, e.right)] + ([(e.right, e.left)] if e.op == "*" else [])
            for cheap, other in sides:
                if ctx != "pair" or "j" not in n.free_ranks(cheap, self.stage_ranks):
                    if cheap is e.left:
                        return f"({self.log2e_times(cheap, ctx)} {e.op} {self.p(other, ctx)})"
                    return f"({self.p(other, ctx)} * {self.log2e_times(cheap, ctx)})"
        if isinstance(e, n.Ref) and self.stage_ranks.get(e.stage) == n.PAIR and e.stage in self.stage_exprs:
            inner = self.stage_exprs[e.stage]
            if isinstance(inner, n.Binary) and inner.op == "*" and any(
                    isinstance(x, n.Dot) or (isinstance(x, n.Ref) and isinstance(self.stage_exprs.get(x.stage), n.Dot))
                    for x in (inner.left, inner.right)):
                return self.log2e_times(inner, ctx)  # s = c·qk: fold into c rather than rescale s
        return f"({self.p(e, ctx)} * {LOG2E_TEXT})"

    def _below_max(self, e: n.Expr) -> bool:
        """``x − m`` with ``m`` the running or final ``max_j x`` (softmax's shift): never positive."""
        if not (isinstance(e, n.Binary) and e.op == "-" and isinstance(e.right, (n.Ref, n.Running))):
            return False
        red = self.stage_exprs.get(e.right.stage)
        if not (isinstance(red, n.Reduce) and red.op == "max"):
            return False
        left = e.left
        if isinstance(left, n.Running) and left.stage == e.right.stage:
            return left.when == "old"  # a rescale factor: the old max is at most the new
        return left == red.body

    def exact(self, e: n.Expr, ctx: str) -> str:
        """``e`` with every addition rounded on its own (no FMA), so ``s − m`` is exactly 0 at the
        key whose score is the row max ``m`` and ≤ 0 at the others, whatever their magnitude: the
        folded FMA form rounds its two products apart by up to 2^-22 of |m·log2 e|, which from
        ~2^29 overflows exp2. A raw score prints as the rounded product the row max was taken of."""
        if is_raw_score(e):
            return f"({self.score_scale} * {self.names['qk']})"
        if isinstance(e, n.Binary) and e.op in ("+", "-") and e.type == n.FLOAT:
            a, b = self.exact(e.left, ctx), self.exact(e.right, ctx)
            return f"_{'add' if e.op == '+' else 'sub'}_rn({a}, {b})" if self.asm else f"({a} {e.op} {b})"
        if isinstance(e, n.Binary) and e.op == "/" and isinstance(e.right, n.Const):
            return self.p(e, ctx)  # x / c: the printer's IEEE form of a zero divisor (no addition inside)
        if isinstance(e, n.Binary) and e.op in ("*", "/") and e.type == n.FLOAT:  # no addition to fuse with
            return f"({self.exact(e.left, ctx)} {e.op} {self.exact(e.right, ctx)})"
        if isinstance(e, n.Unary) and e.op == "-":
            return f"(-{self.exact(e.operand, ctx)})"
        return self.p(e, ctx)


RAW_SCORE = n.Binary("*", n.Var("scale", n.FLOAT), n.Ref("qk", n.FLOAT), n.FLOAT)


def is_raw_score(e: n.Expr) -> bool:
    """``scale·qk`` (either order): the score before any score function."""
    return isinstance(e, n.Binary) and e.op == "*" and e in (RAW_SCORE, n.Binary("*", RAW_SCORE.right, RAW_SCORE.left, n.FLOAT))


def qk_only_in_raw_score(exprs) -> bool:
    """Whether ``exprs`` read q·k only through the raw score ``scale·qk``."""
    seen: set[int] = set()

    def ok(e: n.Expr) -> bool:
        if id(e) in seen:
            return True
        seen.add(id(e))
        if is_raw_score(e):
            return True
        if isinstance(e, (n.Ref, n.Running)) and e.stage == "qk":
            return False
        return all(ok(k) for k in n.children(e))
    return all(ok(e) for e in exprs)


LOG2E = 1.4426950408889634
LOG2E_TEXT = repr(LOG2E)


def _const(c: n.Const) -> str:
    # The IR printer's literal, except that inf/nan must be Python expressions here.
    text = const_text(c)
    return f'float("{text}")' if text in ("inf", "-inf", "nan") else text


def tl_type(t: str) -> str:
    return _TL_TYPES[t]
