"""Random well-typed attention definitions, for testing attnc itself on programs nobody wrote.

    from attnc.testing.specs import definitions

    @given(definitions())
    def test_it(d):
        attn = attnc.compile(d.text)            # spec text, parsed back like a user's file
        q, k, v, params = ...
        d.expected(q, k, v, params)             # (out, lse | None), float64, materialized

A ``Definition`` is spec text drawn from the grammar — masks from comparisons, chains and
``and``/``or``/``not`` of index expressions (with ``//``, ``%``, ``min``/``max``/``abs``/``clamp``,
int parameters, int/bool tensor look-ups and the library's ``causal``, ``sliding_window``,
``chunked``, ``prefix_lm``), feature maps of q and k (``q = elu(q) + 1.0``, ReLU, tanh, a
position-dependent scale), score functions from arithmetic and built-in functions over ``score``,
indices, float parameters and tensor look-ups (one or two ``score =`` lines, ``let`` bindings,
locally defined mask/score pieces called with arguments), and a normalization from a family of
cascades (the library's norms; softmax-like with offsets, sinks, temperatures and weights;
elementwise with constant, size or row-sum divisors; multi-pass: functions of the normalized
weights, of a row mean or of the row's max and min; partial sums along the row, ``sum(x[i, k] for
k > j)`` in all four directions, as stick-breaking or a decay; two score maps, a ``score2 = ...``
line read as ``s2[i, j]``), scores reading slices of q·k (``dot(lo, hi)``) — together with its own evaluation of the
same trees in float64 torch, written independently of attnc's lowering and reference
interpreter. A test compares three things: the kernel, attnc's reference, and this evaluation.

Values stay in ranges where float32 kernels can meet the tolerance of ``attnc.runtime.check``:
multiplications are by bounded factors, int-to-float conversions are scaled down, denominators
are positive by construction, and integer trees stay far from int32 overflow for lengths ≤ 64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

__all__ = ["Definition", "definitions"]

# ----------------------------------------------------------------------------- parameters
# name: (declaration, kind, element, strategy for problems()). Tensors are drawn by the kit
# from their declared type (floats standard normal, ints small sorted ids, bools coin flips).
INT_PARAMS = {"w0": st.integers(-3, 40), "w1": st.integers(0, 12)}
FLOAT_PARAMS = {"c0": st.floats(-2.0, 2.0, allow_nan=False), "c1": st.floats(0.25, 3.0, allow_nan=False)}
BOOL_PARAMS = {"flag": st.booleans()}
TENSORS = {  # name: (type text, element, dims as functions of the sizes)
    "slopes": ("tensor[H] float", "float", ("H",)),
    "bias": ("tensor[H, N_KV] float", "float", ("H", "N_KV")),
    "table": ("tensor[H, N_Q + N_KV - 1] float", "float", ("H", "N_Q + N_KV - 1")),
    "ids": ("tensor[B, N_KV] int", "int", ("B", "N_KV")),
    "allow": ("tensor[H, N_KV] bool", "bool", ("H", "N_KV")),
    "sink": ("tensor[H] float", "float", ("H",)),
}

INDEX_VARS = ("q_idx", "kv_idx", "b", "h", "n_q", "n_kv")


# ----------------------------------------------------------------------------- trees
# Trees are tuples: (tag, *children). Int: ("var", name) ("int", v) ("param", name)
# ("tget", tensor, idx...) (op, a, b) for + - * // % min max & | ^ << >>, ("abs"|"sign", a), ("neg"|"inv", a),
# ("clamp", a, lo, hi). Bool: ("cmp", op, a, b) ("chain", op1, a, op2, b, c) ("and"|"or", a, b)
# ("not", a) ("bparam", name) ("bool", v) ("lib", name, *args) ("piece", name). Float: ("score",)
# ("flt", v) ("fparam", name) ("tget", ...) ("i2f", c, int) ("fn", name, a) ("mulc", c, a)
# ("mulb", bounded, a) ("add"|"sub", a, b) ("fmin"|"fmax", a, b) ("fclamp", a, lo, hi)
# ("if", cond, a, b) ("capped", cap, a) ("let", name).

FLOAT_FNS = ("tanh", "sigmoid", "softplus", "abs", "relu", "sqrt_abs", "log1p_abs", "exp_neg_abs", "tanh_sq",
             "elu", "silu", "gelu", "gelu_tanh", "erf", "logsigmoid", "expm1_tanh", "tan_tanh")


def _lit(lo, hi, digits=2):
    """Decimal literals in [lo, hi] (integers underneath: st.floats favours 0 and the ends)."""
    k = 10 ** digits
    return st.integers(round(lo * k), round(hi * k)).map(lambda x: x / k + 0.0)  # + 0.0: no -0.0


def _factor(lo, hi):
    """A multiplier with lo <= |x| <= hi, either sign."""
    return st.tuples(st.sampled_from([1, -1]), _lit(lo, hi)).map(lambda t: t[0] * t[1] + 0.0)


def _literal(t) -> bool:
    """An integer literal as the language reads one: `3`, `(-3)` or `(~3)` (a sign on a number)."""
    return t[0] == "int" or (t[0] in ("neg", "inv") and t[1][0] == "int")


def _int_trees(ctx, max_leaves=4, linear=False):
    leaves = [st.sampled_from(INDEX_VARS).map(lambda v: ("var", v)), st.integers(0, 9).map(lambda v: ("int", v))]
    if ctx.int_params:
        leaves.append(st.sampled_from(ctx.int_params).map(lambda p: ("param", p)))
    if ctx.has("ids") and not linear:
        leaves.append(st.sampled_from([("tget", "ids", ("var", "b"), ("var", "kv_idx")),
                                       ("tget", "ids", ("var", "b"), ("var", "q_idx"))]))
    base = st.one_of(*leaves)
    ops = ["+", "-", "min", "max"] + ([] if linear else ["*", "//", "%", "&", "|", "^"])

    def extend(kids):
        shifts = [] if linear else [
            st.tuples(st.just("<<"), kids, st.integers(0, 4).map(lambda v: ("int", v))),  # stays inside int32
            st.tuples(st.just(">>"), kids, st.integers(0, 8).map(lambda v: ("int", v))),
            # a computed count is clamped into 0..31 (a literal outside that range is a SpecError)
            st.tuples(st.just(">>"), kids, kids.filter(lambda t: not _literal(t))),
        ]
        return st.one_of(
            st.tuples(st.sampled_from(ops), kids, kids),
            st.tuples(st.sampled_from(["abs", "neg"] + ([] if linear else ["sign", "inv"])), kids),
            st.one_of(st.tuples(st.just("clamp"), kids, st.integers(-3, 3).map(lambda v: ("int", v)),
                                st.integers(4, 30).map(lambda v: ("int", v))), *shifts),
        )

    return st.recursive(base, extend, max_leaves=max_leaves)


def _bool_trees(ctx, max_leaves=4, lib=True):
    ints = _int_trees(ctx)
    comps = ["<", "<=", "==", "!=", ">", ">="]
    leaves = [
        st.tuples(st.just("cmp"), st.sampled_from(comps), ints, ints),
        st.tuples(st.just("chain"), st.sampled_from(["<", "<="]), ints, st.sampled_from(["<", "<="]), ints, ints),
    ]
    if lib:  # the library's masks, called by name (inside a score's `if` they are not visible)
        leaves += [st.just(("lib", "causal")),
                   st.tuples(st.just("lib"), st.sampled_from(["sliding_window", "chunked", "prefix_lm"]),
                             _int_trees(ctx, max_leaves=2, linear=True))]
    if ctx.bool_params:
        leaves.append(st.sampled_from(ctx.bool_params).map(lambda p: ("bparam", p)))
    if ctx.has("allow"):
        leaves.append(st.just(("tget", "allow", ("var", "h"), ("var", "kv_idx"))))
    if ctx.has("ids"):
        leaves.append(st.just(("cmp", "==", ("tget", "ids", ("var", "b"), ("var", "q_idx")),
                               ("tget", "ids", ("var", "b"), ("var", "kv_idx")))))
    leaves.append(st.booleans().map(lambda v: ("bool", v)))

    def extend(kids):
        return st.one_of(st.tuples(st.sampled_from(["and", "or"]), kids, kids), st.tuples(st.just("not"), kids))

    return st.recursive(st.one_of(*leaves), extend, max_leaves=max_leaves)


def _float_trees(ctx, *, in_norm=False, max_leaves=5, score=True):
    leaves = [_lit(-2, 2).map(lambda v: ("flt", v))] + ([st.just(("score",))] * 3 if score else [])
    if score and not in_norm and ctx.dots:  # scale · (a slice of q·k): ``dot(lo, hi)``
        leaves += [st.integers(0, len(SLICES) - 1).map(lambda k: ("dot", k))] * 2
    if not in_norm:
        leaves.append(st.tuples(st.just("i2f"), _factor(0.005, 0.1), _int_trees(ctx, max_leaves=3, linear=True)))
        if ctx.float_params:
            leaves.append(st.sampled_from(ctx.float_params).map(lambda p: ("fparam", p)))
        if ctx.has("slopes"):
            leaves.append(st.just(("tget", "slopes", ("var", "h"))))
        if ctx.has("bias"):
            leaves.append(st.just(("tget", "bias", ("var", "h"), ("var", "kv_idx"))))
        if ctx.has("table"):
            leaves.append(st.just(("tget", "table", ("var", "h"),
                                   ("+", ("-", ("var", "kv_idx"), ("var", "q_idx")), ("-", ("var", "n_q"), ("int", 1))))))
        if ctx.let_float:
            leaves.append(st.just(("let", "u")))
    def extend(kids):
        options = [
            st.tuples(st.sampled_from(["add", "sub", "fmin", "fmax"]), kids, kids),
            st.tuples(st.just("fn"), st.sampled_from(FLOAT_FNS), kids),
            st.tuples(st.just("mulc"), _factor(0.25, 1.5), kids),
            st.tuples(st.just("mulb"), st.tuples(st.just("fn"), st.sampled_from(["tanh", "sigmoid"]), kids), kids),
            st.tuples(st.just("fclamp"), kids, _lit(-3, -0.5), _lit(0.5, 3)),
            st.tuples(st.just("capped"), _lit(1, 20, 1), kids),
        ]
        if not in_norm:
            options.append(st.tuples(st.just("if"), _bool_trees(ctx, max_leaves=2, lib=False), kids, kids))
        return st.one_of(*options)

    return st.recursive(st.one_of(*leaves), extend, max_leaves=max_leaves)


def _walk(t):
    yield t
    for c in t[1:]:
        if isinstance(c, tuple):
            yield from _walk(c)


def _names(t, tag):
    return {x[1] for x in _walk(t) if x[0] == tag}


# ----------------------------------------------------------------------------- rendering

def _r_int(t):
    tag = t[0]
    if tag == "var":
        return t[1]
    if tag == "int":
        return str(t[1]) if t[1] >= 0 else f"({t[1]})"
    if tag == "param":
        return t[1]
    if tag == "tget":
        return f"{t[1]}[{', '.join(_r_int(x) for x in t[2:])}]"
    if tag in ("abs", "sign"):
        return f"{tag}({_r_int(t[1])})"
    if tag == "neg":
        return f"(-{_r_int(t[1])})"
    if tag == "inv":
        return f"(~{_r_int(t[1])})"
    if tag == "clamp":
        return f"clamp({_r_int(t[1])}, {_r_int(t[2])}, {_r_int(t[3])})"
    if tag in ("min", "max"):
        return f"{tag}({_r_int(t[1])}, {_r_int(t[2])})"
    return f"({_r_int(t[1])} {tag} {_r_int(t[2])})"


def _r_bool(t):
    tag = t[0]
    if tag == "cmp":
        return f"({_r_int(t[2])} {t[1]} {_r_int(t[3])})"
    if tag == "chain":
        return f"({_r_int(t[2])} {t[1]} {_r_int(t[4])} {t[3]} {_r_int(t[5])})"
    if tag in ("and", "or"):
        return f"({_r_bool(t[1])} {tag} {_r_bool(t[2])})"
    if tag == "not":
        return f"(not {_r_bool(t[1])})"
    if tag == "bparam":
        return t[1]
    if tag == "bool":
        return "True" if t[1] else "False"
    if tag == "tget":
        return _r_int(t)
    if tag == "lib":
        return t[1] if len(t) == 2 else f"{t[1]}({_r_int(t[2])})"
    raise AssertionError(tag)


def _r_float(t, in_norm=False):
    def r(x):
        return _r_float(x, in_norm)

    tag = t[0]
    if tag == "score":
        return "s[i, j]" if in_norm else "score"
    if tag == "dot":
        lo, hi, _ = SLICES[t[1]]
        return f"(scale * dot({lo}, {hi}))"
    if tag == "flt":
        return repr(float(t[1])) if t[1] >= 0 else f"({float(t[1])!r})"
    if tag in ("fparam", "let"):
        return t[1]
    if tag == "tget":
        return _r_int(t)
    if tag == "i2f":
        return f"({_r_float(('flt', t[1]))} * float({_r_int(t[2])}))"
    if tag == "fn":
        name, a = t[1], r(t[2])
        return {"sqrt_abs": f"sqrt(abs({a}))", "log1p_abs": f"log1p(abs({a}))",
                "exp_neg_abs": f"exp(-abs({a}))", "tanh_sq": f"(tanh({a}) ** 2)", "expm1_tanh": f"expm1(tanh({a}))",
                "tan_tanh": f"tan(tanh({a}))"}.get(name, f"{name}({a})")
    if tag == "mulc":
        return f"({_r_float(('flt', t[1]))} * {r(t[2])})"
    if tag == "mulb":
        return f"({r(t[1])} * {r(t[2])})"
    if tag in ("add", "sub"):
        return f"({r(t[1])} {'+' if tag == 'add' else '-'} {r(t[2])})"
    if tag in ("fmin", "fmax"):
        return f"{tag[1:]}({r(t[1])}, {r(t[2])})"
    if tag == "fclamp":
        return f"clamp({r(t[1])}, {_r_float(('flt', t[2]))}, {_r_float(('flt', t[3]))})"
    if tag == "capped":
        cap = _r_float(("flt", t[1]))
        return f"({cap} * tanh({r(t[2])} / {cap}))"
    if tag == "if":
        return f"({r(t[2])} if {_r_bool(t[1])} else {r(t[3])})"
    raise AssertionError(tag)


# ----------------------------------------------------------------------------- evaluation
# Written against the language documentation (docs/language.md, docs/semantics.md), not
# against attnc's code: floor // and %, x // 0 = 0, x % 0 = x, tensor indices clamped.

# Feature maps (`q = ...`, `k = ...` in the attention body): spec text over the element `x` and
# its position `p` (q_idx or kv_idx), and the same map in torch (x [B, H, N, D], p [N, 1]).
FEATURE_MAPS = {
    "elu1": ("elu({x}) + 1.0", lambda x, p: torch.nn.functional.elu(x) + 1),
    "relu": ("relu({x})", lambda x, p: torch.relu(x)),
    "tanh": ("tanh({x})", lambda x, p: torch.tanh(x)),
    "positional": ("{x} * (1.0 + 0.25 * float({p} % 3))", lambda x, p: x * (1 + 0.25 * (p % 3))),
}


# Slices of the head dimension a score may read (``dot(lo, hi)``): spec text and the torch slice.
SLICES = (
    ("0", "head_dim // 2", lambda D: slice(0, D // 2)),
    ("head_dim // 2", "head_dim", lambda D: slice(D // 2, D)),
    ("1", "head_dim - 1", lambda D: slice(1, D - 1)),
    ("0", "head_dim", lambda D: slice(0, D)),
    ("head_dim // 4", "3 * head_dim // 4", lambda D: slice(D // 4, 3 * D // 4)),
)


class _Env:
    def __init__(self, q, k, v, params, scale, maps=(None, None)):
        B, Hq, Nq, D = q.shape
        Hkv, Nkv = k.shape[1], k.shape[2]
        self.sizes = {"B": B, "H": Hq, "N_Q": Nq, "N_KV": Nkv}
        ar = lambda n, dim: torch.arange(n, dtype=torch.int64).view([n if d == dim else 1 for d in range(4)])  # noqa: E731
        self.vars = {"b": ar(B, 0), "h": ar(Hq, 1), "q_idx": ar(Nq, 2), "kv_idx": ar(Nkv, 3),
                     "n_q": torch.tensor(Nq), "n_kv": torch.tensor(Nkv)}
        self.params = params
        self.lets = {}
        qd, kd, vd = q.double(), k.double(), v.double()
        for side, name in zip(("q", "k"), maps):
            if name is not None:
                x = qd if side == "q" else kd
                x = FEATURE_MAPS[name][1](x, torch.arange(x.shape[2], dtype=torch.float64).view(-1, 1))
                qd, kd = (x, kd) if side == "q" else (qd, x)
        kd = kd.repeat_interleave(Hq // Hkv, dim=1)
        self.v = vd.repeat_interleave(Hq // Hkv, dim=1)
        self.scale = scale if scale is not None else 1 / math.sqrt(D)
        self.qd, self.kd = qd, kd
        self.score = self.scale * qd @ kd.transpose(-1, -2)
        self.shape = self.score.shape
        self.s2 = None  # the second score map, when the definition has one

    def dot(self, k: int) -> torch.Tensor:
        part = SLICES[k][2](self.qd.shape[-1])
        return self.scale * self.qd[..., part] @ self.kd[..., part].transpose(-1, -2)


def _floordiv(a, b):
    zero = b == 0
    return torch.where(zero, torch.zeros_like(a * b), torch.div(a, torch.where(zero, torch.ones_like(b), b),
                                                                  rounding_mode="floor"))


def _e_int(t, env):
    tag = t[0]
    if tag == "var":
        return env.vars[t[1]]
    if tag == "int":
        return torch.tensor(t[1])
    if tag == "param":
        return torch.tensor(int(env.params[t[1]]))
    if tag == "tget":
        tensor = env.params[t[1]]
        idx = [_e_int(x, env).clamp(0, tensor.shape[d] - 1) for d, x in enumerate(t[2:])]
        got = tensor[tuple(idx)]
        return got if tensor.dtype == torch.bool else got.to(torch.int64)
    if tag == "abs":
        return _e_int(t[1], env).abs()
    if tag == "sign":
        return _e_int(t[1], env).sign()
    if tag == "neg":
        return -_e_int(t[1], env)
    if tag == "inv":
        return -_e_int(t[1], env) - 1  # two's complement: ~x == -x - 1
    if tag == "clamp":
        a, lo, hi = (_e_int(x, env) for x in t[1:])
        return torch.minimum(torch.maximum(a, lo), hi)
    a, b = _e_int(t[1], env), _e_int(t[2], env)
    if tag == "//":
        return _floordiv(a, b)
    if tag == "%":
        return torch.where(b == 0, a + 0 * b, a - _floordiv(a, b) * b)
    if tag in ("<<", ">>"):  # a·2^k and floor(a / 2^k), the count clamped into 0..31
        p = torch.pow(2, b.clamp(0, 31))
        return a * p if tag == "<<" else _floordiv(a, p)
    if tag in ("&", "|", "^"):
        return {"&": torch.bitwise_and, "|": torch.bitwise_or, "^": torch.bitwise_xor}[tag](a, b)
    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "min": lambda: torch.minimum(a, b),
            "max": lambda: torch.maximum(a, b)}[tag]()


_CMP = {"<": torch.lt, "<=": torch.le, "==": torch.eq, "!=": torch.ne, ">": torch.gt, ">=": torch.ge}


def _library_mask(name, env, arg=None):
    """The library's masks as docs/semantics.md states them (bottom-right aligned)."""
    i, j = env.vars["q_idx"], env.vars["kv_idx"]
    p = i + (env.vars["n_kv"] - env.vars["n_q"])
    if name == "causal":
        return j <= p
    if name == "sliding_window":
        return (0 <= p - j) & (p - j < arg)
    if name == "chunked":
        return _floordiv(p, arg) == _floordiv(j, arg)
    if name == "prefix_lm":
        return (j < arg) | (j <= p)
    raise AssertionError(name)


