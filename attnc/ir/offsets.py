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
from .layout import loose, ported_stages
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
    stages = ported_stages(c, port, inside)
    params = [replace(p, default=None) for p in loose(c).params]
    params += [n.ParamSpec(name, "tensor", n.INT, (n.ANY_DIM,)) for name in HIDDEN]
    return n.Cascade(c.name, tuple(params), stages, c.span, None)


GROUP, N_NEW = "_group", "_n_new"  # hidden int scalars of ``packed_heads``


def packed_heads(c: n.Cascade) -> n.Cascade:
    """``c`` (an offsets cascade) with the query heads of each GQA group packed into the query
    rows, so one program reads a key/value head's tiles once for all the heads that share them
    (decoding: a few queries per head would fill a tile's rows poorly, and every query head would
    read the same keys again). The kernel runs with ``n_heads = n_kv_heads`` and ``n_q = group ·
    n_new`` rows; row ``i`` of kv head ``h`` is query ``i % n_new`` of query head ``h · group + i
    // n_new`` — what the cascade sees, so masks, scores and per-head parameters are unchanged.
    Tensor dimensions over ``H`` take any size here (the runtime bound them for the real heads)."""
    group, n_new = n.Param(GROUP, n.INT), n.Param(N_NEW, n.INT)
    i = n.Var("i", n.INT)

    def rewrite(e: n.Expr) -> n.Expr:
        if isinstance(e, n.Var):
            if e.name == "i":
                return n.Binary("%", i, n_new, n.INT)
            if e.name == "h":
                return n.Binary("+", n.Binary("*", e, group, n.INT), n.Binary("//", i, n_new, n.INT), n.INT)
            if e.name == "n_heads":
                return n.Binary("*", e, group, n.INT)
        return e

    def port(e: n.Expr) -> n.Expr:
        return simplify(n.transform(e, rewrite, {}))

    stages = ported_stages(c, port, n.Const(True, n.BOOL))  # an offsets cascade has its mask
    params = [replace(p, default=None, dims=tuple(n.ANY_DIM if any(isinstance(x, n.Var) and x.name == "H"
                                                                   for x in n.walk(d)) else d for d in p.dims))
              for p in c.params]
    params += [n.ParamSpec(GROUP, n.INT), n.ParamSpec(N_NEW, n.INT)]
    return n.Cascade(c.name, tuple(params), stages, c.span, None)
