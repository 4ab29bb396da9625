"""Cascade + pass plan → the Triton source of a forward kernel.

Python decides every line here; ``forward.py.jinja`` only places them. One program handles a
query tile of one (batch, head); each pass of the plan is one loop over the key tiles. Inside a
loop the stages run in cascade order: pair maps become tile variables, j-reductions of the pass
update their running state — rescaled by the factor the pass analysis proved — and per-query
maps are recomputed where the pass reads them. Nothing here knows a normalization by name.

What keeps the key loop lean (issue 15; ``docs/performance.md`` measures each from the SASS):
the ``ALIGNED``/``EVEN_D`` fast path (``specialize_lines``: vector loads, cp.async, pipelining);
scale's sign folded into q, so a max over raw scores is a max over q·k (``fold_sign``); a mask
applied once, as q·k = −inf, where every reduction provably gets its identity there
(``absorbs``); boundary tiles tested against the rows' exact intervals, congruences in two
instructions (``tile_keep``); per-row parts of expressions computed before the loop (``hoist``);
tensor reads without clamps where the index is proven in range (``_load``); the empty-row rule
from the intervals where they decide it (``counts_keys``).
"""

from __future__ import annotations

import functools
import re

from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..dsl.functions import helpers as function_helpers
from ..ir import nodes as n
from ..ir.bounds import tile_bounds
from ..ir.names import derived_ident, kernel_ident, tensor_arg_names
from ..ir.passes import PassPlan, pass_scans, plan_passes
from ..ir.printer import cascade_text
from ..ir.ranges import absorbs, index_in_range, weight_range
from .exprs import LOG2E_TEXT, ExprPrinter, is_raw_score, qk_only_in_raw_score

CODEGEN_VERSION = "17"
KERNEL_NAME = "attnc_fwd"
_TEMPLATE_DIR = Path(__file__).parent


_RUNTIME_SIZES = ("n_q", "n_kv", "n_heads", "n_kv_heads", "head_dim", "head_dim_v", "num_pages", "n_splits", "split_len")


def unspecialized(argnames) -> list[str]:
    """Kernel arguments Triton must not specialize on (sizes, strides, runtime parameters), so
    new lengths, strides or parameter values never recompile."""
    return [a for a in argnames if a.startswith(("u_", "stride")) or a in _RUNTIME_SIZES]


FP16_MAX = 65504.0
# a reduction's value over no key, as kernel text
_IDENTITY = {"sum": "0.0", "contract": "0.0", "max": 'float("-inf")', "min": 'float("inf")'}


@dataclass(frozen=True)
class Specialization:
    """What a generated source depends on besides the cascade (all of it is in the cache key)."""

    dtype: str  # "float32" | "float16" | "bfloat16"
    interpret: bool  # Triton's interpreter (CPU) instead of a compiled kernel

    @property
    def upcast(self) -> bool:
        # fp32 dots for fp32 inputs, and for bf16 in the interpreter, whose bf16 tl.dot is wrong.
        return self.dtype == "float32" or (self.interpret and self.dtype == "bfloat16")

    @property
    def hardware_tanh(self) -> bool:
        # tanh.approx's 2^-11 relative error is within a 16-bit kernel's own rounding; the
        # interpreter cannot run inline assembly
        return self.dtype != "float32" and not self.interpret


@dataclass(frozen=True)
class KernelSource:
    text: str
    kernel_name: str
    tensor_params: tuple[n.ParamSpec, ...]  # in argument order
    scalar_params: tuple[n.ParamSpec, ...]
    has_lse: bool
    runtime_tiles: bool = False  # takes the runtime tile classification (``runtime/sparsity.py``)
    exact: bool = False  # has an EXACT build, launched after the plain one for rows it marks (huge logits)
    split: tuple[int, int] | None = None  # split-KV builds (SPLIT, MERGE): (Part's row width, vector sums)
    split_problem: str | None = None  # why there are none


def _exact_loops(text: str) -> str:
    """A copy of key or query loops with exact exponents: their ``for`` comments say so, which
    keeps them apart from the loops that run for almost every tile (``runtime/perf.py``)."""
    return re.sub(r"(:  # )(full|boundary) ", r"\1exact: \2 ", text)


def prune_helpers(text: str) -> str:
    """``text`` without the built-in functions' helpers (``dsl/functions.py``) that nothing in it
    calls: every kernel module is rendered with all of them, and keeps those its code uses."""
    table = function_helpers()
    while True:
        for name, source in table:
            block = "\n\n\n" + source
            if block in text and text.count(f"{name}(") == source.count(f"{name}("):
                text = text.replace(block, "", 1).replace(f', "{name}"', "", 1)
                break
        else:
            return text


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["exact_loops"] = _exact_loops
    env.globals["function_helpers"] = function_helpers()  # the built-ins' own (dsl/functions.py)
    return env