def _e_bool(t, env):
    tag = t[0]
    if tag == "cmp":
        return _CMP[t[1]](_e_int(t[2], env), _e_int(t[3], env))
    if tag == "chain":
        a, b, c = (_e_int(x, env) for x in (t[2], t[4], t[5]))
        return _CMP[t[1]](a, b) & _CMP[t[3]](b, c)
    if tag == "and":
        return _e_bool(t[1], env) & _e_bool(t[2], env)
    if tag == "or":
        return _e_bool(t[1], env) | _e_bool(t[2], env)
    if tag == "not":
        return ~_e_bool(t[1], env)
    if tag == "bparam":
        return torch.tensor(bool(env.params[t[1]]))
    if tag == "bool":
        return torch.tensor(t[1])
    if tag == "tget":
        return _e_int(t, env)
    if tag == "lib":
        return _library_mask(t[1], env, _e_int(t[2], env) if len(t) > 2 else None)
    raise AssertionError(tag)


_FN = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": torch.nn.functional.softplus, "abs": torch.abs,
    "relu": torch.relu, "sqrt_abs": lambda x: x.abs().sqrt(), "log1p_abs": lambda x: x.abs().log1p(),
    "exp_neg_abs": lambda x: (-x.abs()).exp(), "tanh_sq": lambda x: x.tanh() ** 2,
    # the literature's activations, by torch's own implementations (not attnc's function table)
    "elu": torch.nn.functional.elu, "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"), "erf": torch.special.erf,
    "logsigmoid": torch.nn.functional.logsigmoid, "expm1_tanh": lambda x: torch.special.expm1(x.tanh()),
    "tan_tanh": lambda x: x.tanh().tan(),
}


