"""Lowering: a checked, inlined ``Cascade`` from a definition in a spec file.

This is where the spec is type-checked. Named masks and scores are inlined at their call sites,
``let`` bindings are substituted, norm cascades become stages, reductions nested inside
expressions are hoisted into stages of their own, and every problem becomes a ``SpecError``
pointing at the user's text (in whichever file it lives).

Types: ``int``, ``float`` and ``bool`` never mix implicitly except int → float in arithmetic;
``vec`` (the value vector ``v[j]``) may only enter linearly, so every use of V is a contraction
``Σ_j w[i, j] · v[j]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..dsl import ast
from ..dsl.errors import Span, SpecError, suggest
from ..dsl.functions import FUNCTIONS
from ..dsl.loader import Scope
from ..dsl.parser import FLOAT32_MAX, KEYWORDS
from . import nodes as n
from .names import CALL_ARGUMENTS
from .simplify import simplify
from .verify import verify

DEFAULT_NORM = "softmax"  # DESIGN.md: an attention without `norm =` normalizes with softmax
INT32_MAX = 2**31 - 1


_TYPE_WORDS = {n.INT: "an int", n.FLOAT: "a float", n.BOOL: "a bool", n.VEC: "a value vector (v[j])"}

# Built-in names by context; `score` is bound per statement in score contexts.
_INDEX_BUILTINS = {
    "q_idx": n.Var("i", n.INT), "kv_idx": n.Var("j", n.INT), "b": n.Var("b", n.INT), "h": n.Var("h", n.INT),
}
_SIZE_BUILTINS = {name: n.Var(name, n.INT) for name in ("n_q", "n_kv", "head_dim", "n_heads", "n_kv_heads")}
_SCALE = {"scale": n.Var("scale", n.FLOAT)}
_DIM_BUILTINS = {name: n.Var(name, n.INT) for name in n.DIM_VARS}
ALL_BUILTINS = set(_INDEX_BUILTINS) | set(_SIZE_BUILTINS) | set(_SCALE) | {"score", "dot", "s", "v", "i", "j"} | set(n.DIM_VARS)
# Extra score maps: `score2 = ...` .. `score9 = ...` in an attention, read as s2[i, j] .. s9[i, j]
# in its norm; the Dot stages of further slices of q·k are qk2, qk3, ...
EXTRA_SCORES = {f"s{k}": f"score{k}" for k in range(2, 10)}
RESERVED_STAGES = {"qk", "s", "keep", "v", "i", "j", "f", "b", "h", "d"} | set(EXTRA_SCORES) | {f"qk{k}" for k in range(2, 10)}


# ---------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Value:
    expr: n.Expr
    what: str  # "parameter", "let", "built-in", "argument"


@dataclass(frozen=True)
class Tensor:
    name: str  # the cascade-level tensor parameter it refers to
    spec: n.ParamSpec


@dataclass(frozen=True)
class StageBinding:
    name: str
    ranks: tuple[str, ...]
    type: str


@dataclass
class NormState:
    stages: list[n.Stage] = field(default_factory=list)
    ranks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    counter: int = 0
    # the extra score maps the attention declares (s2, ...); None: a norm lowered on its own, where
    # each one it reads is declared as the plain score (recorded in `read`)
    scores: frozenset | None = frozenset()
    read: list = field(default_factory=list)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"_{prefix}{self.counter}"


@dataclass
class Ctx:
    kind: str  # score | mask | norm | default | dim | attention | feature map
    scope: Scope
    env: dict
    stack: tuple[tuple[str, str], ...] = ()
    norm: NormState | None = None
    in_reduce: bool = False
    in_sum: bool = False
    key: str = "j"  # the name of the key index: `k` inside a partial sum `sum(... for k > j)`
    # the grids declared so far, shared by every context of one cascade: [(grid, span)]
    grids: list = field(default_factory=list)
    side: str | None = None  # a feature map's: "q" or "k"

    def child(self, **kw) -> "Ctx":
        base = dict(kind=self.kind, scope=self.scope, env=self.env, stack=self.stack, norm=self.norm,
                    in_reduce=self.in_reduce, in_sum=self.in_sum, grids=self.grids, side=self.side, key=self.key)
        base.update(kw)
        return Ctx(**base)


def _builtins(kind: str) -> dict:
    env: dict = {}
    if kind in ("score", "mask", "norm", "attention"):
        env.update({k: Value(v, "built-in") for k, v in _INDEX_BUILTINS.items()})
        env.update({k: Value(v, "built-in") for k, v in _SIZE_BUILTINS.items()})
    if kind in ("score", "norm", "attention"):
        env.update({k: Value(v, "built-in") for k, v in _SCALE.items()})
    if kind in ("score", "attention"):
        env["dot"] = Value(n.Ref("qk", n.FLOAT), "built-in")  # q̃·k̃ without the scale
    if kind == "norm":
        env["i"] = Value(n.Var("i", n.INT), "built-in")
        env["j"] = Value(n.Var("j", n.INT), "built-in")
    if kind == "default":
        env.update({k: Value(v, "built-in") for k, v in _SIZE_BUILTINS.items()})
    if kind == "dim":
        env.update({k: Value(v, "built-in") for k, v in _DIM_BUILTINS.items()})
    return env


def _raw_score() -> n.Expr:
    return n.Binary("*", n.Var("scale", n.FLOAT), n.Ref("qk", n.FLOAT), n.FLOAT)


def _words(t: str) -> str:
    return _TYPE_WORDS.get(t, t)


def _a(word: str) -> str:
    """``word`` with its indefinite article: "a mask", "an attention"."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _promote(e: n.Expr, to: str) -> n.Expr:
    if e.type == to:
        return e
    if e.type == n.INT and to == n.FLOAT:
        if isinstance(e, n.Const):
            return n.Const(float(e.value), n.FLOAT)
        return n.Call("float", (e,), n.FLOAT)
    raise AssertionError(f"cannot promote {e.type} to {to}")


def _has(e: n.Expr, kind) -> bool:
    return any(isinstance(x, kind) for x in n.walk(e))


def _describe(node: ast.Expr) -> str:
    from ..dsl.printer import print_expr

    text = print_expr(node)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------- expressions


def lower_expr(e: ast.Expr, ctx: Ctx) -> n.Expr:
    method = _LOWER.get(type(e))
    if method is None:  # pragma: no cover - the parser builds only the node types above
        raise SpecError(f"unsupported expression {type(e).__name__}", getattr(e, "span", None))
    return method(e, ctx)


def _num_operand(x: n.Expr, node: ast.Expr, op: str, allow_vec: bool = False) -> None:
    if x.type == n.BOOL:
        raise SpecError(f"`{_describe(node)}` is a bool; `{op}` needs numbers", node.span)
    if x.type == n.VEC and not allow_vec:
        raise SpecError(
            f"`{_describe(node)}` involves v[j]; the values may only be scaled, added and summed "
            f"over j (as in sum(p[i, j] * v[j] for j)), not used with `{op}`",
            node.span,
        )


def _lower_name(e: ast.Name, ctx: Ctx) -> n.Expr:
    b = ctx.env.get(e.id)
    if isinstance(b, Value):
        return b.expr
    if isinstance(b, Tensor):
        rank = len(b.spec.dims)
        raise SpecError(f"`{e.id}` is a tensor of rank {rank}; index it, as in {e.id}[{', '.join(['...'] * rank)}]", e.span)
    if isinstance(b, StageBinding):
        raise SpecError(f"`{e.id}` is a cascade stage; write {e.id}[{', '.join(b.ranks)}]", e.span)
    if ctx.kind == "norm" and (e.id in ("s", "v") or e.id in EXTRA_SCORES):
        raise SpecError(f"write `{e.id}` with its indices: " + (f"{e.id}[i, j]" if e.id != "v" else "v[j]"), e.span)
    if e.id == "score" and ctx.kind == "mask":
        raise SpecError("a mask cannot use `score`: masks decide which pairs interact before any score exists", e.span)
    if e.id in ("score", "s", "v") and ctx.kind in ("default", "dim"):
        raise SpecError(f"`{e.id}` is not available here: parameter defaults and shapes may use only sizes", e.span)
    found = ctx.scope.lookup(e.id)
    if found is not None:
        return _call_def(found, ast.Call(e.id, (), (), e.span, e.span), ctx)
    _unknown(e.id, e.span, ctx)


