"""autograd and torch.compile: the kernels as two torch custom ops.

``attnc::forward`` runs the forward kernel and also returns the per-row statistics it saved;
``attnc::backward`` runs the two generated backward kernels. ``torch.library.register_autograd``
joins them, so ``attn(q, k, v, **params)`` is differentiable in q, k, v and in every float
tensor parameter, and ``torch.compile`` sees one opaque op per call — no graph break, no
recompile when sizes or parameter values change. Which cascade to run travels as a string key
into a process-wide registry, because a custom op's schema cannot hold a cascade.
"""

from __future__ import annotations

import hashlib

import torch

from ..ir import nodes as n
from ..ir.printer import cascade_text

_REGISTRY: dict[str, object] = {}  # key → Attention


def register(attn) -> str:
    """The registry key of ``attn``'s cascade (called when an ``Attention`` is made)."""
    key = hashlib.sha256(cascade_text(attn.cascade).encode()).hexdigest()[:24]
    _REGISTRY.setdefault(key, attn)
    return key


# Scalar parameters travel as one float64 CPU tensor, not list[float]: torch.compile specializes
# a float argument of a custom op on its value (a new `cap` recompiled); a tensor built from the
# traced SymInt/SymFloat values is an input of the graph instead. float64 holds every int32 and
# float32 value exactly.
@torch.library.custom_op("attnc::forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: list[torch.Tensor],
             scalars: torch.Tensor, key: str, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    attn = _REGISTRY[key]
    out, lse, stats = attn.launch_forward(q, k, v, tensors, attn.scalars_from(scalars), scale, save_stats=True)
    return out, lse, stats


@_forward.register_fake
def _(q, k, v, tensors, scalars, key, scale):
    attn = _REGISTRY[key]
    B, Hq, Nq, _ = q.shape
    n_stats = sum(isinstance(st.expr, n.Reduce) for st in attn.cascade.stages) + 1
    return (q.new_empty((B, Hq, Nq, v.shape[-1])), q.new_empty((B, Hq, Nq), dtype=torch.float32),
            q.new_empty((B, Hq, Nq, n_stats), dtype=torch.float32))


@torch.library.custom_op("attnc::backward", mutates_args=())
def _backward(dout: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              out: torch.Tensor, stats: torch.Tensor, tensors: list[torch.Tensor], scalars: torch.Tensor, key: str,
              scale: float, grad_mask: list[bool]) -> list[torch.Tensor]:
    attn = _REGISTRY[key]
    dq, dk, dv, grads = attn.launch_backward(dout, dlse, q, k, v, out, stats, tensors, attn.scalars_from(scalars),
                                             scale, grad_mask)
    # a custom op returns tensors only: a parameter without a gradient gets an empty one
    return [dq, dk, dv] + [g if g is not None else q.new_empty(0) for g in grads]


@_backward.register_fake
def _(dout, dlse, q, k, v, out, stats, tensors, scalars, key, scale, grad_mask):
    attn = _REGISTRY[key]
    specs = [p for p in attn.cascade.params if p.kind == "tensor"]
    # contiguous, as the kernels write them, whatever the inputs' strides (q/k/v are often
    # transposed views of a qkv projection)
    grads = [t.new_empty(t.shape) if m and p.elem == n.FLOAT else q.new_empty(0)
             for p, t, m in zip(specs, tensors, grad_mask, strict=True)]
    return [q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)] + grads


def _setup_context(ctx, inputs, output):
    q, k, v, tensors, scalars, key, scale = inputs
    out, _lse, stats = output
    ctx.save_for_backward(q, k, v, out, stats, scalars, *tensors)
    ctx.key, ctx.scale = key, scale
    ctx.grad_mask = [bool(t.requires_grad) for t in tensors]


def _backward_rule(ctx, dout, dlse, _dstats):
    q, k, v, out, stats, scalars, *tensors = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    if dlse is None:
        dlse = torch.zeros(out.shape[:-1], dtype=torch.float32, device=out.device)
    res = torch.ops.attnc.backward(dout, dlse.to(torch.float32), q, k, v, out, stats, tensors, scalars, ctx.key,
                                   ctx.scale, ctx.grad_mask)
    dq, dk, dv, *grads = res
    grads = [g if m else None for g, m in zip(grads, ctx.grad_mask, strict=True)]
    return dq, dk, dv, grads, None, None, None


torch.library.register_autograd("attnc::forward", _backward_rule, setup_context=_setup_context)


def pack_scalars(scalars: list) -> torch.Tensor:
    """Scalar parameters (numbers, or torch.compile's SymInt/SymFloat) as the ops carry them."""
    return torch.tensor(list(scalars), dtype=torch.float64)