def _e_float(t, env, score):
    def e(x):
        return _e_float(x, env, score)

    tag = t[0]
    if tag == "score":
        return score
    if tag == "dot":
        return env.dot(t[1])
    if tag == "flt":
        return torch.tensor(float(t[1]), dtype=torch.float64)
    if tag == "fparam":
        return torch.tensor(float(env.params[t[1]]), dtype=torch.float64)
    if tag == "let":
        return env.lets[t[1]]
    if tag == "tget":
        return _e_int(t, env).double() if env.params[t[1]].dtype != torch.float32 else _tget_float(t, env)
    if tag == "i2f":
        return float(t[1]) * _e_int(t[2], env).double()
    if tag == "fn":
        return _FN[t[1]](e(t[2]))
    if tag == "mulc":
        return float(t[1]) * e(t[2])
    if tag == "mulb":
        return e(t[1]) * e(t[2])
    if tag == "add":
        return e(t[1]) + e(t[2])
    if tag == "sub":
        return e(t[1]) - e(t[2])
    if tag == "fmin":
        return torch.minimum(e(t[1]), e(t[2]))
    if tag == "fmax":
        return torch.maximum(e(t[1]), e(t[2]))
    if tag == "fclamp":
        return e(t[1]).clamp(float(t[2]), float(t[3]))
    if tag == "capped":
        return float(t[1]) * torch.tanh(e(t[2]) / float(t[1]))
    if tag == "if":
        return torch.where(_e_bool(t[1], env), e(t[2]), e(t[3]))
    raise AssertionError(tag)