class _Builder:
    fold_sign = False  # the forward folds scale's sign into q (generate() decides)
    absorbing = False  # the tile being generated applies its mask to q·k (``_body``)

    def __init__(self, c: n.Cascade, plan: PassPlan):
        self.c = c
        self.plan = plan
        self.stages = {st.name: st for st in c.stages}
        self.ranks = {st.name: st.ranks for st in c.stages}
        self.names = {st.name: (st.name if isinstance(st.expr, n.Dot) or st.name == "keep" else kernel_ident(st.name, "s"))
                      for st in c.stages}  # stages only: parameters print as kernel_ident(name)
        self.printer = ExprPrinter(self.ranks, self.names, self._load, {st.name: st.expr for st in c.stages})
        self.pass_of = {r.stage: r.pass_index for r in plan.reductions}

    # -- tensor parameter reads: indices clamped into range, as in the reference
    tile_masked = True  # the tile being printed may have key columns past n_kv (``_load``)

    def _load(self, e: n.Load, ctx: str) -> str:
        """A tensor read, its indices clamped into range as the language says — unless an index is
        proven in range for every valid (b, h, i, j) (``ir/ranges.py: index_in_range``): then it is
        used as it is, with the padded rows' (and, on boundary tiles, key columns') positions held
        at the last valid one (``offs_m_safe``, ``offs_n_safe``: once per row or column, not per
        element), so no read leaves the tensor."""
        t = kernel_ident(e.tensor)
        dims = next(p.dims for p in self.c.params if p.name == e.tensor)
        parts = []
        for k, ix in enumerate(e.indices):
            if dims[k] != n.ANY_DIM and index_in_range(ix, dims[k]):
                saved = self.printer.rows, self.printer.cols
                self.printer.rows = self.safe_rows
                self.printer.cols = "offs_n_safe" if self.tile_masked else "offs_n"
                try:
                    parts.append(f"({self.printer(ix, ctx)}) * {derived_ident(t, f'stride{k}')}")
                finally:
                    self.printer.rows, self.printer.cols = saved
            else:
                parts.append(f"tl.minimum(tl.maximum({self.printer(ix, ctx)}, 0), {derived_ident(t, f'size{k}')} - 1) * "
                             f"{derived_ident(t, f'stride{k}')}")
        value = f"tl.load({t} + {' + '.join(parts)})"
        if e.type == n.INT:
            return f"{value}.to(tl.int32)"
        if e.type == n.BOOL:
            return f"({value} != 0)"
        return f"{value}.to(tl.float32)"

    def expr(self, e: n.Expr, ctx: str) -> str:
        return self.printer(e, ctx)

    safe_rows = "offs_m_safe"  # the clamped row positions tensor reads use (``_load``)

    def feature_map(self, side: str, ok: str) -> str:
        """The line mapping the loaded ``q_tile`` / ``k_tile`` through its feature map (none: ""),
        in float32, then back to the tile's type for the dot; padding (``ok`` false) is 0, as
        loaded, whatever the map gives there."""
        m = self.c.stages[0].expr.map(side)
        if m is None:
            return ""
        tile = f"{side}_tile"
        return f"{tile} = tl.where({ok}, {self.feature_expr(side, m, ok)}, 0.0).to({tile}.dtype)  # the feature map of {side}"

    def feature_expr(self, side: str, m: n.Expr, ok: str) -> str:
        """``m``, an expression over the element of q (k), on the whole ``q_tile`` (``k_tile``). The
        k side prints over the tile's rows: its key index takes the query index's place (a map
        reads no other index of the pair)."""
        tile = f"{side}_tile"
        if side == "k":
            m = n.transform(m, lambda x: n.Var("i", x.type) if isinstance(x, n.Var) and x.name == "j" else x)
        saved = self.printer.rows, self.printer.hoisted, self.printer.features, self.safe_rows
        if side == "k":
            self.printer.rows = "offs_n"
            self.safe_rows = "offs_n_safe" if "col_ok" in ok else "offs_n"
        self.printer.hoisted, self.printer.features = {}, {side: f"{tile}.to(tl.float32)"}
        try:
            return self.printer(m, "vec")
        finally:
            self.printer.rows, self.printer.hoisted, self.printer.features, self.safe_rows = saved

    # -- several Dot stages (qk, qk2, ...): slices of the head dimension
    def operand(self, dot: n.Stage, side: str) -> str:
        """The tile a Dot stage multiplies on ``side``: ``q_tile`` (``k_tile``) itself, or for a
        sliced one its copy with the other features zeroed (``slice_lines``)."""
        return f"{side}_{dot.name}" if dot.expr.sliced else f"{side}_tile"

    def slice_lines(self, side: str, dots=None) -> list[str]:
        """``q_<dot> = q_tile`` on the features ``lo <= d < hi`` of each sliced Dot stage, 0
        elsewhere (one operand carries the slice; the other is used whole)."""
        lines = []
        for st in dots if dots is not None else self.c.dots:
            if not st.expr.sliced:
                continue
            cond = " & ".join([f"(offs_d >= {self.expr(st.expr.lo, 'row')})"] * (st.expr.lo is not None) +
                              [f"(offs_d < {self.expr(st.expr.hi, 'row')})"] * (st.expr.hi is not None))
            tile = f"{side}_tile"
            lines.append(f"{self.operand(st, side)} = tl.where(({cond})[None, :], {tile}, 0.0).to({tile}.dtype)  "
                         f"# the features {st.name} sums")
        return lines

    def dot_lines(self, names, precision: str) -> list[str]:
        return [f"{self.names[st.name]} = tl.dot({self.operand(st, 'q')}, tl.trans(k_tile){precision})  "
                f"# [BLOCK_M, BLOCK_D] x [BLOCK_D, BLOCK_N]" for st in self.c.dots if st.name in names]

    def full(self, e: n.Expr, ranks: tuple[str, ...]) -> str:
        """``e`` printed at the full shape of ``ranks``: a value that does not vary over a rank
        (a constant score, a mask on the query alone, `z[i] = 1.0`) prints as a scalar or a
        [BLOCK_M, 1] / [1, BLOCK_N] slice, which reductions over axis 1 and tl.dot cannot take."""
        pair = ranks == n.PAIR
        text = self.expr(e, "pair" if pair else "vec" if e.type == n.VEC else "row")
        if set(ranks) <= n.free_ranks(e, self.ranks) or e.type == n.VEC:
            return text
        shape = "[BLOCK_M, BLOCK_N]" if pair else "[BLOCK_M]"
        if e.type == n.BOOL:
            return f"(({text}) | tl.zeros({shape}, dtype=tl.int1))"
        return f"(({text}) + tl.zeros({shape}, dtype={'tl.int32' if e.type == n.INT else 'tl.float32'}))"

    # -- work done once per loop instead of once per tile
    def hoist(self, exprs, vary: str) -> list[str]:
        """Lines computing, once, the sub-expressions of ``exprs`` that vary only along ``vary``
        ("i": the query rows, for loops over key tiles; "j": the keys, for the dK/dV kernel's
        loop over query tiles) and do some work (tensor reads, arithmetic); the loop bodies then
        read them by name (``ExprPrinter.hoisted``). A mask's per-row window bounds, say, are
        computed per query tile, not per key tile — the compiler cannot move them out of the loop
        itself, past the loop's barriers."""
        found: list[n.Expr] = []
        seen: set[int] = set()

        def visit(e: n.Expr) -> None:
            if id(e) in seen:
                return
            seen.add(id(e))
            if n.free_ranks(e, self.ranks) == {vary} and self._hoistable(e):
                if e not in self.printer.hoisted and e not in found:
                    found.append(e)
                return
            for kid in n.children(e):
                visit(kid)

        for e in exprs:
            visit(e)
        lines = []
        for e in found:
            name = f"inv_{len(self.printer.hoisted)}"
            lines.append(f"{name} = {self.printer(e, 'pair')}")
            self.printer.hoisted = {**self.printer.hoisted, e: name}
        return lines

    @staticmethod
    def _hoistable(e: n.Expr) -> bool:
        if isinstance(e, (n.Var, n.Param, n.Const)):  # nothing to save
            return False
        return not any(isinstance(x, (n.Ref, n.Running, n.Dot, n.ValueRow, n.Reduce, n.Contract)) for x in n.walk(e))

    def loop_exprs(self) -> list[n.Expr]:
        """Every expression the key loops print: the mask, the full tiles' residual atoms, the
        pair stages and the reductions' bodies."""
        out = [st.expr for st in self.c.stages[1:] if st.ranks == n.PAIR or st.is_reduction]
        return out + list(self.bounds.full_residual)

    # -- which stages a pass needs
    def _needed_in_pass(self, k: int) -> set[str]:
        need: set[str] = set()
        todo = [r.stage for r in self.plan.in_pass(k)]
        while todo:
            name = todo.pop()
            if name in need:
                continue
            need.add(name)
            for ref in n.refs(self.stages[name].expr):
                st = self.stages[ref]
                if st.is_reduction and self.pass_of[ref] != k:
                    continue  # complete from an earlier pass: a plain variable
                todo.append(ref)
        need.add("keep") if "keep" in self.stages else None
        return need

    def pass_block(self, k: int) -> dict:
        reductions = {r.stage: r for r in self.plan.in_pass(k)}
        init = []
        for name, r in reductions.items():
            var = self.names[name]
            if r.op == "contract":
                init.append(f"{var} = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)")
            else:
                init.append(f"{var} = tl.full([BLOCK_M], {_IDENTITY[r.op]}, dtype=tl.float32)")
        summary = ", ".join(
            f"{r.stage} ({r.op}{', rescaled' if r.rescale is not None else ''})" for r in reductions.values()
        )
        loads_v = any(r.op == "contract" for r in reductions.values())
        # the tile's score s is computed whether read or not (``_body``), and with it its products
        dots = self.dot_lines({"qk"} | self._needed_in_pass(k) | n.refs(self.stages["s"].expr), self.dot_precision)
        self.scans = pass_scans(self.c, self.plan, k)
        init += [f"{derived_ident(self.names[name], 'run')} = tl.zeros([BLOCK_M], dtype=tl.float32)  # the partial "
                 f"sum's value over the tiles visited" for name in self.scans]
        descending = bool(self.scans) and self.stages[self.scans[0]].expr.descending
        return {"index": k, "summary": summary, "init": init, "loads_v": loads_v, "dots": dots,
                "segments": self.segments(descending) if self.scans else self.segments(),
                "body": self._body(k, reductions, masked=True), "full_body": self._body(k, reductions, masked=False)}

    def _body(self, k: int, reductions: dict, masked: bool) -> list[str]:
        """One key tile of pass ``k``: on a boundary tile (``masked``) the whole mask and the key
        range are evaluated; on a full tile only the residual atoms the bounds cannot decide."""
        self.factors: dict[str, str] = {}
        need = self._needed_in_pass(k)
        olds = sorted({x.stage for r in reductions.values() if r.rescale is not None
                       for x in n.walk(r.rescale) if isinstance(x, n.Running) and x.when == "old"})
        body = [f"{derived_ident(self.names[name], 'old')} = {self.names[name]}" for name in olds]
        self.tile_masked = masked
        lines, keep = self.tile_keep(masked)
        body += lines
        self.keep = keep
        keep_at = len(body)
        self.absorbing = keep is not None and self.absorbs(reductions)
        if self.absorbing:
            # The mask, once: q·k is −inf on the dropped pairs, and every reduction of the pass
            # is proven to get its identity there (ir/ranges.py: absorbs) — instead of a select
            # per reduction, whose mask the registers would hold twice. A running max that is
            # still −inf (no kept key yet) is read as 0 by the pair values (exp(−inf − 0) = 0).
            body.append('qk = tl.where(keep, qk, float("-inf"))')
            self.keep = None
            extrema = [st.name for st in self.c.stages
                       if isinstance(st.expr, n.Reduce) and st.expr.op in ("max", "min") and st.name in need]
            self.printer.pair_overrides = {name: derived_ident(self.names[name], "safe") for name in extrema}
            for name in extrema:
                if name not in reductions:  # complete from an earlier pass
                    body.append(self._safe_line(name))
        for st in self.c.stages[1:]:
            if (st.name not in need and st.name not in ("s",)) or isinstance(st.expr, n.Dot):
                continue
            var = self.names[st.name]
            if st.name == "keep":
                continue  # placed first, below
            if st.name in reductions:
                body += self._update(st, reductions[st.name])
            elif st.is_reduction:
                continue
            elif st.is_scan:
                body += self.scan_lines(st, lambda x: self._kept(x, "0.0"))
            else:
                body.append(f"{var} = {self.full(st.expr, st.ranks)}")
        if keep is not None:
            body.insert(keep_at, f"keep = {keep}")
        self.printer.pair_overrides = {}
        self.tile_masked = True
        if k == 1 and self.counts_keys:
            body.append("n_kept += tl.sum(keep.to(tl.int32), 1)" if keep is not None else "n_kept += BLOCK_N")
        return body

    def scan_lines(self, st: n.Stage, kept) -> list[str]:
        """A partial sum on a key tile: its body at the kept pairs (``kept``: text → text, 0 at the
        others), summed within the tile in the pass's key order (``tl.cumsum``), plus the tiles
        visited before (the running value, then advanced by the tile's total)."""
        var, scan = self.names[st.name], st.expr
        part, run = derived_ident(var, "part"), derived_ident(var, "run")
        lines = [f"{part} = {kept(self.full(scan.body, n.PAIR))}",
                 f"{var} = tl.cumsum({part}, 1{', reverse=True' if scan.descending else ''}) + {run}[:, None]"
                 f"  # sum_{{k {scan.rel} j}}"]
        if not scan.inclusive:
            lines.append(f"{var} = {var} - {part}")
        lines.append(f"{run} += tl.sum({part}, 1)")
        return lines

    def absorbs(self, reductions: dict) -> bool:
        """Whether a tile of this pass may apply its mask by setting q·k to −inf (see ``_body``):
        the score is the raw one, scale folded positive (``fold_sign``), and every reduction of
        the pass gets its identity at a dropped pair."""
        return self.fold_sign and not self.scans and all(absorbs(self.c, self.stages[name].expr) for name in reductions)

    def _safe_line(self, name: str) -> str:
        var = self.names[name]
        fill = 'float("-inf")' if self.stages[name].expr.op == "max" else 'float("inf")'
        return f"{derived_ident(var, 'safe')} = tl.where({var} == {fill}, 0.0, {var})"

    @property
    def interval_tests(self) -> bool:
        """Whether tiles test each row's exact key interval [lo_r, hi_r) (and the congruences
        opened by the bounds, ``congruence_lines``) instead of evaluating the mask: one clause
        of constraints, conditions and congruences (``ir/bounds.py``)."""
        b = self.bounds
        return len(b.clauses) == 1 and b.clauses[0].exact_ends and not b.runtime

    def tile_keep(self, masked: bool) -> tuple[list[str], str | None]:
        """(lines, the keep expression) of a key tile: a boundary tile (``masked``) tests the rows'
        intervals relative to the tile — int32 row offsets against the constant 0..BLOCK_N-1, two
        compares per element (absolute offsets let LLVM widen them to 64-bit compares) — and the
        congruences, or evaluates the mask; a full tile only the residual atoms (congruences in
        their two-instruction form)."""
        cl = self.bounds.clauses[0]
        if masked and self.interval_tests:
            lines = ["lo_rel = lo_r32 - start_n", "hi_rel = hi_r32 - start_n"]
            keep = ["(rel_n[None, :] >= lo_rel[:, None]) & (rel_n[None, :] < hi_rel[:, None])"]
            for k in range(len(cl.congruences)):
                lines += self.congruence_lines(k)
                keep.append(f"cg_keep_{k}")
            return lines, " & ".join(keep)
        if masked:
            mask = self.stages["keep"].expr if "keep" in self.stages else None
            return [], "col_ok[None, :]" + (f" & {self.full(mask, n.PAIR)}" if mask is not None else "")
        residual = self.bounds.full_residual
        if not residual:
            return [], None
        lines, parts = [], []
        for atom in residual:
            if self.interval_tests and atom in cl.congruence_atoms:
                k = cl.congruence_atoms.index(atom)
                lines += self.congruence_lines(k)
                parts.append(f"cg_keep_{k}")
            else:
                parts.append(self.full(atom, n.PAIR))
        return lines, " & ".join(parts)

    def congruence_lines(self, k: int) -> list[str]:
        """Congruence k of the clause on a tile: j ≡ t (mod mm) (mm = |m|; mm = 0 keeps j = t), with
        the rows' t mod mm from ``_clause_lines``. Per element one multiply-add and one unsigned
        compare (Lemire's divisibility test: for x < 2^16 and 1 < d < 2^16, d | x iff
        (x·⌈2^32/d⌉ mod 2^32) < ⌈2^32/d⌉): x = rel + (mm − u), u the row's offset of its kept
        keys within the tile, for mm < BLOCK_N; for a larger mm (or 0) at most one key of the tile
        is kept, rel = u, tested as divisibility of rel + BLOCK_N − u by BLOCK_N (a power of two)."""
        c = f"cg_{k}"
        return [
            f"{c}_u = tl.where({c}_mm > 0, {c}_t - (start_n % tl.maximum({c}_mm, 1)), {c}_t - start_n)",
            f"{c}_u = tl.where(({c}_mm > 0) & ({c}_u < 0), {c}_u + {c}_mm, {c}_u)",
            f"{c}_in = ({c}_u >= 0) & ({c}_u < BLOCK_N)",
            f"{c}_c = tl.where({c}_small, {c}_cm, tl.where({c}_in, 4294967296 // BLOCK_N, 1)).to(tl.uint32)",
            f"{c}_w = tl.where({c}_small, {c}_mm - {c}_u, tl.where({c}_in, BLOCK_N - {c}_u, 1)).to(tl.uint32)",
            f"{c}_wc = {c}_w * {c}_c",
            f"{c}_lim = {c}_c - 1",
            f"cg_keep_{k} = (rel_u[None, :] * {c}_c[:, None] + {c}_wc[:, None]) <= {c}_lim[:, None]",
        ]

    @property
    def counts_keys(self) -> bool:
        """Whether the key loops count each row's kept keys (the empty-row rule needs to know
        which rows kept none): not when the rows' intervals are the mask, nor without a mask —
        then the intervals, or n_kv, say it once, before the loops."""
        return self.bounds.masked and not self.bounds.exact_rows

    def has_key(self) -> str:
        """The epilogue's per-row "kept at least one key"."""
        if self.counts_keys:
            return "n_kept > 0"
        if not self.bounds.masked:
            return "tl.zeros([BLOCK_M], dtype=tl.int32) + n_kv > 0"
        count = len(self.bounds.clauses)
        return "row_has_key" if count == 1 else " | ".join(f"row_has_key_{k}" for k in range(1, count + 1))

    def _raw(self, e: n.Expr) -> bool:
        """Whether ``e`` is the raw score scale·qk, directly or as a stage holding it."""
        if isinstance(e, n.Ref) and e.stage in self.stages and self.stages[e.stage].ranks == n.PAIR:
            e = self.stages[e.stage].expr
        return is_raw_score(e)

    def _kept(self, x: str, fill: str) -> str:
        return x if self.keep is None else f"tl.where(keep, {x}, {fill})"

    def _update(self, st: n.Stage, r) -> list[str]:
        var = self.names[st.name]
        lines = []
        fac = None
        if r.rescale is not None:
            text = self.expr(r.rescale, "row")
            fac = self.factors.get(text)
            if fac is None:  # reductions rescaled alike (z and acc in softmax) share one factor
                fac = self.factors[text] = f"fac{len(self.factors) + 1}"
                # A running input that has seen no kept key is ±inf on both sides: the factor is
                # NaN, but the state it scales is still the identity, so 0 is as good as any value.
                lines.append(f"{fac} = {text}")
                lines.append(f"{fac} = tl.where({fac} == {fac}, {fac}, 0.0)")
        if isinstance(st.expr, n.Contract):
            lines.append(f"p = {self._kept(self.full(st.expr.weight, n.PAIR), '0.0')}")
            scaled = f"{var} * {fac}[:, None]" if fac else var
            lo, hi = weight_range(self.c, st.expr.weight)
            if self.fp16_dot and max(-lo, hi) > FP16_MAX:
                # weights fp16 cannot hold (ReLU, linear, user norms): the dot runs on fp32
                # operands (tf32 on GPUs), not on p rounded to inf
                dot = "tl.dot(p, v_tile.to(tl.float32))"
            else:
                dot = f"tl.dot(p.to(v_tile.dtype), v_tile{self.dot_precision})"
            lines.append(f"{var} = {scaled} + {dot}  # [BLOCK_M, BLOCK_N] x [BLOCK_N, BLOCK_DV]")
            return lines
        body = self.full(st.expr.body, n.PAIR)
        op = st.expr.op
        if op in ("max", "min") and self.fold_sign and self._raw(st.expr.body):
            # max_j |scale|·qk = |scale|·max_j qk (a multiply by |scale| >= 0 is monotone, also
            # after rounding): one compare per element, not a multiply and a compare
            fill = 'float("-inf")' if op == "max" else 'float("inf")'
            red = "tl.max" if op == "max" else "tl.min"
            comb = "tl.maximum" if op == "max" else "tl.minimum"
            shifted = f"{var} + {fac}" if fac else var
            lines.append(f"{var}_tile = {red}({self._kept('qk', fill)}, 1)")
            lines.append(f"{var}_tile = tl.where({var}_tile == {fill}, {fill}, {var}_tile * scale_pos)  # an empty row stays {fill[7:-2]}")
            lines.append(f"{var} = {comb}({shifted}, {var}_tile)")
            if self.absorbing:
                lines.append(self._safe_line(st.name))
            return lines
        if op == "sum":
            lines.append(f"{var} = {var + ' * ' + fac if fac else var} + tl.sum({self._kept(body, '0.0')}, 1)")
        else:
            fill = 'float("-inf")' if op == "max" else 'float("inf")'
            red = "tl.max" if op == "max" else "tl.min"
            comb = "tl.maximum" if op == "max" else "tl.minimum"
            shifted = f"{var} + {fac}" if fac else var
            lines.append(f"{var} = {comb}({shifted}, {red}({self._kept(body, fill)}, 1))")
            if self.absorbing:
                lines.append(self._safe_line(st.name))
        return lines

    def key_range(self) -> list[str]:
        """Scalar lines computing the key tiles this query tile visits (see ``ir/bounds.py``);
        ``segments()`` names the loops over them."""
        clauses = self.bounds.clauses
        if self.bounds.runtime:  # this query tile's row of the runtime classification
            return ["tile_row = TileList + off_b * stride_tb + off_h * stride_th + pid_m * stride_tm",
                    "n_part = tl.load(tile_row)",
                    "n_full = tl.load(tile_row + 1)"]
        if not self.bounds.bounded:  # int32 tensors, as the loops below have always seen
            return [
                "lo = 0", "hi = n_kv", "full_lo = 0", "full_hi = n_kv",
                "lo = tl.minimum(tl.maximum(lo, 0), n_kv).to(tl.int32)",
                "hi = tl.maximum(tl.minimum(hi, n_kv), 0).to(tl.int32)",
                "full_lo = tl.minimum(tl.maximum(full_lo, 0), n_kv).to(tl.int32)",
                "full_hi = tl.maximum(tl.minimum(full_hi, n_kv), 0).to(tl.int32)",
            ] + _tile_lines("")
        lines = ["rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)", "rows_ok = rows < n_q"]
        if len(clauses) == 1:
            return lines + self._clause_lines(clauses[0], "", full=True) + _tile_lines("")
        for k, clause in enumerate(clauses, 1):
            lines += self._clause_lines(clause, f"_{k}", full=clause.interval)
            lines += [f"lo_t_{k} = (lo_{k} // BLOCK_N) * BLOCK_N",
                      f"end_{k} = tl.where(hi_{k} > lo_{k}, ((hi_{k} + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, lo_t_{k})"]
            if clause.interval:  # tiles inside this clause's interval for every row: full
                lines += [f"mid_lo_{k} = ((full_lo_{k} + BLOCK_N - 1) // BLOCK_N) * BLOCK_N",
                          f"mid_hi_{k} = tl.maximum((full_hi_{k} // BLOCK_N) * BLOCK_N, mid_lo_{k})"]
            else:  # its tiles evaluate the mask
                lines += [f"mid_lo_{k} = lo_t_{k}", f"mid_hi_{k} = lo_t_{k}"]
        # The clauses' tile ranges as disjoint pieces: sorted by start, each piece begins where
        # the ranges before it end, so no tile is visited twice. A piece's full tiles are those
        # of its own clause's full range (the mask is an `or`: one clause holding is enough).
        fields = ("lo_t", "end", "mid_lo", "mid_hi")
        count = len(clauses)
        for a in range(1, count):
            for b in range(count, a, -1):
                x, y = b - 1, b
                lines.append(f"swap = lo_t_{y} < lo_t_{x}")
                for f in fields:
                    lines += [f"tmp = tl.where(swap, {f}_{y}, {f}_{x})",
                              f"{f}_{y} = tl.where(swap, {f}_{x}, {f}_{y})",
                              f"{f}_{x} = tmp"]
        lines.append("cursor = lo_t_1")
        for k in range(1, count + 1):
            lines += [f"piece_lo_{k} = tl.maximum(lo_t_{k}, cursor)",
                      f"piece_hi_{k} = tl.maximum(end_{k}, piece_lo_{k})",
                      f"cursor = tl.maximum(cursor, end_{k})",
                      f"full_a_{k} = tl.minimum(tl.maximum(mid_lo_{k}, piece_lo_{k}), piece_hi_{k})",
                      f"full_b_{k} = tl.maximum(tl.minimum(mid_hi_{k}, piece_hi_{k}), full_a_{k})"]
        return lines

    def _clause_lines(self, clause, sfx: str, full: bool) -> list[str]:
        """One clause: each row's key interval [lo_r, hi_r) first, then the tile's — the hull
        over the rows whose interval is not empty (a hull of the corners would visit a tile when
        every row is empty, e.g. a window of 0) and, for full tiles, the intersection over the
        rows. In int64, clamped into [0, n_kv] before any tile is touched: rearranging
        `i - j < window` into `j > i - window` must not wrap for extreme windows."""
        lines = ["lo_r = tl.zeros([BLOCK_M], dtype=tl.int64)",
                 "hi_r = tl.zeros([BLOCK_M], dtype=tl.int64) + n_kv"]
        for con in clause.constraints:
            g = self.printer.key_range_expr(con.g)
            if con.b > 0:  # j >= ceil(-g / b)
                var, new = "lo_r", f"tl.maximum(lo_r, {_ceil_div(f'(-({g}))', con.b)})"
            else:  # j <= floor(g / -b)
                var, new = "hi_r", f"tl.minimum(hi_r, {_floor_div(f'({g})', -con.b)} + 1)"
            if con.guard is not None:  # `X // c` with a parameter c: the bound for c's sign
                new = f"tl.where({self.printer.key_range_expr(con.guard)}, {new}, {var})"
            lines.append(f"{var} = {new}")
        for cond in clause.conditions:  # a row failing a condition on the query alone keeps nothing
            lines.append(f"hi_r = tl.where({self.printer.key_range_expr(cond)}, hi_r, 0)")
        lines += ["lo_r = tl.minimum(tl.maximum(lo_r, 0), n_kv)",
                  "hi_r = tl.maximum(tl.minimum(hi_r, n_kv), 0)"]
        for k, cg in enumerate(clause.congruences):
            # keys j ≡ t (mod |m|), t = -s·g: move both ends onto such keys (m = 0: x % 0 is x,
            # so the key j = t alone)
            t = f"(-({self.printer.key_range_expr(cg.g)}))" if cg.s == 1 else f"({self.printer.key_range_expr(cg.g)})"
            m = f"tl.abs({self.printer.key_range_expr(cg.m)})"
            # (t − lo_r) mod m from residues of values that each fit int32 (t is a checked mask
            # sub-expression, lo_r and hi_r lie in [0, n_kv]): their difference would not
            lines += [f"cg_m = ({m}).to(tl.int64)",  # int64 even for a literal modulus (⌈2^32 / mm⌉ below)
                      f"cg_t = {t}",
                      "res_t = _fmod(cg_t, cg_m)",
                      "res_d = _fmod(lo_r, cg_m)",
                      "lo_r = tl.where(cg_m > 0, lo_r + tl.where(res_t < res_d, res_t - res_d + cg_m, res_t - res_d), "
                      "tl.maximum(lo_r, cg_t))",
                      "res_d = _fmod(hi_r - 1, cg_m)",
                      "hi_r = tl.where(cg_m > 0, hi_r - tl.where(res_d < res_t, res_d - res_t + cg_m, res_d - res_t), "
                      "tl.minimum(hi_r, cg_t + 1))"]
            if full and self.interval_tests:  # the rows' residues for the tiles' two-instruction test
                c = f"cg_{k}"
                lines += [f"{c}_mm = cg_m.to(tl.int32)",
                          f"{c}_t = tl.where(cg_m > 0, res_t, tl.minimum(tl.maximum(cg_t, -1), n_kv)).to(tl.int32)",
                          f"{c}_small = ({c}_mm > 0) & ({c}_mm < BLOCK_N)",
                          f"{c}_cm = (4294967295 // tl.maximum(cg_m, 1) + 1).to(tl.uint32)  # ⌈2^32 / mm⌉ (mm = 1: 0)"]
        if clause.congruences:  # moved ends can leave [0, n_kv]: the tile bounds below are int32
            lines += ["lo_r = tl.minimum(tl.maximum(lo_r, 0), n_kv)", "hi_r = tl.maximum(tl.minimum(hi_r, n_kv), 0)"]
        lines += [
            "some = rows_ok & (lo_r < hi_r)",
            f"lo{sfx} = tl.min(tl.where(some, lo_r, n_kv), 0).to(tl.int32)",
            f"hi{sfx} = tl.max(tl.where(some, hi_r, 0), 0).to(tl.int32)",
        ]
        if self.bounds.exact_rows:  # whether the row keeps any key, from the intervals alone
            lines.append(f"row_has_key{sfx} = some")
        if not full:  # one of several clauses, not an interval: its tiles are all boundary tiles
            return lines
        lines += [f"full_lo{sfx} = tl.max(tl.where(rows_ok, lo_r, 0), 0).to(tl.int32)",
                  f"full_hi{sfx} = tl.min(tl.where(rows_ok, hi_r, n_kv), 0).to(tl.int32)"]
        if self.interval_tests:  # boundary tiles test j against the rows' exact intervals
            lines += ["lo_r32 = lo_r.to(tl.int32)", "hi_r32 = hi_r.to(tl.int32)"]
        return lines

    scans: list = []  # the partial sums of the pass being generated (``pass_block``)

    def segments(self, descending: bool | None = None) -> list[dict]:
        """The key loops of a pass, in order: each its loop header lines (they set ``start_n``),
        the extra indent of its body, and whether its tiles are full. A pass with partial sums
        (``descending`` not None) visits the keys in their order: one mask clause's tile ranges
        reversed and each walked last first for a suffix sum; otherwise (several clauses, or the
        runtime classification, whose tile lists are not in key order) every key tile, in order,
        with the whole mask evaluated."""
        if descending is not None:
            def walk(lo, hi, full, kind):
                if not descending:
                    return {"head": [f"for start_n in range({lo}, {hi}, BLOCK_N):  # {kind} tiles"], "pad": "", "full": full}
                return {"head": [f"for t_r in range(0, ({hi} - {lo}) // BLOCK_N):  # {kind} tiles, the last first",
                                 f"    start_n = {hi} - BLOCK_N - t_r * BLOCK_N"], "pad": "", "full": full}
            cl = self.bounds.clauses
            if len(cl) == 1 and not self.bounds.runtime:
                out = ([walk("lo_t", "mid_lo", False, "boundary")] if cl[0].lower_bounded else []) + [
                    walk("mid_lo", "mid_hi", True, "full"), walk("mid_hi", "end", False, "boundary")]
                return out[::-1] if descending else out
            return [walk("0", "tl.cdiv(n_kv, BLOCK_N) * BLOCK_N", False, "every key tile's (mask evaluated)")]
        def loop(lo, hi, full):
            kind = "full" if full else "boundary"
            return {"head": [f"for start_n in range({lo}, {hi}, BLOCK_N):  # {kind} tiles"], "pad": "", "full": full}

        def listed(lo, hi, full):  # entries of the runtime classification's tile list
            kind = "full" if full else "boundary"
            return {"head": [f"for t in range({lo}, {hi}):  # {kind} tiles",
                             "    start_n = tl.load(tile_row + 2 + t) * BLOCK_N"], "pad": "", "full": full}

        clauses = self.bounds.clauses
        if self.bounds.runtime:
            return [listed("0", "n_part", False), listed("n_part", "n_part + n_full", True)]
        if len(clauses) == 1:
            first = [loop("lo_t", "mid_lo", False)] if clauses[0].lower_bounded else []
            return first + [loop("mid_lo", "mid_hi", True), loop("mid_hi", "end", False)]
        # Several clauses: one loop over the pieces around one loop over a piece's tiles, so the
        # body is generated once (a loop per piece multiplied the live registers).
        count = len(clauses)

        def pick(field):
            out = f"{field}_{count}"
            for k in range(count - 1, 0, -1):
                out = f"tl.where(piece == {k - 1}, {field}_{k}, {out})"
            return out

        def inner(lo, hi, full):
            kind = "full" if full else "boundary"
            return {"head": [f"    for start_n in range({lo}, {hi}, BLOCK_N):  # {kind} tiles"], "pad": "    ", "full": full}
        first = inner("piece_lo", "full_a", False)
        first["head"] = [f"for piece in range(0, {count}):  # the disjoint pieces of the clauses' ranges",
                         f"    piece_lo = {pick('piece_lo')}",
                         f"    piece_hi = {pick('piece_hi')}",
                         f"    full_a = {pick('full_a')}",
                         f"    full_b = {pick('full_b')}"] + first["head"]
        return [first, inner("full_a", "full_b", True), inner("full_b", "piece_hi", False)]

    def epilogue(self) -> list[str]:
        lines = []
        for st in self.c.stages:
            if st.ranks == n.ROW and not st.is_reduction:
                lines.append(f"{self.names[st.name]} = {self.full(st.expr, st.ranks)}")
        return lines