_FEATURE_SEES = {"q": "its element `q` and q_idx, b, h", "k": "its element `k` and kv_idx, b (not h: keys are shared by a group of query heads)"}


def _unknown(name: str, span: Span | None, ctx: Ctx, what: str = "name"):
    if ctx.kind == "feature map" and name in ("q", "k", "q_idx", "kv_idx", "h", "score", "dot", "s"):
        raise SpecError(f"a feature map `{ctx.side} = ...` is applied to each element of {ctx.side} before the "
                        f"dot product and sees only {_FEATURE_SEES[ctx.side]}, sizes and parameters; `{name}` "
                        f"belongs to {'the score' if name in ('score', 'dot', 's', 'q_idx', 'kv_idx', 'h') else 'its own feature map'}",
                        span)
    if name in KEYWORDS:
        raise SpecError(f"`{name}` is a keyword, not a {what}", span)
    if name in ("q", "k") and ctx.kind in ("score", "attention", "mask", "norm"):
        raise SpecError(f"`{name}` is not a value here: a score sees the queries and keys through `score` "
                        f"(scale · q·k) or `dot` (q·k); to transform {name} itself, write a feature map "
                        f"`{name} = elu({name}) + 1.0` in the attention body", span)
    pool = set(ctx.env) | ctx.scope.visible_names() | set(FUNCTIONS)
    if ctx.kind == "norm":
        pool |= {"s", "v"}
    hint = suggest(name, pool)
    extra = ""
    if not hint and name in ALL_BUILTINS:
        extra = f" (`{name}` is not available in {_a(ctx.kind if ctx.kind != 'attention' else 'attention body')})"
    raise SpecError(f"unknown {what} `{name}`{hint}{extra}", span)


def _lower_num(e: ast.Num, ctx: Ctx) -> n.Expr:
    if e.is_int:
        if e.value > INT32_MAX:
            raise SpecError(f"the integer {e.value} does not fit in 32 bits (kernels index with int32)", e.span)
        return n.Const(int(e.value), n.INT)
    return n.Const(float(e.value), n.FLOAT)


def _lower_bool(e: ast.Bool, ctx: Ctx) -> n.Expr:
    return n.Const(bool(e.value), n.BOOL)


def _lower_unary(e: ast.Unary, ctx: Ctx) -> n.Expr:
    if e.op == "-" and isinstance(e.operand, ast.Num) and e.operand.is_int and e.operand.value == INT32_MAX + 1:
        return n.Const(-(INT32_MAX + 1), n.INT)  # -2147483648: the literal alone would not fit
    x = lower_expr(e.operand, ctx)
    if e.op == "~":
        if x.type != n.INT:
            fix = f"; to negate a condition write `not {_describe(e.operand)}`" if x.type == n.BOOL else ""
            raise SpecError(f"`~` inverts the bits of an integer, but `{_describe(e.operand)}` is "
                            f"{_words(x.type)}{fix}", e.span)
        return n.Binary("^", x, n.Const(-1, n.INT), n.INT)  # ~x == x ^ -1 in two's complement
    _num_operand(x, e.operand, e.op, allow_vec=True)
    if e.op == "+":
        return x
    return n.Unary("-", x, x.type)


def _lower_bitwise(e: ast.BinOp, a: n.Expr, b: n.Expr) -> n.Expr:
    """``& | ^`` of two integers or of two bools (then Python's and torch's logical meaning), and
    ``<< >>`` of integers. A shift count outside 0..31 is taken as 0 or 31 (docs/language.md)."""
    op = e.op
    if op in ("&", "|", "^") and a.type == b.type == n.BOOL:
        return n.Binary({"&": "and", "|": "or", "^": "!="}[op], a, b, n.BOOL)
    for x, node in ((a, e.left), (b, e.right)):
        if x.type != n.INT:
            fix = ""
            if x.type == n.BOOL:
                fix = " (of two bools, `&`, `|` and `^` are and, or and !=)" if op in "&|^" else ""
            elif x.type == n.FLOAT:
                fix = "; floor a float first: floor(x)"
            raise SpecError(f"`{op}` works on integers, but `{_describe(node)}` is {_words(x.type)}{fix}", node.span)
    from .evaluate import eval_size_expr

    literal = isinstance(e.right, ast.Num) or isinstance(e.right, ast.Unary) and isinstance(e.right.operand, ast.Num)
    if op in ("<<", ">>") and literal and not 0 <= eval_size_expr(b, {}, {}) <= n.SHIFT_MAX:
        # a computed count is clamped into 0..31; a literal one outside is a mistake
        raise SpecError(f"a shift count must be in 0..{n.SHIFT_MAX} (kernels compute with int32), not "
                        f"{eval_size_expr(b, {}, {})}", e.right.span)
    out = n.Binary(op, a, b, n.INT)
    if _is_constant(out):
        value = eval_size_expr(out, {}, {})
        if not -(INT32_MAX + 1) <= value <= INT32_MAX:
            raise SpecError(f"`{_describe(e)}` is {value}, which does not fit in 32 bits (kernels compute with int32)",
                            e.span)
    return out


def _lower_binop(e: ast.BinOp, ctx: Ctx) -> n.Expr:
    a = lower_expr(e.left, ctx)
    b = lower_expr(e.right, ctx)
    op = e.op
    if op in n.BITWISE:
        for x, node in ((a, e.left), (b, e.right)):
            if x.type == n.VEC:
                _num_operand(x, node, op)
        return _lower_bitwise(e, a, b)
    vec_ok = op in ("+", "-", "*", "/")
    _num_operand(a, e.left, op, allow_vec=vec_ok)
    _num_operand(b, e.right, op, allow_vec=vec_ok)
    if n.VEC in (a.type, b.type):
        if op in ("+", "-") and not (a.type == b.type == n.VEC):
            other = e.right if a.type == n.VEC else e.left
            raise SpecError(
                f"cannot {'add' if op == '+' else 'subtract'} the number `{_describe(other)}` "
                f"{'to' if op == '+' else 'from'} a value vector; only vectors add to vectors",
                e.span,
            )
        if op == "*" and a.type == b.type == n.VEC:
            raise SpecError("v[j] times v[j] is not linear in the values; weight v[j] by a number", e.span)
        if op == "/" and b.type == n.VEC:
            raise SpecError("cannot divide by a value vector", e.right.span)
        if op in ("+", "-"):
            return n.Binary(op, a, b, n.VEC)
        if a.type == n.VEC:
            return n.Binary(op, a, _promote(b, n.FLOAT), n.VEC)
        return n.Binary(op, _promote(a, n.FLOAT), b, n.VEC)
    if op in ("//", "%"):
        for x, node in ((a, e.left), (b, e.right)):
            if x.type != n.INT:
                raise SpecError(
                    f"`{op}` works on integers, but `{_describe(node)}` is {_words(x.type)}", node.span
                )
        return n.Binary(op, a, b, n.INT)
    if op in ("/", "**") or n.FLOAT in (a.type, b.type):
        out = n.Binary(op, _promote(a, n.FLOAT), _promote(b, n.FLOAT), n.FLOAT)
        _check_finite_constant(out, e)
        return out
    if isinstance(a, n.Const) and isinstance(b, n.Const) and op in ("+", "-", "*"):
        value = {"+": a.value + b.value, "-": a.value - b.value, "*": a.value * b.value}[op]
        if not -(INT32_MAX + 1) <= value <= INT32_MAX:
            raise SpecError(f"`{_describe(e)}` is {value}, which does not fit in 32 bits (kernels compute with int32)", e.span)
    return n.Binary(op, a, b, n.INT)


def _is_constant(x: n.Expr) -> bool:
    return not any(isinstance(k, (n.Var, n.Param, n.Load, n.Ref, n.ValueRow, n.Dot, n.Feature)) for k in n.walk(x))


def _check_finite_constant(x: n.Expr, node: ast.Expr) -> None:
    """A float expression of constants only must evaluate to a finite number (no 1.0 / 0.0)
    within float32's range, which kernels compute in (the float64 reference would not overflow
    on `2.0 ** 1000`: the two would disagree), as float literals must."""
    if not _is_constant(x):
        return
    import math

    from .evaluate import eval_size_expr

    try:
        value = eval_size_expr(x, {}, {})
    except (ArithmeticError, ValueError, TypeError):
        value = math.nan
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"`{_describe(node)}` evaluates to {value}, not a finite number", node.span)
    if abs(value) > FLOAT32_MAX:
        raise SpecError(f"`{_describe(node)}` evaluates to {value:g}, beyond float32's range (±3.4e38), which "
                        f"kernels compute in", node.span)