def _tget_float(t, env):
    tensor = env.params[t[1]].double()
    idx = [_e_int(x, env).clamp(0, tensor.shape[d] - 1) for d, x in enumerate(t[2:])]
    return tensor[tuple(idx)]


# ----------------------------------------------------------------------------- norms
# A norm is (family, options); `text` renders its definition, `evaluate` applies it to the
# materialized logits of kept pairs. Empty rows are zeroed by the caller (out 0, lse −inf).

LIBRARY_NORMS = ("softmax", "softmax_off_by_one", "sigmoid", "relu", "none", "clipped_softmax", "softmax_sink")


@dataclass(frozen=True)
class Norm:
    family: str
    opts: tuple = ()  # sorted (key, value) pairs

    def get(self, key, default=None):
        return dict(self.opts).get(key, default)


def _norms(ctx):
    fs = _float_trees(ctx, in_norm=True, max_leaves=3)
    library = st.sampled_from(LIBRARY_NORMS).flatmap(
        lambda name: st.fixed_dictionaries({"name": st.just(name), "arg": _lit(-2, 2) if name == "sigmoid" else st.none()})
    ).map(lambda d: Norm("library", tuple(sorted(d.items()))))
    softmax_like = st.fixed_dictionaries({
        "offset": st.sampled_from([None, "lit", "param", "tensor"]), "offset_lit": _lit(-2, 2),
        "temperature": st.sampled_from([None, 0.5, 2.0, "param"]), "sink_weight": st.sampled_from([None, 1.0, 0.5]),
        "weight": st.one_of(st.none(), fs), "denominator_plus": st.sampled_from([None, 1.0]),
        "lse": st.booleans(), "t_val": _lit(0.25, 2.0), "off_val": _lit(-2, 2),
    }).map(lambda d: Norm("softmax_like", tuple(sorted(d.items()))))
    elementwise = st.fixed_dictionaries({
        "f": fs, "divisor": st.sampled_from([None, "lit", "n_kv", "param", "rowsum"]), "lit": _lit(0.5, 4),
        "g": st.sampled_from(["sigmoid", "softplus", "exp_neg_abs", "relu_plus_one"]), "t_val": _lit(0.25, 2.0),
    }).map(lambda d: Norm("elementwise", tuple(sorted(d.items()))))
    multipass = st.fixed_dictionaries({
        "kind": st.sampled_from(["clip", "square", "sqrt", "gated", "centered", "minmax"]),
        "f": st.sampled_from(["sigmoid", "tanh", "relu"]), "a": _lit(0.9, 1.1, 3), "c": _lit(-0.02, 0.02, 3),
    }).map(lambda d: Norm("multipass", tuple(sorted(d.items()))))
    scan = st.fixed_dictionaries({"kind": st.sampled_from(["stick", "decay"]), "rel": st.sampled_from(["<", "<=", ">", ">="]),
                                  "c": _lit(0.05, 0.5)}).map(lambda d: Norm("scan", tuple(sorted(d.items()))))
    # sampled_from draws families evenly (one_of favours its first alternatives)
    families = {"library": library, "softmax_like": softmax_like, "elementwise": elementwise, "multipass": multipass,
                "scan": scan}
    names = sorted(families)
    return st.integers(0, 2**16).flatmap(lambda k: families[names[k % len(names)]])