def split_problem(c: n.Cascade, plan: PassPlan, bounds) -> str | None:
    """Why the keys of a row cannot be split over programs whose partial states merge exactly
    (split-KV decoding), or None when they can: one pass, no partial sums (they need the keys in
    order), tiles from the bounds (not a runtime tile list), and every rescale factor read over
    running maxima or minima, which merge by their own operation first — so a split's state is
    rescaled to the merged values by the factor the pass analysis proved, as a tile's is."""
    if plan.num_passes != 1:
        return (f"its norm makes {plan.num_passes} passes over the keys, and a split's later pass would need the "
                f"statistics of every split's earlier one")
    if any(st.is_scan for st in c.stages):
        return "it sums along the row in key order (a partial sum over k < j or k > j)"
    if bounds.runtime:
        return "its mask's tiles are classified at run time, into lists that are not split"
    ops = {r.stage: r.op for r in plan.reductions}
    for r in plan.reductions:
        if r.rescale is None:
            continue
        over = {x.stage for x in n.walk(r.rescale) if isinstance(x, n.Running)}
        if r.op not in ("sum", "contract") or any(ops.get(x) not in ("max", "min") for x in over):
            return f"`{r.stage}` is rescaled by a factor that is not over running maxima or minima"
    return None


def split_lines(b: _Builder, plan: PassPlan) -> dict:
    """The split-KV pieces of a splittable kernel (``forward.py.jinja``: SPLIT, MERGE).

    SPLIT: a program visits only the key tiles of its split, ``[s·split_len, (s+1)·split_len)``
    (``clamp``), then stores its rows' partial state — every reduction's value and whether the
    row kept a key — in ``Part`` (fp32 rows of ``width``) and ``PartAcc`` (the vector sums).
    MERGE: a program merges the splits' states row by row (``merge``) — maxima and minima by
    their operation, sums by the proven factor from each side's maxima to the merged ones — then
    runs the epilogue and stores as the one-program kernel does."""
    reds = list(plan.reductions)
    scalars = [r for r in reds if r.op != "contract"]
    vectors = [r for r in reds if r.op == "contract"]
    width = len(scalars) + 1
    names = b.names
    clause_vars = (["lo_t", "end", "mid_lo", "mid_hi"] if len(b.bounds.clauses) <= 1 or not b.bounds.bounded else
                   [f"{v}_{k}" for k in range(1, len(b.bounds.clauses) + 1)
                    for v in ("piece_lo", "piece_hi", "full_a", "full_b")])
    clamp = ["split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N  # whole tiles per split",
             "split_lo = tl.program_id(2) * split_len", "split_hi = split_lo + split_len"]
    clamp += [f"{v} = tl.minimum(tl.maximum({v}, split_lo), split_hi)" for v in clause_vars]
    base = "(((off_b * n_heads + off_h).to(tl.int64) * n_splits + {s}) * n_q + offs_m)"
    store = [f"part_row = Part + {base.format(s='tl.program_id(2)')} * {width}"]
    store += [f"tl.store(part_row + {k}, {names[r.stage]}, mask=row_ok)" for k, r in enumerate(scalars)]
    store.append(f"tl.store(part_row + {len(scalars)}, ({b.has_key()}).to(tl.float32), mask=row_ok)")
    acc_row = "PartAcc + ({row} * {count} + {k}) * BLOCK_DV"
    for k, r in enumerate(vectors):
        ptrs = acc_row.format(row=base.format(s="tl.program_id(2)"), count=len(vectors), k=k)
        store.append(f"tl.store(({ptrs})[:, None] + offs_dv[None, :], {names[r.stage]}, mask=row_ok[:, None])")
    merge = []
    for r in reds:
        var = names[r.stage]
        if r.op == "contract":
            merge.append(f"{var} = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)")
        else:
            merge.append(f"{var} = tl.full([BLOCK_M], {_IDENTITY[r.op]}, dtype=tl.float32)")
    merge.append("merged_key = tl.zeros([BLOCK_M], dtype=tl.int32)")
    merge.append("for sp in range(0, n_splits):  # the splits' partial states, merged in order")
    body = [f"part_row = Part + {base.format(s='sp')} * {width}"]
    for k, r in enumerate(scalars):
        body.append(f"{derived_ident(names[r.stage], 'split')} = tl.load(part_row + {k}, mask=row_ok, other={_IDENTITY[r.op]})")
    body.append(f"merged_key = tl.maximum(merged_key, tl.load(part_row + {len(scalars)}, mask=row_ok, other=0.0)"
                f".to(tl.int32))")
    for k, r in enumerate(vectors):
        ptrs = acc_row.format(row=base.format(s="sp"), count=len(vectors), k=k)
        body.append(f"{derived_ident(names[r.stage], 'split')} = tl.load(({ptrs})[:, None] + offs_dv[None, :], mask=row_ok[:, None], "
                    f"other=0.0)")
    deps = sorted({x.stage for r in reds if r.rescale is not None for x in n.walk(r.rescale)
                   if isinstance(x, n.Running)})
    body += [f"{derived_ident(names[d], 'old')} = {names[d]}" for d in deps]
    for r in reds:  # maxima and minima first: the factors read their merged values
        if r.op in ("max", "min"):
            var = names[r.stage]
            body.append(f"{var} = tl.{'maximum' if r.op == 'max' else 'minimum'}({var}, {derived_ident(var, 'split')})")
    factors: dict[str, tuple[str, str]] = {}
    for r in reds:
        if r.rescale is not None:
            text = b.expr(r.rescale, "row")
            if text not in factors:
                factors[text] = (f"fac{len(factors) + 1}", f"fac{len(factors) + 1}_part")
    for text, (mine, _) in factors.items():  # the merged state so far: old → merged
        body += [f"{mine} = {text}", f"{mine} = tl.where({mine} == {mine}, {mine}, 0.0)"]
    body += [f"{derived_ident(names[d], 'old')} = {derived_ident(names[d], 'split')}" for d in deps]
    for text, (_, theirs) in factors.items():  # this split's state: its own maxima → merged
        body += [f"{theirs} = {text}", f"{theirs} = tl.where({theirs} == {theirs}, {theirs}, 0.0)"]
    for r in reds:
        var = names[r.stage]
        if r.op in ("max", "min"):
            continue
        if r.rescale is None:
            body.append(f"{var} = {var} + {derived_ident(var, 'split')}")
            continue
        mine, theirs = factors[b.expr(r.rescale, "row")]
        if r.op == "contract":
            body.append(f"{var} = {var} * {mine}[:, None] + {derived_ident(var, 'split')} * {theirs}[:, None]")
        else:
            body.append(f"{var} = {var} * {mine} + {derived_ident(var, 'split')} * {theirs}")
    merge += ["    " + line for line in body]
    return {"clamp": clamp, "store": store, "merge": merge, "width": width, "vectors": len(vectors)}


