"""print → parse round trips: library files, every definition, and generated ASTs."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from attnc.dsl import ast
from attnc.dsl.printer import print_def, print_expr, print_module
from tests.conftest import example_files, library_files

FILES = library_files() + example_files()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_module_round_trip(path):
    module = attnc.parse(path.read_text(), str(path))
    printed = print_module(module)
    again = attnc.parse(printed, "<printed>")
    assert again == module
    assert print_module(again) == printed  # printing is a fixed point


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_definition_round_trips_alone(path):
    for d in attnc.parse(path.read_text(), str(path)).defs:
        reparsed = attnc.parse(print_def(d)).defs
        assert reparsed == (d,)


def test_spans_do_not_affect_equality():
    a = attnc.parse("mask m = q_idx < kv_idx\n")
    b = attnc.parse("\n\n# moved\nmask   m =   q_idx<kv_idx\n")
    assert a == b
    assert a.defs[0].span.line != b.defs[0].span.line


# ---- generated expressions: the printer must parenthesize exactly enough

NAMES = st.sampled_from(["q_idx", "kv_idx", "w", "cap", "score", "x_1", "_y"])
LEAVES = st.one_of(
    NAMES.map(ast.Name),
    st.integers(0, 10**6).map(lambda v: ast.Num(v, True)),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(lambda v: ast.Num(v, False)),
    st.booleans().map(ast.Bool),
)


def _extend(children):
    binop = st.builds(ast.BinOp, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "&", "|", "^", "<<", ">>"]),
                          children, children)
    cmp = st.integers(1, 3).flatmap(
        lambda k: st.builds(
            ast.Compare,
            st.lists(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), min_size=k, max_size=k).map(tuple),
            st.lists(children, min_size=k + 1, max_size=k + 1).map(tuple),
        )
    )
    return st.one_of(
        binop,
        cmp,
        st.builds(ast.Unary, st.sampled_from(["-", "+", "~"]), children),
        st.builds(ast.BoolOp, st.sampled_from(["and", "or"]), children, children),
        st.builds(ast.Not, children),
        st.builds(ast.IfExp, children, children, children),
        st.builds(ast.Call, st.sampled_from(["exp", "max", "clamp", "window"]),
                  st.lists(children, max_size=3).map(tuple),
                  st.lists(st.builds(ast.Keyword, st.sampled_from(["a", "b"]), children), max_size=1).map(tuple)),
        st.builds(ast.Index, st.sampled_from(["t", "s", "e"]), st.lists(children, min_size=1, max_size=2).map(tuple)),
        st.builds(ast.Reduce, st.sampled_from(["sum", "max"]), children, st.just("j")),
    )


EXPRS = st.recursive(LEAVES, _extend, max_leaves=12)


@settings(max_examples=300)
@given(EXPRS)
def test_generated_expressions_round_trip(e):
    text = f"score g = {print_expr(e)}\n"
    parsed = attnc.parse(text).defs[0].body[0].value
    assert parsed == e