def _two_map_norms():
    """Norms over two score maps, s and s2 (the attention's `score2 = ...`): the difference of their
    softmaxes (differential attention) or a product of functions of both, per pair."""
    # c: the product's tanh(s2 + c) is kept away from 0, where an fp16 kernel's rounding of a small
    # s2 (its q·k cancels) would be a large relative error of the output
    return st.fixed_dictionaries({"kind": st.sampled_from(["difference", "product"]), "c": _lit(0.5, 1),
                                  "f": st.sampled_from(["sigmoid", "tanh"])}).map(
        lambda d: Norm("two_maps", tuple(sorted(d.items()))))


def _norm_text(norm: Norm, name: str) -> tuple[str | None, str, set]:
    """(definition text or None, the attention's `norm = ...` right-hand side, params it uses)."""
    o = dict(norm.opts)
    if norm.family == "library":
        lib = o["name"]
        if lib == "sigmoid" and o["arg"] is not None:
            return None, f"sigmoid({_r_float(('flt', o['arg']))})", set()
        if lib == "softmax_sink":
            return None, "softmax_sink(sink)", {"sink"}
        return None, lib, set()
    lines, params, attn_params = [], [], set()
    if norm.family == "scan":  # a partial sum along the row: stick-breaking, or a decay by the sum
        if o["kind"] == "stick":
            lines += ["l[i, j] = logsigmoid(-s[i, j])", f"c[i, j] = sum(l[i, k] for k {o['rel']} j)",
                      "out[i] = sum(exp(logsigmoid(s[i, j]) + c[i, j]) * v[j] for j)"]
        else:
            lines += [f"c[i, j] = sum(sigmoid(s[i, k]) for k {o['rel']} j)",
                      f"out[i] = sum(exp(-{o['c']!r} * c[i, j]) * tanh(s[i, j]) * v[j] for j) / n_kv"]
    elif norm.family == "two_maps":
        if o["kind"] == "difference":
            for k, x in (("1", "s"), ("2", "s2")):
                lines += [f"m{k}[i] = max({x}[i, j] for j)", f"e{k}[i, j] = exp({x}[i, j] - m{k}[i])",
                          f"z{k}[i] = sum(e{k}[i, j] for j)"]
            lines.append(f"out[i] = sum(e1[i, j] * v[j] for j) / z1[i] - {_r_float(('flt', o['c']))} * "
                         f"sum(e2[i, j] * v[j] for j) / z2[i]")
        else:
            lines.append(f"out[i] = sum({o['f']}(s[i, j]) * tanh(s2[i, j] + {_r_float(('flt', o['c']))}) * v[j] for j) / n_kv")
    elif norm.family == "softmax_like":
        t = o["temperature"]
        scale = "" if t is None else ("t * " if t == "param" else f"{t!r} * ")
        if t == "param":
            params.append("t: float = 1.0")
        offset = {None: None, "lit": _r_float(("flt", o["offset_lit"])), "param": "off", "tensor": "sink[h]"}[o["offset"]]
        if o["offset"] == "param":
            params.append("off: float = 0.0")
        if o["offset"] == "tensor":
            params.append("sink: tensor[H] float")
            attn_params.add("sink")
        inner = "max(s[i, j] for j)"
        lines.append(f"m[i] = {inner}" if offset is None else f"m[i] = max({inner}, {offset})")
        lines.append(f"e[i, j] = exp({scale}(s[i, j] - m[i]))")
        z = "sum(e[i, j] for j)"
        if offset is not None and o["sink_weight"] is not None:
            z += f" + {o['sink_weight']!r} * exp({scale}({offset} - m[i]))"
        lines.append(f"z[i] = {z}")
        weight = "" if o["weight"] is None else f" * {_r_float(o['weight'], True)}"
        den = "z[i]" if o["denominator_plus"] is None else f"(z[i] + {o['denominator_plus']!r})"
        lines.append(f"out[i] = sum(e[i, j]{weight} * v[j] for j) / {den}")
        if o["lse"]:
            lines.append("lse[i] = m[i] + log(z[i])")
    elif norm.family == "elementwise":
        f = _r_float(o["f"], True)
        div = o["divisor"]
        g = {"sigmoid": "sigmoid(s[i, j])", "softplus": "softplus(s[i, j])", "exp_neg_abs": "exp(-abs(s[i, j]))",
             "relu_plus_one": "(relu(s[i, j]) + 1.0)"}[o["g"]]
        if div == "rowsum":
            lines.append(f"z[i] = sum({g} for j) + 1.0")
        if div == "param":
            params.append("t: float = 1.0")
        tail = {None: "", "lit": f" / {o['lit']!r}", "n_kv": " / n_kv", "param": " / t", "rowsum": " / z[i]"}[div]
        lines.append(f"out[i] = sum({f} * v[j] for j){tail}")
    else:
        kind, a, c = o["kind"], o["a"], o["c"]
        if kind in ("clip", "square", "sqrt", "gated"):
            lines += ["m[i] = max(s[i, j] for j)", "e[i, j] = exp(s[i, j] - m[i])", "z[i] = sum(e[i, j] for j)",
                      "p[i, j] = e[i, j] / z[i]"]
            h = {"clip": f"clamp({a!r} * p[i, j] + ({c!r}), 0.0, 1.0)", "square": "p[i, j] ** 2",
                 "sqrt": "sqrt(p[i, j])", "gated": f"p[i, j] * {o['f']}(s[i, j] - m[i] + 1.0)"}[kind]
            lines.append(f"out[i] = sum({h} * v[j] for j)")
        elif kind == "centered":
            lines += ["mu[i] = sum(s[i, j] for j) / n_kv", f"out[i] = sum({o['f']}(s[i, j] - mu[i]) * v[j] for j)"]
        else:
            lines += ["hi[i] = max(s[i, j] for j)", "lo[i] = min(s[i, j] for j)",
                      "out[i] = sum((s[i, j] - lo[i]) / (hi[i] - lo[i] + 1.0) * v[j] for j)"]
    head = f"norm {name}" + (f"({', '.join(params)})" if params else "") + ":\n"
    text = head + "".join(f"    {line}\n" for line in lines)
    # the call passes drawn values by keyword (and the attention's own `sink` tensor)
    args = [f"t={o['t_val']!r}"] if any(p.startswith("t:") for p in params) else []
    args += [f"off={_r_float(('flt', o['off_val']))}"] if any(p.startswith("off:") for p in params) else []
    args += ["sink=sink"] if attn_params else []
    return text, name + (f"({', '.join(args)})" if args else ""), attn_params