def _lower_compare(e: ast.Compare, ctx: Ctx) -> n.Expr:
    vals = [lower_expr(x, ctx) for x in e.operands]
    parts = []
    for k, op in enumerate(e.ops):
        a, b = vals[k], vals[k + 1]
        na, nb = e.operands[k], e.operands[k + 1]
        for x, node in ((a, na), (b, nb)):
            if x.type == n.VEC:
                raise SpecError(f"`{_describe(node)}` is a value vector; it cannot be compared", node.span)
        if op in ("==", "!=") and a.type == b.type == n.BOOL:
            parts.append(n.Binary(op, a, b, n.BOOL))
            continue
        for x, node in ((a, na), (b, nb)):
            if x.type == n.BOOL:
                raise SpecError(f"`{_describe(node)}` is a bool; `{op}` compares numbers", node.span)
        if n.FLOAT in (a.type, b.type):
            a, b = _promote(a, n.FLOAT), _promote(b, n.FLOAT)
        parts.append(n.Binary(op, a, b, n.BOOL))
    out = parts[0]
    for p in parts[1:]:
        out = n.Binary("and", out, p, n.BOOL)
    return out


def _need_bool(x: n.Expr, node: ast.Expr, what: str) -> None:
    if x.type != n.BOOL:
        raise SpecError(f"`{_describe(node)}` is {_words(x.type)}; {what} needs a bool (a comparison)", node.span)


def _lower_boolop(e: ast.BoolOp, ctx: Ctx) -> n.Expr:
    a = lower_expr(e.left, ctx)
    b = lower_expr(e.right, ctx)
    _need_bool(a, e.left, f"`{e.op}`")
    _need_bool(b, e.right, f"`{e.op}`")
    return n.Binary(e.op, a, b, n.BOOL)


def _lower_not(e: ast.Not, ctx: Ctx) -> n.Expr:
    x = lower_expr(e.operand, ctx)
    _need_bool(x, e.operand, "`not`")
    return n.Unary("not", x, n.BOOL)


def _lower_ifexp(e: ast.IfExp, ctx: Ctx) -> n.Expr:
    c = lower_expr(e.cond, ctx)
    _need_bool(c, e.cond, "the condition of `if`")
    a = lower_expr(e.then, ctx)
    b = lower_expr(e.other, ctx)
    for x, node in ((a, e.then), (b, e.other)):
        if x.type == n.VEC:
            raise SpecError("a value vector cannot be chosen with `if`; weight v[j] by a number instead", node.span)
    if a.type == b.type:
        return n.Select(c, a, b, a.type)
    if {a.type, b.type} == {n.INT, n.FLOAT}:
        return n.Select(c, _promote(a, n.FLOAT), _promote(b, n.FLOAT), n.FLOAT)
    raise SpecError(
        f"the branches of `if` differ: `{_describe(e.then)}` is {_words(a.type)}, "
        f"`{_describe(e.other)}` is {_words(b.type)}",
        e.span,
    )


def _lower_call(e: ast.Call, ctx: Ctx) -> n.Expr:
    b = ctx.env.get(e.func)
    if e.func == "dot" and isinstance(b, Value) and b.what == "built-in":
        return _lower_dot_slice(e, ctx)
    if b is not None:
        kind = "a tensor" if isinstance(b, Tensor) else "a stage" if isinstance(b, StageBinding) else f"{_words(b.expr.type)} {b.what}"
        raise SpecError(f"`{e.func}` is {kind}, not a function", e.func_span)
    if e.func in ("sum",) or (e.func in ("max", "min") and len(e.args) == 1 and not e.kwargs):
        raise SpecError(f"a reduction is written `{e.func}(expr for j)`", e.span)
    if e.func in FUNCTIONS:
        return _lower_builtin_call(e, ctx)
    found = ctx.scope.lookup(e.func)
    if found is None:
        _unknown(e.func, e.func_span, ctx, "function")
    return _call_def(found, e, ctx)


def _lower_dot_slice(e: ast.Call, ctx: Ctx) -> n.Expr:
    """``dot(lo, hi)``: Σ_{lo <= d < hi} q̃[i, d]·k̃[j, d], one slice of the head dimension (a Dot
    placeholder; ``_assemble`` makes each distinct slice a Dot stage)."""
    if e.kwargs or len(e.args) != 2:
        raise SpecError("`dot` alone is q·k over every feature; `dot(lo, hi)` sums the features lo <= d < hi, "
                        "as in dot(0, head_dim // 2)", e.span)
    lo, hi = (_uniform_int(node, ctx, "a bound of `dot(lo, hi)`", "pair (sizes and scalar parameters)")
              for node in e.args)
    return n.Dot(lo=lo, hi=hi)


def _uniform_int(node: ast.Expr, ctx: Ctx, what: str, every: str) -> n.Expr:
    """An int expression the same for every pair or token (of sizes and scalar parameters): a grid
    size, a slice bound."""
    x = lower_expr(node, ctx)
    if x.type != n.INT:
        raise SpecError(f"{what} must be an integer, but `{_describe(node)}` is {_words(x.type)}", node.span)
    if any((isinstance(v, n.Var) and v.name in ("i", "j", "b", "h")) or isinstance(v, n.Load) for v in n.walk(x)):
        raise SpecError(f"{what} must be the same for every {every}, but `{_describe(node)}` depends on indices "
                        f"or tensors", node.span)
    return simplify(x)


def _lower_builtin_call(e: ast.Call, ctx: Ctx) -> n.Expr:
    (lo, hi), rule = FUNCTIONS[e.func].arity, FUNCTIONS[e.func].typing
    if e.kwargs:
        raise SpecError(f"`{e.func}` takes no keyword arguments", e.kwargs[0].span)
    count = len(e.args)
    if count < lo or (hi is not None and count > hi):
        want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise SpecError(f"`{e.func}` takes {want} argument{'s' if want != '1' else ''}, got {count}", e.span)
    args = [lower_expr(a, ctx) for a in e.args]
    for x, node in zip(args, e.args):
        _num_operand(x, node, e.func)
    if rule == "tofloat":  # float(x): the promotion itself (float of a float is that float)
        out = _promote(args[0], n.FLOAT)
        _check_finite_constant(out, e)
        return out
    if rule == "float":
        out = n.Call(e.func, tuple(_promote(a, n.FLOAT) for a in args), n.FLOAT)
        _check_finite_constant(out, e)
        return out
    if rule == "int":
        return n.Call(e.func, (_promote(args[0], n.FLOAT),), n.INT)
    out_t = n.INT if all(a.type == n.INT for a in args) else n.FLOAT
    return n.Call(e.func, tuple(_promote(a, out_t) for a in args), out_t)


def _lower_index(e: ast.Index, ctx: Ctx) -> n.Expr:
    b = ctx.env.get(e.base)
    if isinstance(b, Tensor):
        rank = len(b.spec.dims)
        if len(e.indices) != rank:
            raise SpecError(
                f"`{e.base}` has rank {rank} but is indexed with {len(e.indices)} "
                f"index{'es' if len(e.indices) != 1 else ''}",
                e.span,
            )
        idx = []
        for node in e.indices:
            x = lower_expr(node, ctx)
            if x.type != n.INT:
                raise SpecError(
                    f"tensor indices must be integers, but `{_describe(node)}` is {_words(x.type)}", node.span
                )
            idx.append(x)
        return n.Load(b.name, tuple(idx), b.spec.elem)
    if ctx.kind == "norm" and b is None and e.base in EXTRA_SCORES:
        _check_subscript(e, n.PAIR, ctx)
        known = ctx.norm.scores
        if known is not None and e.base not in known:
            raise SpecError(f"`{e.base}[i, j]` is the score map of a `{EXTRA_SCORES[e.base]} = ...` line, which the "
                            f"attention does not have; add one, e.g. `{EXTRA_SCORES[e.base]} = scale * dot(0, head_dim // 2)`",
                            e.span)
        if known is None and e.base not in ctx.norm.read:
            ctx.norm.read.append(e.base)
        return n.Ref(e.base, n.FLOAT)
    if ctx.kind == "norm" and b is None and e.base in ("s", "v"):
        want = ("i", "j") if e.base == "s" else ("j",)
        _check_subscript(e, want, ctx)
        if e.base == "s":
            return n.Ref("s", n.FLOAT)
        if not ctx.in_sum:
            raise SpecError("v[j] may only appear inside sum(... for j)", e.span)
        return n.ValueRow()
    if isinstance(b, StageBinding):
        _check_subscript(e, b.ranks, ctx)
        if b.type == n.VEC and ctx.in_reduce:
            raise SpecError(f"`{e.base}` is a value vector; it cannot be used inside another reduction", e.span)
        return n.Ref(b.name, b.type)
    if isinstance(b, Value):
        raise SpecError(f"`{e.base}` is {_words(b.expr.type)} {b.what}, not a tensor; it cannot be indexed", e.base_span)
    if b is None and ctx.scope.lookup(e.base) is not None:
        raise SpecError(f"`{e.base}` is a definition; call it with parentheses, not brackets", e.base_span)
    _unknown(e.base, e.base_span, ctx)


