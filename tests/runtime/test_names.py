"""User-chosen names never meet the names the generated code and the call signature use (issue 16,
items 1, 2, 3 and 8), fenced by a hypothesis test whose names are read from the generated code.

Each compiled variant is checked against the float64 reference (outputs poisoned first, by the
testing kit), forward and backward, and through the standalone file ``attnc compile`` writes.
"""

from __future__ import annotations

import functools
import keyword
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.codegen.backward import generate_backward
from attnc.codegen.generate import Specialization, generate
from attnc.codegen.standalone import standalone_source
from attnc.dsl.errors import SpecError
from attnc.ir.layout import kernel_cascade
from attnc.ir.names import CALL_ARGUMENTS
from attnc.testing import check
from attnc.testing.kit import problems
from attnc.testing.properties import CHECKS

# A norm whose stage names are the compiler's own words for what it derives from a stage:
# `m_old` (the running max before a tile), `m_safe` (a max read as 0 while still −inf).
NORM_STAGES = """
norm n1:
    m[i]       = max(s[i, j] for j)
    {pair}[i, j] = exp(s[i, j] - m[i])
    z[i]       = sum({pair}[i, j] for j)
    {row}[i]   = z[i] * 2.0
    out[i]     = sum({pair}[i, j] * v[j] for j) / {row}[i]

attention a:
    mask = kv_idx <= q_idx
    norm = n1
"""


@pytest.mark.parametrize(("pair", "row"), [("e", "m_old"), ("m_old", "r"), ("m_safe", "m_old")])
def test_stage_names_that_spell_derived_names(pair, row):
    attn = attnc.compile(NORM_STAGES.format(pair=pair, row=row), name="a")
    check(attn, examples=4, seed=1, properties=("reference", "gradients"))


# A tensor parameter `t` beside scalars named like its size and stride arguments.
TENSOR_BESIDE_SIZES = """
attention a(t: tensor[H] float, t_size0: int = 3, t_stride0: float = 0.5, t_grad: float = 0.25):
    score = score + t[h] * t_stride0 + t_size0 * t_grad
    mask = kv_idx <= q_idx
"""


def test_tensor_parameter_beside_its_size_names():
    attn = attnc.compile(TENSOR_BESIDE_SIZES, name="a")
    check(attn, examples=4, seed=2, properties=("reference", "gradients"))


@pytest.mark.parametrize("param", ["m", "z", "e", "out"])
def test_parameter_named_like_a_norm_stage(param):
    """A parameter `m` beside softmax's stage `m[i]`: two values (found by the fence below; the
    kernel read the parameter where it meant the running max, NaN rows)."""
    src = f"attention a({param}: float = 0.5):\n    score = score * {param}\n    mask = kv_idx <= q_idx\n"
    try:
        attn = attnc.compile(src, name="a")
    except SpecError:  # a name the language keeps for itself
        return
    check(attn, examples=4, seed=4, properties=("reference", "gradients"))


@pytest.mark.parametrize("name", sorted(CALL_ARGUMENTS))
def test_parameter_named_like_a_call_argument_is_refused(name):
    src = f"attention a({name}: float = 1.0):\n    score = score * {name}\n"
    with pytest.raises(SpecError, match=rf"`{name}`") as err:
        attnc.compile(src, name="a")
    assert err.value.span is not None and err.value.span.line == 1


def test_call_arguments_table_matches_the_call_signatures():
    """The table the language refuses is the set of keywords the calls take themselves."""
    import inspect

    from attnc.runtime.compiler import Attention

    taken = set()
    for method in (Attention.__call__, Attention.reference, Attention.varlen, Attention.grid_plan):
        taken |= {p.name for p in inspect.signature(method).parameters.values()
                  if p.kind is not p.VAR_KEYWORD and p.name != "self" and not p.name.startswith("_")}
    assert taken <= CALL_ARGUMENTS, taken - CALL_ARGUMENTS


# ---------------------------------------------------------------------------------- the fence

@functools.lru_cache(maxsize=None)
def generated_identifiers() -> tuple[str, ...]:
    """Every identifier the forward, backward and standalone generators write for a spec that
    uses each kind of name (a tensor and scalar parameters, per-row and per-pair stages), less
    the part a spec name becomes (``u_x`` → ``x``, ``s_m_old`` → ``m_old``, also as a whole)."""
    src = ("norm nrm:\n    m[i] = max(s[i, j] for j)\n    e[i, j] = exp(s[i, j] - m[i])\n"
           "    z[i] = sum(e[i, j] for j)\n    out[i] = sum(e[i, j] * v[j] for j) / z[i]\n"
           "    lse[i] = m[i] + log(z[i])\n"
           "attention a(t: tensor[H] float, w: int = 4, c: float = 0.5):\n"
           "    score = score * c + t[h]\n    mask = q_idx - kv_idx < w\n    norm = nrm\n")
    c = kernel_cascade(attnc.spec_from_text(src).cascade("a"))
    texts = [generate(c, Specialization("float32", interpret=True)).text,
             generate_backward(c, Specialization("float32", interpret=True)).text,
             standalone_source(c, "float32")]
    names = set()
    for text in texts:
        for ident in re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", text):
            names.add(ident)
            names.add(re.sub(r"^[a-z]_", "", ident))
    return tuple(sorted(x for x in names if x.isidentifier() and not keyword.iskeyword(x)
                        and not x.startswith("_")))


