"""Cascade + backward plan → the Triton source of the two backward kernels.

FlashAttention-2's structure, derived rather than written per variant (``ir/backward.py``):

* ``attnc_bwd_rows``, one program per query tile: loads the forward's saved per-row statistics,
  computes ``Σ_f dO·out``, runs the backward's own passes over the keys when the plan has j-sums,
  computes the per-row adjoints and coefficients (stored for the second kernel, O(N)), adds the
  per-row gradients of tensor parameters, and accumulates dQ over the key tiles;
* ``attnc_bwd_kv``, one program per key tile of a kv head: loops over the query heads of its
  GQA group and their query tiles, skipping those whose forward key range misses the tile, and
  accumulates dK and dV (written once, deterministic) and per-pair tensor-parameter gradients
  (fp32 atomics).

Both recompute q·k, the score and the mask on each tile, exactly as the forward does. The key
range of a query tile is the forward's (``ir/bounds.py``), so the same tiles are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import backward as bw
from ..ir import nodes as n
from ..ir.bounds import tile_bounds
from ..ir.names import kernel_ident
from ..ir.passes import plan_passes
from ..ir.printer import cascade_text
from .exprs import ExprPrinter
from .generate import CODEGEN_VERSION, Specialization, _Builder, _env

ROWS_KERNEL = "attnc_bwd_rows"
KV_KERNEL = "attnc_bwd_kv"


@dataclass(frozen=True)
class BackwardSource:
    text: str
    tensor_params: tuple[n.ParamSpec, ...]  # in argument order, as in the forward
    scalar_params: tuple[n.ParamSpec, ...]
    grad_params: tuple[n.ParamSpec, ...]  # float tensors that receive gradients, in argument order
    num_stats: int  # columns of the forward's Stats (the reductions, then has_key)
    num_coefs: int  # columns of Coef
    runtime_tiles: bool  # takes the runtime tile classification (``runtime/sparsity.py``)


def bwd_ident(name: str) -> str:
    """Kernel names of the backward's values (``bwd.G.z`` → ``g_z``)."""
    fixed = {bw.DOV: "dov", bw.DS: "ds", bw.DOUT: "dout", bw.DL: "dl"}
    if name in fixed:
        return fixed[name]
    _, kind, *rest = name.split(".")
    if kind[0] in "Tx":
        return f"{kind[0].lower()}_{int(kind[1:])}"
    return kernel_ident(rest[0], kind.lower())