def _check_subscript(e: ast.Index, want: tuple[str, ...], ctx: Ctx) -> None:
    want = tuple(ctx.key if x == "j" else x for x in want)
    got = tuple(x.id if isinstance(x, ast.Name) else None for x in e.indices)
    if got != tuple(want):
        raise SpecError(f"`{e.base}` is indexed [{', '.join(want)}]; write {e.base}[{', '.join(want)}]", e.span)


def _lower_reduce(e: ast.Reduce, ctx: Ctx, into: str | None = None) -> n.Expr:
    if e.rel is not None and ctx.kind == "norm":
        return _lower_scan(e, ctx)
    if ctx.kind != "norm":
        raise SpecError(
            f"`{e.op}(... for {e.var})` is a reduction over keys; it belongs in a norm, while a "
            f"{ctx.kind if ctx.kind != 'attention' else 'score or mask'} sees one (query, key) pair",
            e.span,
        )
    if e.op not in n.REDUCE_OPS:
        raise SpecError(f"unknown reduction `{e.op}`{suggest(e.op, n.REDUCE_OPS)}; use sum, max or min", e.span)
    if e.var == "d":
        raise SpecError("the head dimension d is reduced only by the dot product: transform q or k "
                        "elementwise with a feature map in the attention (`q = elu(q) + 1.0`) and read the "
                        "result through `score` or `dot`", e.var_span)
    if e.var != "j":
        raise SpecError(f"reductions run over the key index j, not `{e.var}`: per-row values over all kept keys "
                        f"are `sum(... for j)`; a sum over other keys for each pair (a cumulative or partial sum "
                        f"along the row, as stick-breaking needs) is `c[i, j] = sum(x[i, {e.var}] for {e.var} > j)` "
                        f"(or <, <=, >=)", e.var_span)
    body = lower_expr(e.body, ctx.child(in_reduce=True, in_sum=(e.op == "sum")))
    if any(isinstance(x, n.Ref) and x.type == n.VEC for x in n.walk(body)):
        raise SpecError(
            "a sum over v[j] is a value vector; it cannot be used inside another reduction", e.body.span
        )
    if body.type == n.BOOL:
        raise SpecError(f"`{e.op}` needs numbers, but `{_describe(e.body)}` is a bool", e.body.span)
    if body.type == n.VEC:
        red: n.Expr = n.Contract(_weight_of_v(body))
        prefix = "acc"
    else:
        red = n.Reduce(e.op, _promote(body, n.FLOAT))
        prefix = "r"
    if into is not None:
        return red
    st = ctx.norm
    name = st.fresh(prefix)
    st.stages.append(n.Stage(name, n.ROW, red, e.span))
    st.ranks[name] = n.ROW
    return n.Ref(name, red.type)


def _lower_scan(e: ast.Reduce, ctx: Ctx) -> n.Expr:
    """``sum(body for k > j)``: per pair, the sum of ``body`` over the kept keys k after j (a
    fresh pair stage holding a ``Scan``). The body reads the key through its own name k."""
    if e.op != "sum":
        raise SpecError(f"a partial reduction is a sum: write `sum(... for {e.var} {e.rel} {e.bound})` "
                        f"(`{e.op}` runs over all kept keys only: `{e.op}(... for j)`)", e.span)
    flip = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    if e.var == "j" and e.bound != "j" and e.rel in flip:
        raise SpecError(f"the summed key comes first and the pair's key j last: write `for {e.bound} {flip[e.rel]} j`",
                        e.var_span)
    if e.bound != "j":
        raise SpecError(f"a partial sum runs over the keys before or after the pair's key j: write "
                        f"`for {e.var} {e.rel} j`", e.bound_span)
    if e.rel not in n.SCAN_RELS:
        raise SpecError(f"a partial sum takes the keys {e.var} < j, <= j, > j or >= j, not `{e.rel}`", e.span)
    if e.var in ("i", "j", "d") or e.var in ctx.env:
        raise SpecError(f"name the summed key with a new name, as in `sum(l[i, k] for k {e.rel} j)`; "
                        f"`{e.var}` is taken", e.var_span)
    if ctx.in_reduce:
        raise SpecError("a partial sum cannot be nested inside another reduction", e.span)
    env = {name: b for name, b in ctx.env.items() if name != "j"}
    env[e.var] = Value(n.Var("j", n.INT), "built-in")
    body = lower_expr(e.body, ctx.child(env=env, key=e.var, in_reduce=True))
    if body.type not in n.NUMERIC:
        raise SpecError(f"a partial sum needs numbers, but `{_describe(e.body)}` is {_words(body.type)}", e.body.span)
    body = _promote(body, n.FLOAT)
    stages = {st.name: st for st in ctx.norm.stages}
    todo, seen = list(n.refs(body)), set()
    while todo:  # through the pair stages it reads
        name = todo.pop()
        st = stages.get(name)
        if name in seen or st is None:
            continue
        seen.add(name)
        if st.ranks == n.ROW or st.is_scan:
            what = "another partial sum" if st.is_scan else f"the per-query value `{name}`"
            raise SpecError(f"the body of a partial sum reads {what}; it may read per-pair values "
                            f"(s[i, {e.var}] and stages over [i, j] that read no per-query value), indices, sizes and "
                            f"parameters", e.body.span)
        todo.extend(n.refs(st.expr))
    st = ctx.norm
    other = next((x for x in st.stages if x.is_scan and x.expr.descending != (e.rel in (">", ">="))), None)
    if other is not None:
        raise SpecError("partial sums from the first key (k < j, k <= j) and from the last (k > j, k >= j) in one "
                        "norm are not supported: the kernels visit the keys in one order", e.span)
    name = st.fresh("c")
    st.stages.append(n.Stage(name, n.PAIR, n.Scan(e.rel, body), e.span))
    st.ranks[name] = n.PAIR
    return n.Ref(name, n.FLOAT)


def _weight_of_v(e: n.Expr) -> n.Expr:
    """The scalar w with e == w · v[j]; e is linear in v[j] by construction of its type."""
    if isinstance(e, n.ValueRow):
        return n.Const(1.0, n.FLOAT)
    if isinstance(e, n.Unary):
        return n.Unary("-", _weight_of_v(e.operand), n.FLOAT)
    if isinstance(e, n.Binary):
        if e.op in ("+", "-"):
            return n.Binary(e.op, _weight_of_v(e.left), _weight_of_v(e.right), n.FLOAT)
        if e.op == "*":
            if e.left.type == n.VEC:
                return n.Binary("*", _weight_of_v(e.left), e.right, n.FLOAT)
            return n.Binary("*", e.left, _weight_of_v(e.right), n.FLOAT)
        if e.op == "/":
            return n.Binary("/", _weight_of_v(e.left), e.right, n.FLOAT)
    raise AssertionError(f"not linear in v: {e!r}")  # the type rules above exclude this


_LOWER = {
    ast.Name: _lower_name, ast.Num: _lower_num, ast.Bool: _lower_bool, ast.Unary: _lower_unary,
    ast.BinOp: _lower_binop, ast.Compare: _lower_compare, ast.BoolOp: _lower_boolop, ast.Not: _lower_not,
    ast.IfExp: _lower_ifexp, ast.Call: _lower_call, ast.Index: _lower_index, ast.Reduce: _lower_reduce,
}