def shifted_exp(c: n.Cascade) -> list[str]:
    """The per-row values (a row max, an lse) an ``exp`` of ``c`` reads: shifts whose folded FMA
    exponent rounds by up to 2^-22 of |shift·log2 e|, past exp2's range at huge logits
    (``ExprPrinter.exact``). Empty: no exponent needs the exact form."""
    rows = {st.name for st in c.stages if st.ranks == n.ROW}
    return sorted({y.stage for st in c.stages for x in n.walk(st.expr) if isinstance(x, n.Call) and x.fn == "exp"
                   for y in n.walk(x.args[0]) if isinstance(y, (n.Ref, n.Running)) and y.stage in rows})


# |shift·log2 e| beyond which a forward tile reruns with exact exponents: the FMA form's error
# (≤ 2^-22 of it) stays under 0.25, so a fast tile's sums keep their range and the backward,
# which recomputes the weights from the saved statistics in the same form, matches them
EXACT_SHIFT = 2.0 ** 20


def _tile_lines(sfx: str) -> list[str]:
    """Tile-aligned ranges of one clause: visited [lo_t, end), full [mid_lo, mid_hi)."""
    return [
        f"lo_t{sfx} = (lo{sfx} // BLOCK_N) * BLOCK_N",
        f"end{sfx} = tl.where(hi{sfx} > lo{sfx}, ((hi{sfx} + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, lo_t{sfx})",
        f"full_lo{sfx} = tl.maximum(full_lo{sfx}, lo{sfx})",
        f"full_hi{sfx} = tl.maximum(tl.minimum(full_hi{sfx}, hi{sfx}), 0)",
        f"mid_lo{sfx} = tl.minimum(((full_lo{sfx} + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, end{sfx})",
        f"mid_hi{sfx} = tl.maximum(tl.minimum((full_hi{sfx} // BLOCK_N) * BLOCK_N, end{sfx}), mid_lo{sfx})",
    ]