def _spec_with(param: str, stage: str, let: str) -> str:
    return (f"norm nrm:\n    m[i] = max(s[i, j] for j)\n    {stage}[i, j] = exp(s[i, j] - m[i])\n"
            f"    z[i] = sum({stage}[i, j] for j)\n    out[i] = sum({stage}[i, j] * v[j] for j) / z[i]\n"
            f"attention a({param}: float = 0.75):\n    let {let} = score * {param}\n"
            f"    score = {let} + 0.5\n    mask = kv_idx <= q_idx\n    norm = nrm\n")


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_names_drawn_from_the_generated_code(data):
    """Parameter, stage and let names drawn from the generated code's own identifiers: each spec
    the language accepts computes what the reference does, forward and backward (the kit draws
    the parameter's value); the ones it refuses get a SpecError."""
    pool = st.sampled_from(generated_identifiers())
    param, stage, let = data.draw(st.lists(pool, min_size=3, max_size=3, unique=True))
    try:
        attn = attnc.compile(_spec_with(param, stage, let), name="a")
    except SpecError:
        return
    # one drawn problem per spec (the kit's own check is a @given; no nesting); a few rows, so
    # dq and dk are not sums over one kept key (gradients that cancel to rounding noise, which
    # the kit measures against a floor set by dv: too tight for them)
    problem = data.draw(problems(attn, dtypes=(torch.float32,)).filter(lambda pr: min(pr.Nq, pr.Nkv) >= 4))
    for prop in ("reference", "gradients"):
        CHECKS[prop](attn, problem)


STANDALONE_RUN = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("kernel", sys.argv[1])
kernel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel)
values = torch.load(sys.argv[2])
g = torch.Generator().manual_seed(5)
q, k, v = (torch.randn(1, 2, 9, 16, generator=g) for _ in range(3))
torch.save(kernel.attention(q, k, v, **values), sys.argv[3])
"""


def test_standalone_file_with_the_launchers_own_names_as_parameters(tmp_path):
    """Every identifier of the standalone launcher that the language accepts as a parameter name,
    all at once, each with its own value: the file `attnc compile` writes imports, and computes
    what the reference does (names such as `Nq`, `params`, `torch` once shadowed the launcher's)."""
    import subprocess
    import sys

    names = [x for x in generated_identifiers() if x not in CALL_ARGUMENTS]
    while True:
        params = ", ".join(f"{x}: float = 0.0" for x in names)
        terms = [f"{x} * {0.001 * (k + 1):.3f}" for k, x in enumerate(names)]
        groups = [" + ".join(terms[k:k + 40]) for k in range(0, len(terms), 40)]  # shallow sums
        lets = "".join(f"    let zz_group_{k} = {g}\n" for k, g in enumerate(groups))
        total = " + ".join(f"zz_group_{k}" for k in range(len(groups)))
        try:
            attn = attnc.compile(f"attention a({params}):\n{lets}    score = score + {total}\n", name="a")
            break
        except SpecError as err:  # drop the name the language refuses, and try again
            refused = next((x for x in names if f"`{x}`" in err.message), None)
            assert refused is not None, err.message
            names.remove(refused)
    assert {"Nq", "Hkv", "params", "sizes", "torch", "math", "args", "want", "t"} <= set(names)
    values = {x: 0.01 * ((k * 7) % 11) for k, x in enumerate(names)}
    path = tmp_path / "kernel.py"
    path.write_text(standalone_source(kernel_cascade(attn.cascade), "float32"), encoding="utf-8")
    torch.save(values, tmp_path / "values.pt")
    proc = subprocess.run([sys.executable, "-c", STANDALONE_RUN, str(path), str(tmp_path / "values.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 9, 16, generator=g) for _ in range(3))
    want = attn.reference(q, k, v, **values)
    got = torch.load(tmp_path / "out.pt")
    assert (got.double() - want).abs().max() <= 1e-5, (got.double() - want).abs().max()


def test_the_tracer_never_names_a_captured_tensor_after_a_call_keyword():
    from attnc.dsl.trace import RESERVED
    from attnc.ir.names import CALL_ARGUMENTS

    assert CALL_ARGUMENTS <= RESERVED