# ---------------------------------------------------------------------------- definitions


def _signature(d: ast.Def) -> str:
    from ..dsl.printer import print_params

    return f"{d.name}{print_params(d.params) or '()'}"


def _bind_args(d: ast.Def, dscope: Scope, call: ast.Call, ctx: Ctx, per_query: bool = False) -> dict:
    """Callee parameter name → binding, from the call's arguments and the defaults.

    ``per_query``: the arguments of a norm are per-query values; they may not vary with the key
    (nor read the score), since the norm uses them outside its reductions too.
    """
    params = {p.name: p for p in d.params}
    if len(call.args) > len(d.params):
        raise SpecError(
            f"`{d.name}` takes {len(d.params)} argument{'s' if len(d.params) != 1 else ''} "
            f"but {len(call.args)} {'was' if len(call.args) == 1 else 'were'} given; it is {d.kind} {_signature(d)}",
            call.span,
        )
    given: dict[str, tuple[ast.Expr, Span | None]] = {}
    for p, a in zip(d.params, call.args):
        given[p.name] = (a, a.span)
    for kw in call.kwargs:
        if kw.name not in params:
            raise SpecError(f"`{d.name}` has no parameter `{kw.name}`{suggest(kw.name, params)}", kw.span)
        if kw.name in given:
            raise SpecError(f"argument `{kw.name}` of `{d.name}` is given twice", kw.span)
        given[kw.name] = (kw.value, kw.span)
    env: dict = {}
    for p in d.params:
        if p.name not in given:
            if p.default is None:
                raise SpecError(
                    f"missing argument `{p.name}` for {d.kind} {_signature(d)}", call.span
                )
            env[p.name] = Value(_lower_default(p, dscope), "parameter")
            continue
        node, span = given[p.name]
        if isinstance(p.type, ast.TensorType):
            env[p.name] = _tensor_arg(p, node, ctx, dscope)
            continue
        x = lower_expr(node, ctx)
        if per_query and (n.free_ranks(x, {"qk": n.PAIR}) & {"j"}):
            raise SpecError(
                f"argument `{p.name}` of norm `{d.name}` must be the same for every key, but "
                f"`{_describe(node)}` depends on the key (kv_idx or score)",
                node.span,
            )
        env[p.name] = Value(_coerce(x, p.type.kind, node, f"argument `{p.name}` of `{d.name}`"), "argument")
    return env


def _coerce(x: n.Expr, want: str, node: ast.Expr | None, what: str) -> n.Expr:
    if x.type == want:
        return x
    if x.type == n.INT and want == n.FLOAT:
        return _promote(x, n.FLOAT)
    span = getattr(node, "span", None)
    shown = f"`{_describe(node)}`" if node is not None else "the value"
    raise SpecError(f"{what} is declared {want}, but {shown} is {_words(x.type)}", span)


def _tensor_arg(p: ast.Param, node: ast.Expr, ctx: Ctx, dscope: Scope) -> Tensor:
    b = ctx.env.get(node.id) if isinstance(node, ast.Name) else None
    if not isinstance(b, Tensor):
        raise SpecError(f"parameter `{p.name}` is a tensor; pass a tensor parameter's name", node.span)
    want_rank, got_rank = len(p.type.dims), len(b.spec.dims)
    if want_rank != got_rank:
        raise SpecError(f"`{p.name}` is a tensor of rank {want_rank}, but `{node.id}` has rank {got_rank}", node.span)
    if p.type.elem != b.spec.elem:
        raise SpecError(f"`{p.name}` holds {p.type.elem} elements, but `{node.id}` holds {b.spec.elem}", node.span)
    # Shapes over the size symbols alone (no int parameters) must agree exactly.
    dim_ctx = Ctx("dim", dscope, _builtins("dim"))
    for k, (want, have) in enumerate(zip(p.type.dims, b.spec.dims)):
        if isinstance(want, ast.Name) and want.id == "_":
            continue
        try:
            want_ir = simplify(lower_expr(want, dim_ctx))
        except SpecError:
            continue  # depends on the callee's int parameters: checked when the tensor arrives
        if not _has(have, n.Param) and want_ir != have and n.ANY_DIM not in (want_ir, have):
            from .printer import expr_text

            raise SpecError(
                f"dimension {k} of `{p.name}` is {expr_text(want_ir)}, but `{node.id}` declares {expr_text(have)}",
                node.span,
            )
    return b


def _lower_default(p: ast.Param, dscope: Scope) -> n.Expr:
    """A parameter's default, evaluated in its own file over sizes only."""
    x = lower_expr(p.default, Ctx("default", dscope, _builtins("default")))
    return _coerce(x, p.type.kind, p.default, f"the default of `{p.name}`")


def _call_def(found: tuple[ast.Def, Scope], call: ast.Call, ctx: Ctx) -> n.Expr:
    d, dscope = found
    key = (dscope.name, d.name)
    if key in ctx.stack:
        chain = " → ".join(name for _, name in ctx.stack[ctx.stack.index(key):] + (key,))
        raise SpecError(f"`{d.name}` is defined in terms of itself ({chain})", call.span)
    allowed = {"score": ("mask", "score"), "attention": ("mask", "score"), "mask": ("mask",), "norm": ("mask",),
               "feature map": ()}
    if d.kind not in allowed.get(ctx.kind, ()):
        if d.kind in ("norm", "attention"):
            why = "a norm is chosen with `norm = ...` in an attention" if d.kind == "norm" else "an attention cannot be called"
        elif ctx.kind in ("default", "dim"):
            why = "parameter defaults and shapes may use only sizes"
        elif d.kind == "score":
            why = f"a score function needs `score`, which {_a(ctx.kind)} does not have"
        else:
            why = f"it cannot be used in {_a(ctx.kind)}"
        raise SpecError(f"`{d.name}` is {_a(d.kind)}; {why}", call.span)
    env = _builtins(d.kind)
    inner = Ctx(d.kind, dscope, env, ctx.stack + (key,), grids=[])
    # Arguments are lowered in the caller's context; defaults in the callee's file.
    args = _bind_args(d, dscope, call, ctx)
    env.update(args)
    if d.kind == "score":
        current = ctx.env.get("score")
        env["score"] = current if current is not None else Value(_raw_score(), "built-in")
    # Inlining is pure: the same definition with the same arguments (and incoming score) lowers
    # to the same IR, so a chain of definitions each using the previous twice stays linear.
    memo_key = ("call", key, tuple(sorted((k, v) for k, v in args.items())), env.get("score"))
    memo = dscope.loader.memo
    if memo_key not in memo:
        memo[memo_key] = (_run_body(d, inner), tuple(inner.grids))
    value, grids = memo[memo_key]
    for grid, span in grids:  # a grid declared inside the definition belongs to its user too
        _add_grid(ctx, grid, span, at=call.span)
    return value


def _check_new_name(name: str, span, ctx: Ctx, what: str) -> None:
    if name in ALL_BUILTINS or name in FUNCTIONS:
        raise SpecError(f"`{name}` is a built-in name; choose another name for this {what}", span)
    if name in ctx.env:
        b = ctx.env[name]
        what_was = b.what if isinstance(b, Value) else "tensor parameter" if isinstance(b, Tensor) else "stage"
        raise SpecError(f"`{name}` is already defined (as a {what_was})", span)
    if name.startswith("_"):
        raise SpecError(f"names starting with `_` are reserved for the compiler: `{name}`", span)


def _run_body(d: ast.Def, ctx: Ctx) -> n.Expr:
    """Lets and the `mask = ` / `score = ` lines of a mask or score definition."""
    result = None
    for stmt in d.body:
        if isinstance(stmt, ast.Let):
            _check_new_name(stmt.name, stmt.name_span or stmt.span, ctx, "let")
            ctx.env[stmt.name] = Value(lower_expr(stmt.value, ctx), "let")
        elif isinstance(stmt, ast.Grid) and d.kind in ("mask", "score"):
            _lower_grid(stmt, ctx)
        elif isinstance(stmt, ast.Assign) and stmt.target == d.kind:
            if d.kind == "mask" and result is not None:
                raise SpecError(f"mask `{d.name}` assigns `mask` twice; combine the conditions with `and`", stmt.target_span)
            value = _lower_part(stmt, ctx)
            result = value
            if d.kind == "score":
                ctx.env["score"] = Value(value, "built-in")
        else:
            _bad_stmt(stmt, d.kind)
    if result is None:
        raise SpecError(f"{d.kind} `{d.name}` has no `{d.kind} = ...` line", d.name_span)
    return result


