"""Context parallelism (``attnc.distributed``): one self-attention over a sequence sharded across
the ranks of a torch.distributed process group — NCCL on GPUs, gloo on CPUs — for every variant.

Each rank holds a shard of the queries, keys and values (``[B, H, n_local, D]``, the sequence
axis sharded the same way for all three). ``attention`` gathers every rank's keys and values
(all-gather) and computes its own queries' rows over the whole sequence with position offsets
(``ir/offsets.py``): masks, scores and norms see global positions, and the kernel's tile bounds
skip the key tiles the mask proves empty (a causal rank reads no key past its last query). Every
norm works, multi-pass ones included, because each rank's rows see every key: nothing needs
merging. Backward: q's gradient stays local; the gathered keys' and values' gradients are summed
over the ranks (all-reduce) and each rank keeps its shard's; float tensor parameters' gradients
are summed over the ranks, so every rank holds the single-process gradient.

Layouts (``shard``/``unshard`` convert a whole tensor): ``"contiguous"`` — rank r holds one run
of tokens, in rank order (runs may differ in length; ``shard`` makes them as even as possible);
``"zigzag"`` — the sequence cut into 2·W chunks, rank r holding chunks r and 2W−1−r,
concatenated, which under a causal mask gives every rank the same work.

All-gather rather than a ring: one collective per tensor and per direction, no compute overlap,
and every rank holds the whole sequence's keys and values (O(N) memory per rank, not O(N/W));
the ring is future work (``docs/status.md``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

LAYOUTS = ("contiguous", "zigzag")


def pieces(n_total: int, world: int, layout: str) -> list[list[tuple[int, int]]]:
    """Per rank, the (start, length) runs of the sequence it holds, in its local order."""
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    count = world if layout == "contiguous" else 2 * world
    sizes = [n_total // count + (c < n_total % count) for c in range(count)]
    starts = [sum(sizes[:c]) for c in range(count)]
    runs = [(starts[c], sizes[c]) for c in range(count)]
    if layout == "contiguous":
        return [[runs[r]] for r in range(world)]
    return [[runs[r], runs[count - 1 - r]] for r in range(world)]


def shard(x: torch.Tensor, rank: int, world: int, layout: str = "contiguous", dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s shard of the whole-sequence tensor ``x`` (sequence along ``dim``)."""
    if not 0 <= rank < world:
        raise ValueError(f"`rank` must be in 0..{world - 1}, got {rank}")
    parts = [x.narrow(dim, start, length) for start, length in pieces(x.shape[dim], world, layout)[rank]]
    return torch.cat(parts, dim) if len(parts) > 1 else parts[0]


def _group_info(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("attnc.distributed needs an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group, e.g. under torchrun)")
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_ints(values: list[int], group, device) -> list[list[int]]:
    t = torch.tensor(values, dtype=torch.int64, device=device)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    return [p.tolist() for p in parts]


class _Gather(torch.autograd.Function):
    """Every rank's ``x`` along dim 2, in rank order; backward: the whole gradient summed over
    the ranks, this rank's slice of it."""

    @staticmethod
    def forward(ctx, x, group, sizes):
        ctx.group, ctx.sizes = group, sizes
        top = max(sizes)
        padded = torch.nn.functional.pad(x, (0, 0, 0, top - x.shape[2])).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([p[:, :, :n] for p, n in zip(parts, sizes, strict=True)], 2)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        start = sum(ctx.sizes[:rank])
        return grad[:, :, start:start + ctx.sizes[rank]], None, None


class _SumGrad(torch.autograd.Function):
    """The identity; its gradient summed over the ranks (a parameter every rank reads)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def unshard(x: torch.Tensor, group=None, layout: str = "contiguous", dim: int = 2) -> torch.Tensor:
    """The whole-sequence tensor from every rank's shard ``x`` (all-gather; differentiable)."""
    rank, world = _group_info(group)
    moved = x.movedim(dim, 2) if x.dim() >= 3 else x.reshape(1, 1, *x.shape)
    sizes = [s[0] for s in _gather_ints([moved.shape[2]], group, x.device)]
    whole = _Gather.apply(moved, group, sizes)
    whole = whole.index_select(2, _global_order(sum(sizes), world, layout, sizes, x.device))
    return whole.movedim(2, dim) if x.dim() >= 3 else whole.reshape(whole.shape[2:])


def _global_order(n_total: int, world: int, layout: str, sizes: list[int], device) -> torch.Tensor:
    """Indices into the rank-order concatenation of the shards, in sequence order."""
    runs = pieces(n_total, world, layout)
    want = [sum(length for _, length in runs[r]) for r in range(world)]
    if want != sizes:
        raise ValueError(f"the ranks hold {sizes} tokens, but a {layout} sharding of {n_total} tokens gives "
                         f"{want}; shard with attnc.distributed.shard(x, rank, world, {layout!r})")
    order = torch.empty(n_total, dtype=torch.int64)
    base = 0
    for r in range(world):
        for start, length in runs[r]:
            order[start:start + length] = torch.arange(base, base + length)
            base += length
    return order.to(device)


def attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, /, *, group=None,
              layout: str = "contiguous", scale: float | None = None, return_lse: bool = False, **params):
    """This rank's rows of ``attn`` over the whole sharded sequence (see the module docstring):
    ``q``, ``k``, ``v`` are this rank's shards ``[B, H, n_local, D]`` in ``layout``; tensor
    parameters are the whole sequence's, the same on every rank. Returns this rank's ``out``
    (and ``lse``), in its shard's order."""
    rank, world = _group_info(group)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"`{name}` must be this rank's shard [B, H, n_local, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape[2] != k.shape[2] or k.shape[2] != v.shape[2]:
        raise ValueError(f"q, k and v must hold the same tokens (a self-attention's shard), got lengths "
                         f"{q.shape[2]}, {k.shape[2]}, {v.shape[2]}")
    shapes = _gather_ints([*q.shape, *k.shape, v.shape[3]], group, q.device)
    for r, s in enumerate(shapes):
        if s[:2] + s[3:6] + s[7:] != shapes[0][:2] + shapes[0][3:6] + shapes[0][7:]:
            raise ValueError(f"rank {r} holds q {s[:4]}, k {s[4:8]}, Dv {s[8]}; rank 0 holds q {shapes[0][:4]}, "
                             f"k {shapes[0][4:8]}, Dv {shapes[0][8]}: every shape but the length must agree")
    sizes = [s[2] for s in shapes]
    n_total = sum(sizes)
    order = _global_order(n_total, world, layout, sizes, q.device)
    keys = _Gather.apply(k, group, sizes).index_select(2, order)
    values = _Gather.apply(v, group, sizes).index_select(2, order)
    params = {name: (_SumGrad.apply(x, group) if isinstance(x, torch.Tensor) and x.requires_grad else x)
              for name, x in params.items()}
    outs, lses, at = [], [], 0
    for start, length in pieces(n_total, world, layout)[rank]:
        if length == 0:
            continue
        res = attn(q[:, :, at:at + length], keys, values, q_offset=start, seq_len=n_total, scale=scale,
                   return_lse=return_lse, **params)
        out, lse = res if return_lse else (res, None)
        outs.append(out)
        lses.append(lse)
        at += length
    if not outs:  # this rank holds no token
        out = q.new_zeros((*q.shape[:3], v.shape[3]))
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        return (out, lse) if return_lse else out
    out = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
    if return_lse:
        return out, (torch.cat(lses, 2) if len(lses) > 1 else lses[0])
    return out
