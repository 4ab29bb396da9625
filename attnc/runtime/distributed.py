"""Context parallelism (``attnc.distributed``): one self-attention over a sequence sharded across
the ranks of a torch.distributed process group — NCCL on GPUs, gloo on CPUs — for every variant.

Each rank holds a shard of the queries, keys and values (``[B, H, n_local, D]``, the sequence
axis sharded the same way for all three) and computes its own queries' rows over the whole
sequence with position offsets (``ir/offsets.py``): masks, scores and norms see global positions.
Two ways to exchange the keys and values (``exchange=``):

* ``"ring"`` (ring attention): each rank's K/V shard travels around the ring by point-to-point
  sends, the next shard's transfer overlapping the current shard's compute; a rank holds two K/V
  shards at a time (O(N/W) memory). Each rank computes a *part* of its rows per visiting shard
  and combines the parts by the variant's rule (``runtime/merge.py``, ``part_rule``, read from the
  cascade's structure): by log-sum-exp (``attnc.merge``) for softmax-normalised outputs, by adding
  for sums such as sigmoid attention. The mask decides, by the runtime tile classifier's interval
  arithmetic (``runtime/sparsity.py``, sound: it never calls a needed shard empty), which shards
  each rank needs: a shard no later rank needs stops travelling, and a rank computes nothing for
  a shard its rows keep no key of — a causal mask over contiguous shards sends half the ring's
  bytes. Backward runs the ring again (recomputing each part: nothing O(N) is saved), and each
  shard's dK/dV accumulates along the shard's path and returns to its owner.
* ``"gather"``: every rank all-gathers the keys and values (one collective per tensor and
  direction, no overlap, O(N) memory) and makes one call over the whole sequence. It works for
  every norm — multi-pass ones, and those whose parts do not combine (a sink term in the
  normaliser, stick-breaking's sums in key order): each row sees every key, nothing is merged.

``"auto"`` (the default) takes the ring where the variant's parts combine, else the gather.
Backward: q's gradient stays local; K/V gradients reach their owners (ring: along the shard's
path; gather: all-reduced, each rank keeping its slice); float tensor parameters' gradients are
summed over the ranks, so every rank holds the single-process gradient.

Layouts (``shard``/``unshard`` convert a whole tensor): ``"contiguous"`` — rank r holds one run
of tokens, in rank order (any lengths, e.g. a DTensor's ``Shard(2)`` chunks; ``shard`` makes
them as even as possible); ``"zigzag"`` — the sequence cut into 2·W chunks, rank r holding
chunks r and 2W−1−r, concatenated, which under a causal mask gives every rank the same work.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist

from .merge import merge, part_rule

LAYOUTS = ("contiguous", "zigzag")
EXCHANGES = ("auto", "ring", "gather")
_STATS: dict = {}  # this process's last call (``stats``)


def stats() -> dict:
    """What this rank's last ``attention`` call did: ``exchange`` ("ring" or "gather") and
    ``sent_bytes``, the K/V bytes it sent forward (the gather's: what a ring all-gather of the
    padded shards sends, (W − 1) shards of the longest). For the ring also
    ``backward_sent_bytes`` (once a backward ran: the K/V again, plus the fp32 dK/dV of each shard
    it passes on or returns to its owner), ``shards_computed`` and ``shards_skipped`` (of W)."""
    return dict(_STATS)


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


def torch_cp_layout(n_total: int, world: int) -> str:
    """The layout of the shards ``torch.distributed.tensor.experimental.context_parallel`` makes of
    its buffers (torch 2.13, load balancing on, its default): head-tail chunks — attnc's
    ``"zigzag"`` — when 2·W divides the length, else ``torch.chunk``'s runs (``"contiguous"``).
    Its SDPA patch cannot reach attnc, but the buffers it shards can be passed to ``attention``."""
    return "zigzag" if n_total % (2 * world) == 0 else "contiguous"


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
        fill = x.new_zeros((*x.shape[:2], top - x.shape[2], *x.shape[3:]))
        padded = torch.cat([x, fill], 2).contiguous()  # every rank sends the longest shard's length
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
    if x.dim() == 0:
        raise ValueError("`x` must have a sequence dimension, got a 0-d tensor")
    first = x.movedim(dim, 0)  # [n, ...] → [1, 1, n, rest]: one gather for any rank and `dim`
    flat = first.reshape(1, 1, first.shape[0], -1)
    sizes = [s[0] for s in _gather_ints([flat.shape[2]], group, x.device)]
    whole = _Gather.apply(flat, group, sizes)
    whole = whole.index_select(2, _global_order(_runs(sizes, layout), x.device))
    return whole.reshape(sum(sizes), *first.shape[1:]).movedim(0, dim)


def _runs(sizes: list[int], layout: str) -> list[list[tuple[int, int]]]:
    """Per rank, the (start, length) runs of the tokens it holds, from every rank's count."""
    n_total, world = sum(sizes), len(sizes)
    if layout == "contiguous":  # any counts, in rank order
        return [[(sum(sizes[:r]), sizes[r])] for r in range(world)]
    runs = pieces(n_total, world, layout)
    want = [sum(length for _, length in runs[r]) for r in range(world)]
    if want != sizes:
        raise ValueError(f"the ranks hold {sizes} tokens, but a {layout} sharding of {n_total} tokens gives "
                         f"{want}; shard with attnc.distributed.shard(x, rank, world, {layout!r})")
    return runs


