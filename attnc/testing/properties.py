"""Properties of a variant's kernel beyond "matches the reference", and ``check``, which runs any
of them on drawn problems.

Each property is one public function ``assert_<name>(attn, problem)`` (``reference`` is
``assert_matches_reference``) that raises AssertionError with a report on failure, and
``NotApplicable`` when the definition does not promise the property (``why_not_applicable``
says why before anything runs). The kit runs kernels on CPU tensors, through Triton's
interpreter, so the properties that compare two kernel runs demand exactly equal values (NaN
matching NaN, −0 matching 0): a (batch, head) is computed by the same program whatever the other
batch elements and heads are, and a key the mask drops only ever meets the kernel as an exact 0
weight.
"""

from __future__ import annotations

import math
import warnings

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from ..ir import nodes as n
from ..ir.backward import BackwardError, derive_backward
from ..ir.printer import expr_text, stage_lhs
from ..runtime.compiler import Attention
from .kit import REL_FLOOR, TOLERANCE, Problem, assert_matches_reference, keep_mask, key_ranges, problems, report, resized, run

__all__ = [
    "PROPERTIES", "NotApplicable", "assert_batch_split", "assert_decode", "assert_empty_rows", "assert_gradients",
    "assert_head_permutation", "assert_masked_keys", "check", "why_not_applicable",
]

PROPERTIES = ("reference", "batch_split", "head_permutation", "masked_keys", "empty_rows", "gradients", "decode")

# Bounds on the relative error of each gradient (issue 5's), per input dtype.
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


class NotApplicable(ValueError):
    """The definition does not promise this property; the message says why."""


# ---------------------------------------------------------------------------- when a property applies


def _index_reads(c: n.Cascade, var: str, dim: str) -> tuple[set, set, str | None]:
    """How the cascade reads index variable ``var`` (``b`` or ``h``).

    Returns (axes, other_axes, stray): the (tensor, axis) pairs indexed by exactly ``var`` at an
    axis declared ``dim`` (``B`` or ``H``); the axes declared ``dim`` indexed by anything else;
    and the stage of the first other read of ``var`` (arithmetic, a comparison, an index at an
    axis not declared ``dim``), or None.
    """
    dims = {p.name: p.dims for p in c.params if p.kind == "tensor"}
    declared = n.Var(dim, n.INT)
    axes: set = set()
    other_axes: set = set()
    stray: list[str] = []

    def visit(e: n.Expr, stage: n.Stage) -> None:
        if isinstance(e, n.Var) and e.name == var:
            stray.append(f"{stage_lhs(stage)} = {_short(expr_text(stage.expr))}")
            return
        if isinstance(e, n.Load):
            for ax, index in enumerate(e.indices):
                if dims[e.tensor][ax] == declared:
                    if isinstance(index, n.Var) and index.name == var:
                        axes.add((e.tensor, ax))
                        continue
                    other_axes.add((e.tensor, ax))
                visit(index, stage)
            return
        for child in n.children(e):
            visit(child, stage)

    for stage in c.stages:
        visit(stage.expr, stage)
    return axes, other_axes, stray[0] if stray else None


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _batch_axes(c: n.Cascade) -> dict[str, list[int]]:
    """The axes declared ``B`` of each tensor parameter: the ones a batch split slices."""
    return {p.name: [ax for ax, d in enumerate(p.dims) if d == n.Var("B", n.INT)]
            for p in c.params if p.kind == "tensor" and n.Var("B", n.INT) in p.dims}


def _head_axes(c: n.Cascade) -> dict[str, list[int]]:
    """The axes declared ``H`` that the cascade indexes with ``h``: the ones a head permutation permutes."""
    axes, _, _ = _index_reads(c, "h", "H")
    out: dict[str, list[int]] = {}
    for tensor, ax in sorted(axes):
        out.setdefault(tensor, []).append(ax)
    return out


