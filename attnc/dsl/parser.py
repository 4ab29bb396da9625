"""Spec text → ``ast.Module``. The only module that touches lark.

Lark's LALR parser runs with an indentation post-lexer (below) and ``propagate_positions``; a
transformer turns the parse tree into frozen ``ast`` nodes with spans. Every lark error, and
every structural problem the grammar cannot express (too deep nesting, a positional argument
after a keyword one, an inconsistent dedent), becomes a ``SpecError`` pointing at the source.
"""

from __future__ import annotations

import re

from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.lark import PostLex

from . import ast
from .errors import Source, Span, SpecError

GRAMMAR_PATH = Path(__file__).with_name("attn.lark")

# Deeper trees than this are rejected before any recursive pass sees them, so no spec can
# exhaust Python's stack. Hand-written specs stay far below it.
MAX_NESTING = 120
FLOAT32_MAX = 3.4028234663852886e38  # float literals past it would be inf in a kernel

_OPEN = {"LPAR", "LSQB"}
_CLOSE = {"RPAR", "RSQB"}


class _Indenter(PostLex):
    """Python-style INDENT/DEDENT tokens from the leading whitespace after each newline."""

    always_accept = ("_NL",)
    TAB_WIDTH = 8

    def __init__(self):
        self.source: Source | None = None

    def process(self, stream):
        opened: list[Token] = []  # brackets not yet closed, innermost last
        levels = [0]
        last = None
        for tok in stream:
            last = tok
            if tok.type == "_NL":
                if opened:  # newlines inside brackets continue the line
                    continue
                yield tok
                # As in Python, a form feed resets the indentation count.
                indent_text = tok.value.rsplit("\n", 1)[-1].rsplit("\f", 1)[-1]
                indent = indent_text.count(" ") + indent_text.count("\t") * self.TAB_WIDTH
                if indent > levels[-1]:
                    levels.append(indent)
                    yield Token.new_borrow_pos("_INDENT", indent_text, tok)
                else:
                    while indent < levels[-1]:
                        levels.pop()
                        yield Token.new_borrow_pos("_DEDENT", indent_text, tok)
                    if indent != levels[-1]:
                        span = Span(self.source, tok.end_line, 1, tok.end_line, max(2, tok.end_column))
                        raise SpecError(
                            f"this line is indented to column {indent + 1}, which matches no "
                            f"enclosing block (blocks here start at columns "
                            f"{', '.join(str(l + 1) for l in levels)})",
                            span,
                        )
                continue
            if tok.type in _OPEN:
                opened.append(tok)
            elif tok.type in _CLOSE and opened:
                opened.pop()
            yield tok
        if opened:
            tok = opened[-1]
            raise SpecError(f"`{tok.value}` is never closed", _tok_span(self.source, tok))
        while len(levels) > 1:
            levels.pop()
            yield Token("_DEDENT", "", line=getattr(last, "end_line", 1), column=getattr(last, "end_column", 1))


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(
        GRAMMAR_PATH.read_text(),
        parser="lalr",
        postlex=_Indenter(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


def _span(src: Source, meta) -> Span | None:
    if getattr(meta, "empty", True):
        return None
    return Span(src, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(src: Source, tok: Token) -> Span:
    line = tok.line or 1
    col = tok.column or 1
    end_line = tok.end_line or line
    end_col = tok.end_column or col + max(1, len(tok.value))
    return Span(src, line, col, end_line, end_col)


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, src: Source):
        super().__init__()
        self.src = src

    def sp(self, meta):
        return _span(self.src, meta)

    def ts(self, tok):
        return _tok_span(self.src, tok)

    # ---- top level
    def start(self, meta, items):
        return ast.Module(tuple(i for i in items if i is not None), path=self.src.name)

    def lib_source(self, meta, c):
        return _LIBRARY

    def file_source(self, meta, c):
        return c[0].value[1:-1], self.ts(c[0])

    def import_stmt(self, meta, c):
        source = None if c[0] is _LIBRARY else c[0][0]
        names = tuple(ast.Name(self.bind(t, "definition"), self.ts(t)) for t in c[1:])
        return ast.Import(source, names, self.sp(meta), None if c[0] is _LIBRARY else c[0][1])

    def bind(self, tok, what: str) -> str:
        if tok.value in KEYWORDS:
            raise SpecError(f"`{tok.value}` is a keyword and cannot name a {what}", self.ts(tok))
        return tok.value

    def _def(self, kind, meta, name, params, body):
        self.bind(name, kind)
        return ast.Def(kind, name.value, params or (), body, self.sp(meta), self.ts(name))

    def mask_short(self, meta, c):
        name, params, value = c
        return self._def("mask", meta, name, params, (ast.Assign("mask", value, value.span, self.ts(name)),))

    def score_short(self, meta, c):
        name, params, value = c
        return self._def("score", meta, name, params, (ast.Assign("score", value, value.span, self.ts(name)),))

    def mask_block(self, meta, c):
        return self._def("mask", meta, *c)

    def score_block(self, meta, c):
        return self._def("score", meta, *c)

    def norm_def(self, meta, c):
        return self._def("norm", meta, *c)

    def attention_def(self, meta, c):
        return self._def("attention", meta, *c)

    def body(self, meta, stmts):
        return tuple(stmts)

    def let_stmt(self, meta, c):
        return ast.Let(self.bind(c[0], "let"), c[1], self.sp(meta), self.ts(c[0]))

    def assign_stmt(self, meta, c):
        return ast.Assign(c[0].value, c[1], self.sp(meta), self.ts(c[0]))

    def stage_stmt(self, meta, c):
        name, *idx, value = c
        return ast.StageAssign(
            self.bind(name, "stage"), tuple(t.value for t in idx), value, self.sp(meta), self.ts(name).to(self.ts(idx[-1]))
        )

    def grid_stmt(self, meta, c):
        *names, dilated = c
        names = [x for x in names if x is not None]
        axes = [t for t in names if isinstance(t, Token) and t.type == "NAME"]
        sizes = [x for x in names if not isinstance(x, Token)]
        for t in axes:
            self.bind(t, "grid axis")
        return ast.Grid(tuple(t.value for t in axes), tuple(sizes), dilated, self.sp(meta),
                        tuple(self.ts(t) for t in axes))

    def grid_dilated(self, meta, c):
        return tuple(x for x in c if x is not None)

    def params(self, meta, c):
        return tuple(p for p in c if p is not None)

    def param(self, meta, c):
        return ast.Param(self.bind(c[0], "parameter"), c[1], c[2], self.sp(meta))

    def scalar_type(self, meta, c):
        return ast.ScalarType(c[0].value, self.sp(meta))

    def tensor_type(self, meta, c):
        *dims, elem = c
        return ast.TensorType(tuple(dims), elem.value if elem is not None else "float", self.sp(meta))

    # ---- expressions
    def ifexp(self, meta, c):
        then, cond, other = c
        return ast.IfExp(cond, then, other, self.sp(meta))

    def or_op(self, meta, c):
        return ast.BoolOp("or", c[0], c[1], self.sp(meta))

    def and_op(self, meta, c):
        return ast.BoolOp("and", c[0], c[1], self.sp(meta))

    def not_op(self, meta, c):
        return ast.Not(c[0], self.sp(meta))

    def comparison(self, meta, c):
        return ast.Compare(tuple(t.value for t in c[1::2]), tuple(c[0::2]), self.sp(meta))

    def binop(self, meta, c):
        return ast.BinOp(c[1].value, c[0], c[2], self.sp(meta))

    def unary(self, meta, c):
        return ast.Unary(c[0].value, c[1], self.sp(meta))

    def call(self, meta, c):
        name, args = c
        pos, kws = [], []
        for a in args or ():
            if isinstance(a, ast.Keyword):
                kws.append(a)
            elif kws:
                raise SpecError("positional argument follows a keyword argument", a.span)
            else:
                pos.append(a)
        return ast.Call(name.value, tuple(pos), tuple(kws), self.sp(meta), self.ts(name))

    def args(self, meta, c):
        return [a for a in c if a is not None]

    def kwarg(self, meta, c):
        return ast.Keyword(c[0].value, c[1], self.sp(meta))

    def reduction(self, meta, c):
        op, body, var = c
        return ast.Reduce(op.value, body, var.value, self.sp(meta), self.ts(var))

    def partial_reduction(self, meta, c):
        op, body, var, rel, bound = c
        return ast.Reduce(op.value, body, var.value, self.sp(meta), self.ts(var), rel.value, bound.value,
                          self.ts(bound))

    def index(self, meta, c):
        base, *idx = c
        return ast.Index(base.value, tuple(idx), self.sp(meta), self.ts(base))

    def name(self, meta, c):
        return ast.Name(c[0].value, self.sp(meta))

    def int_lit(self, meta, c):
        text = c[0].value
        base = {"x": 16, "b": 2}.get(text[1:2].lower(), 10)
        digits = (text[2:] if base != 10 else text).lstrip("0") or "0"
        if len(digits) > (10 if base == 10 else 8 if base == 16 else 32):  # keeps int()'s limit out of reach
            raise SpecError(f"the integer {text[:12]}... does not fit in 32 bits (kernels index with int32)", self.sp(meta))
        return ast.Num(int(digits, base), True, self.sp(meta))

    def float_lit(self, meta, c):
        value = float(c[0].value)
        if not abs(value) <= FLOAT32_MAX:
            raise SpecError(f"the number {c[0].value} is too large for a float: kernels compute in float32, "
                            f"whose largest value is {FLOAT32_MAX:.7g}", self.sp(meta))
        return ast.Num(value, False, self.sp(meta))

    def true_lit(self, meta, c):
        return ast.Bool(True, self.sp(meta))

    def false_lit(self, meta, c):
        return ast.Bool(False, self.sp(meta))


_LIBRARY = object()

# Words of the grammar; the contextual lexer would accept some of them as names, but a spec
# that binds one would be unreadable (and unprintable), so binding sites reject them.
KEYWORDS = frozenset({
    "mask", "score", "norm", "attention", "let", "from", "import", "for", "if", "else", "and", "or",
    "not", "int", "float", "bool", "tensor", "library", "True", "False", "grid", "dilated",
})

_FRIENDLY = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": 'a quoted path ("file.attn")',
    "_NL": "the end of the line",
    "_INDENT": "an indented block",
    "_DEDENT": "the end of the block",
    "$END": "the end of the file",
    "COMP_OP": "a comparison",
    "ADD_OP": "`+` or `-`",
    "MUL_OP": "`*`, `/`, `//` or `%`",
    "POW_OP": "`**`",
    "SCALAR_TYPE": "a type (int, float, bool)",
    "TRUE": "True",
    "FALSE": "False",
    "LIBRARY": "library",
}


def _describe_terminal(name: str) -> str:
    if name in _FRIENDLY:
        return _FRIENDLY[name]
    for t in _lark().terminals:
        if t.name == name and t.pattern.type == "str":
            return f"`{t.pattern.value}`"
    return name.lower()


def _describe_token(tok: Token) -> str:
    """What was found, phrased to follow the word "unexpected"."""
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "_INDENT":
        return "indentation"
    if tok.type == "_DEDENT":
        return "end of the indented block"
    return f"`{tok.value}`"


# The rules that are one level of an expression (an operation, a call, an index); statements,
# argument lists and literals around them are not counted, so `s + 1 + … + 1` with 120 `+` is
# 120 levels, as docs/language.md says.
_OPERATION_RULES = frozenset({"ifexp", "or_expr", "or_op", "and_expr", "and_op", "not_expr", "not_op", "comparison",
                              "bit_or", "bit_xor", "bit_and", "shift", "binop", "unary", "power", "postfix", "call",
                              "reduction", "index"})


def _max_depth(tree: Tree) -> int:
    deepest = 0
    stack = [(tree, 0)]
    while stack:
        node, d = stack.pop()
        d += node.data in _OPERATION_RULES
        deepest = max(deepest, d)
        if d > MAX_NESTING:
            return d
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, d))
    return deepest