def _global_order(runs: list[list[tuple[int, int]]], device) -> torch.Tensor:
    """Indices into the rank-order concatenation of the shards, in sequence order."""
    n_total = sum(length for rank in runs for _, length in rank)
    order = torch.empty(n_total, dtype=torch.int64)
    base = 0
    for rank in runs:
        for start, length in rank:
            order[start:start + length] = torch.arange(base, base + length)
            base += length
    return order.to(device)


@dataclass(frozen=True)
class Schedule:
    """Which K/V shards travel where on the ring. ``runs[r]``: rank r's (start, length) runs;
    ``needed[r][s]``: the pairs (run of rank r, run of rank s) whose rows keep some key (as the
    mask's interval classification proves it; kept when unsure), empty when r needs nothing of
    s; ``kv_bytes[s]``: the bytes of shard s's keys and values. At step t rank r holds shard
    (r − t) mod W if that shard travels t hops."""

    runs: tuple
    needed: tuple
    kv_bytes: tuple

    @property
    def world(self) -> int:
        return len(self.runs)

    def reach(self, s: int) -> int:
        """How many hops shard s travels: to the last rank along the ring that needs it."""
        hops = [t for t in range(1, self.world) if self.needed[(s + t) % self.world][s]]
        return max(hops, default=0)

    def holds(self, rank: int, step: int) -> bool:
        return step <= self.reach((rank - step) % self.world)

    def sent_bytes(self, rank: int) -> int:
        """The K/V bytes ``rank`` sends forward along the ring (backward sends as many of dK/dV)."""
        w = self.world
        return sum(self.kv_bytes[(rank - t) % w] for t in range(w - 1) if self.holds((rank + 1) % w, t + 1))

    def ring_bytes(self, rank: int) -> int:
        """What ``rank`` sends on a ring that skips nothing: every shard but its successor's."""
        return sum(b for s, b in enumerate(self.kv_bytes) if s != (rank + 1) % self.world)

    def __str__(self) -> str:
        w = self.world
        lines = [f"ring plan over {w} ranks ({sum(n for runs in self.runs for _, n in runs)} tokens):"]
        for r in range(w):
            runs = ", ".join(f"{a}..{a + n - 1}" if n else "none" for a, n in self.runs[r])
            lines.append(f"  rank {r}: tokens {runs}; computes parts over {self.computed(r)} of {w} shards; sends "
                         f"{self.sent_bytes(r)} B of K/V forward (a ring that skips nothing: {self.ring_bytes(r)} B)")
        return "\n".join(lines)

    def computed(self, rank: int) -> int:
        """The shards ``rank`` computes a part over (the others it skips)."""
        return sum(bool(self.needed[rank][(rank - t) % self.world]) and self.holds(rank, t) for t in range(self.world))