def _masked_sum(x, keep):
    return torch.where(keep, x, torch.zeros_like(x)).sum(-1)


def _masked_max(x, keep, sign=1.0):
    return sign * torch.where(keep, sign * x, torch.full_like(x, -math.inf)).amax(-1)


def _norm_eval(norm: Norm, s, keep, env):
    """(out [B, H, Nq, Dv], lse or None) before the empty-row rule."""
    o = dict(norm.opts)
    v = env.v
    n_kv = env.shape[-1]
    params = env.params

    def pv(w):  # Σ_j w_ij v_j over kept keys
        return torch.where(keep, w, torch.zeros_like(w)) @ v

    if norm.family == "scan":
        def partial(x):  # Σ over the kept keys k with k rel j (docs/language.md)
            x = torch.where(keep, x, torch.zeros_like(x))
            rel = o["rel"]
            run = x.flip(-1).cumsum(-1).flip(-1) if rel in (">", ">=") else x.cumsum(-1)
            return run if rel in ("<=", ">=") else run - x
        if o["kind"] == "stick":
            return pv(torch.exp(torch.nn.functional.logsigmoid(s) + partial(torch.nn.functional.logsigmoid(-s)))), None
        return pv(torch.exp(-float(o["c"]) * partial(torch.sigmoid(s))) * torch.tanh(s)) / n_kv, None
    if norm.family == "two_maps":
        s2 = env.s2
        if o["kind"] == "difference":
            def softmax(x):
                m = _masked_max(x, keep)
                e = torch.where(keep, torch.exp(x - m[..., None]), torch.zeros_like(x))
                return e / e.sum(-1)[..., None]
            return pv(softmax(s)) - float(o["c"]) * pv(softmax(s2)), None
        f = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[o["f"]]
        return pv(f(s) * torch.tanh(s2 + float(o["c"]))) / n_kv, None
    if norm.family == "library":
        name = o["name"]
        if name in ("softmax", "softmax_off_by_one", "softmax_sink", "clipped_softmax"):
            m = _masked_max(s, keep)
            extra = None
            if name == "softmax_off_by_one":
                extra = torch.zeros_like(m)
            if name == "softmax_sink":
                extra = params["sink"].double().view(1, -1, 1).expand_as(m)
            if extra is not None:
                m = torch.maximum(m, extra)
            e = torch.where(keep, torch.exp(s - m[..., None]), torch.zeros_like(s))
            z = e.sum(-1) + (torch.exp(extra - m) if extra is not None else 0)
            if name == "clipped_softmax":
                zeta, gamma = 1.003, -0.003
                return pv(((zeta - gamma) * e / z[..., None] + gamma).clamp(0, 1)), None
            return pv(e) / z[..., None], m + torch.log(z)
        if name == "sigmoid":
            return pv(torch.sigmoid(s + (o["arg"] or 0.0))), None
        if name == "relu":
            return pv(torch.relu(s)) / n_kv, None
        return pv(s), None
    if norm.family == "softmax_like":
        t = o["temperature"]
        t = 1.0 if t is None else (o["t_val"] if t == "param" else t)
        offset = {None: None, "lit": lambda: torch.tensor(float(o["offset_lit"]), dtype=torch.float64),
                  "param": lambda: torch.tensor(float(o["off_val"]), dtype=torch.float64),
                  "tensor": lambda: params["sink"].double().view(1, -1, 1)}[o["offset"]]
        m = _masked_max(s, keep)
        if offset is not None:
            off = offset().expand_as(m)
            m = torch.maximum(m, off)
        e = torch.where(keep, torch.exp(t * (s - m[..., None])), torch.zeros_like(s))
        z = e.sum(-1)
        if offset is not None and o["sink_weight"] is not None:
            z = z + o["sink_weight"] * torch.exp(t * (off - m))
        w = e if o["weight"] is None else e * _e_float(o["weight"], env, s)
        den = z if o["denominator_plus"] is None else z + o["denominator_plus"]
        return pv(w) / den[..., None], (m + torch.log(z)) if o["lse"] else None
    if norm.family == "elementwise":
        f = _e_float(o["f"], env, s)
        out = pv(f)
        div = o["divisor"]
        if div == "lit":
            out = out / o["lit"]
        elif div == "n_kv":
            out = out / n_kv
        elif div == "param":
            out = out / o["t_val"]
        elif div == "rowsum":
            g = {"sigmoid": torch.sigmoid, "softplus": torch.nn.functional.softplus,
                 "exp_neg_abs": lambda x: (-x.abs()).exp(), "relu_plus_one": lambda x: torch.relu(x) + 1}[o["g"]](s)
            out = out / (_masked_sum(g, keep) + 1.0)[..., None]
        return out, None
    kind, a, c = o["kind"], o["a"], o["c"]
    fn = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[o["f"]]
    if kind in ("clip", "square", "sqrt", "gated"):
        m = _masked_max(s, keep)
        e = torch.where(keep, torch.exp(s - m[..., None]), torch.zeros_like(s))
        p = e / e.sum(-1)[..., None]
        w = {"clip": lambda: (a * p + c).clamp(0, 1), "square": lambda: p ** 2, "sqrt": lambda: p.sqrt(),
             "gated": lambda: p * fn(s - m[..., None] + 1.0)}[kind]()
        return pv(w), None
    if kind == "centered":
        mu = _masked_sum(s, keep) / n_kv
        return pv(fn(s - mu[..., None])), None
    hi, lo = _masked_max(s, keep), _masked_max(s, keep, sign=-1.0)
    return pv((s - lo[..., None]) / (hi - lo + 1.0)[..., None]), None