def _lower_feature_map(stmt: ast.Assign, ctx: Ctx, current: n.Expr | None) -> n.Expr:
    """``q = expr`` / ``k = expr`` in an attention: a map applied to each element of q (or k) before
    the dot product; a second line maps the first one's result."""
    side = stmt.target
    env = {name: b for name, b in ctx.env.items()
           if name not in ("score", "dot", "kv_idx" if side == "q" else "q_idx") and not (side == "k" and name == "h")}
    env[side] = Value(current if current is not None else n.Feature(side), "built-in")
    value = lower_expr(stmt.value, ctx.child(kind="feature map", env=env, side=side))
    if value.type not in n.NUMERIC:
        raise SpecError(f"a feature map gives a number for each element of {side}, but `{_describe(stmt.value)}` "
                        f"is {_words(value.type)}", stmt.value.span)
    value = _promote(value, n.FLOAT)
    other = {"q": ("j",), "k": ("i", "h")}[side]
    for x in n.walk(value):  # through a `let` written earlier in the body
        if isinstance(x, (n.Ref, n.Dot)) or (isinstance(x, n.Var) and x.name in other):
            what = "the score" if isinstance(x, (n.Ref, n.Dot)) else {"i": "q_idx", "j": "kv_idx", "h": "h"}[x.name]
            raise SpecError(f"the feature map of {side} reads {what} (through a `let`?); it sees only "
                            f"{_FEATURE_SEES[side]}, sizes and parameters", stmt.value.span)
    return value


def _lower_part(stmt: ast.Assign, ctx: Ctx) -> n.Expr:
    value = lower_expr(stmt.value, ctx.child(kind=stmt.target) if ctx.kind == "attention" else ctx)
    if stmt.target == "mask":
        if value.type != n.BOOL:
            raise SpecError(f"a mask must be a bool (a comparison), but `{_describe(stmt.value)}` is {_words(value.type)}", stmt.value.span)
        if any((isinstance(x, n.Ref) and x.stage == "qk") or isinstance(x, n.Dot) for x in n.walk(value)):
            raise SpecError("the mask depends on `score`; masks decide which pairs interact before any score exists", stmt.value.span)
        return value
    if value.type not in n.NUMERIC:
        raise SpecError(f"a score must be a number, but `{_describe(stmt.value)}` is {_words(value.type)}", stmt.value.span)
    return _promote(value, n.FLOAT)


MAX_GRID_RANK = 3


def _lower_grid(stmt: ast.Grid, ctx: Ctx) -> None:
    """``grid (y, x) = (height, width) [dilated (dy, dx)]``: binds q_y, kv_y, q_x, kv_x."""
    from .layout import coord

    if any(isinstance(b, Value) and b.what == "grid coordinate" for b in ctx.env.values()):
        raise SpecError("this body already declares a grid; a body has at most one", stmt.span)
    rank = len(stmt.axes)
    if not 1 <= rank <= MAX_GRID_RANK:
        raise SpecError(f"a grid has 1 to {MAX_GRID_RANK} axes, got {rank}", stmt.span)
    if len(stmt.sizes) != rank:
        raise SpecError(f"the grid names {rank} axes ({', '.join(stmt.axes)}) but gives {len(stmt.sizes)} sizes",
                        stmt.sizes[0].span if stmt.sizes else stmt.span)
    if stmt.dilated is not None and len(stmt.dilated) != rank:
        raise SpecError(f"`dilated` needs one value per axis ({rank}), got {len(stmt.dilated)}", stmt.dilated[0].span)
    if len(set(stmt.axes)) != rank:
        raise SpecError(f"grid axes must differ, got ({', '.join(stmt.axes)})", stmt.span)

    def size_expr(node: ast.Expr, what: str) -> n.Expr:
        return _uniform_int(node, ctx, what, "token (scalar parameters and n_q/n_kv)")

    sizes = tuple(size_expr(x, "a grid size") for x in stmt.sizes)
    dilated = tuple(size_expr(x, "a `dilated` value") for x in stmt.dilated) if stmt.dilated else (n.Const(1, n.INT),) * rank
    spans = stmt.axes_spans or (stmt.span,) * rank
    for a, (axis, span) in enumerate(zip(stmt.axes, spans, strict=True)):
        for side, index in (("q", n.Var("i", n.INT)), ("kv", n.Var("j", n.INT))):
            name = f"{side}_{axis}"
            _check_new_name(name, span, ctx, "grid coordinate")
            ctx.env[name] = Value(coord(sizes, index, a), "grid coordinate")
    _add_grid(ctx, n.Grid(tuple(stmt.axes), sizes, dilated, stmt.span), stmt.span)


def _add_grid(ctx: Ctx, grid: n.Grid, span, at=None) -> None:
    for other, where in ctx.grids:
        if other != grid:
            line = f" on line {where.line}" if where is not None else ""
            what = "this grid" if at is None else "the grid this call brings"
            raise SpecError(f"{what} differs from the one declared{line}; one cascade has one token grid", at or span)
    if not ctx.grids:
        ctx.grids.append((grid, span))


def _bad_stmt(stmt, kind: str) -> None:
    if isinstance(stmt, ast.Grid):
        raise SpecError(f"a `grid` line belongs in a mask, a score or an attention, not in {_a(kind)}", stmt.span)
    if isinstance(stmt, ast.StageAssign):
        raise SpecError(f"cascade lines like `{stmt.name}[...] = ...` belong in a norm, not in {_a(kind)}", stmt.target_span)
    if isinstance(stmt, ast.Assign):
        if stmt.target in EXTRA_SCORES.values() and kind != "attention":
            raise SpecError(f"a further score map `{stmt.target} = ...` belongs in an attention body (its norm reads "
                            f"it as s{stmt.target[5:]}[i, j]), not in {_a(kind)}", stmt.target_span)
        if stmt.target in ("q", "k") and kind != "attention":
            raise SpecError(f"a feature map `{stmt.target} = ...` belongs in an attention body, not in {_a(kind)}",
                            stmt.target_span)
        if kind == "attention":
            raise SpecError(
                f"an attention body assigns score (and further score maps score2 … score9), mask, norm or a feature "
                f"map (q, k); use `let {stmt.target} = ...` "
                f"for a local name",
                stmt.target_span,
            )
        if kind == "norm":
            hint = "out[i]" if stmt.target == "out" else "lse[i]" if stmt.target == "lse" else f"{stmt.target}[i]"
            raise SpecError(f"norm lines are indexed: write `{hint} = ...`", stmt.target_span)
        raise SpecError(
            f"{_a(kind)} definition assigns only `{kind} = ...`; use `let {stmt.target} = ...` for a local name",
            stmt.target_span,
        )
    raise SpecError("unexpected statement", getattr(stmt, "span", None))


# ---------------------------------------------------------------------------- norms


def _lower_norm(d: ast.Def, dscope: Scope, call: ast.Call, ctx: Ctx, scores: frozenset | None = frozenset(),
                read: list | None = None) -> list[n.Stage]:
    key = (dscope.name, d.name)
    if key in ctx.stack:
        raise SpecError(f"`{d.name}` is defined in terms of itself", call.span)
    args = _bind_args(d, dscope, call, ctx, per_query=True)
    env = _builtins("norm")
    env.update(args)
    state = NormState(scores=scores, read=read if read is not None else [])
    nctx = Ctx("norm", dscope, env, ctx.stack + (key,), norm=state)
    for stmt in d.body:
        if isinstance(stmt, ast.Let):
            _check_new_name(stmt.name, stmt.name_span or stmt.span, nctx, "let")
            env[stmt.name] = Value(lower_expr(stmt.value, nctx), "let")
        elif isinstance(stmt, ast.StageAssign):
            _lower_stage(stmt, nctx)
        else:
            _bad_stmt(stmt, "norm")
    if "out" not in state.ranks:
        raise SpecError(f"norm `{d.name}` defines no out[i]; a norm must produce out[i] = ... (a weighted sum of v[j])", d.name_span)
    return state.stages