def specialize_lines(dtype: str, strided: dict[str, tuple[str, ...]]) -> list[str]:
    """The kernel's first lines: under ``ALIGNED`` (chosen by the runtime only when it holds), the
    strides of each tensor in ``strided`` ({tensor: its stride names, head-dim stride last}) and
    the head dims are rewritten as the multiples of 16 bytes they are, and the head-dim strides as
    the constant 1. The values do not change; Triton's alignment analysis then proves the tile
    loads contiguous and 16-byte aligned (vector loads, cp.async, pipelining), which it cannot for
    unspecialized integer arguments."""
    per16 = 16 // (4 if dtype == "float32" else 2)  # elements per 16 bytes of the inputs
    lines = [f"if ALIGNED:  # strides and head dims are multiples of {per16} elements, head-dim strides 1"]
    for names in strided.values():
        lines += [f"    {s} = ({s} // {per16}) * {per16}" for s in names[:-1]]
        lines.append(f"    {names[-1]} = 1")
    lines += [f"    head_dim = (head_dim // {per16}) * {per16}", f"    head_dim_v = (head_dim_v // {per16}) * {per16}"]
    return lines


FORWARD_STRIDES = {t: tuple(f"stride_{t}{a}" for a in axes) for t, axes in
                   (("q", "bhmd"), ("k", "bhnd"), ("v", "bhnd"), ("o", "bhmd"))}


