"""The built-in function table (``attnc/dsl/functions.py``): every row has every form, and the
forms of a row agree — Python, torch (float64), sympy (evaluated), the derivative against sympy's
own, and the interval rule against sampled values. The Triton forms are checked by running them
(``tests/runtime/test_functions.py``)."""

from __future__ import annotations

import math
import re
import string

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnc.dsl.functions import ARGS, FUNCTIONS, helpers, lookup_traced
from attnc.ir import nodes as n
from attnc.ir.passes import _IR_FUNCS, OPAQUE, _to_ir
from attnc.ir.ranges import call_interval

ROWS = list(FUNCTIONS.values())
SAMPLES = (-7.5, -2.0, -1.0, -0.3, -1e-3, 0.0, 2e-6, 0.25, 0.9, 1.0, 3.0, 12.0)


def _count(f) -> int:
    return 2 if f.arity[1] is None else f.arity[0]


def _points(f):
    """Argument tuples for ``f`` (float arguments; int-typed rows take floats too)."""
    k = _count(f)
    if k == 1:
        return [(x,) for x in SAMPLES]
    if f.name == "clamp":
        return [(x, -1.0, 2.0) for x in SAMPLES] + [(x, 0.5, 0.25) for x in SAMPLES]
    return [(x, y) for x in SAMPLES for y in SAMPLES[::3]]


@pytest.mark.parametrize("f", ROWS, ids=lambda f: f.name)
def test_every_row_has_every_form(f):
    assert re.fullmatch(r"[a-z][a-z0-9_]*", f.name)
    lo, hi = f.arity
    assert 1 <= lo and (hi is None or hi >= lo)
    assert f.typing in ("float", "same", "int", "tofloat")
    assert f.math.strip()
    assert f.py.startswith("lambda ") and callable(f.scalar)
    assert callable(f.torch) and callable(f.sympy)
    assert f.shape in ("monotone", "even", "bounded") and f.bounds[0] <= f.bounds[1]
    # the Triton template: each argument's placeholder exactly once, nothing else but {zero}
    fields = [name for _, name, _, _ in string.Formatter().parse(f.triton) if name is not None]
    assert sorted(x for x in fields if x != "zero") == sorted(ARGS[:_count(f)]), f.triton
    called = set(re.findall(r"\b(_[a-z0-9_]+)\(", f.triton + f.helper))
    defined = {name for name, _ in helpers()}
    existing = {"_tanh", "_log1p", "_softplus", "_sigmoid"} | defined  # helpers.py.jinja's and the table's
    assert called <= existing, called - existing
    if f.helper:
        assert f.helper.strip().startswith("def _"), "a helper is one Triton function"
    for name in f.traced:
        assert lookup_traced(name, dict(f.traced_kwargs)) is f


def test_the_table_drives_every_layer():
    """Nothing outside the table spells a function list of its own (what this test exists for)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "attnc"
    offenders = []
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".jinja") or path.name == "functions.py" or "testing" in path.parts:
            continue
        text = path.read_text()
        # a dict or tuple naming three built-ins side by side is a second table
        if re.search(r'"tanh"[^\n]{0,80}"sigmoid"[^\n]{0,80}"softplus"', text):
            offenders.append(str(path))
    assert not offenders


def _real(x) -> float:
    """A sympy value as a float; NaN where it is not a real number (log of a negative)."""
    try:
        z = complex(sp.N(x))
    except TypeError:  # zoo, nan
        return math.nan
    return z.real if z.imag == 0 else math.nan


def _agree(a, b, tol=1e-9):
    if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
        return True  # outside the domain: each form says so its own way
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("f", ROWS, ids=lambda f: f.name)
def test_python_torch_and_sympy_forms_agree(f):
    for args in _points(f):
        if f.typing == "tofloat":
            args = tuple(float(int(a)) for a in args)
        py = float(f.scalar(*args))
        th = float(f.torch(*(torch.tensor(a, dtype=torch.float64) for a in args)))
        sy = _real(f.sympy(*(sp.Float(a) for a in args)))
        assert _agree(py, th), (f.name, args, py, th)
        assert _agree(py, sy, 1e-7), (f.name, args, py, sy)


@pytest.mark.parametrize("f", [f for f in ROWS if f.derivative is not None], ids=lambda f: f.name)
def test_a_derivative_of_its_own_is_the_derivative(f):
    x = sp.Symbol("x", real=True)
    mine = sp.diff(OPAQUE[f.name](x), x)
    exact = sp.diff(f.sympy(x), x)
    for value in SAMPLES:
        got = mine.subs({x: value})
        got = got.replace(lambda e: type(e) in OPAQUE.values(), lambda e: FUNCTIONS[_IR_FUNCS[type(e).__name__]].sympy(*e.args))
        want = exact.subs({x: value})
        got, want = _real(got), _real(want)
        assert _agree(got, want, 1e-9), (f.name, value, got, want)
    # and the derivative has a kernel spelling
    _to_ir(mine, {x: n.Var("x", n.FLOAT)})


@pytest.mark.parametrize("f", ROWS, ids=lambda f: f.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_interval_rule_holds_every_value(f, data):
    k = _count(f)
    ends = st.floats(-30, 30, allow_nan=False).map(lambda x: x + 0.0)  # + 0.0: sorted() keeps (0.0, -0.0)
    ivals = [tuple(sorted((data.draw(ends), data.draw(ends)))) for _ in range(k)]
    lo, hi = call_interval(f, ivals)
    for _ in range(8):
        args = [data.draw(st.floats(a, b)) for a, b in ivals]
        y = f.scalar(*args)
        if isinstance(y, float) and math.isnan(y):
            continue
        assert lo - 1e-9 * abs(lo) <= y <= hi + 1e-9 * abs(hi), (f.name, ivals, args, y, (lo, hi))


def test_the_language_docs_list_every_function():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()
    section = text.split("### Built-in functions", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in ROWS if f"`{f.name}(" not in section]
    assert not missing, f"docs/language.md's function table lacks {missing}"


@pytest.mark.parametrize("f", [f for f in ROWS if f.arity == (1, 1) and f.typing in ("float", "same")],
                         ids=lambda f: f.name)
def test_every_function_has_a_kernel_spelling_inside_a_derivative(f):
    """What sympy makes of a row comes back as IR (a derivative such as d(s·|s|)/ds keeps |s|)."""
    x = sp.Symbol("x", real=True)
    _to_ir(f.sympy(x) * x, {x: n.Var("x", n.FLOAT)})
    _to_ir(sp.diff(OPAQUE[f.name](x) if f.name in OPAQUE else f.sympy(x), x) * x, {x: n.Var("x", n.FLOAT)})