def _deepest_span(src: Source, tree: Tree) -> Span | None:
    stack = [(tree, 0)]
    while stack:
        node, d = stack.pop()
        d += node.data in _OPERATION_RULES
        if d > MAX_NESTING:
            return _span(src, node.meta)
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, d))
    return None


def _last_line(src: Source) -> int:
    """The last line that has text (the line a missing ending is reported on)."""
    lines = src.text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return len(lines)


def _syntax_error(src: Source, err: UnexpectedInput) -> SpecError:
    if isinstance(err, UnexpectedCharacters):
        ch = src.text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(src.text) else "?"
        if ch == "\r":
            what = "carriage return (lines must end with \\n)"
        elif ch.isprintable():
            what = f"character {ch!r}"
        else:
            what = f"character U+{ord(ch):04X}"
        span = Span(src, err.line, err.column, err.line, err.column + 1)
        return SpecError(f"unexpected {what}", span)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        # The parser's own view of what may come next (err.expected is the lexer state's).
        try:
            accepted = err.interactive_parser.accepts()
        except Exception:  # older lark, or no interactive parser: fall back to the lexer's set
            accepted = err.expected
        expected = sorted({_describe_terminal(t) for t in accepted if not t.startswith("__")})
        if accepted == {"_INDENT"}:
            if tok.type == "$END" or not tok.line:  # just past the `:` on the last line
                line = _last_line(src)
                col = len(src.line(line).rstrip()) + 1
            else:  # a newline/dedent sits right after the `:`; anything else starts the next line
                line, col = tok.line, tok.column
            return SpecError("expected an indented block after `:`", Span(src, line, col, line, col + 1))
        if tok.type == "$END" or not tok.line:
            last_line = _last_line(src)
            span = Span(src, last_line, len(src.line(last_line)) + 1, last_line, len(src.line(last_line)) + 2)
        elif tok.type == "_INDENT":
            # The indented line itself, from its first column to its first character.
            line = tok.end_line or tok.line
            span = Span(src, line, 1, line, max(2, tok.end_column or 2))
        elif tok.type in ("_NL", "_DEDENT"):
            # Point at the end of the line that ended too early, not at the next line.
            line = tok.line
            span = Span(src, line, tok.column, line, tok.column + 1)
        else:
            span = _tok_span(src, tok)
        msg = f"unexpected {_describe_token(tok)}"
        before = src.line(tok.line)[: max(tok.column - 1, 0)] if tok.line else ""
        if tok.value == "if" and re.search(r"\bfor\s+[A-Za-z_]\w*\s*$", before):
            return SpecError(
                "a reduction has no filter: it runs over every key the mask keeps. Put the condition in "
                "its body (`sum(x[i, j] if j < q_idx else 0.0 for j)`) or in the attention's mask; a sum "
                "over part of the row for each pair (as stick-breaking needs) is a partial sum, "
                "`c[i, j] = sum(x[i, k] for k > j)`", span)
        if expected and len(expected) <= 8:
            msg += "; expected " + (expected[0] if len(expected) == 1 else "one of " + ", ".join(expected))
        return SpecError(msg, span)
    if isinstance(err, UnexpectedEOF):
        last_line = _last_line(src)
        return SpecError("unexpected end of file", Span(src, last_line, 1, last_line, 2))
    return SpecError(str(err).splitlines()[0], Span(src, 1, 1, 1, 2))