class _BwdBuilder(_Builder):
    def __init__(self, c: n.Cascade, bplan: bw.BackwardPlan, spec: Specialization):
        super().__init__(c, plan_passes(c))
        self.bp = bplan
        for name, ranks in bplan.ranks().items():
            self.ranks[name] = ranks
            self.names[name] = bwd_ident(name)
        self.printer = ExprPrinter(self.ranks, self.names, self._load, {st.name: st.expr for st in c.stages})
        self.bounds = tile_bounds(c)
        self.dot_precision = ', input_precision="ieee"' if spec.upcast else ""
        self.spec = spec
        mask = c.stage("keep").expr if c.has_mask else None
        self.mask = mask
        self.grad_params = {g.load.tensor for g in bplan.load_grads}

    # -- helpers
    def mm(self, a: str, b: str) -> str:
        """``tl.dot`` of an fp32 tile of gradients with an input tile: fp32 operands when the
        inputs are fp32 (or upcast), bf16 operands for bf16; for fp16 the fp32 operands (tf32 on
        GPUs), since a gradient tile is not bounded by 65504."""
        if self.spec.upcast:
            return f"tl.dot({a}, {b}{self.dot_precision})"
        if self.spec.dtype == "bfloat16":
            return f"tl.dot(({a}).to(tl.bfloat16), {b})"
        return f"tl.dot({a}, ({b}).to(tl.float32))"

    def reads(self, exprs: list[n.Expr]) -> set[str]:
        """The names ``exprs`` read, directly or through the shared temporaries they read."""
        temps = dict(self.bp.temps)
        seen: set[str] = set()
        todo = [r for e in exprs for r in n.refs(e)]
        while todo:
            r = todo.pop()
            if r not in seen:
                seen.add(r)
                todo.extend(n.refs(temps[r]) if r in temps else ())
        return seen

    def pair_stages(self, exprs: list[n.Expr]) -> list[str]:
        """Lines computing the pair stages and shared temporaries ``exprs`` read."""
        used = self.reads(exprs)
        need: set[str] = set()
        todo = ["s"] + [r for r in used if r in self.stages]
        while todo:
            name = todo.pop()
            if name in need or name not in self.stages:
                continue
            st = self.stages[name]
            if st.ranks != n.PAIR or st.is_reduction or name in ("qk", "keep"):
                continue
            need.add(name)
            todo.extend(n.refs(st.expr))
        lines = [f"{self.names[st.name]} = {self.full(st.expr, n.PAIR)}" for st in self.c.stages if st.name in need]
        lines += [f"{self.names[name]} = {self.full(e, n.PAIR)}" for name, e in self.bp.temps if name in used]
        return lines

    def reads_dov(self, exprs: list[n.Expr]) -> bool:
        """Whether ``exprs`` read dO·v, directly or through a shared temporary."""
        return bw.DOV in self.reads(exprs)

    def keep_line(self, masked: bool, rows: bool) -> str | None:
        if masked:
            parts = (["row_ok[:, None]"] if rows else []) + ["col_ok[None, :]"]
            if self.bounds.interval_mask:  # the rows' exact key intervals (ir/bounds.py)
                parts = parts[:-1] + ["(offs_n[None, :] >= lo_r32[:, None])", "(offs_n[None, :] < hi_r32[:, None])"]
            elif self.mask is not None:
                parts.append(self.full(self.mask, n.PAIR))
            return f"keep = {' & '.join(parts)}"
        residual = self.bounds.full_residual
        if not residual:
            return None
        expr = residual[0]
        for r in residual[1:]:
            expr = n.Binary("and", expr, r, n.BOOL)
        return f"keep = {self.full(expr, n.PAIR)}"

    def kept(self, x: str, keep: str | None) -> str:
        return x if keep is None else f"tl.where(keep, {x}, 0.0)"

    def offset(self, load: n.Load, ctx: str, stride: str) -> str:
        t = kernel_ident(load.tensor)
        return " + ".join(f"tl.minimum(tl.maximum({self.printer(ix, ctx)}, 0), {t}_size{k} - 1) * {t}_{stride}{k}"
                          for k, ix in enumerate(load.indices))

    # -- the row kernel
    def row_lines(self, steps) -> list[str]:
        lines = []
        for r in steps:
            var = self.names[r.name]
            lines.append(f"{var} = {self.full(r.expr, n.ROW)}  # {r.what}")
            lines.append(f"{var} = tl.where(has_key, {var}, 0.0)")  # a row with no kept key: no gradient
        return lines

    def jsum_tile(self, jsums, masked: bool) -> list[str]:
        keep = self.keep_line(masked, rows=False)
        lines = [keep] if keep else []
        lines += self.pair_stages([j.body for j in jsums])
        for j in jsums:
            var = self.names[j.name]
            lines.append(f"{var} += tl.sum({self.kept(self.full(j.body, n.PAIR), keep and 'keep')}, 1)")
        return lines

    def dq_tile(self, masked: bool) -> list[str]:
        keep = self.keep_line(masked, rows=False)
        k = keep and "keep"
        lines = [keep] if keep else []
        lines += self.pair_stages([self.bp.ds, self.bp.dqk])
        lines.append(f"ds = {self.kept(self.full(self.bp.ds, n.PAIR), k)}")
        lines.append(f"dqk = {self.kept(self.full(self.bp.dqk, n.PAIR), k)}")
        lines.append(f"dq += {self.mm('dqk', 'k_tile')}")
        return lines

    def row_passes(self) -> list[dict]:
        bp = self.bp
        out = []
        for level in range(0, bp.num_row_passes + 1):
            rows = self.row_lines([r for r in bp.rows if r.level == level])
            nxt = [j for j in bp.jsums if j.level == level + 1]
            step = {"index": level + 1, "rows": rows, "jsums": bool(nxt)}
            if nxt:
                step.update(
                    summary=", ".join(f"{self.names[j.name]} ({j.what})" for j in nxt),
                    init=[f"{self.names[j.name]} = tl.zeros([BLOCK_M], dtype=tl.float32)" for j in nxt],
                    loads_v=self.reads_dov([j.body for j in nxt]),
                    body=self.jsum_tile(nxt, True), full_body=self.jsum_tile(nxt, False))
            out.append(step)
        return out

    def row_grads(self) -> list[str]:
        lines = []
        for g in self.bp.load_grads:
            if g.row is None:
                continue
            t = kernel_ident(g.load.tensor)
            lines.append(f"if GRAD_{t}:  # ∂/∂{g.load.tensor}, per row")
            lines.append(f"    gval = tl.where(has_key & row_ok, {self.full(g.row, n.ROW)}, 0.0)")
            ptr = f"{t}_grad + {self.offset(g.load, 'row', 'gstride')}"
            if "i" in n.free_ranks(g.load, self.ranks):
                lines.append(f"    tl.atomic_add({ptr}, gval, mask=row_ok)")
            else:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(gval, 0))")
        return lines

    # -- the dK/dV kernel
    def kv_loads(self) -> list[str]:
        lines = [line for line in self.stat_loads()]
        for k, name in enumerate(self.bp.coefs):
            lines.append(f"{self.names[name]} = tl.load(cf_ptrs + {k} * stride_cc, mask=row_ok, other=0.0)")
        return lines

    def kv_body(self) -> list[str]:
        bp = self.bp
        lines = [self.keep_line(True, rows=True)]
        pair_grads = [g for g in bp.load_grads if g.pair is not None]
        lines += self.pair_stages([bp.ds, bp.dqk, bp.dv_weight] + [g.pair for g in pair_grads])
        lines.append(f"ds = {self.kept(self.full(bp.ds, n.PAIR), 'keep')}")
        lines.append(f"dqk = {self.kept(self.full(bp.dqk, n.PAIR), 'keep')}")
        lines.append(f"w = {self.kept(self.full(bp.dv_weight, n.PAIR), 'keep')}")
        lines.append(f"dv += {self.mm('tl.trans(w)', 'do_tile')}")
        lines.append(f"dk += {self.mm('tl.trans(dqk)', 'q_tile')}")
        for g in pair_grads:
            t = kernel_ident(g.load.tensor)
            ranks = set()
            for ix in g.load.indices:
                ranks |= n.free_ranks(ix, self.ranks)
            lines.append(f"if GRAD_{t}:  # ∂/∂{g.load.tensor}, per pair")
            lines.append(f"    gval = {self.kept(self.full(g.pair, n.PAIR), 'keep')}")
            ptr = f"{t}_grad + {self.offset(g.load, 'pair', 'gstride')}"
            if ranks >= {"i", "j"}:
                lines.append(f"    tl.atomic_add({ptr}, gval, mask=keep != 0)")  # != 0: an int1 mask whatever keep was built from
            elif "i" in ranks:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(gval, 1)[:, None], mask=row_ok[:, None])")
            elif "j" in ranks:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(gval, 0)[None, :], mask=col_ok[None, :])")
            else:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(tl.sum(gval, 1), 0))")
        return lines

    def stat_loads(self) -> list[str]:
        lines = [f"{self.names[name]} = tl.load(st_ptrs + {k} * stride_sc, mask=row_ok, other=0.0)"
                 for k, name in enumerate(self.bp.stats)]
        lines.append(f"has_key = tl.load(st_ptrs + {len(self.bp.stats)} * stride_sc, mask=row_ok, other=0.0) > 0")
        return lines


