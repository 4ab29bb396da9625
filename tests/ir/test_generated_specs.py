"""Generated specs: random well-typed masks and scores, compiled and checked against an
independent evaluator of the same expression tree (plain Python ints / torch float64)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from attnc.ir import verify

# Expression trees as tuples: ("var", name) | ("int", v) | (op, a, b) | ("abs", a) | ("neg", a)
INT_VARS = ["q_idx", "kv_idx", "n_q", "n_kv", "w"]


def int_exprs():
    leaves = st.one_of(st.sampled_from(INT_VARS).map(lambda v: ("var", v)), st.integers(0, 9).map(lambda v: ("int", v)))

    def ext(kids):
        return st.one_of(
            st.tuples(st.sampled_from(["+", "-", "*", "//", "%", "min", "max"]), kids, kids),
            st.tuples(st.sampled_from(["abs", "neg"]), kids),
        )

    return st.recursive(leaves, ext, max_leaves=6)


def bool_exprs():
    cmp = st.tuples(st.sampled_from(["<", "<=", "==", "!=", ">", ">="]), int_exprs(), int_exprs())

    def ext(kids):
        return st.one_of(st.tuples(st.sampled_from(["and", "or"]), kids, kids), st.tuples(st.just("not"), kids))

    return st.recursive(cmp, ext, max_leaves=4)


def render(e):
    tag = e[0]
    if tag == "var":
        return e[1]
    if tag == "int":
        return str(e[1])
    if tag in ("abs",):
        return f"abs({render(e[1])})"
    if tag == "neg":
        return f"(-{render(e[1])})"
    if tag == "not":
        return f"(not {render(e[1])})"
    if tag in ("min", "max"):
        return f"{tag}({render(e[1])}, {render(e[2])})"
    return f"({render(e[1])} {tag} {render(e[2])})"


def evaluate(e, env):
    tag = e[0]
    if tag == "var":
        return env[e[1]]
    if tag == "int":
        return e[1]
    if tag == "abs":
        return abs(evaluate(e[1], env))
    if tag == "neg":
        return -evaluate(e[1], env)
    if tag == "not":
        return not evaluate(e[1], env)
    a, b = evaluate(e[1], env), evaluate(e[2], env)
    if tag == "and":
        return a and b
    if tag == "or":
        return a or b
    if tag == "//":
        return 0 if b == 0 else a // b  # docs/semantics.md: floor division, x // 0 = 0
    if tag == "%":
        return a if b == 0 else a % b
    ops = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "min": lambda: min(a, b), "max": lambda: max(a, b),
           "<": lambda: a < b, "<=": lambda: a <= b, "==": lambda: a == b, "!=": lambda: a != b, ">": lambda: a > b,
           ">=": lambda: a >= b}
    return ops[tag]()


def kept_keys(cascade, nq, nkv, **params):
    """The mask a cascade implies: with equal scores and v = I, out[i, j] > 0 iff j is kept."""
    q = torch.zeros(1, 1, nq, 4)
    k = torch.zeros(1, 1, nkv, 4)
    v = torch.eye(nkv).view(1, 1, nkv, nkv)
    return attnc.reference(cascade, q, k, v, **params)[0, 0] > 0


@settings(max_examples=120)
@given(mask=bool_exprs(), nq=st.integers(1, 7), nkv=st.integers(1, 9), w=st.integers(-3, 6))
def test_generated_masks_match_an_independent_evaluator(mask, nq, nkv, w):
    text = f"attention g(w: int):\n    mask = {render(mask)}\n"
    cascade = attnc.spec_from_text(text).cascade("g")
    verify(cascade)
    got = kept_keys(cascade, nq, nkv, w=w)
    want = torch.tensor([[bool(evaluate(mask, {"q_idx": i, "kv_idx": j, "n_q": nq, "n_kv": nkv, "w": w}))
                          for j in range(nkv)] for i in range(nq)])
    assert torch.equal(got, want), text


FLOAT_FNS = {"tanh": math.tanh, "sigmoid": lambda x: 1 / (1 + math.exp(-x)), "abs": abs}


def float_exprs():
    leaves = st.one_of(
        st.just(("var", "score")), st.sampled_from(["q_idx", "kv_idx"]).map(lambda v: ("var", v)),
        st.floats(-2, 2, allow_nan=False).map(lambda v: ("flt", round(v, 3))),
    )

    def ext(kids):
        return st.one_of(
            st.tuples(st.sampled_from(["+", "-", "*"]), kids, kids),
            st.tuples(st.sampled_from(sorted(FLOAT_FNS)), kids),
            st.tuples(st.just("if"), bool_exprs(), kids, kids),
        )

    return st.recursive(leaves, ext, max_leaves=6)


def render_f(e):
    tag = e[0]
    if tag == "var":
        return e[1]
    if tag == "flt":
        return repr(float(e[1]))
    if tag in FLOAT_FNS:
        return f"{tag}({render_f(e[1])})"
    if tag == "if":
        return f"({render_f(e[2])} if {render(e[1])} else {render_f(e[3])})"
    return f"({render_f(e[1])} {tag} {render_f(e[2])})"


def evaluate_f(e, env):
    tag = e[0]
    if tag == "var":
        return env[e[1]]
    if tag == "flt":
        return e[1]
    if tag in FLOAT_FNS:
        return FLOAT_FNS[tag](evaluate_f(e[1], env))
    if tag == "if":
        return evaluate_f(e[2], env) if evaluate(e[1], env) else evaluate_f(e[3], env)
    a, b = evaluate_f(e[1], env), evaluate_f(e[2], env)
    return {"+": a + b, "-": a - b, "*": a * b}[tag]


@settings(max_examples=80)
@given(score=float_exprs(), nq=st.integers(1, 5), nkv=st.integers(1, 6), seed=st.integers(0, 1000))
def test_generated_scores_match_an_independent_softmax(score, nq, nkv, seed):
    text = f"attention g(w: int = 0):\n    score = {render_f(score)}\n"
    cascade = attnc.spec_from_text(text).cascade("g")
    verify(cascade)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, nq, 4, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, nkv, 4, generator=g, dtype=torch.float64)
    v = torch.randn(1, 1, nkv, 3, generator=g, dtype=torch.float64)
    raw = (q @ k.transpose(-1, -2))[0, 0] / 2.0  # scale = 1/sqrt(4)
    logits = torch.tensor([[evaluate_f(score, {"score": raw[i, j].item(), "q_idx": i, "kv_idx": j, "n_q": nq,
                                               "n_kv": nkv, "w": 0}) for j in range(nkv)] for i in range(nq)],
                          dtype=torch.float64)
    want = torch.softmax(logits, -1) @ v[0, 0]
    got = attnc.reference(cascade, q, k, v)[0, 0]
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), text
