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
