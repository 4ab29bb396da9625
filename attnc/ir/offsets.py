"""Position offsets: a call that computes some rows of a longer sequence's attention.

Decoding, chunked prefill and sequence sharding each hold part of a sequence: queries at
positions ``q_offset + i`` and keys at ``kv_offset + j`` of a self-attention over ``seq_len``
tokens. ``with_offsets`` rewrites a cascade so that its masks, scores and norms see those
positions: every ``q_idx`` becomes ``q_idx + _q_offset[b]``, every ``kv_idx`` ``kv_idx +
_kv_offset[b]``, and ``n_q`` and ``n_kv`` both become ``_seq_len[b]`` (hidden int tensors [B],
filled by the runtime); positions at or past ``seq_len`` are masked off, so a cache padded
beyond a row's length holds no key for it. A row computed this way equals that row of the full call whenever the
call holds every key the row keeps — the whole cache when decoding, every earlier chunk in a
chunked prefill; otherwise it is the row over the keys present (a part for ``attnc.merge``).
Tensor parameters indexed by the positions are sized by the full sequence, so dimensions written
with ``N_Q``/``N_KV`` take any size here (the runtime checks they reach ``seq_len``).
"""

from __future__ import annotations

from dataclasses import replace

from . import nodes as n
from .simplify import simplify

Q_OFFSET, KV_OFFSET, SEQ_LEN = "_q_offset", "_kv_offset", "_seq_len"
HIDDEN = (Q_OFFSET, KV_OFFSET, SEQ_LEN)


def with_offsets(c: n.Cascade) -> n.Cascade:
    """``c`` over absolute positions (see the module docstring)."""
    if c.grid is not None:
        raise ValueError(f"{c.name} is a grid variant; its tokens run permuted into tiles, which offsets do not "
                         f"follow yet: call it on the whole grid")
    b = n.Var("b", n.INT)

    def read(name: str) -> n.Expr:
        return n.Load(name, (b,), n.INT)

    def rewrite(e: n.Expr) -> n.Expr:
        if isinstance(e, n.Var):
            if e.name == "i":
                return n.Binary("+", e, read(Q_OFFSET), n.INT)
            if e.name == "j":
                return n.Binary("+", e, read(KV_OFFSET), n.INT)
            if e.name in ("n_q", "n_kv"):
                return read(SEQ_LEN)
        return e

    def port(e: n.Expr) -> n.Expr:
        return simplify(n.transform(e, rewrite, {}))

    # positions past the sequence's end (a cache padded beyond a row's length) do not exist
    inside = n.Binary("and", n.Binary("<", port(n.Var("j", n.INT)), read(SEQ_LEN), n.BOOL),
                      n.Binary("<", port(n.Var("i", n.INT)), read(SEQ_LEN), n.BOOL), n.BOOL)
    stages = []
    for st in c.stages:
        if st.name == "keep":
            st = replace(st, expr=simplify(n.Binary("and", inside, port(st.expr), n.BOOL)))
        elif not isinstance(st.expr, n.Dot):
            st = replace(st, expr=port(st.expr))
        else:  # feature maps read positions too; slice bounds read sizes
            st = replace(st, expr=replace(st.expr, **{f"{side}_map": port(st.expr.map(side)) for side in "qk"
                                                       if st.expr.map(side) is not None},
                                          **{x: port(getattr(st.expr, x)) for x in ("lo", "hi")
                                             if getattr(st.expr, x) is not None}))
        stages.append(st)
        if st.name == "s" and not c.has_mask:
            stages.append(n.Stage("keep", n.PAIR, inside))
    params = [replace(p, default=None) for p in loose(c).params]
    params += [n.ParamSpec(name, "tensor", n.INT, (n.ANY_DIM,)) for name in HIDDEN]
    return n.Cascade(c.name, tuple(params), tuple(stages), c.span, None)


def sized_by_length(dim: n.Expr) -> bool:
    """Whether a tensor dimension is written with ``N_Q``/``N_KV``: sized by the sequence."""
    return any(isinstance(x, n.Var) and x.name in ("N_Q", "N_KV") for x in n.walk(dim))


def loose(c: n.Cascade) -> n.Cascade:
    """``c`` with its sequence-sized tensor dimensions of any size: a buffer for the whole sequence
    (or more, a cache's capacity) serves every call at offsets; the runtime checks it is long enough."""
    params = tuple(replace(p, dims=tuple(n.ANY_DIM if sized_by_length(d) else d for d in p.dims)) for p in c.params)
    return replace(c, params=params)
