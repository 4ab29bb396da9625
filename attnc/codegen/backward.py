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
from ..ir.names import derived_ident, grad_arg_names, kernel_ident, tensor_arg_names
from ..ir.passes import plan_passes
from ..ir.printer import cascade_text
from .exprs import ExprPrinter
from ..ir.ranges import weight_range
from .generate import (CODEGEN_VERSION, FORWARD_STRIDES, FP16_MAX, Specialization, _Builder, _env, prune_helpers,
                       shifted_exp, specialize_lines)

_DO_DQ = {t: tuple(f"stride_{t}{a}" for a in "bhmd") for t in ("do", "dq")}
_DO_DK_DV = {"do": _DO_DQ["do"], **{t: tuple(f"stride_{t}{a}" for a in "bhnd") for t in ("dk", "dv")}}

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
    operand_modes: tuple[tuple[str, str], ...] = ()  # ("ds" | "w", mode): ``_BwdBuilder.operand_mode``
    qtile_cols: int = 4  # QTiles columns: the key range, the full range, then a scale exponent per scaled operand
    needs_vnorm: bool = False  # the rows kernel takes max_j ‖v_j‖ per (batch, kv head)
    exact: bool = False  # an EXACT build exists (and must run) for tiles the forward ran with exact exponents
    # partial sums: the rows kernel also accumulates dK and dV (fp32 atomics into DK, DV, which the
    # caller zeroes) and the dK/dV kernel only returns
    scan_mode: bool = False


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
        self.printer.hardware_tanh = spec.hardware_tanh  # the forward's tanh, so P is recomputed alike
        self.bounds = tile_bounds(c)
        self.dot_precision = ', input_precision="ieee"' if spec.upcast else ""
        self.spec = spec
        mask = c.stage("keep").expr if c.has_mask else None
        self.mask = mask
        self.grad_params = {g.load.tensor for g in bplan.load_grads}

    # -- helpers
    def feature_grad(self, side: str, acc: str, ok: str) -> str:
        """``acc`` (dq or dk before the chain rule) times the feature map's derivative at the
        tile read again (none: "")."""
        d = dict(self.bp.feature_grads).get(side)
        if d is None:
            return ""
        return f"{acc} = {acc} * tl.where({ok}, {self.feature_expr(side, d, ok)}, 0.0)  # ∂{side}̃/∂{side}"

    def mm(self, a: str, b: str, sixteen: bool = True) -> str:
        """``tl.dot`` of an fp32 tile of gradients with an input tile: fp32 operands when the
        inputs are fp32 (or upcast); else 16-bit operands (the inputs' type) when ``sixteen`` —
        bf16 always holds a gradient tile, fp16 only one the caller bounded or scaled into range —
        and fp32 operands (tf32 on GPUs) otherwise."""
        if self.spec.upcast:
            return f"tl.dot({a}, {b}{self.dot_precision})"
        if self.spec.dtype == "bfloat16" or sixteen:
            return f"tl.dot(({a}).to({b}.dtype), {b})"
        return f"tl.dot({a}, ({b}).to(tl.float32))"

    # -- fp16 gradient operands: dS (for dQ and dK) and the value weights W (for dV) are scaled by
    # powers of two into fp16's range when the codegen can print a per-row bound of them
    TARGET = 16384.0  # 2^14: a scaled operand stays this far under fp16's 65504
    ACC = {"ds": "dk", "w": "dv"}  # the dK/dV kernel's accumulator each operand feeds

    def operand_mode(self, name: str) -> str:
        """How the dots take operand ``name`` ("ds": dqk, "w": the value weights): "direct" (fp32 or
        bf16 kernels, or fp16 when ``ir/ranges.py`` bounds it within fp16), "scaled" (fp16, scaled
        per row / per key tile by powers of two from the bound ``operand_bound`` prints) or "fp32"
        (fp16 without a bound: fp32 operands, tf32 dots)."""
        if self.spec.upcast or self.spec.dtype != "float16":
            return "direct"
        lo, hi = weight_range(self.c, self._operand_expr(name))
        if max(-lo, hi) <= FP16_MAX:
            return "direct"
        return "scaled" if self.operand_bound(name) is not None else "fp32"

    def _operand_expr(self, name: str) -> n.Expr:
        return self.bp.dqk if name == "ds" else self.bp.dv_weight

    @property
    def scaled(self) -> list[str]:
        """The operands scaled into fp16, in QTiles column order (columns 4, 5, ...)."""
        return [name for name in ("ds", "w") if self.operand_mode(name) == "scaled"]

    def operand_bound(self, name: str) -> str | None:
        """Kernel text (per query row) of an upper bound of the operand's magnitude over every key,
        or None. Interval facts first (``ir/ranges.py``: softmax's exp(s − m) ≤ 1), then
        |a ± b| ≤ |a| + |b|, |a·b| ≤ |a|·|b|, |a / r| ≤ |a| / |r| for a per-row r, and
        |dO_i·v_j| ≤ ‖dO_i‖·max_j ‖v_j‖."""
        cache = self.__dict__.setdefault("_bounds", {})
        if name not in cache:
            cache[name] = self._bound(self._operand_expr(name), 0)
        return cache[name]

    @property
    def needs_vnorm(self) -> bool:
        return any("do_norm" in self.operand_bound(name) for name in self.scaled)

    def rows_scale_lines(self) -> list[str]:
        """The rows kernel's exponents: per row, the largest power of two keeping each scaled
        operand's bound under TARGET (clamped), stored per query tile (its smallest) for the dK/dV
        kernel; dS's scales dQ's dot here too."""
        lines = []
        if self.needs_vnorm:
            lines += ["do_norm = tl.sqrt(tl.sum(do_tile.to(tl.float32) * do_tile.to(tl.float32), 1))",
                      "v_norm = tl.load(VNorm + off_b * stride_vnb + off_hkv * stride_vnh)"]
        for col, name in enumerate(self.scaled, 4):
            lines += [f"{name}_exp = tl.floor(tl.log2({self.TARGET} / tl.maximum({self.operand_bound(name)}, 1e-30)))",
                      f"{name}_exp = tl.minimum(tl.maximum(tl.where({name}_exp == {name}_exp, {name}_exp, 0.0), -120.0), 120.0)",
                      f"tl.store(qt_ptr + {col}, tl.min(tl.where(row_ok, {name}_exp, 120.0), 0).to(tl.int32))"]
        if "ds" in self.scaled:
            lines.append("ds_scale = tl.exp2(ds_exp)  # exact: a power of two")
        return lines

    def kv_scale_lines(self) -> dict[str, list[str]]:
        """The dK/dV kernel's side: each accumulator a scaled operand feeds holds 2^e times its sum,
        e the smallest exponent of the query tiles seen (exact rescales when it drops)."""
        out = {"init": [], "scan_init": [], "scan": [], "head": [], "finish": []}
        for col, name in enumerate(self.scaled, 4):
            acc = self.ACC[name]
            out["init"].append(f"{acc}_exp = n_qt * 0 + 120  # {acc} holds 2^{acc}_exp times its sum")
            out["scan_init"].append(f"{name}_exp_h = n_qt * 0 + 120")
            out["scan"] += [f"{name}_exps = tl.load(QTiles + off_b * stride_qtb + off_h * stride_qth + t * stride_qtm + {col}, "
                            f"mask=t_ok, other=120)",
                            f"{name}_exp_h = tl.minimum({name}_exp_h, tl.min(tl.where(meets, {name}_exps, 120), 0))"]
            out["head"] += [f"new_exp = tl.minimum({acc}_exp, {name}_exp_h)",
                            f"{acc} = {acc} * tl.exp2((new_exp - {acc}_exp).to(tl.float32))  # exact: a power of two",
                            f"{acc}_exp = new_exp",
                            f"{name}_sigma = tl.exp2({acc}_exp.to(tl.float32))"]
            out["finish"].append(f"{acc} = {acc} * tl.exp2(-{acc}_exp.to(tl.float32))")
        return out

    def _bound(self, e: n.Expr, depth: int) -> str | None:
        from ..ir.ranges import weight_range

        if depth > 40:
            return None
        temps = dict(self.bp.temps)
        free = n.free_ranks(e, self.ranks)
        if isinstance(e, n.Ref) and e.stage == bw.DOV:
            return "(do_norm * v_norm)"
        if isinstance(e, n.Ref) and e.stage == bw.DS:
            return self._bound(self.bp.ds, depth + 1)
        if isinstance(e, n.Ref) and e.stage in temps:
            return self._bound(temps[e.stage], depth + 1)
        if "j" not in free and e.type != n.VEC and not any(isinstance(x, n.Ref) and x.stage in (bw.DOV, bw.DS)
                                                          for x in n.walk(e)):
            return f"tl.abs({self.full(e, n.ROW)})"  # a per-row (or scalar) value: itself
        if not any(isinstance(x, n.Ref) and (x.stage.startswith("bwd.")) for x in n.walk(e)):
            lo, hi = weight_range(self.c, e)  # a forward pair value with a static bound
            if max(-lo, hi) < float("inf"):
                return repr(float(max(-lo, hi)))
        if isinstance(e, n.Ref) and e.stage in self.stages and self.stages[e.stage].ranks == n.PAIR:
            return self._bound(self.stages[e.stage].expr, depth + 1)
        if isinstance(e, n.Unary) and e.op == "-":
            return self._bound(e.operand, depth + 1)
        if isinstance(e, n.Binary) and e.op in ("+", "-", "*"):
            a, b = self._bound(e.left, depth + 1), self._bound(e.right, depth + 1)
            if a is None or b is None:
                return None
            return f"({a} {'*' if e.op == '*' else '+'} {b})"
        if isinstance(e, n.Binary) and e.op == "/" and "j" not in n.free_ranks(e.right, self.ranks):
            a = self._bound(e.left, depth + 1)
            return None if a is None else f"({a} / tl.abs({self.full(e.right, n.ROW)}))"
        if isinstance(e, n.Select):
            a, b = self._bound(e.then, depth + 1), self._bound(e.other, depth + 1)
            return None if a is None or b is None else f"tl.maximum({a}, {b})"
        if isinstance(e, n.Call) and e.fn == "abs":
            return self._bound(e.args[0], depth + 1)
        return None

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

    def pair_stages(self, exprs: list[n.Expr], keep: str | None = None) -> list[str]:
        """Lines computing the pair stages and shared temporaries ``exprs`` read (``keep``: the
        tile's mask variable, for the partial sums); the partial sums' adjoints they read, after
        the temporaries those need."""
        adjoints = {g.adjoint: g for g in self.bp.scans}
        used = self.reads(exprs)
        todo_u = [g.u for name, g in adjoints.items() if name in used]
        used |= self.reads(todo_u)
        need: set[str] = set()
        todo = ["s"] + [r for r in used if r in self.stages]
        while todo:
            name = todo.pop()
            if name in need or name not in self.stages:
                continue
            st = self.stages[name]
            if st.ranks != n.PAIR or st.is_reduction or name == "keep" or isinstance(st.expr, n.Dot):
                continue
            need.add(name)
            todo.extend(n.refs(st.expr))
        lines = []
        for st in self.c.stages:
            if st.name in need:
                lines += (self.scan_lines(st, lambda x: self.kept(x, keep)) if st.is_scan
                          else [f"{self.names[st.name]} = {self.full(st.expr, n.PAIR)}"])
        temps = [(name, e) for name, e in self.bp.temps if name in used]
        with_a = {name for name, _ in temps if self.reads([n.Ref(name, n.FLOAT)]) & set(adjoints)}
        lines += [f"{self.names[name]} = {self.full(e, n.PAIR)}" for name, e in temps if name not in with_a]
        for name, g in adjoints.items():
            if name in used:
                lines += self.adjoint_lines(g, keep)
        lines += [f"{self.names[name]} = {self.full(e, n.PAIR)}" for name, e in temps if name in with_a]
        return lines

    # -- partial sums (scan mode)
    @property
    def scan_mode(self) -> bool:
        return bool(self.bp.scans)

    def adjoint_lines(self, g: bw.ScanGrad, keep: str | None) -> list[str]:
        """A partial sum's adjoint on a key tile, in the forward sum's key order: its total minus
        the running sum of u up to and including each key (plus u there when the sum includes
        its own key)."""
        a, scan = self.names[g.adjoint], self.stages[g.stage].expr
        part, run = derived_ident(a, "part"), derived_ident(a, "run")
        inc = f" + {part}" if scan.inclusive else ""
        return [f"{part} = {self.kept(self.full(g.u, n.PAIR), keep)}",
                f"{a} = {self.names[g.total]}[:, None] - (tl.cumsum({part}, 1{', reverse=True' if scan.descending else ''}) "
                f"+ {run}[:, None]){inc}  # the adjoint of {g.stage}",
                f"{run} += tl.sum({part}, 1)"]

    def carry_init(self, adjoints: bool) -> list[str]:
        """Zero running values of the partial sums (and of their adjoints) before a key loop."""
        names = [self.names[st.name] for st in self.c.stages if st.is_scan]
        names += [self.names[g.adjoint] for g in self.bp.scans] if adjoints else []
        return [f"{derived_ident(x, 'run')} = tl.zeros([BLOCK_M], dtype=tl.float32)" for x in names]

    def loop_segments(self) -> list[dict]:
        """The rows kernel's key loops: in the partial sums' key order in scan mode."""
        if not self.scan_mode:
            return self.segments()
        return self.segments(next(st.expr.descending for st in self.c.stages if st.is_scan))

    def kv_atomics(self, k: str | None) -> list[str]:
        """Scan mode: this tile's dK and dV rows (and per-pair parameter gradients), added into the
        fp32 buffers — the dK/dV kernel cannot recompute a tile's pairs alone."""
        bp = self.bp
        ds_mode, w_mode = self.operand_mode("ds"), self.operand_mode("w")
        qk = self.stages["qk"]
        # the rows past n_q and keys past n_kv hold no pair (a full key tile's rows may)
        lines = ["keep_kv = row_ok[:, None] & (offs_n[None, :] < n_kv)" + (f" & {k}" if k else ""),
                 f"w = tl.where(keep_kv, {self.full(bp.dv_weight, n.PAIR)}, 0.0)",
                 f"dk_part = {self.mm('tl.trans(tl.where(keep_kv, dqk, 0.0))', self.operand(qk, 'q'), ds_mode == 'direct')}"]
        for name, e in bp.dqk_more:
            lines.append(f"dk_part += {self.mm(f'tl.trans(tl.where(keep_kv, d{name}, 0.0))', self.operand(self.stages[name], 'q'), self.sixteen(e))}")
        kv_ok = "(offs_n[:, None] < n_kv)"
        lines += [f"tl.atomic_add(DK32 + off_b * stride_dkb + off_hkv * stride_dkh + offs_n[:, None] * stride_dkn + "
                  f"offs_d[None, :] * stride_dkd, dk_part, mask={kv_ok} & d_ok[None, :])",
                  f"dv_part = {self.mm('tl.trans(w)', 'do_tile', w_mode == 'direct')}",
                  f"tl.atomic_add(DV32 + off_b * stride_dvb + off_hkv * stride_dvh + offs_n[:, None] * stride_dvn + "
                  f"offs_dv[None, :] * stride_dvd, dv_part, mask={kv_ok} & dv_ok[None, :])"]
        return lines + self.pair_grad_lines("keep_kv", "(offs_n < n_kv)")

    def dots_for(self, exprs: list[n.Expr]) -> list[str]:
        """The lines computing the Dot stages ``exprs`` read through the pair stages and temporaries
        (``qk`` always: the tile's score ``s`` is computed whether read or not)."""
        temps = dict(self.bp.temps)
        seen: set[str] = set()
        todo = ["s"] + [r for e in exprs for r in n.refs(e)]
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            if r in temps:
                todo.extend(n.refs(temps[r]))
            elif r in self.stages and self.stages[r].ranks == n.PAIR and not self.stages[r].is_reduction:
                todo.extend(n.refs(self.stages[r].expr))
        return self.dot_lines({"qk"} | seen, self.dot_precision)

    def sixteen(self, e: n.Expr) -> bool:
        """Whether gradient tile ``e`` (a further Dot stage's) may enter a dot in fp16: when
        ``ir/ranges.py`` bounds it within fp16 (else fp32 operands; no per-row scaling here)."""
        if self.spec.upcast or self.spec.dtype != "float16":
            return True
        lo, hi = weight_range(self.c, e)
        return max(-lo, hi) <= FP16_MAX

    def reads_dov(self, exprs: list[n.Expr]) -> bool:
        """Whether ``exprs`` read dO·v, directly or through a shared temporary."""
        return bw.DOV in self.reads(exprs)

    def keep_line(self, masked: bool, rows: bool) -> str | None:
        """The mask on a tile: a boundary tile of the rows kernel (``masked``) tests the rows' exact
        key intervals when they are the mask (``ir/bounds.py``), relative to the tile as the
        forward does; the dK/dV kernel (``rows``: its query rows may run past n_q) evaluates the
        mask itself, having no per-row intervals."""
        if masked and rows:
            parts = ["row_ok[:, None]", "col_ok[None, :]"]
            if self.mask is not None:
                parts.append(self.full(self.mask, n.PAIR))
            return f"keep = {' & '.join(parts)}"
        lines, keep = self.tile_keep(masked)  # the forward's (codegen/generate.py)
        return None if keep is None else "\n".join([*lines, f"keep = {keep}"])

    def kept(self, x: str, keep: str | None) -> str:
        return x if keep is None else f"tl.where({keep}, {x}, 0.0)"

    def offset(self, load: n.Load, ctx: str, stride: str) -> str:
        t = kernel_ident(load.tensor)
        return " + ".join(f"tl.minimum(tl.maximum({self.printer(ix, ctx)}, 0), {derived_ident(t, f'size{k}')} - 1) * "
                          f"{derived_ident(t, f'{stride}{k}')}"
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
        self.tile_masked = masked
        keep = self.keep_line(masked, rows=False)
        lines = keep.split("\n") if keep else []
        lines += self.pair_stages([j.body for j in jsums], keep and "keep")
        for j in jsums:
            var = self.names[j.name]
            lines.append(f"{var} += tl.sum({self.kept(self.full(j.body, n.PAIR), keep and 'keep')}, 1)")
        return lines

    def dq_tile(self, masked: bool) -> list[str]:
        self.tile_masked = masked
        keep = self.keep_line(masked, rows=False)
        k = keep and "keep"
        lines = keep.split("\n") if keep else []
        more = self.bp.dqk_more
        extra = [self.bp.dv_weight] + [g.pair for g in self.bp.load_grads if g.pair is not None] if self.scan_mode else []
        lines += self.pair_stages([self.bp.ds, self.bp.dqk] + [e for _, e in more] + extra, k)
        lines.append(f"ds = {self.kept(self.full(self.bp.ds, n.PAIR), k)}")
        lines.append(f"dqk = {self.kept(self.full(self.bp.dqk, n.PAIR), k)}")
        mode = self.operand_mode("ds")
        ds = "dqk * ds_scale[:, None]" if mode == "scaled" else "dqk"
        qk = self.stages["qk"]
        lines += self.slice_lines("k", [qk])
        lines.append(f"dq += {self.mm(ds, self.operand(qk, 'k'), mode != 'fp32')}  # [BLOCK_M, BLOCK_N] x [BLOCK_N, BLOCK_D]")
        for name, e in more:  # the further slices: dq's features lo <= d < hi of each (fp32 tiles, unscaled)
            st = self.stages[name]
            lines.append(f"d{name} = {self.kept(self.full(e, n.PAIR), k)}")
            lines += self.slice_lines("k", [st])
            # dq holds dS's per-row scale (undone after the loop): so does each further term, in fp32
            x, sixteen = (f"d{name} * ds_scale[:, None]", False) if mode == "scaled" else (f"d{name}", self.sixteen(e))
            lines.append(f"dq += {self.mm(x, self.operand(st, 'k'), sixteen)}  # ∂/∂{name}")
        if self.scan_mode:
            lines += self.kv_atomics(k)
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
                    init=[f"{self.names[j.name]} = tl.zeros([BLOCK_M], dtype=tl.float32)" for j in nxt] +
                    self.carry_init(False), segments=self.loop_segments(),
                    loads_v=self.reads_dov([j.body for j in nxt]), dots=self.dots_for([j.body for j in nxt]),
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
            ptr = f"{derived_ident(t, 'grad')} + {self.offset(g.load, 'row', 'gstride')}"
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

    def kv_body(self, full: bool = False) -> list[str]:
        """One query tile of the dK/dV kernel: on a ``full`` one (inside the mask's full range for
        this key tile, no padded rows: ``QTiles``) only the residual atoms are evaluated."""
        bp = self.bp
        self.tile_masked = True  # the key tile is the program's: col_ok exists in every query tile
        keep = self.kv_full_keep() if full else self.keep_line(True, rows=True)
        k = keep and "keep"
        lines = [keep] if keep else []
        pair_grads = [g for g in bp.load_grads if g.pair is not None]
        lines += self.pair_stages([bp.ds, bp.dqk, bp.dv_weight] + [e for _, e in bp.dqk_more] + [g.pair for g in pair_grads])
        lines.append(f"ds = {self.kept(self.full(bp.ds, n.PAIR), k)}")
        lines.append(f"dqk = {self.kept(self.full(bp.dqk, n.PAIR), k)}")
        lines.append(f"w = {self.kept(self.full(bp.dv_weight, n.PAIR), k)}")
        for name, var, other, shape in (("w", "dv", "do_tile", "[BLOCK_N, BLOCK_M] x [BLOCK_M, BLOCK_DV]"),
                                         ("ds", "dk", "q_tile", "[BLOCK_N, BLOCK_M] x [BLOCK_M, BLOCK_D]")):
            mode = self.operand_mode(name)
            x = {"w": "w", "ds": "dqk"}[name]
            x = f"{x} * {name}_sigma" if mode == "scaled" else x
            other = self.operand(self.stages["qk"], "q") if name == "ds" else other
            lines.append(f"{var} += {self.mm(f'tl.trans({x})', other, mode != 'fp32')}  # {shape}")
        for name, e in bp.dqk_more:  # the further slices (fp32 tiles, unscaled: dk's scale applied to them)
            st = self.stages[name]
            lines.append(f"d{name} = {self.kept(self.full(e, n.PAIR), k)}")
            x, sixteen = ((f"d{name} * ds_sigma", False) if self.operand_mode("ds") == "scaled" else (f"d{name}", self.sixteen(e)))
            lines.append(f"dk += {self.mm(f'tl.trans({x})', self.operand(st, 'q'), sixteen)}  # ∂/∂{name}")
        return lines + self.pair_grad_lines(k)

    def pair_grad_lines(self, k: str | None, col_ok: str = "col_ok") -> list[str]:
        """Per-pair gradients of float tensor parameters on a tile: fp32 atomics."""
        lines = []
        for g in [g for g in self.bp.load_grads if g.pair is not None]:
            t = kernel_ident(g.load.tensor)
            ranks = set()
            for ix in g.load.indices:
                ranks |= n.free_ranks(ix, self.ranks)
            lines.append(f"if GRAD_{t}:  # ∂/∂{g.load.tensor}, per pair")
            lines.append(f"    gval = {self.kept(self.full(g.pair, n.PAIR), k)}")
            ptr = f"{derived_ident(t, 'grad')} + {self.offset(g.load, 'pair', 'gstride')}"
            if ranks >= {"i", "j"} and k is None:
                lines.append(f"    tl.atomic_add({ptr}, gval)")
            elif ranks >= {"i", "j"}:
                lines.append(f"    tl.atomic_add({ptr}, gval, mask={k} != 0)")  # != 0: an int1 mask whatever keep was built from
            elif "i" in ranks:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(gval, 1)[:, None], mask=row_ok[:, None])")
            elif "j" in ranks:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(gval, 0)[None, :], mask={col_ok}[None, :])")
            else:
                lines.append(f"    tl.atomic_add({ptr}, tl.sum(tl.sum(gval, 1), 0))")
        return lines

    def kv_full_keep(self) -> str | None:
        """The keep of a full query tile in the dK/dV kernel: the full tiles' residual atoms (the
        rows kernel's congruence form needs its per-row residues; here the atoms are printed)."""
        residual = self.bounds.full_residual
        if not residual:
            return None
        expr = residual[0]
        for r in residual[1:]:
            expr = n.Binary("and", expr, r, n.BOOL)
        return f"keep = {self.full(expr, n.PAIR)}"

    def full_range(self) -> tuple[str, str]:
        """This query tile's tile-aligned full key range [a, b) for ``QTiles`` (empty when the mask
        has several clauses: their full ranges are per piece)."""
        if self.bounds.runtime or len(self.bounds.clauses) > 1:
            return "0", "0"
        return "mid_lo", "mid_hi"

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
    # the rows kernel's pieces, with the per-row parts of its loops hoisted; then the dK/dV
    # kernel's, with the per-key parts of its query-tile loop hoisted
    more = [e for _, e in bplan.dqk_more]
    # scan mode: the dq loop also computes the partial sums' adjoints, W and the per-pair gradients
    scan_exprs = ([g.u for g in bplan.scans] + [bplan.dv_weight] +
                  [g.pair for g in bplan.load_grads if g.pair is not None]) if bplan.scans else []
    loop_exprs = b.loop_exprs() + [e for _, e in bplan.temps] + [bplan.ds, bplan.dqk, bplan.dv_weight] + more + \
        [j.body for j in bplan.jsums] + [g.pair for g in bplan.load_grads if g.pair is not None]
    key_range = b.key_range()
    rows_hoisted = b.hoist(loop_exprs, "i")
    # Query tiles the forward ran with exact exponents (huge logits: forward.py.jinja) are
    # recomputed alike by a second build of each kernel (EXACT): the same form of the weights, so
    # the gradients match the forward that produced the statistics.
    exact = shifted_exp(c)

    def rows_work() -> dict:
        return {"row_passes": b.row_passes(), "row_grads": b.row_grads(), "scale_lines": b.rows_scale_lines(),
                "dq_loop": {"loads_v": b.reads_dov([bplan.ds, bplan.dqk] + more + scan_exprs),
                            "dots": b.dots_for([bplan.ds, bplan.dqk] + more + scan_exprs),
                            "init": b.carry_init(True), "segments": b.loop_segments(),
                            "body": b.dq_tile(True), "full_body": b.dq_tile(False)}}

    def kv_work() -> dict:
        return {"body": b.kv_body(), "full_body": b.kv_body(full=True)}

    def exact_copy(work):
        if not exact:
            return None
        b.printer.exact_exp, b.printer.asm = True, not spec.interpret
        try:
            return work()
        finally:
            b.printer.exact_exp = False

    rows_fast, rows_exact = rows_work(), exact_copy(rows_work)
    b.printer.hoisted = {}
    kv_hoisted = b.hoist(loop_exprs, "j")
    kv_loads = b.kv_loads()
    kv_fast, kv_exact = (kv_work(), exact_copy(kv_work)) if not b.scan_mode else (None, None)
    # a full query tile has no padded rows: only then do its rows all hold loaded values
    whole_rows = "((t + 1) * BLOCK_M <= n_q)"
    full_a, full_b = b.full_range()
    if b.bounds.runtime:  # the runtime classification's column of this key tile
        first = end = "0"
        scan_what = "the runtime tile classification's column of this key tile"
        scan_lines = ["cls = tl.load(TileCls + off_b * stride_tcb + off_h * stride_tch + t * stride_tcm + pid_n, "
                      "mask=t_ok, other=0)",
                      "meets = t_ok & (cls != 0)",
                      f"full = meets & (cls == 2) & {whole_rows}"]
    else:
        clauses = len(b.bounds.clauses)
        first, end = ("lo_t", "end") if clauses == 1 else ("lo_t_1", "cursor")
        scan_what = "the key ranges the rows kernel stored"
        scan_lines = ["qt_ptrs = QTiles + off_b * stride_qtb + off_h * stride_qth + t * stride_qtm",
                      "first = tl.load(qt_ptrs, mask=t_ok, other=0)",
                      "end = tl.load(qt_ptrs + 1, mask=t_ok, other=0)",
                      "meets = t_ok & (start_n < end) & (start_n + BLOCK_N > first)",
                      "full_a = tl.load(qt_ptrs + 2, mask=t_ok, other=0)",
                      "full_b = tl.load(qt_ptrs + 3, mask=t_ok, other=0)",
                      f"full = meets & (start_n >= full_a) & (start_n + BLOCK_N <= full_b) & {whole_rows}"]
    kv_scale = b.kv_scale_lines()
    scan_lines += kv_scale["scan"]

    text = _env().get_template("backward.py.jinja").render(
        version=CODEGEN_VERSION,
        cascade_name=c.name,
        summary=summary,
        cascade_lines=cascade_text(c).rstrip("\n").split("\n"),
        rows_name=ROWS_KERNEL,
        kv_name=KV_KERNEL,
        tensors=[tensor_arg_names(p.name, len(p.dims)) for p in tensors],
        grads=[{"args": grad_arg_names(p.name, len(p.dims)), "flag": f"GRAD_{kernel_ident(p.name)}"} for p in grads],
        scalars=[kernel_ident(p.name) for p in scalars],
        upcast=".to(tl.float32)" if spec.upcast else "",
        dot_precision=b.dot_precision,
        uses_dout=bplan.uses_dout,
        uses_dl=bplan.uses_dl,
        stat_loads=b.stat_loads(),
        key_range=key_range,
        rows_hoisted=rows_hoisted,
        kv_hoisted=kv_hoisted,
        segments=b.segments(),
        runtime_tiles=b.bounds.runtime,
        range_first=first,
        range_end=end,
        full_first=full_a,
        full_end=full_b,
        scan_what=scan_what,
        scan_lines=scan_lines,
        rows_specialize=specialize_lines(spec.dtype, {**FORWARD_STRIDES, **_DO_DQ}),
        kv_specialize=specialize_lines(spec.dtype, {**{t: FORWARD_STRIDES[t] for t in "qkv"}, **_DO_DK_DV}),
        rows_fast=rows_fast,
        rows_exact=rows_exact,
        exact_line=(f"exact_tile = (tl.max(tl.load(st_ptrs + {len(bplan.stats)} * stride_sc, mask=row_ok, other=0.0), 0) "
                    f"> 1.5).to(tl.int32)" if exact else None),
        coef_stores=[f"tl.store(cf_ptrs + {k} * stride_cc, {b.names[name]}, mask=row_ok)"
                     for k, name in enumerate(bplan.coefs)],
        kv_loads=kv_loads,
        kv_dots=b.dots_for([bplan.ds, bplan.dqk, bplan.dv_weight] + more +
                           [g.pair for g in bplan.load_grads if g.pair is not None]),
        q_slices=b.slice_lines("q"),
        q_map=b.feature_map("q", "row_ok[:, None] & d_ok[None, :]"),
        k_map={True: b.feature_map("k", "d_ok[None, :]"), False: b.feature_map("k", "col_ok[:, None] & d_ok[None, :]")},
        dq_map=b.feature_grad("q", "dq", "row_ok[:, None] & d_ok[None, :]"),
        dk_map=b.feature_grad("k", "dk", "col_ok[:, None] & d_ok[None, :]"),
        kv_fast=kv_fast,
        kv_exact=kv_exact,
        needs_vnorm=b.needs_vnorm,
        scaled=b.scaled,
        kv_scale=kv_scale,
        scan_mode=b.scan_mode,
    )
    text = prune_helpers(text)
    return BackwardSource(text, tuple(tensors), tuple(scalars), tuple(grads), len(bplan.stats) + 1,
                          len(bplan.coefs), b.bounds.runtime,
                          tuple((name, b.operand_mode(name)) for name in ("ds", "w")), 4 + len(b.scaled),
                          b.needs_vnorm, bool(exact), b.scan_mode)