def generate_backward(c: n.Cascade, spec: Specialization, bplan: bw.BackwardPlan | None = None) -> BackwardSource:
    """The Triton source of ``c``'s backward kernels for one specialization."""
    bplan = bplan or bw.derive_backward(c)
    b = _BwdBuilder(c, bplan, spec)
    tensors = [p for p in c.params if p.kind == "tensor"]
    scalars = [p for p in c.params if p.kind != "tensor"]
    grads = [p for p in tensors if p.name in b.grad_params]
    passes = bplan.num_row_passes
    summary = (f"{passes} pass{'es' if passes != 1 else ''} over the keys for per-row sums, then dQ; "
               f"dK/dV over the query tiles")
    kv_lines, kv_visit = b.kv_range()
    dq_loop = {"loads_v": b.reads_dov([bplan.ds, bplan.dqk]),
               "body": b.dq_tile(True), "full_body": b.dq_tile(False)}
    text = _env().get_template("backward.py.jinja").render(
        version=CODEGEN_VERSION,
        cascade_name=c.name,
        summary=summary,
        cascade_lines=cascade_text(c).rstrip("\n").split("\n"),
        rows_name=ROWS_KERNEL,
        kv_name=KV_KERNEL,
        tensors=[{"ident": kernel_ident(p.name), "ndim": len(p.dims)} for p in tensors],
        grads=[{"ident": kernel_ident(p.name), "ndim": len(p.dims), "flag": f"GRAD_{kernel_ident(p.name)}"}
               for p in grads],
        scalars=[kernel_ident(p.name) for p in scalars],
        upcast=".to(tl.float32)" if spec.upcast else "",
        dot_precision=b.dot_precision,
        uses_dout=bplan.uses_dout,
        uses_dl=bplan.uses_dl,
        stat_loads=b.stat_loads(),
        key_range=b.key_range(),
        segments=b.segments(),
        runtime_tiles=b.bounds.runtime,
        kv_range=kv_lines,
        kv_visit=kv_visit,
        row_passes=b.row_passes(),
        coef_stores=[f"tl.store(cf_ptrs + {k} * stride_cc, {b.names[name]}, mask=row_ok)"
                     for k, name in enumerate(bplan.coefs)],
        row_grads=b.row_grads(),
        dq_loop=dq_loop,
        kv_loads=b.kv_loads(),
        kv_body=b.kv_body(),
    )
    return BackwardSource(text, tuple(tensors), tuple(scalars), tuple(grads), len(bplan.stats) + 1,
                          len(bplan.coefs), b.bounds.runtime)