def _lower_stage(stmt: ast.StageAssign, ctx: Ctx) -> None:
    st = ctx.norm
    if stmt.indices not in (n.ROW, n.PAIR):
        raise SpecError(
            f"a cascade line is indexed [i] (per query) or [i, j] (per query-key pair), not [{', '.join(stmt.indices)}]",
            stmt.target_span,
        )
    if stmt.name in RESERVED_STAGES:
        raise SpecError(f"`{stmt.name}` is a reserved name in a norm (s, s2–s9, v, i, j, f, b, h, d, qk, qk2–qk9 and "
                        f"keep are built in)", stmt.target_span)
    if stmt.name in st.ranks:
        raise SpecError(f"`{stmt.name}` is already defined in this norm", stmt.target_span)
    _check_new_name(stmt.name, stmt.target_span, ctx, "stage")
    if stmt.name == "out" and stmt.indices != n.ROW:
        raise SpecError("out is per query: write out[i] = ...", stmt.target_span)
    if stmt.name == "lse" and stmt.indices != n.ROW:
        raise SpecError("lse is per query: write lse[i] = ...", stmt.target_span)
    if isinstance(stmt.value, ast.Reduce) and stmt.indices == n.ROW:
        value = _lower_reduce(stmt.value, ctx, into=stmt.name)
    else:
        value = lower_expr(stmt.value, ctx)
    ranks = n.free_ranks(value, st.ranks | {"s": n.PAIR} | dict.fromkeys(EXTRA_SCORES, n.PAIR))
    if "j" in ranks and stmt.indices == n.ROW:
        raise SpecError(
            f"`{_describe(stmt.value)}` depends on the key index j, but {stmt.name}[i] is per query; "
            f"reduce over j with sum(... for j) or max(... for j)",
            stmt.value.span,
        )
    if value.type == n.VEC and stmt.indices == n.PAIR:
        raise SpecError("v[j] may only appear inside sum(... for j)", stmt.value.span)
    if stmt.name == "out" and value.type != n.VEC:
        raise SpecError(
            f"out[i] must be a weighted sum of the values, as in sum(p[i, j] * v[j] for j), but "
            f"`{_describe(stmt.value)}` is {_words(value.type)}",
            stmt.value.span,
        )
    if stmt.name == "lse":
        if value.type not in n.NUMERIC:
            raise SpecError(f"lse[i] must be a number, but `{_describe(stmt.value)}` is {_words(value.type)}", stmt.value.span)
        value = _promote(value, n.FLOAT)
    st.stages.append(n.Stage(stmt.name, stmt.indices, value, stmt.span))
    st.ranks[stmt.name] = stmt.indices
    ctx.env[stmt.name] = StageBinding(stmt.name, stmt.indices, value.type)


# ---------------------------------------------------------------------------- attention


def _param_specs(d: ast.Def, scope: Scope) -> tuple[list[n.ParamSpec], dict]:
    specs, env = [], {}
    seen: set[str] = set()
    dim_env = _builtins("dim")
    for p in d.params:
        if p.name in seen:
            raise SpecError(f"parameter `{p.name}` is declared twice", p.span)
        if p.name in ALL_BUILTINS or p.name in FUNCTIONS:
            raise SpecError(f"`{p.name}` is a built-in name; choose another parameter name", p.span)
        if p.name.startswith("_"):
            raise SpecError(f"names starting with `_` are reserved for the compiler: `{p.name}`", p.span)
        if p.name in CALL_ARGUMENTS:
            raise SpecError(f"parameter `{p.name}` would be shadowed by the call's own `{p.name}` argument "
                            f"(attn(q, k, v, *, scale=, return_lse=, **params)); choose another name", p.span)
        seen.add(p.name)
        if isinstance(p.type, ast.TensorType):
            if p.default is not None:
                raise SpecError(f"tensor parameter `{p.name}` cannot have a default", p.default.span)
            dims = []
            for dim in p.type.dims:
                if isinstance(dim, ast.Name) and dim.id == "_":
                    dims.append(n.ANY_DIM)  # any size: checked for rank only
                    continue
                x = lower_expr(dim, Ctx("dim", scope, dim_env))
                if x.type != n.INT:
                    raise SpecError(f"a tensor dimension must be an integer, but `{_describe(dim)}` is {_words(x.type)}", dim.span)
                x = simplify(x)
                if isinstance(x, n.Const) and x.value < 1:
                    raise SpecError(f"a tensor dimension must be at least 1, but `{_describe(dim)}` is {x.value}", dim.span)
                dims.append(x)
            spec = n.ParamSpec(p.name, "tensor", p.type.elem, tuple(dims), None, p.span)
            env[p.name] = Tensor(p.name, spec)
        else:
            default = None
            if p.default is not None:
                default = simplify(_lower_default(p, scope))
            spec = n.ParamSpec(p.name, p.type.kind, None, (), default, p.span)
            env[p.name] = Value(n.Param(p.name, p.type.kind), "parameter")
            dim_env[p.name] = env[p.name]  # non-ints too, so `tensor[f]` says f is a float
        specs.append(spec)
    return specs, env


MAX_STAGE_NODES = ast.MAX_EXPR_NODES  # an inlined stage larger than this is almost surely a runaway definition
# Deeper inlined expressions would exhaust Python's recursion in later passes (range analysis,
# sympy, the printers); the parser's own limit per written expression is the same.
MAX_STAGE_DEPTH = 128  # MAX_NESTING, and the few levels the language adds (score = scale · q·k, ...)


def _check_size(e: n.Expr, what: str, span) -> None:
    depth = n.tree_depth(e)
    if depth > MAX_STAGE_DEPTH:
        raise SpecError(
            f"{what} is {depth} operations deep once definitions and lets are inlined (the limit is "
            f"{MAX_STAGE_DEPTH}); a `let` names a value but does not make what it computes shallower, "
            f"so shorten the chain of operations",
            span,
        )
    size = n.tree_size(e)
    if size > MAX_STAGE_NODES:
        raise SpecError(
            f"{what} expands to {size} expression nodes once definitions and lets are inlined "
            f"(the limit is {MAX_STAGE_NODES}); definitions that use each other repeatedly grow exponentially",
            span,
        )


def _assemble(name: str, specs, score: n.Expr, mask: n.Expr | None, norm_stages, span, grids=(),
              maps=None, scores=None) -> n.Cascade:
    maps = {side: simplify(m) for side, m in (maps or {}).items()}
    for side, m in maps.items():
        _check_size(m, f"the feature map of {side}", span)
    _check_size(score, "the score", span)
    scores = {"s": score, **dict(sorted((scores or {}).items()))}
    for k, x in scores.items():
        if k != "s":
            _check_size(x, f"`{EXTRA_SCORES[k]}`", span)
    if mask is not None:
        _check_size(mask, "the mask", span)
    for st in norm_stages:
        _check_size(st.expr, f"stage `{st.name}`", st.span or span)
    if grids and any(st.is_scan for st in norm_stages):
        raise SpecError("a partial sum (`sum(... for k > j)`) on a token grid is not supported yet: the kernels "
                        "run on grid-permuted tokens, not in key order; write the coordinates without `grid` "
                        "(q_idx // width, q_idx % width, ...)", grids[0][1] or span)
    dots, scores = _dot_stages(scores, maps)
    stages = dots + [n.Stage(k, n.PAIR, simplify(x)) for k, x in scores.items()]
    if mask is not None:
        mask = simplify(mask)
        if not (isinstance(mask, n.Const) and mask.value is True):
            stages.append(n.Stage("keep", n.PAIR, mask))
    for st in norm_stages:
        stages.append(n.Stage(st.name, st.ranks, simplify(st.expr), st.span))
    cascade = n.Cascade(name, tuple(specs), tuple(stages), span, grids[0][0] if grids else None)
    cascade = _drop_dead(cascade)
    verify(cascade)
    return cascade