def _floor_div(x: str, k: int) -> str:
    return x if k == 1 else f"_idiv({x}, {k})"


def _ceil_div(x: str, k: int) -> str:
    return x if k == 1 else f"(-_idiv(-{x}, {k}))"



def generate(c: n.Cascade, spec: Specialization, plan: PassPlan | None = None) -> KernelSource:
    """The Triton source of ``c``'s forward kernel for one specialization."""
    plan = plan or plan_passes(c)
    b = _Builder(c, plan)
    b.bounds = tile_bounds(c)
    # q·k read only as scale·qk: fold scale's sign into the query tile (see exprs.ExprPrinter)
    b.fold_sign = len(c.dots) == 1 and qk_only_in_raw_score([st.expr for st in c.stages[1:]])
    if b.fold_sign:
        b.printer.score_scale = "scale_pos"
    b.dot_precision = ', input_precision="ieee"' if spec.upcast else ""
    b.fp16_dot = spec.dtype == "float16" and not spec.upcast
    b.printer.hardware_tanh = spec.hardware_tanh
    key_range = b.key_range()
    hoisted = b.hoist(b.loop_exprs(), "i")
    passes = [b.pass_block(k) for k in range(1, plan.num_passes + 1)]
    epilogue = b.epilogue()
    rerun = None
    shifts = shifted_exp(c)
    if shifts:  # the same passes with exact exponents, for tiles whose exp2 left its range
        b.printer.exact_exp, b.printer.asm = True, not spec.interpret
        rerun = {"passes": [b.pass_block(k) for k in range(1, plan.num_passes + 1)], "epilogue": b.epilogue(),
                 "shifts": [f"(tl.abs({b.names[name]}) * {LOG2E_TEXT} > {EXACT_SHIFT}) & "
                            f"(tl.abs({b.names[name]}) < float(\"inf\"))" for name in shifts],
                 "overflow": [f"{b.names[name]} == float(\"inf\")" for name in shifts]}
        b.printer.exact_exp = False
    problem = split_problem(c, plan, b.bounds)
    split = split_lines(b, plan) if problem is None else None
    tensors = [p for p in c.params if p.kind == "tensor"]
    scalars = [p for p in c.params if p.kind != "tensor"]
    text = _env().get_template("forward.py.jinja").render(
        split=split,
        version=CODEGEN_VERSION,
        cascade_name=c.name,
        plan_summary=f"{plan.num_passes} pass{'es' if plan.num_passes != 1 else ''} over the keys",
        cascade_lines=cascade_text(c).rstrip("\n").split("\n"),
        kernel_name=KERNEL_NAME,
        specialize=specialize_lines(spec.dtype, FORWARD_STRIDES),
        tensors=[tensor_arg_names(p.name, len(p.dims)) for p in tensors],
        scalars=[kernel_ident(p.name) for p in scalars],
        passes=passes,
        upcast=".to(tl.float32)" if spec.upcast else "",
        dot_precision=b.dot_precision,
        epilogue=epilogue,
        rerun=rerun,
        key_range=key_range,
        hoisted=hoisted,
        segments=b.segments(),
        runtime_tiles=b.bounds.runtime,
        fold_sign=b.fold_sign,
        counts_keys=b.counts_keys,
        has_key=b.has_key(),
        out_var=b.names["out"],
        lse_var=b.names["lse"] if c.has_lse else None,
        stats=[b.names[st.name] for st in c.stages if isinstance(st.expr, n.Reduce)],
        q_map=b.feature_map("q", "row_ok[:, None] & d_ok[None, :]"),
        q_slices=b.slice_lines("q"),
        k_map={True: b.feature_map("k", "d_ok[None, :]"), False: b.feature_map("k", "col_ok[:, None] & d_ok[None, :]")},
    )
    text = prune_helpers(text)
    return KernelSource(text, KERNEL_NAME, tuple(tensors), tuple(scalars), c.has_lse, b.bounds.runtime,
                        rerun is not None, split and (split["width"], split["vectors"]), problem)
