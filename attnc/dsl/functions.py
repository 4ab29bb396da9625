"""The spec language's built-in functions: one row each, every form of a function in its row.

Each layer reads the row it needs — the lowering its signature and typing, the pass proofs and
the backward its sympy form (and derivative), the interval analyses its shape, the float64
reference and the sparsity classifier its torch form, size expressions and the standalone
launcher its Python form, the kernel printer its Triton spelling, the tracer the torch names it
stands for — so adding a function is adding a row (``tests/dsl/test_functions.py`` checks that
every row has every form and that the forms agree). The table lives in ``dsl/`` because the
tracer, the first layer, already needs it; it imports no other part of attnc.

Forms, with ``x, y, z`` the arguments:

- ``py``: a Python lambda over ``math`` (source text: the standalone launcher prints it; attnc
  compiles this table's own text once below — never spec text);
- ``torch``: the float64 reference's form (elementwise on tensors);
- ``sympy``: the exact form the pass proofs reason with. A row with a ``derivative`` is opaque
  to the backward (its derivative is that formula, written to be safe in float32: σ·(1 − σ), not
  eˣ/(1 + eˣ)²);
- ``triton``: a Triton expression template; a placeholder appears at most once (an argument used
  twice goes through a ``helper``, Triton source the kernel module defines once); ``{zero}`` is
  0 or 0.0 in the result's type;
- ``shape``: ``monotone`` (non-decreasing in every argument), ``even`` (f(|x|), non-decreasing in
  |x|) or ``bounded``; with ``bounds``, the image of the whole real line, it gives the interval
  rules of ``ir/ranges.py`` and ``runtime/sparsity.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp
import torch

INF = math.inf
ARGS = ("x", "y", "z")  # the placeholders of the py and triton forms


@dataclass(frozen=True)
class Function:
    name: str
    arity: tuple[int, int | None]  # (min, max or None: any number, folded pairwise)
    typing: str  # "float" (float of numbers), "same" (int when every argument is int), "int", "tofloat"
    math: str  # the definition, as docs/language.md shows it
    py: str
    torch: Callable
    sympy: Callable
    triton: str
    helper: str = ""
    derivative: Callable | None = None  # (x, f, opaque) → d f(x) / dx; f is the opaque application
    shape: str = "bounded"
    bounds: tuple[float, float] = (-INF, INF)
    traced: tuple[str, ...] = ()  # torch functions and Tensor methods the tracer maps to this row
    traced_kwargs: tuple[tuple[str, object], ...] = ()  # keyword arguments such a call must carry
    scalar: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # our own table's text, compiled once; NaN where Python raises (log(-1), exp(1000))
        fn = eval(self.py, {"math": math})  # noqa: S307 (attnc's source, never user text)

        def safe(*args):
            try:
                return fn(*args)
            except (ValueError, OverflowError, ZeroDivisionError):
                return math.nan
        object.__setattr__(self, "scalar", safe)


# Keyword arguments torch passes with their default values, which change nothing.
TRACED_DEFAULT_KWARGS = (("inplace", False), ("approximate", "none"), ("alpha", 1.0))

_SIG = lambda x: 1 / (1 + sp.exp(-x))  # noqa: E731


def _gelu_tanh_derivative(x):
    # with u = c·(x + a·x³), t = tanh u: ½(1 + t) + ½·x·(1 − t²)·c·(1 + 3a·x²)
    c, a = 0.7978845608028654, 0.044715
    t = sp.tanh(c * (x + a * x**3))
    return (1 + t) / 2 + x * (1 - t**2) * c * (1 + 3 * a * x**2) / 2


FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("exp", (1, 1), "float", "eˣ", "lambda x: math.exp(x)", torch.exp, sp.exp, "tl.exp({x})",
             shape="monotone", bounds=(0.0, INF), traced=("exp",)),
    Function("exp2", (1, 1), "float", "2ˣ", "lambda x: 2.0 ** x", torch.exp2, lambda x: 2**x, "tl.exp2({x})",
             shape="monotone", bounds=(0.0, INF), traced=("exp2",)),
    Function("log", (1, 1), "float", "ln x", "lambda x: math.log(x)", torch.log, sp.log, "tl.log({x})",
             shape="monotone", traced=("log",)),
    Function("log2", (1, 1), "float", "log₂ x", "lambda x: math.log2(x)", torch.log2,
             lambda x: sp.log(x) / sp.log(2), "tl.log2({x})", shape="monotone", traced=("log2",)),
    Function("log1p", (1, 1), "float", "ln(1 + x)", "lambda x: math.log1p(x)", torch.log1p,
             lambda x: sp.log(1 + x), "_log1p({x})", shape="monotone", traced=("log1p",)),
    Function("sqrt", (1, 1), "float", "√x", "lambda x: math.sqrt(x)", torch.sqrt, sp.sqrt, "tl.sqrt({x})",
             shape="monotone", bounds=(0.0, INF), traced=("sqrt",)),
    Function("rsqrt", (1, 1), "float", "1/√x", "lambda x: 1 / math.sqrt(x)", torch.rsqrt,
             lambda x: 1 / sp.sqrt(x), "tl.rsqrt({x})", traced=("rsqrt",)),
    Function("tanh", (1, 1), "float", "tanh x", "lambda x: math.tanh(x)", torch.tanh, sp.tanh, "_tanh({x})",
             shape="monotone", bounds=(-1.0, 1.0), traced=("tanh",)),
    Function("sigmoid", (1, 1), "float", "σ(x) = 1/(1 + e⁻ˣ)", "lambda x: 1 / (1 + math.exp(-x))", torch.sigmoid,
             _SIG, "_sigmoid({x})", derivative=lambda x, f, op: f * (1 - f), shape="monotone",
             bounds=(0.0, 1.0), traced=("sigmoid", "expit")),
    Function("softplus", (1, 1), "float", "ln(1 + eˣ)", "lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))",
             lambda x: torch.logaddexp(x, torch.zeros_like(x)), lambda x: sp.log(1 + sp.exp(x)), "_softplus({x})",
             derivative=lambda x, f, op: op("sigmoid")(x), shape="monotone", bounds=(0.0, INF),
             traced=("softplus",)),
    Function("expm1", (1, 1), "float", "eˣ − 1", "lambda x: math.expm1(x)", torch.expm1, lambda x: sp.exp(x) - 1,
             "_expm1({x})", helper="""
