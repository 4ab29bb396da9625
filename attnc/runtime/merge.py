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