def schedule(attn, sizes: list[int], layout: str = "contiguous", *, batch: int = 1, heads: int = 1,
             kv_heads: int | None = None, head_dim: int = 64, value_dim: int | None = None,
             element_size: int = 2, scale: float | None = None, device="cpu", **params) -> Schedule:
    """The ring's plan for ``attn`` over shards of ``sizes[r]`` tokens, ``attention``'s own (every
    rank computes the same plan, so sender and receiver agree without a message). The shapes and
    ``element_size`` (bytes: 2 for fp16/bf16, 4 for fp32) size the bytes only; ``params`` are the
    call's. ``print(plan)`` says per rank what it computes and sends. Built by the runtime tile
    classifier's interval arithmetic over each (run, run) rectangle, O(W² + N log N) for a mask
    that reads a tensor (sparse tables), else O(W²); sound: a pair of runs it calls empty is."""
    from .sparsity import rectangles_may_keep
    from .validate import bind_params, sizes_of

    runs = _runs(list(sizes), layout)
    n_total, world = sum(sizes), len(sizes)
    params = {**{c.name: c.argument(torch.device(device)) for c in getattr(attn, "captured", ()) if c.name not in params},
              **params}  # an @attnc.jit variant's captured tensors
    kv_heads = heads if kv_heads is None else kv_heads
    value_dim = head_dim if value_dim is None else value_dim
    shape = SimpleNamespace
    full = sizes_of(shape(shape=(batch, heads, n_total, head_dim)), shape(shape=(batch, kv_heads, n_total, head_dim)),
                    shape(shape=(batch, kv_heads, n_total, value_dim)), scale)
    flat = [run for rank in runs for run in rank]  # every run, rank by rank
    where = [(r, x) for r, rank in enumerate(runs) for x in range(len(rank))]
    bound = bind_params(attn.cascade, params, full, torch.device(device))
    kept = rectangles_may_keep(attn.cascade, bound, full, [(a, a + n) for a, n in flat], [(a, a + n) for a, n in flat])
    pairs = [[[] for _ in range(world)] for _ in range(world)]
    for u, (r, x) in enumerate(where):
        for w, (s, y) in enumerate(where):
            if kept[u, w]:
                pairs[r][s].append((x, y))
    needed = tuple(tuple(tuple(p) for p in row) for row in pairs)
    kv_bytes = tuple(sizes[s] * batch * kv_heads * (head_dim + value_dim) * element_size for s in range(world))
    return Schedule(tuple(tuple(r) for r in runs), needed, kv_bytes)