def _dot_stages(scores: dict, maps: dict) -> tuple[list[n.Stage], dict]:
    """One Dot stage per distinct slice of q̃·k̃ the scores read — ``qk`` the primary score's first
    (or the whole product, when that score reads none), then ``qk2``, ... — and the scores with
    their slices (``dot(lo, hi)`` placeholders, ``Ref("qk")`` for the whole) made references."""
    whole = (None, None)
    keys: list = []
    for x in scores.values():
        for node in n.walk(x):
            key = whole if isinstance(node, n.Ref) and node.stage == "qk" else (
                (node.lo, node.hi) if isinstance(node, n.Dot) else None)
            if key is not None and key not in keys:
                keys.append(key)
    keys = keys or [whole]
    names = {key: "qk" if k == 0 else f"qk{k + 1}" for k, key in enumerate(keys)}

    def rename(node):
        if isinstance(node, n.Ref) and node.stage == "qk":
            return n.Ref(names[whole], n.FLOAT)
        if isinstance(node, n.Dot):
            return n.Ref(names[(node.lo, node.hi)], n.FLOAT)
        return node
    dots = [n.Stage(names[key], n.PAIR, n.Dot(q_map=maps.get("q"), k_map=maps.get("k"), lo=key[0], hi=key[1]))
            for key in keys]
    return dots, {k: n.transform(x, rename) for k, x in scores.items()}


def _drop_dead(c: n.Cascade) -> n.Cascade:
    live = {"qk", "s", "keep", "out", "lse"}
    for st in reversed(c.stages):
        if st.name in live:
            live |= n.refs(st.expr)
    return n.Cascade(c.name, c.params, tuple(st for st in c.stages if st.name in live), c.span, c.grid)


def lower_attention(d: ast.Def, scope: Scope) -> n.Cascade:
    """The cascade of an ``attention`` definition."""
    specs, env = _param_specs(d, scope)
    env.update(_builtins("attention"))
    env["score"] = Value(_raw_score(), "built-in")
    ctx = Ctx("attention", scope, env, ((scope.name, d.name),))
    score = env["score"].expr
    mask = None
    norm_call: tuple | None = None
    maps: dict[str, n.Expr] = {}  # feature maps, by side
    extra: dict[str, n.Expr] = {}  # score2, ... by their line's target
    extra_spans: dict[str, object] = {}
    for stmt in d.body:
        if isinstance(stmt, ast.Let):
            _check_new_name(stmt.name, stmt.name_span or stmt.span, ctx, "let")
            env[stmt.name] = Value(lower_expr(stmt.value, ctx), "let")
        elif isinstance(stmt, ast.Grid):
            _lower_grid(stmt, ctx)
        elif isinstance(stmt, ast.Assign) and stmt.target in ("q", "k"):
            maps[stmt.target] = _lower_feature_map(stmt, ctx, maps.get(stmt.target))
        elif isinstance(stmt, ast.Assign) and stmt.target == "score":
            score = _lower_part(stmt, ctx)
            env["score"] = Value(score, "built-in")
        elif isinstance(stmt, ast.Assign) and stmt.target in EXTRA_SCORES.values():
            # `score` inside the line is this map's previous value (a score definition called
            # here applies to it), as on `score =` lines
            env["score"] = Value(extra.get(stmt.target, _raw_score()), "built-in")
            extra[stmt.target] = _lower_part(replace(stmt, target="score"), ctx)
            extra_spans[stmt.target] = stmt.target_span
            env["score"] = Value(score, "built-in")
        elif isinstance(stmt, ast.Assign) and stmt.target == "mask":
            if mask is not None:
                raise SpecError("`mask` is assigned twice; combine the conditions with `and`", stmt.target_span)
            mask = _lower_part(stmt, ctx)
        elif isinstance(stmt, ast.Assign) and stmt.target == "norm":
            if norm_call is not None:
                raise SpecError("`norm` is assigned twice", stmt.target_span)
            norm_call = _norm_target(stmt, scope)
        else:
            _bad_stmt(stmt, "attention")
    if norm_call is None:
        norm_call = _default_norm(d, scope)
    (nd, nscope), call = norm_call
    scores = {f"s{t[5:]}": x for t, x in extra.items()}
    stages = _lower_norm(nd, nscope, call, ctx, frozenset(scores))
    cascade = _assemble(d.name, specs, score, mask, stages, d.span, ctx.grids, maps, scores)
    kept = {st.name for st in cascade.stages}
    for target, span in extra_spans.items():
        if f"s{target[5:]}" not in kept:  # a map the output does not depend on is a mistake, not dead code
            raise SpecError(f"`{target} = ...` defines the score map s{target[5:]}[i, j], but the norm `{nd.name}` "
                            f"never uses it; read s{target[5:]}[i, j] in a norm's stage (see \"Several score maps\" "
                            f"in docs/language.md) or remove the line", span)
    return cascade


def _default_norm(d: ast.Def, scope: Scope):
    """The norm used when none is named: the library's softmax, unless something hides it."""
    found = scope.lookup(DEFAULT_NORM)
    if found is None:
        raise SpecError(f"`{d.name}` names no norm and the default `{DEFAULT_NORM}` is not available", d.name_span)
    if found[0].kind != "norm":
        hider = found[0]
        raise SpecError(
            f"{_a(hider.kind)} named `{DEFAULT_NORM}` (line {hider.name_span.line if hider.name_span else '?'}) hides "
            f"the library norm `{DEFAULT_NORM}` that `{d.name}` uses by default; rename it",
            d.name_span,
        )
    return found, ast.Call(DEFAULT_NORM, (), (), d.name_span, d.name_span)


def _norm_target(stmt: ast.Assign, scope: Scope):
    node = stmt.value
    if isinstance(node, ast.Name):
        call = ast.Call(node.id, (), (), node.span, node.span)
    elif isinstance(node, ast.Call):
        call = node
    else:
        raise SpecError("`norm = ...` names a norm, as in `norm = softmax` or `norm = sigmoid(bias=-2.0)`", node.span)
    found = scope.lookup(call.func)
    if found is None:
        pool = [k for k in scope.visible_names() if (scope.lookup(k) or (None,))[0] is not None]
        raise SpecError(f"unknown norm `{call.func}`{suggest(call.func, pool)}", call.func_span)
    if found[0].kind != "norm":
        where = "" if found[1] is not scope or not scope.loader.library_def(call.func) else (
            f"; it hides the library norm `{call.func}` — rename it or import the library one under another name")
        raise SpecError(f"`{call.func}` is {_a(found[0].kind)}, not a norm{where}", call.func_span)
    return found, call


def check_def_names(module: ast.Module) -> None:
    """Definitions may not take built-in names (checked for the whole file before lowering,
    so a use of the name elsewhere cannot hit the built-in first)."""
    for d in module.defs:
        _check_def_name(d)


def _check_def_name(d: ast.Def) -> None:
    # Masks and scores are called in expressions, where functions win; norms and attentions are
    # only named after `norm =` or used whole, so `norm relu` and `norm sigmoid` are fine.
    if d.name in ALL_BUILTINS or (d.kind in ("mask", "score") and d.name in FUNCTIONS):
        raise SpecError(f"`{d.name}` is a built-in name; choose another name for this {d.kind}", d.name_span)
    if d.name.startswith("_"):
        raise SpecError(f"names starting with `_` are reserved for the compiler: `{d.name}`", d.name_span)


def lower_def(d: ast.Def, scope: Scope) -> n.Cascade:
    """The cascade a definition stands for on its own.

    An attention is lowered as written. A mask, score or norm becomes the attention that uses
    it with everything else at its default (no mask, plain score, softmax), keeping its
    parameters, so ``attnc explain causal.attn`` shows a complete cascade.
    """
    _check_def_name(d)
    if d.kind == "attention":
        return lower_attention(d, scope)
    specs, env = _param_specs(d, scope)
    env.update(_builtins("attention"))
    env["score"] = Value(_raw_score(), "built-in")
    ctx = Ctx("attention", scope, env, ())
    call = ast.Call(d.name, tuple(ast.Name(p.name, p.span) for p in d.params), (), d.name_span, d.name_span)
    score, mask = _raw_score(), None
    norm = None
    if d.kind == "norm":
        norm = ((d, scope), call)
    else:
        value = _call_def((d, scope), call, ctx.child(kind=d.kind))
        if d.kind == "mask":
            mask = value
        else:
            score = value
    if norm is None:
        norm = _default_norm(d, scope)
    (nd, nscope), ncall = norm
    state_scores = None if d.kind == "norm" else frozenset()
    read: list = []
    stages = _lower_norm(nd, nscope, ncall, ctx, state_scores, read)
    return _assemble(d.name, specs, score, mask, stages, d.span, ctx.grids, scores=dict.fromkeys(read, _raw_score()))