def why_not_applicable(attn: Attention, prop: str) -> str | None:
    """Why property ``prop`` does not apply to ``attn``'s definition, or None when it does.

    * ``batch_split`` applies when ``b`` is read only as the index of tensor axes declared ``B``
      (``doc[b, kv_idx]``) and every axis declared ``B`` is read that way: then batch element b
      of the whole call equals a call on element b alone, with those axes sliced to b.
    * ``head_permutation`` applies when ``h`` is read only as the index of tensor axes declared
      ``H`` (``sink[h]``; other reads of such an axis must not mix with ``h``): the kernel's
      only other dependence on the head is GQA's kv head ``h // (Hq // Hkv)``, which the
      permutation respects. A definition with ``h`` in arithmetic (``alibi``'s slopes) or
      indexing an axis declared otherwise (``_``, as @attnc.jit's captured tensors are) is out.
    * ``masked_keys`` and ``empty_rows`` apply to definitions with a mask.
    * ``gradients`` applies when the compiler derives a backward (not when the result moves with
      a max/min over the keys, see ``docs/backward.md``).
    * ``decode`` applies to every definition but the grid variants (whose tokens run permuted
      into grid tiles, which decoding does not follow yet).
    """
    if prop not in PROPERTIES:
        raise ValueError(f"unknown property {prop!r}; the properties are {', '.join(PROPERTIES)}")
    c = attn.cascade
    if prop in ("masked_keys", "empty_rows"):
        return None if c.has_mask else "it has no mask, so every key is kept and no row is empty"
    if prop == "decode":
        return None if c.grid is None else "it is a grid variant, whose tokens run permuted into grid tiles"
    if prop == "gradients":
        try:
            derive_backward(c)
        except BackwardError as err:
            return f"it has no backward: {err.message}"
        return None
    if prop == "batch_split":
        _, other, stray = _index_reads(c, "b", "B")
        if stray:
            return f"it reads `b` other than as the index of a tensor axis declared B, in {stray}"
        if other:
            tensor, ax = min(other)
            return (f"axis {ax} of `{tensor}` is declared B but read with an index other than `b`, "
                    "so one batch element's call cannot be given its slice")
        for p in c.params:
            if p.kind == "tensor" and any(isinstance(x, n.Var) and x.name == "B" and d != n.Var("B", n.INT)
                                          for d in p.dims for x in n.walk(d)):
                return f"`{p.name}` has a dimension computed from B, which a batch split cannot slice"
        return None
    if prop == "head_permutation":
        axes, other, stray = _index_reads(c, "h", "H")
        if stray:
            return f"it reads `h` other than as the index of a tensor axis declared H, in {stray}"
        mixed = sorted(axes & other)
        if mixed:
            tensor, ax = mixed[0]
            return f"axis {ax} of `{tensor}` is declared H and read both with `h` and with another index"
        return None
    return None


def _require(attn: Attention, prop: str) -> None:
    reason = why_not_applicable(attn, prop)
    if reason is not None:
        raise NotApplicable(f"property `{prop}` does not apply to {attn.name}: {reason}")


# ---------------------------------------------------------------------------- comparing two kernel runs