class _Ring:
    """One ring call's fixed inputs and its transfers (``Schedule``): ``exchange`` posts a step's
    sends and receives as one batch, in one order on every rank (dK/dV first, then K/V), so
    NCCL's and gloo's in-order matching pair them."""

    def __init__(self, attn, plan: Schedule, rank: int, group, rule: str, scale, fixed: dict):
        self.attn, self.plan, self.rank, self.group, self.rule, self.scale, self.fixed = \
            attn, plan, rank, group, rule, scale, fixed
        self.world = plan.world
        self.n_total = sum(length for runs in plan.runs for _, length in runs)
        self.peers = [dist.get_global_rank(group, r) if group is not None else r for r in range(self.world)]

    def local_runs(self, rank: int) -> list[tuple[int, int, int]]:
        """(global start, length, local start) of ``rank``'s runs."""
        at, found = 0, []
        for start, length in self.plan.runs[rank]:
            found.append((start, length, at))
            at += length
        return found

    def exchange(self, step: int, kv, acc=None, grads: bool = False):
        """Post step ``step``'s transfers as one batch: with ``grads``, the dK/dV ``acc`` this
        rank computed at ``step − 1`` (on to the next rank, or home to the shard's owner after
        its last hop) and the accs it receives for ``step`` (the shard it holds now, and its own
        shard home from its last hop); then the K/V ``kv`` held at ``step``, on for ``step + 1``.
        Returns (works, received kv, received acc, own shard's acc come home)."""
        plan, r, w = self.plan, self.rank, self.world
        ops, got_kv, got_acc, home = [], None, None, None

        def send(tensors, peer):
            key = "backward_sent_bytes" if grads else "sent_bytes"
            _STATS[key] = _STATS.get(key, 0) + sum(t.numel() * t.element_size() for t in tensors)
            ops.extend(dist.P2POp(dist.isend, t.contiguous(), self.peers[peer], self.group) for t in tensors)

        def recv(shard, peer, what):
            found = [torch.empty(s, dtype=dtype, device=device) for s, dtype, device in self.shapes(shard, what)]
            ops.extend(dist.P2POp(dist.irecv, t, self.peers[peer], self.group) for t in found)
            return found
        if grads:
            if acc is not None:
                dest = (r + 1) % w if plan.holds((r + 1) % w, step) else (r - step + 1) % w
                if dest != r:
                    send(acc, dest)
            if step < w and plan.holds(r, step) and step > 0:
                got_acc = recv((r - step) % w, (r - 1) % w, "acc")
            if step > 1 and plan.reach(r) == step - 1:
                home = recv(r, (r + step - 1) % w, "acc")
        if step + 1 < w:
            if plan.holds((r + 1) % w, step + 1):
                send(kv, (r + 1) % w)
            if plan.holds(r, step + 1):
                got_kv = recv((r - step - 1) % w, (r - 1) % w, "kv")
        works = dist.batch_isend_irecv(ops) if ops else []
        return works, got_kv, got_acc, home

    def shapes(self, shard: int, what: str):
        """(shape, dtype, device) of shard ``shard``'s keys and values (``"kv"``) or of their fp32
        gradients (``"acc"``)."""
        length = sum(n for _, n in self.plan.runs[shard])
        return [((*x.shape[:2], length, x.shape[3]), torch.float32 if what == "acc" else x.dtype, x.device)
                for x in self.like]

    def parts(self, q, kv, shard: int, tensors: dict):
        """This rank's parts over shard ``shard``'s keys: (q run index, k run index, result)."""
        k, v = kv
        params = {**self.fixed, **tensors}
        kruns = self.local_runs(shard)
        qruns = self.local_runs(self.rank)
        for a, b in self.plan.needed[self.rank][shard]:
            qs, ql, qa = qruns[a]
            ks, kl, ka = kruns[b]
            res = _call(self.attn, q[:, :, qa:qa + ql], k[:, :, ka:ka + kl], v[:, :, ka:ka + kl], q_offset=qs,
                        kv_offset=ks, seq_len=self.n_total, scale=self.scale, return_lse=self.rule == "lse", **params)
            yield a, b, res


def _call(attn, q, k, v, **kw):
    """``attn``'s call with every parameter given (captured ones included): the base class's, so
    an @attnc.jit variant does not bind its captured tensors a second time."""
    from .compiler import Attention

    return Attention.__call__(attn, q, k, v, **kw)


def _wait(works):
    for work in works:
        work.wait()


