"""A catalogue of bad specs: what each one must be rejected with, and where.

Each entry is a spec text, a fragment that must appear in ``SpecError.message``, and the
``(line, col)`` the error's span must start at (1-based, the offending token). ``files`` are
written next to the spec (into a temporary ``base_dir``) for import tests; ``error_file`` names
the file the error is reported in when it is not the spec itself (an error inside an imported
file points into that file).

The expectations are what a good compiler should say, not a transcript of what this one says
today: an entry that fails points at a compiler bug (see the ``# BUG:`` comments).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BadSpec:
    id: str
    text: str
    fragment: str
    line: int
    col: int
    files: dict[str, str] = field(default_factory=dict)
    error_file: str | None = None  # relative to base_dir; None: the spec itself

    @property
    def pos(self) -> tuple[int, int]:
        return (self.line, self.col)


B = BadSpec

_NORM_HEAD = "norm a:\n    m[i] = max(s[i, j] for j)\n"

BAD_SPECS: list[BadSpec] = [
    # ------------------------------------------------------------------ syntax
    B("syntax-missing-colon-norm", "norm a\n    out[i] = sum(v[j] for j)\n", "`:`", 1, 7),
    B("syntax-missing-colon-param", "mask a(x int) = q_idx < x\n", "unexpected `int`", 1, 10),
    B("syntax-missing-equals", "mask g q_idx < kv_idx\n", "unexpected `q_idx`", 1, 8),
    B("syntax-inconsistent-dedent", "mask a:\n    let x = 1\n  mask = q_idx < x\n", "matches no enclosing block", 3, 1),
    B("syntax-inconsistent-dedent-tabs", "mask a:\n\tlet x = 1\n    mask = q_idx < x\n", "matches no enclosing block", 3, 1),
    # BUG: points at the end of line 2 (2:14) instead of the over-indented line 3.
    B("syntax-unexpected-indent-in-body", "mask a:\n    let x = 1\n        mask = q_idx < x\n", "indent", 3, 1),
    # BUG: points at the end of line 1 (1:14) instead of the indented line 2.
    B("syntax-unexpected-indent-top-level", "mask a = True\n  mask b = True\n", "indent", 2, 1),
    # BUG: points at the comment on line 1 (1:1) instead of the indented line 2.
    B("syntax-unexpected-indent-after-comment", "# header\n  mask a = True\n", "indent", 2, 1),
    B("syntax-double-operator", "mask g = q_idx < < kv_idx\n", "unexpected `<`", 1, 18),
    B("syntax-stray-close-paren", "mask g = q_idx < kv_idx)\n", "unexpected `)`", 1, 24),
    # BUG: says only "unexpected the end of the file" at 1:25; it should name the `(` that is
    # never closed and point at it.
    B("syntax-unclosed-paren", "mask g = (q_idx < kv_idx\n", "`(`", 1, 10),
    B("syntax-unclosed-bracket-in-stage", _NORM_HEAD + "    out[i = sum(v[j] for j)\n", "unexpected `=`", 3, 11),
    B("syntax-unexpected-character", "mask g = q_idx ≤ kv_idx\n", "unexpected character '≤'", 1, 16),
    B("syntax-unexpected-dollar", "score g = score $ 2\n", "unexpected character '$'", 1, 17),
    B("syntax-nul-character", "mask g = q_idx\x00 < kv_idx\n", "NUL", 1, 15),
    B("syntax-lone-carriage-return", "mask g = q_idx\r< kv_idx\n", "carriage return", 1, 15),
    B("syntax-double-dot-number", "score g = score + 1.5.5\n", "unexpected `.5`", 1, 22),
    B("syntax-empty-body-at-eof", "norm a:\n", "indented block", 1, 8),
    # BUG: says "expected the end of the line" (the line did end); the body is missing.
    B("syntax-empty-body-before-next-def", "mask a:\nmask b = True\n", "indented block", 2, 1),
    B("syntax-reduction-without-variable", _NORM_HEAD + "    out[i] = sum(v[j] for)\n", "unexpected `)`", 3, 26),
    B("syntax-if-without-else", "score g = score if q_idx < 1\n", "`else`", 1, 29),
    B("syntax-empty-subscript", "norm a:\n    out[] = sum(v[j] for j)\n", "unexpected `]`", 2, 9),
    B("syntax-unknown-type", "mask a(x: string) = True\n", "unexpected `string`", 1, 11),
    B("syntax-import-nothing", "from library import\n", "expected a name", 1, 20),
    # BUG: the line number comes from str.splitlines, which also splits at \f, \v, \x85, U+2028
    # inside comments: this reports line 5 of a 2-line file.
    B("syntax-eof-line-with-form-feeds-in-comment", "# a\x0c b\x0c c\x0c d\nnorm a:\n", "indented block", 2, 8),
    # ------------------------------------------------------------------ names
    B("unknown-name-suggestion", "mask g = q_idx < kv_idz\n", "did you mean `kv_idx`", 1, 18),
    B("unknown-function-suggestion", "score g = exq(score)\n", "did you mean `exp`", 1, 11),
    B("unknown-norm-suggestion", "attention a:\n    norm = softmx\n", "did you mean `softmax`", 2, 12),
    B("unknown-keyword-argument", "mask g = sliding_window(windw=3)\n", "has no parameter `windw` (did you mean `window`?)", 1, 25),
    B("unknown-keyword-argument-user-def", "mask w(x: int) = q_idx < x\nmask g = w(y=1)\n", "has no parameter `y`", 2, 12),
    B("unknown-name-in-norm", _NORM_HEAD + "    out[i] = sum(exp(s[i, j] - mm[i]) * v[j] for j)\n", "unknown name `mm`", 3, 32),
    B("unknown-name-in-default", "score a(x: int, y: int = x) = score\n", "unknown name `x`", 1, 26),
    # BUG: the rendered source line is wrong (Source.line uses str.splitlines, which splits at
    # the form feed in the comment), so the caret sits under " more" instead of line 2.
    B("unknown-name-after-form-feed-comment", "# note\x0c more\nmask g = q_idx < kv_idz\n", "did you mean `kv_idx`", 2, 18),
    # ------------------------------------------------------------------ types
    B("bool-in-arithmetic", "score a = score + (q_idx < kv_idx)\n", "is a bool; `+` needs numbers", 1, 20),
    B("bool-in-comparison", "mask a = (q_idx < 1) < 2\n", "compares numbers", 1, 11),
    B("bool-to-int-parameter", "mask g = sliding_window(True)\n", "declared int, but `True` is a bool", 1, 25),
    B("bool-as-score", "score a = q_idx < kv_idx\n", "a score must be a number", 1, 11),
    B("number-as-mask", "mask a = q_idx + 1\n", "a mask must be a bool", 1, 10),
    B("number-in-and", "mask a = q_idx < 1 and 2\n", "`and` needs a bool", 1, 24),
    B("number-in-not", "mask a = not kv_idx\n", "`not` needs a bool", 1, 14),
    B("number-as-if-condition", "score a = score if 1 else 0.0\n", "the condition of `if` needs a bool", 1, 20),
    B("if-branches-differ", "score a = 1.0 if q_idx < 1 else True\n", "branches of `if` differ", 1, 11),
    B("floordiv-on-float", "score a = score + 1.0 // 2\n", "`//` works on integers", 1, 19),
    B("mod-on-float", "score a = score % 2\n", "`%` works on integers", 1, 11),
    B("bitand-on-float", "score a = score + (score & 1)\n", "`&` works on integers, but `score` is a float", 1, 20),
    B("xor-of-int-and-bool", "mask a = (q_idx ^ (kv_idx < 3)) == 0\n", "`^` works on integers, but `kv_idx < 3` is a bool",
      1, 20),
    B("shift-on-float", "score a = score + (1.5 << 2)\n", "floor a float first", 1, 20),
    B("shift-count-negative", "mask a = (q_idx >> -1) == 0\n", "shift count must be in 0..31", 1, 20),
    B("shift-count-too-large", "mask a = (kv_idx << 32) > 0\n", "shift count must be in 0..31", 1, 21),
    B("shift-overflows-int32", "mask a = kv_idx < 1 << 31\n", "does not fit in 32 bits", 1, 19),
    B("hex-literal-over-int32", "mask a = (q_idx & 0x1FFFFFFFF) == 0\n", "does not fit in 32 bits", 1, 19),
    B("invert-a-bool", "mask a = ~(q_idx < kv_idx)\n", "write `not q_idx < kv_idx`", 1, 10),
    B("invert-a-float", "score a = ~score\n", "`~` inverts the bits of an integer", 1, 11),
    B("float-tensor-index", "score a(t: tensor[N_KV] float) = score + t[kv_idx / 2]\n", "tensor indices must be integers", 1, 44),
    B("float-tensor-dimension", "score a(t: tensor[1.5] float) = score\n", "dimension must be an integer", 1, 19),
    B("default-type-mismatch", "score a(x: int = 1.5) = score\n", "declared int, but `1.5` is a float", 1, 18),
    B("integer-literal-over-32-bits", "mask g = q_idx < 4294967296\n", "does not fit in 32 bits", 1, 18),
    B("integer-literal-just-over-int32", "mask g = kv_idx < 2147483648\n", "does not fit in 32 bits", 1, 19),
    B("float-literal-overflow", "score g = score + 1e999\n", "too large for a float", 1, 19),
    # ------------------------------------------------------------------ tensors
    B("tensor-rank-mismatch-index", "score a(t: tensor[H, N_KV] float) = score + t[h]\n", "has rank 2 but is indexed with 1 index", 1, 45),
    B("tensor-rank-mismatch-argument", "score a(t: tensor[H] float) = relative_bias(t)\n", "rank 2, but `t` has rank 1", 1, 45),
    B("tensor-element-type-mismatch", "score a(t: tensor[H, N_Q] int) = relative_bias(t)\n", "holds float elements, but `t` holds int", 1, 48),
    B("tensor-not-indexed", "score a(t: tensor[H] float) = score + t\n", "is a tensor of rank 1", 1, 39),
    B("tensor-parameter-with-default", "score a(t: tensor[H] float = 1) = score\n", "cannot have a default", 1, 30),
    B("scalar-passed-for-tensor", "score a(x: float) = relative_bias(x)\n", "pass a tensor parameter's name", 1, 35),
    # ------------------------------------------------------------------ reductions and norms
    B("reduction-over-i", "norm a:\n    m[i] = max(s[i, j] for i)\n    out[i] = sum(v[j] for j)\n", "over the key index j, not `i`", 2, 28),
    B("reduction-in-score", "score a = score - max(score for j)\n", "belongs in a norm", 1, 19),
    B("reduction-in-mask", "mask a = sum(1 for j) > 0\n", "belongs in a norm", 1, 10),
    B("reduction-in-attention-let", "attention a:\n    let x = sum(score for j)\n", "belongs in a norm", 2, 13),
    B("reduction-written-as-call", "score a = max(score)\n", "a reduction is written `max(expr for j)`", 1, 11),
    B("unknown-reduction", "norm a:\n    m[i] = prod(s[i, j] for j)\n    out[i] = sum(v[j] for j)\n", "unknown reduction `prod`", 2, 12),
    B("norm-without-out", _NORM_HEAD, "defines no out[i]", 1, 6),
    B("out-not-weighted-sum", "norm a:\n    out[i] = sum(s[i, j] for j)\n", "weighted sum of the values", 2, 14),
    B("v-under-exp", "norm a:\n    out[i] = sum(exp(v[j]) for j)\n", "not used with `exp`", 2, 22),
    B("v-times-v", "norm a:\n    out[i] = sum(v[j] * v[j] for j)\n", "not linear in the values", 2, 18),
    B("v-plus-number", "norm a:\n    out[i] = sum(v[j] + 1.0 for j)\n", "cannot add the number `1.0` to a value vector", 2, 18),
    B("v-divides", "norm a:\n    out[i] = sum(1.0 / v[j] for j)\n", "cannot divide by a value vector", 2, 24),
    B("v-outside-sum", "norm a:\n    out[i] = v[j]\n", "only appear inside sum", 2, 14),
    B("v-in-pair-stage", "norm a:\n    e[i, j] = v[j] * 2.0\n    out[i] = sum(e[i, j] for j)\n", "only appear inside sum", 2, 15),
    B("v-in-max", "norm a:\n    out[i] = max(v[j] for j)\n", "only appear inside sum", 2, 18),
    B("v-chosen-by-if", "norm a:\n    out[i] = sum((v[j] if True else v[j]) for j)\n", "cannot be chosen with `if`", 2, 19),
    # BUG: escapes as AssertionError("not linear in v: Ref(stage='_acc1', ...)") from _weight_of_v;
    # a stage holding a sum over v already says "... cannot be used inside another reduction".
    B("v-sum-inside-sum", "norm a:\n    out[i] = sum(sum(v[j] for j) for j)\n", "inside another reduction", 2, 18),
    # BUG: the same AssertionError, reached through a let.
    B("v-let-inside-sum", "norm a:\n    let t = sum(v[j] for j)\n    out[i] = sum(t for j)\n", "inside another reduction", 3, 18),
    B("v-stage-inside-reduction", "norm a:\n    out[i] = sum(v[j] for j)\n    x[i] = max(out[i] for j)\n",
      "inside another reduction", 3, 16),
    B("lse-is-a-vector", "norm a:\n    out[i] = sum(v[j] for j)\n    lse[i] = sum(v[j] for j)\n", "lse[i] must be a number", 3, 14),
    B("row-stage-depends-on-j", "norm a:\n    out[i] = sum(v[j] for j)\n    lse[i] = s[i, j]\n", "depends on the key index j", 3, 14),
    B("s-indexed-wrongly", "norm a:\n    out[i] = sum(s[j, i] * v[j] for j)\n", "write s[i, j]", 2, 18),
    B("s-unindexed", "norm a:\n    out[i] = sum(s * v[j] for j)\n", "write `s` with its indices", 2, 18),
    B("stage-over-j-only", "norm a:\n    x[j] = 1.0\n    out[i] = sum(v[j] for j)\n", "not [j]", 2, 5),
    B("out-per-pair", "norm a:\n    out[i, j] = s[i, j]\n", "out is per query", 2, 5),
    B("norm-line-not-indexed", "norm a:\n    out = sum(v[j] for j)\n", "norm lines are indexed", 2, 5),
    B("duplicate-stage", "norm a:\n    out[i] = sum(v[j] for j)\n    out[i] = sum(v[j] for j)\n", "already defined in this norm", 3, 5),
    # ------------------------------------------------------------------ definitions and calls
    B("cyclic-definitions", "mask foo = bar\nmask bar = foo\n", "defined in terms of itself", 2, 12),
    B("self-referential-score", "score f = f * 2.0\n", "defined in terms of itself", 1, 11),
    # BUG: `b` is the built-in batch index, so `mask b` is silently shadowed and this reports
    # "a mask must be a bool ... `b` is an int" at 1:10; a definition must not take a built-in name.
    B("cyclic-definitions-builtin-name", "mask a = b\nmask b = a\n", "built-in", 2, 6),
    B("duplicate-definition", "mask foo = q_idx < 1\nmask foo = q_idx < 2\n", "already defined on line 1", 2, 6),
    B("definition-clashes-with-import", "from library import causal\nmask causal = True\n", "already imported on line 1", 2, 6),
    B("duplicate-import", "from library import causal, causal\n", "already imported", 1, 29),
    B("duplicate-parameter", "mask foo(x: int, x: int) = q_idx < x\n", "declared twice", 1, 18),
    B("duplicate-let", "mask a:\n    let x = 1\n    let x = 2\n    mask = q_idx < x\n", "already defined", 3, 9),
    B("too-many-arguments", "mask w(x: int) = q_idx < x\nmask g = w(1, 2)\n", "`w` takes 1 argument but 2", 2, 10),
    B("too-many-arguments-norm", "attention a:\n    norm = softmax(1)\n", "`softmax` takes 0 arguments but 1", 2, 12),
    B("too-many-arguments-builtin", "score a = exp(score, 1.0)\n", "`exp` takes 1 argument, got 2", 1, 11),
    B("too-few-arguments-builtin", "score a = clamp(score, 1.0)\n", "`clamp` takes 3 arguments, got 2", 1, 11),
    B("keyword-argument-to-builtin", "score a = exp(x=score)\n", "takes no keyword arguments", 1, 15),
    B("missing-argument", "mask g = sliding_window()\n", "missing argument `window`", 1, 10),
    B("missing-tensor-argument-norm", "attention a:\n    norm = softmax_sink\n", "missing argument `sink`", 2, 12),
    B("argument-given-twice", "mask g = sliding_window(window=3, window=4)\n", "given twice", 1, 35),
    B("positional-after-keyword", "mask g = sliding_window(window=3, 4)\n", "positional argument follows a keyword argument", 1, 35),
    B("call-a-let", "mask a:\n    let x = 1\n    mask = x(1) > 0\n", "not a function", 3, 12),
    B("index-a-let", "mask a:\n    let x = 1\n    mask = x[0] > 0\n", "cannot be indexed", 3, 12),
    B("index-a-definition", "mask a = causal[0]\n", "call it with parentheses", 1, 10),
    B("call-an-attention", "attention a:\n    score = score\nscore g = a\n", "an attention cannot be called", 3, 11),
    B("mask-def-without-mask-line", "mask a:\n    let x = 1\n", "has no `mask = ...` line", 1, 6),
    B("mask-assigned-twice", "attention a:\n    mask = causal\n    mask = causal\n", "assigned twice", 3, 5),
    B("norm-assigned-twice", "attention a:\n    norm = softmax\n    norm = softmax\n", "assigned twice", 3, 5),
    B("attention-plain-assignment", "attention a:\n    x = 1\n", "use `let x = ...`", 2, 5),
    B("stage-in-attention", "attention a:\n    m[i] = 1\n", "belong in a norm", 2, 5),
    # ------------------------------------------------------------------ masks, scores and norms mixed up
    B("mask-uses-score", "mask g = q_idx < score\n", "a mask cannot use `score`", 1, 18),
    B("mask-calls-score-function", "mask a = softcap > 0.0\n", "is a score", 1, 10),
    B("attention-mask-depends-on-score", "attention a:\n    mask = score > 0.0\n", "depends on `score`", 2, 12),
    B("norm-names-a-mask", "attention a:\n    norm = causal\n", "is a mask, not a norm", 2, 12),
    B("norm-names-an-expression", "attention a:\n    norm = 1 + 2\n", "names a norm", 2, 12),
    B("norm-used-as-value", "score a = softmax\n", "is a norm", 1, 11),
    B("default-uses-score", "score a(x: float = score) = score\n", "not available here", 1, 20),
    B("dimension-uses-score", "score a(t: tensor[score] float) = score\n", "not available here", 1, 19),
    # ------------------------------------------------------------------ reserved names
    B("reserved-let-builtin", "mask g:\n    let kv_idx = 1\n    mask = True\n", "built-in name", 2, 9),
    B("reserved-let-underscore", "mask g:\n    let _x = 1\n    mask = True\n", "reserved for the compiler", 2, 9),
    B("reserved-parameter-builtin", "mask g(q_idx: int) = True\n", "built-in name", 1, 8),
    B("reserved-parameter-function", "score g(exp: float) = score\n", "built-in name", 1, 9),
    B("reserved-stage-qk", "norm a:\n    qk[i, j] = s[i, j]\n    out[i] = sum(v[j] for j)\n", "reserved name", 2, 5),
    B("reserved-stage-underscore", "norm a:\n    _acc1[i] = 1.0\n    out[i] = sum(v[j] for j)\n", "reserved for the compiler", 2, 5),
    # BUG: definitions may take built-in and reserved names today (all three are accepted).
    B("reserved-definition-builtin", "mask q_idx = True\n", "built-in", 1, 6),
    B("reserved-definition-function", "score exp = score\n", "built-in", 1, 7),
    B("reserved-definition-underscore", "mask _private = True\n", "reserved for the compiler", 1, 6),
    # ------------------------------------------------------------------ imports
    B("import-missing-library-name", "from library import causl\n", "did you mean `causal`", 1, 21),
    # BUG (position): the span is the whole import statement (1:1, running onto line 2); it
    # should point at the path string.
    B("import-missing-file", 'from "nope.attn" import x\n', "cannot read spec file", 1, 6),
    B("import-missing-name-from-file", 'from "helpers.attn" import bnd\n', "defines no `bnd` (did you mean `band`?)", 1, 28,
      files={"helpers.attn": "mask band = abs(q_idx - kv_idx) <= 4\n"}),
    B("import-error-inside-imported-file", 'from "helpers.attn" import band\nmask g = band\n', "did you mean `kv_idx`", 1, 26,
      files={"helpers.attn": "mask band = q_idx - 4 <= kv_idz\n"}, error_file="helpers.attn"),
    # BUG (position): as for a missing file, the span is the whole import statement in b.attn.
    B("import-cycle", 'from "a.attn" import x\nmask g = x\n', "import cycle", 1, 6,
      files={"a.attn": 'from "b.attn" import y\nmask x = y\n', "b.attn": 'from "a.attn" import x\nmask y = True\n'},
      error_file="b.attn"),
    # ------------------------------------------------------------------ limits
    # ------------------------------------------------------------------ found in review
    B("exponential-let-chain", "mask m:\n    let a0 = q_idx\n" + "".join(f"    let a{k} = a{k-1} + a{k-1}\n" for k in range(1, 31))
      + "    mask = q_idx < a30\n", "expands to", 1, 1),
    B("exponential-mask-chain", "mask a0 = q_idx < kv_idx\n" + "".join(f"mask a{k} = a{k-1} and a{k-1}\n" for k in range(1, 19)),
      "expands to", 11, 1),
    B("constant-division-by-zero", "score g = score + 1.0 / 0.0\n", "not a finite number", 1, 19),
    B("constant-log-of-negative", "score g = score + log(-1.0)\n", "not a finite number", 1, 19),
    B("tensor-dimension-not-positive", "score g(t: tensor[-3] float) = score + t[0]\n", "at least 1", 1, 19),
    B("nesting-too-deep", "mask g = " + "not " * 200 + "True\n", "nested too deeply", 1, 490),
    # BUG: lark VisitError (ValueError: Exceeds the limit (4300 digits) for integer string
    # conversion) escapes from the parser's int_lit.
    B("integer-literal-5000-digits", "mask g = q_idx < " + "9" * 5000 + "\n", "does not fit in 32 bits", 1, 18),
    # ------------------------------------------------------------------ feature maps (issue 17)
    B("feature-map-reads-kv-idx", "attention a:\n    q = q * float(kv_idx)\n", "sees only its element `q`", 2, 19),
    B("feature-map-reads-score", "attention a:\n    k = k + score\n", "belongs to the score", 2, 13),
    B("feature-map-key-reads-h", "attention a:\n    k = k * float(h + 1)\n", "not h", 2, 19),
    B("feature-map-q-in-k-map", "attention a:\n    k = k * q\n", "its own feature map", 2, 13),
    B("feature-map-through-let", "attention a:\n    let w = float(kv_idx)\n    q = q * w\n", "reads kv_idx", 3, 9),
    B("feature-map-outside-attention", "score g:\n    q = relu(q)\n    score = score\n", "belongs in an attention body", 2, 5),
    B("feature-map-bool", "attention a:\n    q = q > 0.0\n", "gives a number", 2, 9),
    B("q-in-a-score", "score g = score + q\n", "feature map", 1, 19),
    B("q-in-a-norm", "norm a:\n    out[i] = sum(q * v[j] for j)\n", "feature map", 2, 18),
    # ------------------------------------------------------------------ what the language offers instead (issue 17)
    B("filtered-reduction", "norm a:\n    z[i] = sum(s[i, j] for j if j < i)\n    out[i] = sum(s[i, j] * v[j] for j)\n",
      "a reduction has no filter", 2, 30),
    B("partial-reduction-over-k", "norm a:\n    c[i, j] = sum(s[i, k] for k)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "cumulative or partial sum", 2, 31),
    B("reduction-over-d", "norm a:\n    z[i] = sum(q[i, d] for d)\n    out[i] = sum(s[i, j] * v[j] for j)\n",
      "feature map", 2, 28),
    # ------------------------------------------------------------------ several score maps (issue 17)
    B("second-map-not-declared", "norm two:\n    out[i] = sum(s2[i, j] * v[j] for j)\n\nattention a:\n    norm = two\n",
      "add one, e.g. `score2 = ", 2, 18),
    B("second-map-unindexed", "norm two:\n    out[i] = sum(s2 * v[j] for j)\n", "s2[i, j]", 2, 18),
    B("second-map-outside-attention", "score g:\n    score2 = score\n    score = score\n",
      "belongs in an attention body", 2, 5),
    B("second-map-as-stage", "norm a:\n    s2[i, j] = s[i, j]\n    out[i] = sum(s2[i, j] * v[j] for j)\n",
      "reserved", 2, 5),
    B("second-map-never-read", "attention a:\n    score2 = dot(0, 4)\n", "never uses it", 2, 5),
    B("dot-slice-arity", "attention a:\n    score = dot(4)\n", "dot(lo, hi)", 2, 13),
    B("dot-slice-float", "attention a:\n    score = dot(0, head_dim / 2)\n", "must be an integer", 2, 20),
    B("dot-slice-per-pair", "attention a:\n    score = dot(0, q_idx)\n", "same for every pair", 2, 20),
    B("dot-slice-in-mask", "attention a:\n    mask = dot(0, 4) > 0.0\n", "depends on `score`", 2, 12),
    # ------------------------------------------------------------------ partial sums (issue 17)
    B("partial-max", "norm a:\n    c[i, j] = max(s[i, k] for k > j)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "a partial reduction is a sum", 2, 15),
    B("partial-bound-not-j", "norm a:\n    c[i, j] = sum(s[i, k] for k > i)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "for k > j", 2, 35),
    B("partial-equal", "norm a:\n    c[i, j] = sum(s[i, k] for k == j)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "not `==`", 2, 15),
    B("partial-body-reads-j", "norm a:\n    c[i, j] = sum(s[i, j] for k > j)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "write s[i, k]", 2, 19),
    B("partial-body-reads-a-row", "norm a:\n    m[i] = max(s[i, j] for j)\n    e[i, j] = exp(s[i, j] - m[i])\n"
      "    c[i, j] = sum(e[i, k] for k < j)\n    out[i] = sum(c[i, j] * v[j] for j)\n", "per-query value `m`", 4, 19),
    B("partial-both-directions", "norm a:\n    c[i, j] = sum(s[i, k] for k < j)\n    d2[i, j] = sum(s[i, k] for k > j)\n"
      "    out[i] = sum((c[i, j] + d2[i, j]) * v[j] for j)\n", "from the first key", 3, 16),
    B("partial-name-taken", "norm a:\n    c[i, j] = sum(s[i, h] for h > j)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "`h` is taken", 2, 31),
    B("partial-in-a-score", "score g = score + sum(score for k > j)\n", "belongs in a norm", 1, 19),
    B("partial-key-order", "norm a:\n    c[i, j] = sum(s[i, k] for j < k)\n    out[i] = sum(c[i, j] * v[j] for j)\n",
      "write `for k > j`", 2, 31),
    B("partial-on-a-grid", "norm sb:\n    c[i, j] = sum(s[i, k] for k > j)\n    out[i] = sum(c[i, j] * v[j] for j)\n\n"
      "attention a(width: int = 4):\n    grid (y, x) = (n_kv // width, width)\n    norm = sb\n",
      "on a token grid is not supported yet", 6, 5),
]