def _first_code_line(text: str) -> tuple[int, str] | None:
    for k, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip(" \t\f\r")
        if stripped and not stripped.startswith("#"):
            return k, line
        if stripped.startswith("#"):
            return None  # after a comment line the indenter sees (and reports) the indentation
    return None


def parse(text: str, filename: str = "<string>") -> ast.Module:
    """Parse spec text into an ``ast.Module``; raises ``SpecError`` on any problem."""
    if not isinstance(text, str):
        raise TypeError(f"spec text must be a str, got {type(text).__name__}")
    src = Source(filename, text)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        col = text.index("\x00") - (text.rfind("\n", 0, text.index("\x00")) + 1) + 1
        raise SpecError("unexpected NUL character", Span(src, line, col, line, col + 1))
    first = _first_code_line(text)
    if first is not None and first[1][:1] in (" ", "\t"):
        width = len(first[1]) - len(first[1].lstrip(" \t\f"))
        raise SpecError("unexpected indentation", Span(src, first[0], 1, first[0], width + 1))
    body = text if text.endswith("\n") else text + "\n"
    parser = _lark()
    indenter = parser.options.postlex
    indenter.source = src
    try:
        tree = parser.parse(body)
    except SpecError:
        raise
    except UnexpectedInput as err:
        raise _syntax_error(src, err) from None
    except LarkError as err:  # any other lark failure is still the user's text
        raise SpecError(f"cannot parse this spec ({type(err).__name__})", Span(src, 1, 1, 1, 2)) from None
    if _max_depth(tree) > MAX_NESTING:
        raise SpecError(
            f"expression nested too deeply (more than {MAX_NESTING} levels); lets are inlined, so a stage "
            f"cannot compute a deeper one either: shorten the chain of operations",
            _deepest_span(src, tree),
        )
    try:
        return _ToAst(src).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, SpecError):
            raise err.orig_exc from None
        raise