# ----------------------------------------------------------------------------- definitions

@dataclass
class _Ctx:
    int_params: tuple
    float_params: tuple
    bool_params: tuple
    tensors: tuple
    let_float: bool
    dots: bool = False  # score lines may read slices of q·k (``dot(lo, hi)``)

    def has(self, name):
        return name in self.tensors


@dataclass(frozen=True)
class Definition:
    """One generated attention: its spec text and its independent float64 evaluation."""

    text: str
    name: str
    mask: tuple | None
    scores: tuple  # float trees, applied in order
    let: tuple | None  # float tree bound to `u`
    norm: Norm
    params: tuple  # names the attention declares
    mask_piece: bool = False
    param_strategies: dict = field(default_factory=dict, compare=False)
    maps: tuple = (None, None)  # FEATURE_MAPS names of q's and k's feature maps
    scores2: tuple = ()  # float trees of the `score2 = ...` lines (a second score map), in order

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return "Definition:\n" + self.text

    def expected(self, q, k, v, params, scale=None):
        """(out [B, Hq, Nq, Dv], lse [B, Hq, Nq] or None), float64, materialized."""
        env = _Env(q, k, v, params, scale, self.maps)
        keep = torch.ones(env.shape, dtype=torch.bool)
        if self.mask is not None:  # a mask piece is inlined where it is called: same tree
            keep = keep & _e_bool(self.mask, env)
        s = env.score
        if self.let is not None:
            env.lets["u"] = _e_float(self.let, env, s)
        for tree in self.scores:
            s = _e_float(tree, env, s).expand(env.shape)
        if self.scores2:
            env.s2 = env.score  # `score` on a score2 line: its previous value, first scale·q·k
            for tree in self.scores2:
                env.s2 = _e_float(tree, env, env.s2).expand(env.shape)
        out, lse = _norm_eval(self.norm, s, keep, env)
        empty = ~keep.any(-1)
        out = torch.where(empty[..., None], torch.zeros_like(out), out)
        if lse is not None:
            lse = torch.where(empty, torch.full_like(lse, -math.inf), lse)
        return out, lse