class _RingFunction(torch.autograd.Function):
    """Ring attention for one rank: forward returns (out, lse) of its rows (lse: zeros for a
    "sum" rule); backward runs the ring again, recomputing each part under autograd."""

    @staticmethod
    def forward(ctx, ring: _Ring, names, q, k, v, *tensors):
        r, w = ring.rank, ring.world
        Dv = v.shape[3]
        qruns = ring.local_runs(r)
        outs = [q.new_zeros((*q.shape[:2], ql, Dv), dtype=torch.float32) for _, ql, _ in qruns]
        lses = [torch.full((*q.shape[:2], ql), float("-inf"), device=q.device) for _, ql, _ in qruns]
        ring.like = (k, v)
        kv = (k, v)
        with torch.no_grad():
            for t in range(w):
                works, got, _, _ = ring.exchange(t, kv)
                if ring.plan.holds(r, t):
                    for a, _, res in ring.parts(q, kv, (r - t) % w, dict(zip(names, tensors))):
                        if ring.rule == "lse":
                            outs[a], lses[a] = merge(outs[a], lses[a], *res)
                        else:
                            outs[a] = outs[a] + res.float()
                _wait(works)
                kv = got
        out = torch.cat(outs, 2) if outs else q.new_zeros((*q.shape[:3], Dv), dtype=torch.float32)
        lse = torch.cat(lses, 2).float() if lses else torch.full(q.shape[:3], float("-inf"), device=q.device)
        if ring.rule != "lse":
            lse = torch.zeros_like(lse)
            ctx.mark_non_differentiable(lse)
        ctx.ring, ctx.names = ring, names
        ctx.save_for_backward(q, k, v, out, lse, *tensors)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        ring, names = ctx.ring, ctx.names
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        r, w = ring.rank, ring.world
        dout = dout.float() if dout is not None else torch.zeros_like(out)
        dlse = dlse.float() if dlse is not None and ring.rule == "lse" else torch.zeros_like(lse)
        qruns, dq = ring.local_runs(r), torch.zeros_like(q, dtype=torch.float32)
        dtensors = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
        kv, acc, mine = (k, v), None, None
        _STATS["backward_sent_bytes"] = 0
        for t in range(w + 1):
            works, got, got_acc, home = ring.exchange(t, kv, acc, grads=True)
            mine = home if home is not None else mine
            acc = None
            if t < w and ring.plan.holds(r, t):
                shard = (r - t) % w
                acc = [torch.zeros(s, dtype=torch.float32, device=d) for s, _, d in ring.shapes(shard, "acc")]
                with torch.enable_grad():
                    qd, kd, vd = (x.detach().requires_grad_() for x in (q, *kv))
                    td = [x.detach().requires_grad_() for x in tensors]
                    for a, _, res in ring.parts(qd, (kd, vd), shard, dict(zip(names, td))):
                        _, ql, qa = qruns[a]
                        rows = slice(qa, qa + ql)
                        if ring.rule == "lse":
                            o, l_part = res
                            lg = lse[:, :, rows]
                            weight = torch.where(torch.isfinite(l_part.detach()) & torch.isfinite(lg),
                                                 torch.exp(l_part.detach().float() - lg), torch.zeros_like(lg))
                            go = weight.unsqueeze(-1) * dout[:, :, rows]
                            gl = weight * ((dout[:, :, rows] * (o.detach().float() - out[:, :, rows])).sum(-1)
                                           + dlse[:, :, rows])
                            outputs, grads = (o, l_part), (go.to(o.dtype), gl.to(l_part.dtype))
                        else:
                            outputs, grads = (res,), (dout[:, :, rows].to(res.dtype),)
                        found = torch.autograd.grad(outputs, (qd, kd, vd, *td), grads, allow_unused=True)
                        for into, part in ((dq, found[0]), (acc[0], found[1]), (acc[1], found[2]),
                                           *zip(dtensors, found[3:])):
                            if part is not None:
                                into += part  # q's and the shard's rows outside this pair get zeros
                _wait(works)
                if got_acc is not None:
                    acc = [x + y for x, y in zip(acc, got_acc)]
                if t == 0:
                    mine = acc if ring.plan.reach(r) == 0 else mine
            else:
                _wait(works)
            kv = got
        # the own shard: its accumulated dK/dV came home (or never left)
        dk, dv = mine if mine is not None else [torch.zeros_like(x, dtype=torch.float32) for x in (k, v)]
        return (None, None, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                *(g.to(t.dtype) for g, t in zip(dtensors, tensors)))