def _expm1(x):
    # e^x - 1: below |x| = 0.35, where the subtraction cancels, a Taylor polynomial (relative
    # error under 2e-8 there); beyond, e^x - 1 loses at most two bits
    p = x * (1.0 + x * (0.5 + x * (0.16666666666666666 + x * (0.041666666666666664 + x * (
        0.008333333333333333 + x * (0.001388888888888889 + x * (1.984126984126984e-04 + x * 2.48015873015873e-05)))))))
    return tl.where(tl.abs(x) < 0.35, p, tl.exp(x) - 1.0)
""", derivative=lambda x, f, op: sp.exp(x), shape="monotone", bounds=(-1.0, INF), traced=("expm1",)),
    Function("elu", (1, 1), "float", "x if x > 0 else eˣ − 1", "lambda x: x if x > 0 else math.expm1(x)",
             torch.nn.functional.elu, lambda x: sp.Piecewise((x, x > 0), (sp.exp(x) - 1, True)), "_elu({x})",
             helper="""
def _elu(x):
    return tl.where(x > 0.0, x, _expm1(x))
""", derivative=lambda x, f, op: sp.Piecewise((1, x > 0), (sp.exp(x), True)), shape="monotone",
             bounds=(-1.0, INF), traced=("elu",)),
    Function("logsigmoid", (1, 1), "float", "ln σ(x)", "lambda x: min(x, 0.0) - math.log1p(math.exp(-abs(x)))",
             torch.nn.functional.logsigmoid, lambda x: -sp.log(1 + sp.exp(-x)), "_logsigmoid({x})", helper="""
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))
""", derivative=lambda x, f, op: op("sigmoid")(-x), shape="monotone", bounds=(-INF, 0.0),
             traced=("log_sigmoid",)),
    Function("silu", (1, 1), "float", "x·σ(x)",
             "lambda x: x / (1 + math.exp(-x)) if x >= 0 else x * math.exp(x) / (1 + math.exp(x))",
             torch.nn.functional.silu, lambda x: x / (1 + sp.exp(-x)), "_silu({x})", helper="""
def _silu(x):
    return x * _sigmoid(x)
""", derivative=lambda x, f, op: op("sigmoid")(x) * (1 + x * (1 - op("sigmoid")(x))),
             bounds=(-0.2785, INF), traced=("silu",)),
    Function("gelu", (1, 1), "float", "x·Φ(x) = x/2·(1 + erf(x/√2))", "lambda x: 0.5 * x * (1 + math.erf(x * 0.7071067811865476))",
             torch.nn.functional.gelu, lambda x: x / 2 * (1 + sp.erf(x / sp.sqrt(2))), "_gelu({x})", helper="""
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
""", derivative=lambda x, f, op: (1 + op("erf")(x * 0.7071067811865476)) / 2 + x * 0.3989422804014327 * sp.exp(-x**2 / 2),
             bounds=(-0.17, INF), traced=("gelu",)),
    Function("gelu_tanh", (1, 1), "float", "x/2·(1 + tanh(√(2/π)·(x + 0.044715x³)))",
             "lambda x: 0.5 * x * (1 + math.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))",
             lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
             lambda x: x / 2 * (1 + sp.tanh(0.7978845608028654 * (x + 0.044715 * x**3))),
             "_gelu_tanh({x})", helper="""
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
""", derivative=lambda x, f, op: _gelu_tanh_derivative(x), bounds=(-0.1701, INF), traced=("gelu",),
             traced_kwargs=(("approximate", "tanh"),)),
    Function("erf", (1, 1), "float", "2/√π·∫₀ˣ e^(−t²) dt", "lambda x: math.erf(x)", torch.erf, sp.erf, "tl.erf({x})",
             derivative=lambda x, f, op: 1.1283791670955126 * sp.exp(-x**2), shape="monotone", bounds=(-1.0, 1.0),
             traced=("erf",)),
    Function("sin", (1, 1), "float", "sin x", "lambda x: math.sin(x)", torch.sin, sp.sin, "tl.sin({x})",
             bounds=(-1.0, 1.0), traced=("sin",)),
    Function("cos", (1, 1), "float", "cos x", "lambda x: math.cos(x)", torch.cos, sp.cos, "tl.cos({x})",
             bounds=(-1.0, 1.0), traced=("cos",)),
    Function("tan", (1, 1), "float", "tan x", "lambda x: math.tan(x)", torch.tan, sp.tan, "_tan({x})", helper="""
