"""Lowering: verify() after lowering, stable cascade text, simplification preserves values."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from attnc.ir import IRError, cascade_text, verify
from attnc.ir import nodes as n
from attnc.ir.simplify import simplify
from attnc.runtime.reference import _Eval
from tests.conftest import example_files, library_files

FILES = library_files() + example_files()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_definition_lowers_and_verifies(path):
    spec = attnc.spec_from_file(path)
    assert spec.cascades
    for c in spec.cascades.values():
        assert verify(c) is c
        dots = len(c.dots)  # qk, then any further slices of q·k (qk2, ...), then the score
        assert [st.name for st in c.stages][:dots + 1] == ["qk", *(f"qk{k}" for k in range(2, dots + 1)), "s"]
        assert c.stage("out").type == n.VEC


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cascade_text_is_stable(path):
    a = attnc.spec_from_file(path).cascades
    b = attnc.spec_from_text(path.read_text(), "elsewhere.attn", base_dir=path.parent).cascades
    assert {k: cascade_text(c) for k, c in a.items()} == {k: cascade_text(c) for k, c in b.items()}
    assert a == b and {k: hash(c) for k, c in a.items()} == {k: hash(c) for k, c in b.items()}


def test_cascade_text_changes_with_the_spec():
    base = attnc.spec_from_text("attention a(w: int = 4):\n    mask = q_idx - kv_idx < w\n").cascade()
    other = attnc.spec_from_text("attention a(w: int = 4):\n    mask = q_idx - kv_idx <= w\n").cascade()
    default = attnc.spec_from_text("attention a(w: int = 5):\n    mask = q_idx - kv_idx < w\n").cascade()
    texts = {cascade_text(c) for c in (base, other, default)}
    assert len(texts) == 3


def test_named_definitions_and_lets_are_inlined():
    c = attnc.spec_from_text(
        "mask win(w: int) = q_idx - kv_idx < w\n"
        "attention a:\n    let lim = 3 + 1\n    mask = causal and win(lim)\n"
    ).cascade("a")
    text = cascade_text(c)
    assert "win" not in text and "lim" not in text and "causal" not in text
    assert "i - j < 4" in text


def test_dead_stages_are_dropped():
    c = attnc.spec_from_text(
        "norm k:\n    unused[i] = sum(exp(s[i, j]) for j)\n    out[i] = sum(s[i, j] * v[j] for j)\n"
    ).cascade()
    assert not c.has_stage("unused")


def _broken(c, **changes):
    return dataclasses.replace(c, **changes)


def test_verify_rejects_broken_cascades():
    c = attnc.library_cascade("softmax")
    stages = list(c.stages)
    # a reference to a later stage
    bad = [stages[0], stages[1], n.Stage("m", n.ROW, n.Reduce("max", n.Ref("e", n.FLOAT)))] + stages[3:]
    with pytest.raises(IRError):
        verify(_broken(c, stages=tuple(bad)))
    # a per-query stage that depends on j
    bad = stages[:2] + [n.Stage("m", n.ROW, n.Ref("s", n.FLOAT))] + stages[3:]
    with pytest.raises(IRError):
        verify(_broken(c, stages=tuple(bad)))
    # an ill-typed expression
    bad = stages[:2] + [n.Stage("m", n.ROW, n.Reduce("max", n.Binary("+", n.Ref("s", n.FLOAT), n.Const(1, n.INT), n.FLOAT)))] + stages[3:]
    with pytest.raises(IRError):
        verify(_broken(c, stages=tuple(bad)))
    # no out
    with pytest.raises(IRError):
        verify(_broken(c, stages=tuple(s for s in stages if s.name != "out")))
    # a parameter that is not declared
    bad = stages[:1] + [n.Stage("s", n.PAIR, n.Binary("*", n.Ref("qk", n.FLOAT), n.Param("t", n.FLOAT), n.FLOAT))] + stages[2:]
    with pytest.raises(IRError):
        verify(_broken(c, stages=tuple(bad)))


# ---- simplify() preserves values: random integer index arithmetic, evaluated before and after

INT_LEAVES = st.one_of(
    st.sampled_from([n.Var("i", n.INT), n.Var("j", n.INT), n.Var("n_kv", n.INT), n.Var("n_q", n.INT)]),
    st.integers(-5, 5).map(lambda v: n.Const(v, n.INT)),
)


def _int_ops(children):
    return st.one_of(
        st.builds(lambda op, a, b: n.Binary(op, a, b, n.INT), st.sampled_from(["+", "-", "*", "//", "%"]), children, children),
        st.builds(lambda a: n.Unary("-", a, n.INT), children),
        st.builds(lambda a, b: n.Call("max", (a, b), n.INT), children, children),
    )


INT_EXPRS = st.recursive(INT_LEAVES, _int_ops, max_leaves=10)


def _evaluate(e):
    index = {"i": torch.arange(5).view(5, 1), "j": torch.arange(7).view(1, 7)}
    ev = _Eval(n.Cascade("t", (), ()), {"n_kv": 7, "n_q": 5}, {}, index)
    return ev.expr(e)


@settings(max_examples=200)
@given(INT_EXPRS)
def test_simplify_preserves_integer_values(e):
    before = _evaluate(e)
    after = _evaluate(simplify(e))
    assert torch.equal(torch.broadcast_to(before, (5, 7)), torch.broadcast_to(after, (5, 7)))


def test_simplify_canonicalizes_index_arithmetic():
    i, j = n.Var("i", n.INT), n.Var("j", n.INT)
    a = n.Binary("-", n.Binary("+", i, n.Const(5, n.INT), n.INT), n.Binary("+", i, n.Const(3, n.INT), n.INT), n.INT)
    assert simplify(a) == n.Const(2, n.INT)
    b1 = n.Binary("+", n.Binary("-", i, j, n.INT), n.Const(0, n.INT), n.INT)
    b2 = n.Binary("-", i, j, n.INT)
    assert simplify(b1) == simplify(b2)