@st.composite
def definitions(draw, name: str = "generated") -> Definition:
    """A random well-typed attention definition (see the module docstring)."""
    ctx = _Ctx(
        int_params=tuple(draw(st.sets(st.sampled_from(sorted(INT_PARAMS)), max_size=2))),
        float_params=tuple(draw(st.sets(st.sampled_from(sorted(FLOAT_PARAMS)), max_size=2))),
        bool_params=tuple(draw(st.sets(st.sampled_from(sorted(BOOL_PARAMS)), max_size=1))),
        tensors=tuple(draw(st.sets(st.sampled_from(["slopes", "bias", "table", "ids", "allow"]), max_size=2))),
        let_float=draw(st.booleans()),
    )
    ctx.int_params, ctx.float_params = tuple(sorted(ctx.int_params)), tuple(sorted(ctx.float_params))
    ctx.tensors = tuple(sorted(ctx.tensors))
    ctx.dots = draw(st.integers(0, 3)) == 0
    two = draw(st.integers(0, 4)) == 0  # a second score map and a norm that reads both
    mask = draw(_bool_trees(ctx)) if draw(st.integers(0, 3)) else None  # three in four have a mask
    # a let does not read `score` (which score line it would see is a question for the spec's
    # author, not for a fuzzer) nor itself
    let_ctx = _Ctx(ctx.int_params, ctx.float_params, ctx.bool_params, ctx.tensors, False)
    let = draw(_float_trees(let_ctx, max_leaves=3, score=False)) if ctx.let_float else None
    scores = tuple(draw(st.lists(_float_trees(ctx), min_size=0 if let is None else 1, max_size=2)))
    if let is not None and not any(("let", "u") in _walk(t) for t in scores):
        scores = scores[:-1] + (("add", scores[-1], ("let", "u")),)
    norm = draw(_two_map_norms() if two else _norms(_Ctx((), (), (), (), False)))
    dctx = _Ctx(ctx.int_params, ctx.float_params, ctx.bool_params, ctx.tensors, False, dots=True)
    scores2 = tuple(draw(st.lists(_float_trees(dctx, max_leaves=3), min_size=1, max_size=2))) if two else ()
    norm_def, norm_call, norm_attn_params = _norm_text(norm, f"{name}_norm")

    trees = [x for x in (mask, let, *scores, *scores2) if x is not None]
    used = set()
    for tree in trees:
        used |= _names(tree, "param") | _names(tree, "fparam") | _names(tree, "bparam") | _names(tree, "tget")
    used |= norm_attn_params
    declared = []
    for p in sorted(used):
        if p in INT_PARAMS:
            declared.append(f"{p}: int")
        elif p in FLOAT_PARAMS:
            declared.append(f"{p}: float")
        elif p in BOOL_PARAMS:
            declared.append(f"{p}: bool")
        else:
            declared.append(f"{p}: {TENSORS[p][0]}")
    mask_piece = mask is not None and draw(st.booleans())
    pieces = []
    if norm_def is not None:
        pieces.append(norm_def)
    body = []
    maps = tuple(draw(st.sampled_from([None, None, *sorted(FEATURE_MAPS)])) for _ in "qk")
    for side, m in zip("qk", maps):
        if m is not None:
            body.append(f"{side} = " + FEATURE_MAPS[m][0].format(x=side, p="q_idx" if side == "q" else "kv_idx"))
    if let is not None:
        body.append(f"let u = {_r_float(let)}")
    for tree in scores:
        body.append(f"score = {_r_float(tree)}")
    for tree in scores2:
        body.append(f"score2 = {_r_float(tree)}")
    if mask is not None:
        if mask_piece:
            mparams = sorted(_names(mask, "param") | _names(mask, "bparam") | _names(mask, "tget"))
            decl = ", ".join(d for d in declared if d.split(":")[0] in mparams)
            pieces.append(f"mask mpiece{f'({decl})' if decl else ''} = {_r_bool(mask)}\n")
            body.append(f"mask = mpiece{f'({chr(44).join(mparams)})' if mparams else ''}")
        else:
            body.append(f"mask = {_r_bool(mask)}")
    if norm_call != "softmax" or draw(st.booleans()):
        body.append(f"norm = {norm_call}")
    if not body:
        body.append("norm = softmax")
    uses_lib = any(x[0] == "lib" for x in _walk(mask)) if mask is not None else False
    header = "from library import causal, sliding_window, chunked, prefix_lm\n\n" if uses_lib and draw(st.booleans()) else ""
    text = (header + "\n".join(pieces) + ("\n" if pieces else "")
            + f"attention {name}" + (f"({', '.join(declared)})" if declared else "") + ":\n"
            + "".join(f"    {line}\n" for line in body))
    strategies = {p: s for p, s in {**INT_PARAMS, **FLOAT_PARAMS, **BOOL_PARAMS}.items() if p in used}
    return Definition(text, name, mask, scores, let, norm, tuple(sorted(used)), mask_piece, strategies, maps, scores2)