def _tan(x):
    return tl.sin(x) / tl.cos(x)
""", traced=("tan",)),
    Function("abs", (1, 1), "same", "|x|", "lambda x: abs(x)", torch.abs, sp.Abs, "tl.abs({x})",
             shape="even", bounds=(0.0, INF), traced=("abs",)),
    Function("relu", (1, 1), "same", "max(x, 0)", "lambda x: max(x, 0)", lambda x: torch.clamp_min(x, 0),
             lambda x: sp.Max(x, 0), "tl.maximum({x}, {zero})", shape="monotone", bounds=(0.0, INF), traced=("relu",)),
    Function("sign", (1, 1), "same", "−1, 0 or 1 (ints stay ints; sign(NaN) = 0, as torch)",
             "lambda x: type(x)((x > 0) - (x < 0))", torch.sign, sp.sign, "_sign({x}, {zero})", helper="""
def _sign(x, zero):
    # zero (0 or 0.0) gives the result its type; x may be a constant
    return tl.where(x > zero, zero + 1, tl.where(x < zero, zero - 1, zero))
""", derivative=lambda x, f, op: sp.Integer(0), shape="monotone", bounds=(-1.0, 1.0), traced=("sign",)),
    Function("min", (2, None), "same", "the smallest argument", "lambda x, y: min(x, y)", torch.minimum, sp.Min,
             "tl.minimum({x}, {y})", shape="monotone"),
    Function("max", (2, None), "same", "the largest argument", "lambda x, y: max(x, y)", torch.maximum, sp.Max,
             "tl.maximum({x}, {y})", shape="monotone"),
    Function("clamp", (3, 3), "same", "min(max(x, lo), hi)", "lambda x, y, z: min(max(x, y), z)",
             lambda x, lo, hi: torch.minimum(torch.maximum(x, lo), hi), lambda x, lo, hi: sp.Min(sp.Max(x, lo), hi),
             "tl.minimum(tl.maximum({x}, {y}), {z})", shape="monotone"),
    Function("floor", (1, 1), "int", "⌊x⌋ (an int)", "lambda x: int(math.floor(x))",
             lambda x: torch.floor(x).to(torch.int64), sp.floor, "tl.floor({x}).to(tl.int32)", shape="monotone",
             traced=("floor",)),
    Function("ceil", (1, 1), "int", "⌈x⌉ (an int)", "lambda x: int(math.ceil(x))",
             lambda x: torch.ceil(x).to(torch.int64), sp.ceiling, "tl.ceil({x}).to(tl.int32)", shape="monotone",
             traced=("ceil",)),
    Function("float", (1, 1), "tofloat", "x as a float", "lambda x: float(x)", lambda x: x.to(torch.float64),
             lambda x: x, "({x}).to(tl.float32)", shape="monotone"),
)}


def opaque_application(name: str) -> bool:
    """Whether the backward keeps ``name`` opaque (it has a derivative formula of its own)."""
    return FUNCTIONS[name].derivative is not None


def lookup_traced(torch_name: str, kwargs: dict | None) -> Function | None:
    """The row a torch function or Tensor method called ``torch_name`` stands for, given the
    call's keyword arguments (those at their defaults aside), or None."""
    given = tuple(sorted((k, v) for k, v in (kwargs or {}).items() if (k, v) not in TRACED_DEFAULT_KWARGS))
    torch_name = torch_name.removeprefix("special_")  # torch.special.erf arrives as special_erf
    for f in FUNCTIONS.values():
        if torch_name in f.traced and given == tuple(sorted(f.traced_kwargs)):
            return f
    return None


def fold(f: Function, args: list, apply: Callable):
    """``f`` over ``args``: a variadic function folds its two-argument form from the left."""
    if f.arity[1] is None:
        out = args[0]
        for y in args[1:]:
            out = apply(out, y)
        return out
    return apply(*args)


def helpers() -> list[tuple[str, str]]:
    """(name, Triton source) of the helper functions the table's Triton forms call."""
    out = []
    for f in FUNCTIONS.values():
        if f.helper:
            name = f.helper.split("def ", 1)[1].split("(", 1)[0]
            out.append((name, f.helper.strip("\n")))
    return out