def _mesh_of(q, k, v, group):
    """The device mesh of DTensor inputs (None for plain tensors), checked."""
    from torch.distributed.tensor import DTensor, Shard

    kinds = [isinstance(t, DTensor) for t in (q, k, v)]
    if not any(kinds):
        return None
    if not all(kinds):
        raise TypeError("q, k and v must all be DTensors or all plain tensors, got "
                        + ", ".join(f"{n} {'DTensor' if d else 'tensor'}" for n, d in zip("qkv", kinds)))
    mesh = q.device_mesh
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.device_mesh != mesh or mesh.ndim != 1 or tuple(t.placements) != (Shard(2),):
            raise ValueError(f"`{name}` must be sharded along the sequence, placements (Shard(2),) on q's 1-D mesh; "
                             f"got {tuple(t.placements)} on a {t.device_mesh.ndim}-D mesh")
    if group is not None and group != mesh.get_group():
        raise ValueError("`group` must be None or the DTensors' mesh's group")
    return mesh


def attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, /, *, group=None,
              layout: str = "contiguous", exchange: str = "auto", scale: float | None = None,
              return_lse: bool = False, **params):
    """This rank's rows of ``attn`` over the whole sharded sequence (see the module docstring):
    ``q``, ``k``, ``v`` are this rank's shards ``[B, H, n_local, D]`` in ``layout``; tensor
    parameters are the whole sequence's, the same on every rank. ``exchange``: ``"ring"``,
    ``"gather"`` or ``"auto"`` (the ring where the variant's parts combine). Returns this rank's
    ``out`` (and ``lse``), in its shard's order.

    DTensors: ``q``, ``k``, ``v`` may be DTensors sharded along the sequence (``Shard(2)`` on a
    1-D device mesh, torch's context-parallel placement); their local shards (torch.chunk's runs,
    so ``layout="contiguous"``) are read on the mesh's group, and ``out`` (and ``lse``) come back as DTensors ``Shard(2)``
    on the same mesh. Replicated DTensor parameters are read locally."""
    mesh = _mesh_of(q, k, v, group)
    if mesh is not None:
        from torch.distributed.tensor import DTensor, Shard

        local = {p: (x.to_local() if isinstance(x, DTensor) else x) for p, x in params.items()}
        if layout != "contiguous":
            raise ValueError(f"DTensors sharded Shard(2) hold torch.chunk's runs, so `layout` must be \"contiguous\", "
                             f"got {layout!r}; for {layout} shards pass their local tensors")
        res = attention(attn, q.to_local(), k.to_local(), v.to_local(), group=mesh.get_group(), layout=layout,
                        exchange=exchange, scale=scale, return_lse=return_lse, **local)
        outs = res if return_lse else (res,)
        wrapped = []
        for x in outs:
            shape = (*q.shape[:3], *x.shape[3:])
            stride = torch.empty(shape, device="meta").stride()
            wrapped.append(DTensor.from_local(x, mesh, (Shard(2),), run_check=False, shape=shape, stride=stride))
        return tuple(wrapped) if return_lse else wrapped[0]
    rank, world = _group_info(group)
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    if exchange not in EXCHANGES:
        raise ValueError(f"`exchange` must be one of {', '.join(map(repr, EXCHANGES))}, got {exchange!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"`{name}` must be this rank's shard [B, H, n_local, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape[2] != k.shape[2] or k.shape[2] != v.shape[2]:
        raise ValueError(f"q, k and v must hold the same tokens (a self-attention's shard), got lengths "
                         f"{q.shape[2]}, {k.shape[2]}, {v.shape[2]}")
    if return_lse and not attn.cascade.has_lse:
        raise ValueError(f"{attn.cascade.name} defines no lse[i]; call it with return_lse=False")
    # every rank must plan the same exchange (a rank that differs would wait forever): the call's
    # shapes, and a checksum of what the plan reads besides them, compared before anything moves
    call = repr((attn.cascade.name, layout, exchange, scale,
                 sorted((p, x) for p, x in params.items() if not isinstance(x, torch.Tensor))))
    shapes = _gather_ints([*q.shape, *k.shape, v.shape[3], zlib.crc32(call.encode())], group, q.device)
    for r, s in enumerate(shapes):
        if s[:2] + s[3:6] + s[7:9] != shapes[0][:2] + shapes[0][3:6] + shapes[0][7:9]:
            raise ValueError(f"rank {r} holds q {s[:4]}, k {s[4:8]}, Dv {s[8]}; rank 0 holds q {shapes[0][:4]}, "
                             f"k {shapes[0][4:8]}, Dv {shapes[0][8]}: every shape but the length must agree")
        if s[9] != shapes[0][9]:
            raise ValueError(f"rank {r} calls with another variant, layout, exchange, scale or scalar parameters "
                             f"than rank 0; every rank must make the same call on its own shard")
    rule, why = part_rule(attn.cascade)
    if exchange == "ring" and rule is None:
        raise ValueError(f"{attn.cascade.name} cannot run on the ring: {why}; use exchange=\"gather\" (or \"auto\")")
    sizes = [s[2] for s in shapes]
    runs = _runs(sizes, layout)
    n_total = sum(sizes)
    params = attn._with_captured(params, q)  # @attnc.jit's captured tensors, bound here: the parts and the
    # gather call the base Attention with every parameter, and captured gradients are summed like the rest
    params = {name: (_SumGrad.apply(x, group) if isinstance(x, torch.Tensor) and x.requires_grad else x)
              for name, x in params.items()}
    if world > 1 and rule is not None and exchange != "gather":
        plan = schedule(attn, sizes, layout, batch=q.shape[0], heads=q.shape[1], kv_heads=k.shape[1],
                        head_dim=q.shape[3], value_dim=v.shape[3], element_size=k.element_size(),
                        scale=scale, device=q.device, **params)
        names = [p for p, x in params.items() if isinstance(x, torch.Tensor) and x.requires_grad]
        ring = _Ring(attn, plan, rank, group, rule, scale, {p: x for p, x in params.items() if p not in names})
        _STATS.clear()
        _STATS.update(exchange="ring", sent_bytes=0, shards_computed=plan.computed(rank),
                      shards_skipped=world - plan.computed(rank))
        out, lse = _RingFunction.apply(ring, names, q, k, v, *(params[p] for p in names))
        return (out, lse) if return_lse else out
    _STATS.clear()
    _STATS.update(exchange="gather", sent_bytes=(world - 1) * max(sizes) * k.shape[0] * k.shape[1]
                  * (k.shape[3] + v.shape[3]) * k.element_size())
    order = _global_order(runs, q.device)
    keys = _Gather.apply(k, group, sizes).index_select(2, order)
    values = _Gather.apply(v, group, sizes).index_select(2, order)
    outs, lses, at = [], [], 0
    for start, length in runs[rank]:
        if length == 0:
            continue
        res = _call(attn, q[:, :, at:at + length], keys, values, q_offset=start, seq_len=n_total, scale=scale,
                   return_lse=return_lse, **params)
        out, lse = res if return_lse else (res, None)
        outs.append(out)
        lses.append(lse)
        at += length
    if not outs:  # this rank holds no token: empty outputs, tied to what its backward must join
        # (the all-reduces of the gathered K/V's and the parameters' gradients) by exact zeros
        tied = [t for t in (q, keys, values, *params.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
        zero = sum((t.flatten()[:0].sum() for t in tied), q.new_zeros(()))
        out = q.new_zeros((*q.shape[:3], v.shape[3])) + zero.to(q.dtype)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        return (out, lse) if return_lse else out
    out = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
    if return_lse:
        return out, (torch.cat(lses, 2) if len(lses) > 1 else lses[0])
    return out
