"""Mutation fuzzing of the front end: no spec text may crash ``attnc.spec_from_text``.

Every library spec plus a few rich hand-written specs is cut into crude tokens and mutated
(tokens deleted, duplicated, swapped or replaced, random bytes and odd characters inserted,
lines shuffled and re-indented, expressions nested thousands deep). For each mutated text
``spec_from_text`` must either succeed or raise ``SpecError`` with a sane span; any other
exception (an ``AssertionError`` from the IR verifier, a ``RecursionError``, a lark error, a
``KeyError`` ...) is a compiler bug.

Each test runs an inner ``@given`` function and counts the mutated specs it checked; the totals
are asserted so CI always checks at least ``MIN_TOTAL`` of them. ``ATTNC_FUZZ_SCALE=10`` runs
ten times as many examples for a longer local hunt.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc

LIBRARY = Path(attnc.__file__).resolve().parent / "library"
LIBRARY_TEXTS = {p.stem: p.read_text() for p in sorted(LIBRARY.glob("*.attn"))}

SCALE = float(os.environ.get("ATTNC_FUZZ_SCALE", "1"))
MIN_TOTAL = 2000


def _n(k: int) -> int:
    return max(1, int(k * SCALE))


# ---------------------------------------------------------------------------- corpus

# A file the hand-written specs import from; written into a temporary directory per test.
HELPERS = """\
# helper definitions imported by the fuzz corpus
mask band(width: int = 4) = abs(q_idx - kv_idx) <= width
score tempered(t: float = 2.0) = score / t
norm plain_sum:
    out[i] = sum(s[i, j] * v[j] for j)
"""

HANDWRITTEN = [
    """\
# an attention with lets, defaults, and library pieces
from library import causal, softcap, sliding_window

attention gemma_like(cap: float = 30.0, window: int = 4096, use_window: bool = True):
    let capped = cap * tanh(score / cap)
    score = capped + 0.0
    mask = causal and (sliding_window(window) or not use_window)
    norm = softmax
""",
    """\
mask local(radius: int = 16, stride: int = 1) = abs(q_idx - kv_idx) <= radius * stride and kv_idx % stride == 0

score biased(bias: tensor[H, N_KV] float, gain: float = 1.0) = score * gain + bias[h, kv_idx]

norm stable(temp: float = 1.0):
    m[i] = max(s[i, j] / temp for j)
    e[i, j] = exp(s[i, j] / temp - m[i])
    z[i] = sum(e[i, j] for j)
    out[i] = sum(e[i, j] * v[j] for j) / z[i]
    lse[i] = m[i] + log(z[i])

attention combo(bias: tensor[H, N_KV] float, radius: int = 8):
    score = biased(bias, gain=0.5)
    mask = local(radius) and kv_idx <= q_idx + (n_kv - n_q)
    norm = stable(temp=2.0)
""",
    """\
# multi-definition file with chained masks and scores
mask doc_causal(doc: tensor[B, N_KV] int) = document(doc) and causal
mask banded(lo: int, hi: int = 64) = lo <= q_idx - kv_idx and q_idx - kv_idx < hi
score scaled(alpha: float = 0.5) = alpha * score + (1.0 - alpha) * softcap(cap=20.0)
score clipped = min(max(score, -10.0), 10.0) if q_idx >= kv_idx else -score

attention packed(doc: tensor[B, N_KV] int, lo: int = 0):
    let width = 128
    mask = doc_causal(doc) and banded(lo, hi=width)
    score = scaled(alpha=0.25)
    norm = sigmoid(bias=-2.0)
""",
    """\
from library import softmax_sink, alibi

attention sinky(sink: tensor[H] float, slope_gain: float = 1.0):
    score = alibi * slope_gain
    mask = prefix_lm(prefix=4) or chunked(chunk=128)
    norm = softmax_sink(sink)
""",
    """\
norm two_pass(tau: float = 0.1):
    m[i] = max(s[i, j] for j)
    e[i, j] = exp(s[i, j] - m[i]) if s[i, j] > m[i] - 20.0 else 0.0
    z[i] = sum(e[i, j] for j) + 1e-6
    p[i, j] = e[i, j] / z[i]
    out[i] = sum(relu(p[i, j] - tau) * v[j] for j) - sum(p[i, j] * v[j] for j) * 0.5