def _differ(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Elements that are not equal (NaN equals NaN here: the question is "did it change")."""
    return ~((got == want) | (torch.isnan(got) & torch.isnan(want)))


def _same_or_report(attn, problem, prop, why, got, want, got_lse, want_lse, labels, *, compared=None, notes=()):
    """None when the two runs agree exactly (on the ``compared`` rows), else the report."""
    rows = torch.ones(got.shape[:3], dtype=torch.bool) if compared is None else compared
    bad = _differ(got, want) & rows[..., None]
    bad_lse = (_differ(got_lse, want_lse) & rows) if got_lse is not None else torch.zeros_like(rows)
    if not bad.any() and not bad_lse.any():
        return None
    at = None
    if not bad.any():  # only lse differs: show its first row
        at = (*(int(x) for x in bad_lse.nonzero()[0]), 0)
    measure = (f"{int(bad.sum())} of {int(rows.sum()) * got.shape[-1]} compared output elements and "
               f"{int(bad_lse.sum())} lse values differ; expected exactly equal")
    return report(attn, problem, prop, why, got, want, labels=labels, measure=measure, compared=rows,
                  got_lse=got_lse, want_lse=want_lse, at=at, notes=notes)


def _cat(parts: list) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


# ---------------------------------------------------------------------------- the properties


def assert_batch_split(attn: Attention, problem: Problem) -> None:
    """Property ``batch_split``: calling the kernel on each batch element alone (tensor
    parameters sliced along their axes declared B) and concatenating gives the whole batch's
    output and lse, exactly."""
    _require(attn, "batch_split")
    if problem.B == 1:
        return
    q, k, v, params = problem.inputs()
    whole, whole_lse = run(attn, problem, q, k, v, params)
    axes = _batch_axes(attn.cascade)
    outs, lses = [], []
    for b in range(problem.B):
        part = dict(params)
        for name, axs in axes.items():  # @attnc.jit's captured tensors are declared `_`: never here
            for ax in axs:
                part[name] = part[name].narrow(ax, b, 1)
        out, lse = run(attn, problem, q[b:b + 1], k[b:b + 1], v[b:b + 1], part)
        outs.append(out)
        lses.append(lse)
    sliced = ", ".join(sorted(axes)) or "none"
    text = _same_or_report(attn, problem, "batch_split", "batch elements run one at a time differ from the "
                           "whole batch", _cat(outs), whole, _cat(lses), whole_lse, ("one at a time", "whole batch"),
                           notes=[f"tensor parameters sliced along B: {sliced}"])
    if text:
        raise AssertionError(text)


def _head_permutation(problem: Problem) -> torch.Tensor:
    """A permutation ``perm`` of the query heads that respects GQA: new head h' is old head
    perm[h'], and all heads of a kv group move together to one kv group (any order within it)."""
    # The sizes join the seed: hypothesis draws seed 0 often, and one fixed permutation per head
    # count can be blind to a bug (a kernel reading kv head h % Hkv passes under the reversal).
    p = problem
    g = torch.Generator().manual_seed(hash((p.seed, p.B, p.Nq, p.Nkv, p.D, p.Dv)) % 2**62)
    group = p.Hq // p.Hkv
    for _ in range(8):  # a permutation other than the identity
        kv = torch.randperm(p.Hkv, generator=g)
        perm = torch.cat([kv[x] * group + torch.randperm(group, generator=g) for x in range(p.Hkv)])
        if not torch.equal(perm, torch.arange(p.Hq)):
            return perm
    return torch.arange(p.Hq).flip(0)  # the reversal maps groups onto groups too


def assert_head_permutation(attn: Attention, problem: Problem) -> None:
    """Property ``head_permutation``: permuting the query heads, the kv heads consistently with
    GQA (query head h reads kv head h // (Hq // Hkv)) and the H axes of tensor parameters read
    with ``h`` permutes the output and lse the same way, exactly."""
    _require(attn, "head_permutation")
    if problem.Hq == 1:
        return
    q, k, v, params = problem.inputs()
    out, lse = run(attn, problem, q, k, v, params)
    perm = _head_permutation(problem)
    kv_perm = perm[:: problem.Hq // problem.Hkv] // (problem.Hq // problem.Hkv)
    permuted = dict(params)
    axes = _head_axes(attn.cascade)
    for name, axs in axes.items():
        for ax in axs:
            permuted[name] = permuted[name].index_select(ax, perm)
    out_p, lse_p = run(attn, problem, q[:, perm], k[:, kv_perm], v[:, kv_perm], permuted)
    back = torch.empty_like(out_p)  # the permuted run's output, in the original head order
    back[:, perm] = out_p
    back_lse = None
    if lse_p is not None:
        back_lse = torch.empty_like(lse_p)
        back_lse[:, perm] = lse_p
    notes = [(f"query heads permuted: new head h' is old head {perm.tolist()}[h'] (kv heads {kv_perm.tolist()}); "
              f"tensor parameters permuted along H: {', '.join(sorted(axes)) or 'none'}"),
             "values are shown in the original head order"]
    text = _same_or_report(attn, problem, "head_permutation", "permuting the heads does not just permute the output",
                           back, out, back_lse, lse, ("permuted run", "original run"), notes=notes)
    if text:
        raise AssertionError(text)


def _garbage_keys(n_rows: int, dim: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Key rows no kernel may look at: NaN, ±inf and ±huge finite values, mixed per element."""
    big = torch.finfo(dtype).max / 2
    table = torch.tensor([math.nan, math.inf, -math.inf, big, -big], dtype=torch.float32)
    return table[torch.randint(0, len(table), (n_rows, dim), generator=g)].to(dtype)


def _huge_values(n_rows: int, dim: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Finite value rows of huge magnitude (a dropped key's weight is an exact 0, and 0 · x = 0)."""
    big = torch.finfo(dtype).max / 2
    sign = torch.randint(0, 2, (n_rows, dim), generator=g) * 2 - 1
    return (sign * big * (0.5 + 0.5 * torch.rand(n_rows, dim, generator=g))).to(dtype)


def assert_masked_keys(attn: Attention, problem: Problem) -> None:
    """Property ``masked_keys``: keys the mask drops have no influence on the rows that drop them.

    For each (batch, kv head) a row r is picked and every key that row drops in all query heads
    of the group is overwritten: k with NaN, ±inf and ±huge values, v with ±huge finite values.
    The rows that keep none of the overwritten keys — r among them — must give the same output
    and lse, exactly. r is a random row that keeps a key for odd seeds; for even seeds (0,
    where hypothesis shrinks to, among them) the row that keeps the fewest, so the most keys are
    overwritten and a failure does not hinge on the seed.

    Why v stays finite: the weight of a dropped key is an exact 0, and 0 · NaN = NaN, so NaN or
    inf in a dropped key's v poisons the kernel's rows whose key tiles load that key (and the
    float64 reference's rows too: it contracts the 0 weights with v as well). What the kernel
    promises is that a dropped key's k, and its finite v, cannot matter.
    """
    _require(attn, "masked_keys")
    keep = keep_mask(attn, problem)
    B, Hq, Hkv, Nq = problem.B, problem.Hq, problem.Hkv, problem.Nq
    group = Hq // Hkv
    by_group = keep.view(B, Hkv, group, Nq, problem.Nkv)
    g = torch.Generator().manual_seed(problem.seed ^ 0x3A5C)
    kept = by_group.any(2).sum(-1)  # [B, Hkv, Nq]: keys the row keeps in some head of the group
    dropped = torch.zeros(B, Hkv, problem.Nkv, dtype=torch.bool)
    for b in range(B):
        for x in range(Hkv):
            rows = kept[b, x].nonzero().flatten()  # a row that keeps something, if any does
            pool = rows if len(rows) else torch.arange(Nq)
            if problem.seed % 2 == 0:
                r = int(pool[kept[b, x, pool].argmin()])
            else:
                r = int(pool[torch.randint(0, len(pool), (1,), generator=g)])
            dropped[b, x] = ~by_group[b, x, :, r].any(0)
    if not dropped.any():
        return
    compared = ~(keep & dropped.repeat_interleave(group, dim=1)[:, :, None, :]).any(-1)  # [B, Hq, Nq]
    q, k, v, params = problem.inputs()
    out, lse = run(attn, problem, q, k, v, params)
    k2, v2 = k.clone(), v.clone()
    count = int(dropped.sum())
    k2[dropped] = _garbage_keys(count, problem.D, problem.dtype, g)
    v2[dropped] = _huge_values(count, problem.Dv, problem.dtype, g)
    with warnings.catch_warnings():
        # Rows the comparison skips (and the tile's padding rows) may see only NaN scores, and the
        # interpreter's max (numpy's nanmax, NaN-ignoring like tl.max) warns about such a row.
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        out2, lse2 = run(attn, problem, q, k2, v2, params)
    groups = [f"b={b}, kv head {x}: {key_ranges(dropped[b, x]) or 'none'}" for b in range(B) for x in range(Hkv)]
    shown = "; ".join(groups[:4]) + (f"; … ({len(groups) - 4} more)" if len(groups) > 4 else "")
    notes = [f"overwritten keys (k: NaN, ±inf, ±{torch.finfo(problem.dtype).max / 2:.3g}; v: ±huge, finite): {shown}",
             f"compared rows: the {int(compared.sum())} of {compared.numel()} that keep none of them"]
    text = _same_or_report(attn, problem, "masked_keys", "keys the mask drops change the output",
                           out2, out, lse2, lse, ("overwritten", "original"), compared=compared, notes=notes)
    if text:
        raise AssertionError(text)


def assert_empty_rows(attn: Attention, problem: Problem) -> None:
    """Property ``empty_rows``: a row whose mask keeps no key (by the reference's mask) has out
    exactly 0 and, when the definition has lse, lse = −inf; never NaN — whatever the norm.

    A problem that leaves no row empty is replaced by the same problem with more queries than
    keys (the lengths swapped, or Nq + 1 when equal): the library's masks align bottom-right, so
    its first Nq − Nkv queries sit before the first key, where causal-like masks keep nothing.
    Whether a row is empty is still the mask's decision; masks that never empty a row pass. A grid
    variant's problem is never resized (its tokens must form the grid, n_q = n_kv)."""
    _require(attn, "empty_rows")
    empty = ~keep_mask(attn, problem).any(-1)  # [B, Hq, Nq]
    notes = []
    if not empty.any():
        if attn.cascade.grid is not None:
            return
        drawn, problem = problem, _queries_past_keys(attn, problem)
        empty = ~keep_mask(attn, problem).any(-1)
        if not empty.any():
            return
        notes.append(f"the drawn problem (Nq={drawn.Nq}, Nkv={drawn.Nkv}) has no empty row; this is it with "
                     "more queries than keys")
    q, k, v, params = problem.inputs()
    out, lse = run(attn, problem, q, k, v, params)
    want = torch.where(empty[..., None], torch.zeros_like(out), out)
    bad = empty[..., None] & (out != 0)  # NaN != 0 too
    want_lse = bad_lse = None
    if lse is not None:
        want_lse = torch.where(empty, torch.full_like(lse, -math.inf), lse)
        bad_lse = empty & ~torch.isneginf(lse)
    if bad.any() or (bad_lse is not None and bad_lse.any()):
        at = None if bad.any() else (*(int(x) for x in bad_lse.nonzero()[0]), 0)
        why = ("a row with no kept key is not exactly 0" if bad.any()
               else "a row with no kept key has an lse other than -inf")
        measure = (f"{int(bad.any(-1).sum())} of {int(empty.sum())} empty rows have a nonzero output"
                   + (f", {int(bad_lse.sum())} an lse other than -inf" if bad_lse is not None else ""))
        raise AssertionError(report(attn, problem, "empty_rows", why, out, want, labels=("kernel", "required"),
                                    measure=measure, compared=empty, got_lse=lse, want_lse=want_lse, at=at,
                                    notes=notes))


def assert_gradients(attn: Attention, problem: Problem) -> None:
    """Property ``gradients``: dq, dk, dv and the gradients of float tensor parameters, from the
    kernels, against torch.autograd through the float64 reference on the same inputs, for a random
    upstream gradient of out (and of lse when the definition has one). Each gradient's relative
    error (Frobenius norm of the difference / of the reference's, the denominator at least
    REL_FLOOR of dv's norm scaled to its size: a gradient that cancels to ~0, like dq with one
    key, is not measured against its rounding noise) must stay within the dtype's bound."""
    _require(attn, "gradients")
    q, k, v, params = problem.inputs()
    floats = {name: t for name, t in params.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    leaves = [x.requires_grad_(True) for x in (q, k, v)] + [t.requires_grad_(True) for t in floats.values()]
    got, got_lse = run(attn, problem, q, k, v, params)
    g = torch.Generator().manual_seed(problem.seed + 1)
    d_out = torch.randn(got.shape, generator=g, dtype=torch.float64).to(problem.device)
    d_lse = torch.randn(got.shape[:-1], generator=g, dtype=torch.float64).to(problem.device)
    loss = (got.double() * d_out).sum() + ((got_lse.double().nan_to_num(0, 0, 0) * d_lse).sum()
                                           if got_lse is not None else 0)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    ref_leaves = [x.detach().double().requires_grad_(True) for x in leaves]
    r_q, r_k, r_v, *r_params = ref_leaves
    ref_params = {**params, **dict(zip(floats, r_params, strict=True))}
    ref = attn.reference(r_q, r_k, r_v, scale=problem.scale, return_lse=got_lse is not None, **ref_params)
    ref, ref_lse = ref if got_lse is not None else (ref, None)
    ref_loss = (ref * d_out).sum() + ((ref_lse.nan_to_num(0, 0, 0) * d_lse).sum() if ref_lse is not None else 0)
    want = torch.autograd.grad(ref_loss, ref_leaves, allow_unused=True)
    names = ["dq", "dk", "dv", *(f"d{name}" for name in floats)]
    bound = GRAD_TOLERANCE[problem.dtype]
    dv_scale = float(want[2].norm()) / max(want[2].numel(), 1) ** 0.5 if want[2] is not None else 0.0
    for name, got_g, want_g in zip(names, grads, want, strict=True):
        want_g = torch.zeros_like(ref_leaves[names.index(name)]) if want_g is None else want_g
        got_g = torch.zeros_like(want_g) if got_g is None else got_g.double()
        denom = max(float(want_g.norm()), REL_FLOOR * dv_scale * want_g.numel() ** 0.5)
        rel = float((got_g - want_g).norm()) / denom if denom > 0 else float((got_g - want_g).norm())
        why = (f"NaN in the kernel's {name}" if torch.isnan(got_g).any() and not torch.isnan(want_g).any()
               else None if rel <= bound else f"the kernel's {name} disagrees with the reference's")
        if why:
            flat = int((got_g - want_g).abs().nan_to_num(float("inf")).flatten().argmax())
            at = tuple(int(x) for x in torch.unravel_index(torch.tensor(flat), want_g.shape))
            raise AssertionError(
                f"property `gradients` failed for {attn.name}: {why}\n  problem: {problem!r}\n"
                f"  relative error {rel:.3e} (norm of the difference / of the reference's {name}), "
                f"bound {bound:.0e}\n  worst element {name}{list(at)}: kernel {float(got_g.flatten()[flat]):.6g}, "
                f"reference {float(want_g.flatten()[flat]):.6g}")


def assert_decode(attn: Attention, problem: Problem) -> None:
    """Property ``decode``: the last rows of a self-attention (the problem with ``n_q = n_kv``),
    computed by ``attn.decode`` from a paged cache of the keys — pages of 16 in shuffled order,
    NaN in the slack past the sequence, the keys split over two programs where the variant
    splits — equal those rows of the full call, to the dtype's bound (two kernels, two orders of
    summation); lse too, and −inf on the same rows."""
    from ..runtime.decode import append, split_problem

    _require(attn, "decode")
    p = resized(attn, problem, problem.Nkv, problem.Nkv)
    if p.Nkv == 0:
        return
    q, k, v, params = p.inputs()
    full, full_lse = run(attn, p, q, k, v, params)
    n_new, page = 1 + p.seed % min(p.Nkv, 4), 16
    per = -(-p.Nkv // page)
    g = torch.Generator().manual_seed(p.seed)
    table = torch.randperm(p.B * per, generator=g).view(p.B, per)
    k_pages = torch.full((p.B * per, page, p.Hkv, p.D), float("nan"), dtype=p.dtype)
    v_pages = torch.full((p.B * per, page, p.Hkv, p.Dv), float("nan"), dtype=p.dtype)
    append(k_pages, v_pages, table, page, "NHD", k, v, torch.zeros(p.B, dtype=torch.int64))
    splits = 1 if split_problem(attn, p.dtype, q.device) else 2
    lse_wanted = attn.cascade.has_lse
    with torch.no_grad():
        got = attn.decode(q[:, :, -n_new:], k_pages, v_pages, p.Nkv, block_table=table, num_splits=splits,
                          scale=p.scale, return_lse=lse_wanted, **params)
    got, got_lse = got if lse_wanted else (got, None)
    want, want_lse = full[:, :, -n_new:], None if full_lse is None else full_lse[:, :, -n_new:]
    bound = TOLERANCE[p.dtype]
    natural = float(v.double().pow(2).mean().sqrt()) * want.numel() ** 0.5 if v.numel() else 0.0
    denom = max(float(want.double().norm()), REL_FLOOR * natural)
    diff = float((got.double() - want.double()).norm())
    rel = diff / denom if denom > 0 else diff
    why = None
    if torch.isnan(got).any() and not torch.isnan(want).any():
        why = "NaN in decode's output"
    elif not rel <= bound:
        why = "decode's rows disagree with the full call's"
    elif lse_wanted and not torch.equal(torch.isneginf(got_lse), torch.isneginf(want_lse)):
        why = "decode's lse is -inf on different rows than the full call's"
    if why is not None:
        rows = torch.zeros(p.B, p.Hq, p.Nkv, dtype=torch.bool)
        rows[:, :, -n_new:] = True
        pad = lambda x: torch.cat([x.new_zeros((*x.shape[:2], p.Nkv - n_new, *x.shape[3:])), x], 2)  # noqa: E731
        raise AssertionError(report(
            attn, p, "decode", why, pad(got), full, labels=("decode", "full call"), compared=rows,
            measure=f"relative error {rel:.3e}, bound {bound:.0e}",
            notes=[f"the last {n_new} rows decoded from pages of {page} (block table {table.tolist()}), "
                   f"{splits} split{'s' if splits > 1 else ''}"]))


CHECKS = {
    "reference": assert_matches_reference,
    "batch_split": assert_batch_split,
    "head_permutation": assert_head_permutation,
    "masked_keys": assert_masked_keys,
    "empty_rows": assert_empty_rows,
    "gradients": assert_gradients,
    "decode": assert_decode,
}


# ---------------------------------------------------------------------------- check


def _resolve(attn: Attention, properties) -> list[str]:
    """The property names to run: validated, deduplicated, ``"all"`` expanded to those that apply."""
    if isinstance(properties, str):
        properties = (properties,)
    names = list(dict.fromkeys(properties))
    unknown = [x for x in names if x not in PROPERTIES and x != "all"]
    if unknown or not names:
        got = f"unknown property {unknown[0]!r}" if unknown else "no property"
        raise ValueError(f"`properties`: {got}; choose from {', '.join(PROPERTIES)} (or 'all')")
    if "all" in names:
        return [x for x in PROPERTIES if why_not_applicable(attn, x) is None]
    for x in names:
        _require(attn, x)
    return names


def _queries_past_keys(attn: Attention, problem: Problem) -> Problem:
    """The problem with more queries than keys: with bottom-right aligned masks (the library's)
    the first Nq − Nkv queries sit before the first key, where causal-like masks keep nothing."""
    hi, lo = max(problem.Nq, problem.Nkv), min(problem.Nq, problem.Nkv)
    return resized(attn, problem, hi + (hi == lo), lo)


def check(attn: Attention, *, examples: int = 50, seed: int | None = None, properties=("reference",),
          **problem_options) -> None:
    """Property-test ``attn`` on ``examples`` drawn problems; raises the shrunk AssertionError
    report of the first property that fails. ``properties`` names them (see ``PROPERTIES``), or
    is ``"all"`` for every property that applies to the definition; naming one that does not
    apply raises ``NotApplicable``. ``problem_options`` go to ``problems``."""
    names = _resolve(attn, properties)
    strategy = problems(attn, **problem_options)
    # No explain phase: after a first failure it traces every run with sys.settrace, which slows
    # the interpreted kernels tenfold while shrinking, for a note the report does not need.
    settings_ = settings(max_examples=examples, deadline=None, database=None, report_multiple_bugs=False,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                         phases=[p for p in Phase if p is not Phase.explain], print_blob=False)

    @settings_
    @given(strategy)
    def run_properties(problem):
        for name in names:
            CHECKS[name](attn, problem)

    if seed is not None:
        run_properties = hypothesis_seed(seed)(run_properties)
    run_properties()
