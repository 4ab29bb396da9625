"""``attnc.merge``: two attention results over disjoint sets of keys → the result over their union.

For a softmax-normalised output ``out = Σ_j e^{s_j} v_j / Σ_j e^{s_j}`` with ``lse = log Σ_j e^{s_j}``,
the parts over key sets A and B combine exactly:

    lse = log(e^{lse_a} + e^{lse_b}),   out = e^{lse_a − lse} · out_a + e^{lse_b − lse} · out_b

(FlashInfer's ``merge_state``; the step of flash-decoding, cascade inference over a shared prefix
and ring attention). An empty part (``lse = −inf``, attnc's rule for a row with no kept key)
contributes nothing, whatever its ``out`` holds — even NaN; two empty parts give ``out = 0``,
``lse = −inf``. Computed in float32 (float64 inputs stay float64); ``out`` comes back in
``out_a``'s dtype, ``lse`` in float32 or float64. Differentiable in all four inputs.
"""

from __future__ import annotations

import torch

from ..ir import nodes as n


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """``(out, lse)`` over the union of the keys of two parts: outs ``[..., Dv]``, lses ``[...]``
    (natural log; attnc's, FlexAttention's, FlashAttention's and FlashInfer's own — FlashInfer's
    log2 LSE must be multiplied by ln 2 first)."""
    for name, t in (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a tensor, got {type(t).__name__}")
    if out_a.shape != out_b.shape:
        raise ValueError(f"out_a {tuple(out_a.shape)} and out_b {tuple(out_b.shape)} differ in shape")
    if lse_a.shape != lse_b.shape or lse_a.shape != out_a.shape[:-1]:
        raise ValueError(f"the lses must have the outs' shape without the last dimension, {tuple(out_a.shape[:-1])}; "
                         f"got lse_a {tuple(lse_a.shape)} and lse_b {tuple(lse_b.shape)}")
    if not (out_a.dtype.is_floating_point and out_b.dtype.is_floating_point):
        raise TypeError(f"the outs must be floating point, got {out_a.dtype} and {out_b.dtype}")
    wide = torch.float64 if torch.float64 in (out_a.dtype, lse_a.dtype, out_b.dtype, lse_b.dtype) else torch.float32
    la, lb = lse_a.to(wide), lse_b.to(wide)
    top = torch.maximum(la, lb)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # both empty: any finite shift
    wa, wb = torch.exp(la - top), torch.exp(lb - top)  # exactly 0 for an empty part
    total = wa + wb
    some = total != 0  # NaN (a NaN lse) is not "empty": it reaches out and lse
    lse = torch.where(some, top + torch.log(torch.where(some, total, torch.ones_like(total))),
                      torch.full_like(total, -float("inf")))
    wa, wb = (torch.where(some, w / torch.where(some, total, torch.ones_like(total)), torch.zeros_like(w)) for w in (wa, wb))
    # a part of weight 0 adds an exact 0, even where its out is NaN or inf (selected before the
    # product, so no NaN reaches a gradient either)
    zero = torch.zeros((), dtype=wide, device=out_a.device)
    part_a = wa.unsqueeze(-1) * torch.where((wa > 0).unsqueeze(-1), out_a.to(wide), zero)
    part_b = wb.unsqueeze(-1) * torch.where((wb > 0).unsqueeze(-1), out_b.to(wide), zero)
    return (part_a + part_b).to(out_a.dtype), lse



def part_rule(cascade: n.Cascade) -> tuple[str | None, str | None]:
    """How ``cascade``'s rows over disjoint key sets combine into the rows over their union:
    ``("lse", None)`` by ``merge``, ``("sum", None)`` by adding the outputs, or ``(None, why
    not)``. Decided from the output's structure, never from a variant's name:

    * ``"lse"``: ``out = acc / z``, ``lse = m + log z``, ``z = Σ_j{keep} e``, ``acc = Σ_j{keep}
      e·v``, ``e = exp(x − m)`` for any pair score ``x`` and any row value ``m``. Then ``out =
      Σ e^x v / Σ e^x`` and ``lse = log Σ e^x`` whatever ``m`` is (it cancels): ``merge``'s form.
    * ``"sum"``: ``out = Σ_j{keep} w·v``, or that times or divided by a value that reads no
      reduction (a parameter, a size: the same for every part), and no lse: sums add."""
    if cascade.grid is not None:
        return None, "its tokens form a grid, whose calls are not split over key sets"
    stages = {st.name: st for st in cascade.stages}

    def ref(e, ranks=None):
        ok = isinstance(e, n.Ref) and (ranks is None or stages[e.stage].ranks == ranks)
        return e.stage if ok else None

    def over_keys(e) -> bool:  # reads a sum/max over the keys or along the row, directly or through stages
        return any(isinstance(x, (n.Reduce, n.Scan, n.Contract)) or (isinstance(x, n.Ref) and over_keys(stages[x.stage].expr))
                   for x in n.walk(e))

    out = cascade.stage("out").expr
    if cascade.has_mask and over_keys(cascade.stage("keep").expr):
        return None, "its mask reads a sum or maximum over the keys, which a part would take over its keys only"
    if not cascade.has_lse:
        acc = ref(out.left) if isinstance(out, n.Binary) and out.op in ("*", "/") else None
        factor = out.right if acc else None
        contract = out if isinstance(out, n.Contract) else stages[acc].expr if acc else None
        if isinstance(contract, n.Contract) and not over_keys(contract.weight) and (factor is None or not over_keys(factor)):
            return "sum", None
        return None, ("it defines no lse[i], and its out[i] is not a sum over the keys of weights that read no "
                      "other sum over them (times a constant), so parts of it do not combine")
    lse = cascade.stage("lse").expr
    if not (isinstance(out, n.Binary) and out.op == "/" and ref(out.left) and ref(out.right)):
        return None, "its out[i] is not a contraction divided by a row sum (acc / z)"
    acc, z = stages[out.left.stage].expr, stages[out.right.stage].expr
    if not (isinstance(acc, n.Contract) and isinstance(z, n.Reduce) and z.op == "sum" and acc.weight == z.body):
        return None, (f"its out[i] divides by {out.right.stage}[i], which is not the sum over the keys of the "
                      f"weights it sums v with (a constant term there, such as a sink's, every part would add again)")
    weight = stages[ref(z.body, n.PAIR)].expr if ref(z.body, n.PAIR) else z.body
    if not (isinstance(weight, n.Call) and weight.fn == "exp" and isinstance(weight.args[0], n.Binary)
            and weight.args[0].op == "-" and ref(weight.args[0].right, n.ROW)):
        return None, "its weights are not exp(score − m[i]) for a row value m"
    if over_keys(weight.args[0].left):
        return None, "its scores read a sum or maximum over the keys, which a part would take over its keys only"
    m = weight.args[0].right.stage
    terms = (lse.left, lse.right) if isinstance(lse, n.Binary) and lse.op == "+" else ()
    logs = [t for t in terms if isinstance(t, n.Call) and t.fn == "log" and ref(t.args[0]) == out.right.stage]
    if not (logs and any(ref(t) == m for t in terms)):
        return None, f"its lse[i] is not {m}[i] + log({out.right.stage}[i]), the log of the sum its output divides by"
    return "lse", None