attention uses_two_pass:
    let neg = -1
    mask = q_idx // 2 >= kv_idx // 2 + neg * 0 and not (q_idx == kv_idx and False)
    norm = two_pass(tau=0.05)
""",
    """\
from "helpers.attn" import band, tempered, plain_sum

attention imported(width: int = 8):
    score = tempered(t=4.0) + 2.0 ** -3
    mask = band(width) and q_idx >= 0
    norm = plain_sum
""",
]

CORPUS = list(LIBRARY_TEXTS.values()) + HANDWRITTEN

TOKEN_RE = re.compile(
    r"""
      \r?\n[ \t]*                                   # a line break and the next line's indentation
    | [ \t]+
    | \#[^\n]*                                      # a comment
    | "[^"\n]*"                                     # a quoted import path
    | [A-Za-z_][A-Za-z0-9_]*
    | (?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)? | [0-9]+[eE][-+]?[0-9]+ | [0-9]+
    | \*\* | // | <= | >= | == | !=
    | .
    """,
    re.X | re.S,
)


def tokenize(text: str) -> list[str]:
    toks = TOKEN_RE.findall(text)
    assert "".join(toks) == text
    return toks


CORPUS_TOKENS = [tokenize(t) for t in CORPUS]

POOL = sorted(
    set(tok for toks in CORPUS_TOKENS for tok in toks if len(tok) < 40)
    | {
        # keywords and soft keywords
        "for", "norm", "mask", "score", "attention", "let", "from", "import", "library", "if", "else",
        "and", "or", "not", "tensor", "int", "float", "bool", "True", "False",
        # punctuation and operators
        "[", "]", "(", ")", ":", "=", ",", "+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=",
        ">", ">=", ".", "#", "\\",
        # line structure
        "\n", "\n    ", "\n  ", "\n\t", "\n        ", "\n   ", "    ", "\t", "\\\n", "\r\n", "\n\n",
        # literals at the edges
        "0", "-1", "2147483647", "2147483648", "99999999999999999999", "1e999", "1e-999", "1.5", ".5",
        "0.0", "1e-3", "9" * 5000, "1." + "0" * 400, '"helpers.attn"', '"nope.attn"', '""', '"."', '"library"',
        # names the compiler treats specially
        "q_idx", "kv_idx", "score", "s", "v", "i", "j", "b", "h", "n_q", "n_kv", "head_dim", "scale",
        "sum", "max", "min", "exp", "clamp", "floor", "float", "softmax", "causal", "sliding_window",
        "out", "lse", "m", "e", "z", "qk", "keep", "_x", "B", "H", "N_KV", "D_V", "x",
    }
)

ODD_CHARS = [
    "\x00", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\xa0", "\u2028", "\u2029",
    "\ufeff", "\u200b", "é", "ß", "∑", "≤", "−", "😀", "\\", "\\\n", '"', "'", "$", "@", "`", "?",
    "!", ";", "{", "}", "~", "^", "&", "|",
]


def deep(kind: str, k: int) -> str:
    """A syntactically plausible expression nested ``k`` deep."""
    if kind == "parens":
        return "(" * k + "q_idx" + ")" * k
    if kind == "paren_sum":
        return "(1 + " * k + "1" + ")" * k
    if kind == "not":
        return "not " * k + "True"
    if kind == "neg":
        return "-" * k + "1.0"
    if kind == "sum":
        return " + ".join(["1.0"] * k)
    if kind == "calls":
        return "exp(" * k + "1.0" + ")" * k
    if kind == "pow":
        return " ** ".join(["2.0"] * k)
    if kind == "ifs":
        return "1.0 if True else " * k + "0.0"
    if kind == "index":
        return "t[" * k + "0" + "]" * k
    if kind == "cmp":
        return " < ".join(["q_idx"] * k)
    if kind == "intprod":  # a constant far beyond int32 (and float) range once folded
        return " * ".join(["65536"] * k)
    raise ValueError(kind)


DEEP_KINDS = ["parens", "paren_sum", "not", "neg", "sum", "calls", "pow", "ifs", "index", "cmp", "intprod"]
DEPTHS = [3, 60, 70, 119, 120, 121, 122, 500, 2000, 3000]


# ---------------------------------------------------------------------------- the check


def check(text: str, base_dir: Path) -> None:
    """``spec_from_text`` succeeds or raises a well-formed ``SpecError``; nothing else."""
    try:
        attnc.spec_from_text(text, "fuzz.attn", base_dir=base_dir)
    except attnc.SpecError as err:
        check_error(err, text)
    # Any other exception propagates and fails the test with the mutated text as the example.


def check_error(err: attnc.SpecError, text: str) -> None:
    assert isinstance(err.message, str) and err.message.strip(), repr(err.message)
    rendered = str(err)  # must not raise
    assert err.message in rendered
    span = err.span
    if span is None:
        return
    src_text = span.source.text  # an error in an imported file points into that file
    if span.source.name == "fuzz.attn":
        assert src_text == text.removeprefix("\ufeff")  # a leading byte-order mark is not spec text
    n_lines = src_text.count("\n") + (0 if src_text.endswith("\n") else 1)
    assert 1 <= span.line <= n_lines + 1, (span.line, n_lines, err.message)
    assert span.col >= 1, (span.col, err.message)
    assert (span.end_line, span.end_col) >= (span.line, span.col), (span, err.message)
    assert rendered.startswith(f"{span.source.name}:{span.line}:{span.col}: error: "), rendered[:200]
    caret_line = rendered.split("\n")[2]  # split on \n only: the shown source line may hold \r or \f
    assert caret_line.strip(" ^") == "" and "^" in caret_line, rendered[:500]
    # The source line shown under the message is the line the span counts ('\n'-separated,
    # like the parser's line numbers), even when a comment holds \f, \v, \x85 or U+2028.
    lines = src_text.split("\n")
    want = lines[span.line - 1].rstrip("\r") if span.line <= len(lines) else ""
    shown = span.source.line(span.line).rstrip("\r")
    assert shown == want, (span.line, shown, want)


# ---------------------------------------------------------------------------- mutations


def _pos(draw, toks, extra=0):
    return draw(st.integers(0, max(0, len(toks) - 1 + extra)))


@st.composite
def token_mutation(draw, toks: list[str]) -> list[str]:
    toks = list(toks)
    op = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "bytes", "odd", "text", "deep"]))
    if not toks:
        toks = [""]
    if op == "delete":
        del toks[_pos(draw, toks)]
    elif op == "duplicate":
        k = _pos(draw, toks)
        toks.insert(k, toks[k])
    elif op == "swap":
        a, b = _pos(draw, toks), _pos(draw, toks)
        toks[a], toks[b] = toks[b], toks[a]
    elif op == "replace":
        toks[_pos(draw, toks)] = draw(st.sampled_from(POOL))
    elif op == "insert":
        toks.insert(_pos(draw, toks, 1), draw(st.sampled_from(POOL)))
    elif op == "bytes":
        raw = draw(st.binary(min_size=1, max_size=8))
        toks.insert(_pos(draw, toks, 1), raw.decode("latin-1"))
    elif op == "odd":
        toks.insert(_pos(draw, toks, 1), draw(st.sampled_from(ODD_CHARS)))
    elif op == "text":
        toks.insert(_pos(draw, toks, 1), draw(st.text(min_size=1, max_size=4)))
    else:  # replace a name or number with a deeply nested expression
        atoms = [k for k, t in enumerate(toks) if re.fullmatch(r"[A-Za-z_0-9.]+", t)]
        k = draw(st.sampled_from(atoms)) if atoms else _pos(draw, toks, 1)
        toks[k:k + 1] = [deep(draw(st.sampled_from(DEEP_KINDS)), draw(st.sampled_from(DEPTHS)))]
    return toks


@st.composite
def mutated_spec(draw) -> str:
    toks = draw(st.sampled_from(CORPUS_TOKENS))
    for _ in range(draw(st.integers(1, 4))):
        toks = draw(token_mutation(toks))
    return "".join(toks)


@st.composite
def line_mutated_spec(draw) -> str:
    """Whole-line edits: drop, repeat, swap, re-indent lines, or splice two specs together."""
    lines = draw(st.sampled_from(CORPUS)).split("\n")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "repeat", "swap", "indent", "dedent", "splice", "crlf", "tabs"]))
        k = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[k]
        elif op == "repeat":
            lines.insert(k, lines[k])
        elif op == "swap":
            m = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[m] = lines[m], lines[k]
        elif op == "indent":
            lines[k] = draw(st.sampled_from([" ", "  ", "   ", "    ", "\t", " \t", "        "])) + lines[k]
        elif op == "dedent":
            lines[k] = lines[k].lstrip(" \t")[: draw(st.integers(0, 200))]
        elif op == "splice":
            other = draw(st.sampled_from(CORPUS)).split("\n")
            a = draw(st.integers(0, len(other)))
            b = draw(st.integers(a, len(other)))
            lines[k:k] = other[a:b]
        elif op == "crlf":
            lines = [ln + "\r" for ln in lines]
        else:
            lines = [ln.replace("    ", "\t") for ln in lines]
        if not lines:
            lines = [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tests

COUNTS: dict[str, int] = {}
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BATCH = 4


@pytest.fixture
def base_dir(tmp_path):
    (tmp_path / "helpers.attn").write_text(HELPERS)
    return tmp_path


def test_corpus_is_valid(base_dir):
    """The fuzz corpus is made of valid specs, so mutations start from something meaningful."""
    assert len(LIBRARY_TEXTS) >= 10
    for text in CORPUS:
        spec = attnc.spec_from_text(text, "corpus.attn", base_dir=base_dir)
        assert spec.cascades


def _check_batches(strategy, examples: int, name: str, base_dir) -> None:
    """Check ``examples`` batches of ``BATCH`` specs drawn from ``strategy``; record the count."""
    count = 0

    @settings(max_examples=examples, **SETTINGS)
    @given(st.lists(strategy, min_size=BATCH, max_size=BATCH))
    def run(texts):
        nonlocal count
        for text in texts:
            check(text, base_dir)
            count += 1

    run()
    COUNTS[name] = count
    assert count >= examples * BATCH


def test_token_mutations(base_dir):
    _check_batches(mutated_spec(), _n(400), "token_mutations", base_dir)


def test_line_mutations(base_dir):
    _check_batches(line_mutated_spec(), _n(100), "line_mutations", base_dir)


DEEP_TEMPLATES = [
    "mask g = q_idx < kv_idx and {b}\n",
    "mask g = {i} < kv_idx\n",
    "score g = score + {f}\n",
    "score g(t: tensor[N_KV] int) = score + float({i})\n",
    "norm g:\n    m[i] = max(s[i, j] + {f} for j)\n    out[i] = sum(exp(s[i, j] - m[i]) * v[j] for j)\n",
    "attention g:\n    let x = {f}\n    score = score * x\n",
    "attention g(p: float = {f}):\n    score = score * p\n",
]


@st.composite
def deep_spec(draw) -> str:
    kind = draw(st.sampled_from(DEEP_KINDS))
    depth = draw(st.sampled_from(DEPTHS))
    expr = deep(kind, depth)
    template = draw(st.sampled_from(DEEP_TEMPLATES))
    return template.format(b=expr, i=expr, f=expr)


def test_deep_nesting(base_dir):
    count = 0
    examples = _n(100)

    @settings(max_examples=examples, **SETTINGS)
    @given(deep_spec())
    def run(text):
        nonlocal count
        check(text, base_dir)
        count += 1

    run()
    COUNTS["deep_nesting"] = count
    assert count >= min(examples, len(DEEP_KINDS) * len(DEPTHS) * len(DEEP_TEMPLATES))


@pytest.mark.parametrize("kind", DEEP_KINDS)
def test_deep_nesting_extremes(kind, base_dir):
    """The classic stack-killers, deterministically: 500 parentheses, 2000 prefixes, 3000 terms."""
    for depth in (500, 2000, 3000):
        expr = deep(kind, depth)
        for template in DEEP_TEMPLATES[:3]:
            check(template.format(b=expr, i=expr, f=expr), base_dir)


def test_long_definition_chain(base_dir):
    """1000 masks each defined by the next: deep inlining must not escape as a RecursionError."""
    n = 1000
    text = "".join(f"mask a{k} = a{k + 1}\n" for k in range(n)) + f"mask a{n} = q_idx >= kv_idx\n"
    check(text, base_dir)


# ---- random expressions in every position: mostly ill-typed, so the checker's error paths run

EXPR_ATOMS = [
    "s[i, j]", "v[j]", "m[i]", "e[i, j]", "z[i]", "x", "1.0", "2", "0", "-1", "0.5", "i", "j", "q_idx",
    "kv_idx", "n_kv", "n_q", "scale", "score", "True", "False", "h", "t[h]", "t[kv_idx]", "k", "causal",
    "sliding_window(k)", "softcap", "65536", "2147483647", "1e30", "s", "v", "m", "sum(v[j] for j)",
    "sum(e[i, j] * v[j] for j)", "max(s[i, j] for j)", "sum(e[i, j] for j)",
]
BINOPS = ["+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=", "and", "or"]
FUNCS1 = ["exp", "log", "abs", "relu", "floor", "float", "sigmoid", "tanh", "sqrt", "max", "sum"]


def _exprs():
    def extend(kids):
        return st.one_of(
            st.tuples(kids, st.sampled_from(BINOPS), kids).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(st.sampled_from(["-", "not ", "+"]), kids).map(lambda t: t[0] + t[1]),
            st.tuples(st.sampled_from(FUNCS1), kids).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(kids, kids).map(lambda t: f"max({t[0]}, {t[1]})"),
            st.tuples(kids, kids, kids).map(lambda t: f"clamp({t[0]}, {t[1]}, {t[2]})"),
            st.tuples(st.sampled_from(["sum", "sum", "max", "min"]), kids, st.sampled_from(["j", "j", "j", "i"]))
            .map(lambda t: f"{t[0]}({t[1]} for {t[2]})"),
            st.tuples(kids, kids, kids).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        )

    return st.recursive(st.sampled_from(EXPR_ATOMS), extend, max_leaves=8)


EXPRS = _exprs()
# Norm arguments are evaluated where the attention is: feed them per-pair values too.
ARG_EXPRS = st.recursive(
    st.sampled_from(["score", "kv_idx", "q_idx", "x", "1.0", "k", "t[h]", "n_kv", "2", "True", "s[i, j]"]),
    lambda kids: st.tuples(kids, st.sampled_from(["+", "-", "*", "/", "<"]), kids).map(lambda t: f"{t[0]} {t[1]} {t[2]}")
    | kids.map(lambda a: f"float({a})"),
    max_leaves=4,
)
_HEAD = "norm g(k: int = 4, t: tensor[H] float):\n    m[i] = max(s[i, j] for j)\n    e[i, j] = exp(s[i, j] - m[i])\n" \
        "    z[i] = sum(e[i, j] for j)\n"
_OUT = "    out[i] = sum(e[i, j] * v[j] for j) / z[i]\n"
_ATT = "attention g(k: int = 4, t: tensor[H] float):\n"
# One hole per template, everything around it valid, so the hole's own checks are reached.
EXPR_TEMPLATES = [
    "mask g(k: int = 4, t: tensor[N_KV] float) = {0}\n",
    "score g(k: int = 4, t: tensor[H] float) = {0}\n",
    _HEAD + "    let x = {0}\n" + _OUT,
    _HEAD + "    y[i] = {0}\n" + _OUT,
    _HEAD + "    p[i, j] = {0}\n" + _OUT,
    _HEAD + "    out[i] = {0}\n",
    _HEAD + "    out[i] = sum({0} for j)\n",
    _HEAD + "    out[i] = sum({0} * v[j] for j) / z[i]\n",
    _HEAD + _OUT + "    lse[i] = {0}\n",
    _ATT + "    let x = {0}\n    score = score * 0.5\n",
    _ATT + "    score = {0}\n",
    _ATT + "    mask = {0}\n",
    _ATT + "    norm = {1}\n",
    _ATT + "    let x = {0}\n    norm = {1}\n",
    "attention g(k: float = {0}):\n    norm = {1}\n",
    "score g(k: int, t: tensor[{0}] float) = score + t[0]\n",
]
NORM_CALLS = ["softmax", "sigmoid(bias={})", "relu(divisor={})", "clipped_softmax(zeta={})", "softmax_sink(t)",
              "none", "sigmoid({})", "softmax_off_by_one", "relu", "causal", "clipped_softmax(gamma={}, zeta=1.0)",
              "softmax_sink({})", "relu(divisor=x)", "sigmoid(x)"]


@st.composite
def random_expr_spec(draw) -> str:
    hole = draw(EXPRS)
    norm = draw(st.sampled_from(NORM_CALLS)).format(draw(st.one_of(ARG_EXPRS, EXPRS)))
    return draw(st.sampled_from(EXPR_TEMPLATES)).format(hole, norm)


def test_random_expressions(base_dir):
    count = 0
    examples = _n(500)

    @settings(max_examples=examples, **SETTINGS)
    @given(random_expr_spec())
    def run(text):
        nonlocal count
        check(text, base_dir)
        count += 1

    run()
    COUNTS["random_expressions"] = count
    assert count >= examples


# Crashes found by fuzzing and by hand, kept as fixed regression inputs: each must be accepted
# or rejected with a well-formed SpecError, like every fuzz input.
KNOWN_CRASHERS = {
    # AssertionError "not linear in v" from _weight_of_v: a hoisted sum over v inside a reduction
    "sum-of-sum-of-v": "norm a:\n    out[i] = sum(sum(v[j] for j) for j)\n",
    "max-of-sum-of-v": "norm a:\n    out[i] = sum(v[j] for j)\n    lse[i] = max(sum(v[j] for j) for j)\n",
    "let-sum-of-v-in-sum": "norm a:\n    let t = sum(v[j] for j)\n    out[i] = sum(t for j)\n",
    # OverflowError from simplify's float() folding of a constant product (2**1056)
    "constant-product-overflow": "score g = score + " + " * ".join(["65536"] * 66) + "\n",
    "constant-product-overflow-float": "score g = score + float(" + " * ".join(["65536"] * 66) + ")\n",
    # lark VisitError wrapping ValueError: int() of a literal over 4300 digits
    "5000-digit-integer": "mask g = q_idx < " + "9" * 5000 + "\n",
    # IRError from verify(): a norm argument that depends on the key index through score
    "norm-argument-uses-score": "attention a:\n    norm = relu(divisor=score)\n",
    "norm-argument-let-uses-score": "attention a:\n    let x = score\n    norm = relu(divisor=x)\n",
    # span line out of range: the end-of-file line is counted with str.splitlines
    "eof-line-after-form-feeds": "mask a = (q_idx # \x0c\x0c\x0c\x0c\x0c\x0c\n",
    # the diagnostic shows the wrong source line (str.splitlines splits at \x0c / U+2028)
    "form-feed-in-comment": "# note\x0c more\nmask g = q_idx < kv_idz\n",
    "line-separator-in-comment": "# note\u2028 more\nmask g = q_idx < kv_idz\n",
    # deep IR from expanding a polynomial (RecursionError, reported without a span)
    "polynomial-expansion": "mask g = q_idx < " + " * ".join(["(q_idx + kv_idx + b + h + n_q)"] * 8) + "\n",
}


@pytest.mark.parametrize("name", sorted(KNOWN_CRASHERS))
def test_known_crashers(name, base_dir):
    check(KNOWN_CRASHERS[name], base_dir)


def test_total_mutated_specs():
    """At least MIN_TOTAL mutated specs are checked by the tests above (runs last in the file)."""
    expected = {"token_mutations", "line_mutations", "deep_nesting", "random_expressions"}
    if set(COUNTS) != expected:
        pytest.skip(f"not every fuzz test ran to completion: {sorted(COUNTS)}")
    assert sum(COUNTS.values()) >= MIN_TOTAL, COUNTS