def attention_op(attn, q, k, v, tensors: list, scalars: list, scale: float):
    """``(out, lse)`` through the custom op: differentiable, and traceable by torch.compile."""
    out, lse, _stats = torch.ops.attnc.forward(q, k, v, list(tensors), pack_scalars(scalars), attn.op_key,
                                               float(scale))
    return out, lse


# ---------------------------------------------------------------------------- grid variants
# A grid variant's call plans a token permutation on the host (tile shapes, a classification per
# candidate, caches) before its kernels run: Python torch.compile cannot trace. Under compile the
# whole call is one op; its backward runs the permuted forward once more for its statistics
# (correctness first; the plan is cached), then the permuted backward. Parameters travel as in
# `attnc::forward`.

def _grid_params(attn, tensors: list, scalars: torch.Tensor) -> dict:
    values = iter(tensors)
    numbers = iter(attn.scalars_from(scalars))
    return {p.name: next(values) if p.kind == "tensor" else next(numbers) for p in attn.cascade.params}


@torch.library.custom_op("attnc::grid_forward", mutates_args=())
def _grid_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: list[torch.Tensor],
                  scalars: torch.Tensor, key: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    attn = _REGISTRY[key]
    with torch.no_grad():
        out, lse = attn(q, k, v, scale=scale, return_lse=True, **_grid_params(attn, tensors, scalars))
    return out, lse


@_grid_forward.register_fake
def _(q, k, v, tensors, scalars, key, scale):
    B, Hq, Nq, _ = q.shape
    return q.new_empty((B, Hq, Nq, v.shape[-1])), q.new_empty((B, Hq, Nq), dtype=torch.float32)


@torch.library.custom_op("attnc::grid_backward", mutates_args=())
def _grid_backward(dout: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   tensors: list[torch.Tensor], scalars: torch.Tensor, key: str, scale: float,
                   grad_mask: list[bool]) -> list[torch.Tensor]:
    attn = _REGISTRY[key]
    params = _grid_params(attn, tensors, scalars)
    specs = [p for p in attn.cascade.params if p.kind == "tensor"]
    wanted = {p.name for p, m in zip(specs, grad_mask, strict=True) if m}
    dq, dk, dv, grads = attn.grid_backward(dout, dlse, q, k, v, scale, params, wanted)
    return [dq, dk, dv] + [grads[p.name].to(t.dtype) if p.name in grads else
                           (torch.zeros(t.shape, dtype=t.dtype, device=t.device) if m else q.new_empty(0))
                           for p, t, m in zip(specs, tensors, grad_mask, strict=True)]


@_grid_backward.register_fake
def _(dout, dlse, q, k, v, tensors, scalars, key, scale, grad_mask):
    return [q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)] + [
        t.new_empty(t.shape) if m else q.new_empty(0) for t, m in zip(tensors, grad_mask, strict=True)]


def _grid_setup_context(ctx, inputs, output):
    q, k, v, tensors, scalars, key, scale = inputs
    ctx.save_for_backward(q, k, v, scalars, *tensors)
    ctx.key, ctx.scale = key, scale
    ctx.grad_mask = [bool(t.requires_grad) and t.is_floating_point() for t in tensors]


def _grid_backward_rule(ctx, dout, dlse):
    q, k, v, scalars, *tensors = ctx.saved_tensors
    dout = torch.zeros(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=q.device) if dout is None else dout
    dlse = torch.zeros(q.shape[:3], dtype=torch.float32, device=q.device) if dlse is None else dlse
    dq, dk, dv, *grads = torch.ops.attnc.grid_backward(dout, dlse.to(torch.float32), q, k, v, tensors, scalars,
                                                       ctx.key, ctx.scale, ctx.grad_mask)
    grads = [g if m else None for g, m in zip(grads, ctx.grad_mask, strict=True)]
    return dq, dk, dv, grads, None, None, None


torch.library.register_autograd("attnc::grid_forward", _grid_backward_rule, setup_context=_grid_setup_context)


def grid_op(attn, q, k, v, bound: dict, scale: float):
    """``(out, lse)`` of a grid variant through ``attnc::grid_forward`` (under torch.compile)."""
    tensors = [bound[p.name] for p in attn.cascade.params if p.kind == "tensor"]
    scalars = [bound[p.name] for p in attn.cascade.params if p.kind != "tensor"]
    return torch.ops.attnc.grid_forward(q, k, v, tensors, pack_scalars(scalars), attn.op_key, float(scale))
