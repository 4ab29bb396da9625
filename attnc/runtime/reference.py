"""The reference semantics: an interpreter of the IR in eager torch float64.

It materializes the whole score matrix and evaluates each stage of the cascade literally —
no tiling, no online rescaling — so it is an oracle independent of code generation. Nothing
optimized imports this module, and nothing falls back to it.

Semantics pinned down here (and in docs/semantics.md):

* GQA/MQA: query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``.
* ``n_q != n_kv``: indices are absolute; ``q_idx`` runs over ``0..n_q-1``, ``kv_idx`` over
  ``0..n_kv-1`` (masks like the library's ``causal`` align bottom-right themselves).
* Reductions see only the keys the mask keeps: an empty ``sum`` is 0, ``max`` −inf, ``min`` +inf.
* A row with no kept key has ``out = 0`` and ``lse = −inf``, never NaN.
* Tensor parameters are read with indices clamped into range; ``//`` and ``%`` are floor
  division and modulo (Python's), and an integer division by zero gives 0 (``x % 0`` gives x).

It is differentiable with ``torch.autograd``, so it is also the oracle for gradients: when q, k,
v (any dtype) or a float tensor parameter requires grad (and grad mode is on), ``out`` and
``lse`` carry the graph back to them (GQA's repeated heads sum their gradients; q/k/v get them in
their own dtype). Scalar parameters and ``scale`` are plain numbers, not differentiated. The
gradient conventions:

* Elementwise functions have torch's derivatives, also at kinks (``relu'(0) = 1`` as
  ``torch.clamp_min``, ``abs'(0) = 0``); ``max``/``min`` — the reductions over j and the
  functions, hence ``clamp`` — have ``torch.amax``/``amin``/``maximum``/``minimum`` semantics:
  the gradient goes to the arguments equal to the result, split evenly among ties.
* A tensor parameter read at a clamped index gives the gradient of that read to the element it
  clamped to (``table[h, clamp(x)]`` is an ordinary gather).
* Gradients of a row with no kept key are exactly 0 (its out and lse are constants), never NaN,
  and a dropped pair (or the branch of ``x if c else y`` not taken) contributes exactly 0 to
  every gradient, however large or non-finite its value (see ``_Eval.sanitize``; a dropped
  key's ``v`` must still be finite, as for values). A kept pair whose own derivative is not
  finite (``sqrt`` at 0, a score of ±inf) gives NaN or inf as autograd would: that is the
  formula's derivative, not masking.

Values with grad are bit-identical to those of the same call without (which evaluates exactly as
before differentiation existed): the masking only replaces values that nothing reads.
"""

from __future__ import annotations

import math

import torch

from ..dsl.functions import FUNCTIONS, fold
from ..ir import nodes as n
from .layout import grid_dims
from .validate import bind_params, check_inputs, sizes_of

_F64 = torch.float64
_I64 = torch.int64


class _Eval:
    def __init__(self, cascade: n.Cascade, sizes: dict, params: dict, index: dict):
        self.c = cascade
        self.sizes = sizes
        self.params = params
        self.index = index
        self.values: dict[str, torch.Tensor] = {}
        self.keep: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        # Set by ``reference`` when it differentiates (see ``sanitize``): ``live`` is the pairs
        # whose values are read, bool broadcastable to [B, Hq, Nq, Nkv] (None: every pair).
        self.safe = False
        self.live: torch.Tensor | None = None
        self._live_row: torch.Tensor | None = None
        self.feature: torch.Tensor | None = None  # q or k, in a feature map (``_mapped``)

    def expr(self, e: n.Expr) -> torch.Tensor:
        x = self._expr(e)
        if self.safe and not isinstance(e, n.Ref):  # a Ref's value was sanitized at its stage
            x = self.sanitize(x, e.type == n.VEC)
        return x

    def sanitize(self, x: torch.Tensor, vec: bool = False) -> torch.Tensor:
        """``x`` with 1 where nothing reads it: the "double where" that keeps NaN out of gradients.

        Autograd multiplies a zero upstream gradient by the local derivative, and ``0 · inf`` is
        NaN: ``where(keep, exp(s − m), 0)`` leaks NaN into ``ds`` at a dropped pair whose
        ``exp(s − m)`` overflows, and an empty row's ``0/0`` into every input of the row, from
        there through broadcast values (``m[i]``, ``sink[h]``) and ``k``/``v`` into other rows. So,
        when differentiating, the value of every int or float node of the expression tree (and
        ``qk``) becomes 1 where no result reads it: a per-pair node (one that varies with j) at the
        pairs ``keep`` drops, any other node (per row, per ``[i, f]``, or varying with b and h
        only, which it then expands to per row) in the rows with no kept key; inside a branch of
        ``x if c else y``, also where the branch is not taken. Reductions filter by ``keep`` as
        before. Every operation then sees at an unread pair only 1 and values that are the same
        at the read pairs of its row (scalars, parameters, per-row values), so its derivative
        there is finite unless it is not finite (for some pair value) at the read pairs too; and
        ``where`` passes nothing computed at an unread position backwards. Read values are never
        touched: results are the same bit for bit.

        Not covered: a read position whose own derivative is not finite (``sqrt`` at 0, a kept
        score of ±inf, ``x / 0``) gives NaN/inf as the formula's derivative does; and a dropped
        key's ``v`` must be finite (docs/semantics.md) for values and gradients alike.
        """
        if self.live is None or x.dtype == torch.bool or x.dim() == 0:
            return x
        live = self.live
        if vec or x.shape[-1] == 1:  # not per pair (with n_kv = 1 both masks are the same)
            if self._live_row is None:
                self._live_row = self.live.expand(self.pair_shape).any(-1, keepdim=True)
            live = self._live_row
        return torch.where(live, x, 1)

    def within(self, cond: torch.Tensor, e: n.Expr) -> torch.Tensor:
        """``e`` as a branch of a ``Select`` taken where ``cond``: read only there."""
        saved = self.live, self._live_row
        self.live = cond if self.live is None else torch.logical_and(self.live, cond)
        self._live_row = None
        try:
            return self.expr(e)
        finally:
            self.live, self._live_row = saved

    def _expr(self, e: n.Expr) -> torch.Tensor:
        if isinstance(e, n.Const):
            dtype = {n.INT: _I64, n.FLOAT: _F64, n.BOOL: torch.bool}[e.type]
            return torch.tensor(e.value, dtype=dtype)
        if isinstance(e, n.Var):
            if e.name in self.index:
                return self.index[e.name]
            value = self.sizes[e.name]
            return torch.tensor(value, dtype=_F64 if e.type == n.FLOAT else _I64)
        if isinstance(e, n.Param):
            return self.params[e.name]
        if isinstance(e, n.Load):
            t = self.params[e.tensor]
            idx = []
            for dim, ie in zip(t.shape, e.indices, strict=True):
                x = self.expr(ie)
                idx.append(x.clamp(0, dim - 1))
            idx = torch.broadcast_tensors(*idx)
            return t[tuple(idx)]
        if isinstance(e, n.Ref):
            return self.values[e.stage]
        if isinstance(e, n.Feature):
            return self.feature
        if isinstance(e, n.Unary):
            x = self.expr(e.operand)
            return torch.logical_not(x) if e.op == "not" else -x
        if isinstance(e, n.Binary):
            return self.binary(e.op, self.expr(e.left), self.expr(e.right))
        if isinstance(e, n.Select):
            cond = self.expr(e.cond)
            if self.safe:
                return torch.where(cond, self.within(cond, e.then), self.within(torch.logical_not(cond), e.other))
            return torch.where(cond, self.expr(e.then), self.expr(e.other))
        if isinstance(e, n.Call):
            return self.call(e.fn, [self.expr(a) for a in e.args])
        if isinstance(e, n.Reduce):
            body = self.expr(e.body)
            keep = self.keep
            shape = torch.broadcast_shapes(body.shape, self.pair_shape)
            body = body.expand(shape)
            if e.op == "sum":
                body = body if keep is None else torch.where(keep, body, 0.0)
                return body.sum(-1, keepdim=True)
            fill = -math.inf if e.op == "max" else math.inf
            body = body if keep is None else torch.where(keep, body, fill)
            return body.amax(-1, keepdim=True) if e.op == "max" else body.amin(-1, keepdim=True)
        if isinstance(e, n.Scan):  # Σ_{k kept, k rel j} body[i, k], by cumulative sums along the row
            body = self.expr(e.body).expand(self.pair_shape)
            if self.keep is not None:
                body = torch.where(self.keep, body, 0.0)
            run = body.flip(-1).cumsum(-1).flip(-1) if e.descending else body.cumsum(-1)
            return run if e.inclusive else run - body
        if isinstance(e, n.Contract):
            w = self.expr(e.weight).expand(self.pair_shape)
            if self.keep is not None:
                w = torch.where(self.keep, w, 0.0)
            return w @ self.v
        raise TypeError(f"the reference cannot evaluate {e!r}")

    @staticmethod
    def binary(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "**":
            return torch.pow(a, b)
        if op in ("//", "%"):
            zero = b == 0
            safe = torch.where(zero, torch.ones_like(b), b)
            if op == "//":
                return torch.where(zero, torch.zeros_like(a * b), torch.div(a, safe, rounding_mode="floor"))
            return torch.where(zero, a + 0 * b, torch.remainder(a, safe))
        if op in ("&", "|", "^"):
            return {"&": torch.bitwise_and, "|": torch.bitwise_or, "^": torch.bitwise_xor}[op](a, b)
        if op in ("<<", ">>"):  # int64 here, int32 in kernels: equal while the value fits int32 (checked)
            k = b.clamp(0, n.SHIFT_MAX)
            return torch.bitwise_left_shift(a, k) if op == "<<" else torch.bitwise_right_shift(a, k)
        if op == "and":
            return torch.logical_and(a, b)
        if op == "or":
            return torch.logical_or(a, b)
        return {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}[op](a, b)

    @staticmethod
    def call(fn: str, args: list[torch.Tensor]) -> torch.Tensor:
        f = FUNCTIONS[fn]  # its torch form, in float64 (dsl/functions.py)
        return fold(f, args, f.torch)


def _as_tensor(spec: n.ParamSpec, value) -> torch.Tensor:
    if spec.kind == "tensor":
        dtype = {n.INT: _I64, n.FLOAT: _F64, n.BOOL: torch.bool}[spec.elem]
        return value.to(device="cpu", dtype=dtype)  # float tensors keep their autograd graph
    dtype = {n.INT: _I64, n.FLOAT: _F64, n.BOOL: torch.bool}[spec.kind]
    return torch.tensor(value, dtype=dtype)


def _mapped(cascade: n.Cascade, sizes: dict, values: dict, x: torch.Tensor, side: str) -> torch.Tensor:
    """q [B, Hq, Nq, D] (or k [B, Hkv, Nkv, D]) through its feature map, elementwise in float64."""
    m = cascade.stages[0].expr.map(side)
    if m is None:
        return x
    B, H, N, _ = x.shape
    index = {"b": torch.arange(B).view(B, 1, 1, 1), "h": torch.arange(H).view(1, H, 1, 1),
             "i" if side == "q" else "j": torch.arange(N).view(1, 1, N, 1)}
    ev = _Eval(cascade, sizes, values, index)
    ev.feature = x
    return ev.expr(m).to(_F64).expand(x.shape)


def _features(ev: "_Eval", dot: n.Dot, D: int) -> torch.Tensor:
    """1.0 for the features ``lo <= d < hi`` a (sliced) Dot sums over, else 0.0: [D] float64."""
    d = torch.arange(D)
    keep = torch.ones(D, dtype=torch.bool)
    if dot.lo is not None:
        keep &= d >= ev.expr(dot.lo).reshape(-1)[0]
    if dot.hi is not None:
        keep &= d < ev.expr(dot.hi).reshape(-1)[0]
    return keep.to(_F64)


def _evaluator(cascade: n.Cascade, sizes: dict, values: dict, pair_shape: tuple[int, int, int, int]) -> _Eval:
    B, Hq, Nq, Nkv = pair_shape
    index = {
        "b": torch.arange(B).view(B, 1, 1, 1), "h": torch.arange(Hq).view(1, Hq, 1, 1),
        "i": torch.arange(Nq).view(1, 1, Nq, 1), "j": torch.arange(Nkv).view(1, 1, 1, Nkv),
    }
    ev = _Eval(cascade, sizes, values, index)
    ev.pair_shape = pair_shape
    return ev


def reference_keep(cascade: n.Cascade, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, /, *,
                   scale: float | None = None, **params) -> torch.Tensor:
    """The mask ``keep[b, h, i, j]`` (bool, CPU, materialized: an oracle for tests and tile
    counts, never a kernel path). All True when the cascade has no mask; a mask that reads the
    score is evaluated after the stages it reads."""
    B, Hq, Hkv, Nq, Nkv, D, Dv = check_inputs(q, k, v)
    sizes = sizes_of(q, k, v, scale)
    bound = bind_params(cascade, params, sizes)
    if cascade.grid is not None:  # a call that does not fit the grid fails as the kernel's would
        grid_dims(cascade, sizes, bound)
    values = {p.name: _as_tensor(p, bound[p.name]) for p in cascade.params}
    if not cascade.has_mask or Nq == 0 or Nkv == 0:
        return torch.ones(B, Hq, Nq, Nkv, dtype=torch.bool)
    with torch.no_grad():
        ev = _evaluator(cascade, sizes, values, (B, Hq, Nq, Nkv))
        ev.safe, ev.live = False, None
        group = Hq // Hkv
        for st in cascade.stages:
            if isinstance(st.expr, n.Dot):
                k64 = _mapped(cascade, sizes, values, k.to("cpu", _F64), "k").repeat_interleave(group, dim=1)
                q64 = _mapped(cascade, sizes, values, q.to("cpu", _F64), "q")
                if st.expr.sliced:
                    q64 = q64 * _features(ev, st.expr, D)
                ev.values[st.name] = q64 @ k64.transpose(-1, -2)
            elif st.name == "keep":
                return ev.expr(st.expr).expand(ev.pair_shape).clone()
            else:
                ev.values[st.name] = ev.expr(st.expr)
    raise AssertionError("a masked cascade has a keep stage")


def reference(cascade: n.Cascade, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, /, *,
              scale: float | None = None, return_lse: bool = False, **params):
    """Evaluate ``cascade`` on q [B, Hq, Nq, D], k [B, Hkv, Nkv, D], v [B, Hkv, Nkv, Dv].

    Returns ``out`` [B, Hq, Nq, Dv] in float64 on the CPU, and with ``return_lse=True`` also
    ``lse`` [B, Hq, Nq] (natural log; −inf for rows with no kept key; NaN-free only where the
    cascade defines lse, else ``None``).
    """
    B, Hq, Hkv, Nq, Nkv, D, Dv = check_inputs(q, k, v)
    sizes = sizes_of(q, k, v, scale)
    bound = bind_params(cascade, params, sizes)
    if cascade.grid is not None:  # a call that does not fit the grid fails as the kernel's would
        grid_dims(cascade, sizes, bound)
    values = {p.name: _as_tensor(p, bound[p.name]) for p in cascade.params}

    # Differentiate (keep the graph and mask unread values, see _Eval.sanitize) when autograd
    # would record anything: an input or a float tensor parameter requires grad.
    leaves = [q, k, v] + [values[p.name] for p in cascade.params if p.kind == "tensor" and p.elem == n.FLOAT]
    safe = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)

    group = Hq // Hkv
    q64 = q.to("cpu", _F64)  # not detached: GQA's repeated heads sum their gradients
    k64 = k.to("cpu", _F64)
    if Nq and Nkv:  # the feature maps, if any
        q64, k64 = _mapped(cascade, sizes, values, q64, "q"), _mapped(cascade, sizes, values, k64, "k")
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v.to("cpu", _F64).repeat_interleave(group, dim=1)
    out = torch.zeros(B, Hq, Nq, Dv, dtype=_F64)
    lse = torch.full((B, Hq, Nq), -math.inf, dtype=_F64)
    if Nkv == 0 or Nq == 0:
        if safe:  # constants, but in the graph (with zero gradients) like every other result
            no = torch.zeros((), dtype=torch.bool)
            zero = sum(torch.where(no, t.to("cpu", _F64).sum(), 0.0) for t in leaves if t.requires_grad)
            out, lse = out + zero, lse + zero
        return (out, lse if cascade.has_lse else None) if return_lse else out

    ev = _evaluator(cascade, sizes, values, (B, Hq, Nq, Nkv))
    ev.v = v64
    keep = cascade.stage("keep").expr if cascade.has_mask else None
    if keep is not None and not n.refs(keep):  # a mask cannot read the score: it can go first
        ev.keep = ev.expr(keep).expand(ev.pair_shape)
    ev.safe = safe

    def set_live():  # once the mask is known; every pair read: nothing to mask
        ev.live = None if not safe or ev.keep is None or bool(ev.keep.all()) else ev.keep
        ev._live_row = None

    set_live()
    for st in cascade.stages:
        if isinstance(st.expr, n.Dot):
            qs = q64 * _features(ev, st.expr, D) if st.expr.sliced else q64
            ev.values[st.name] = ev.sanitize(qs @ k64.transpose(-1, -2))
            continue
        if st.name == "keep":
            if ev.keep is None:
                ev.keep = ev.expr(st.expr).expand(ev.pair_shape)
                set_live()
            ev.values[st.name] = ev.keep
            continue
        ev.values[st.name] = ev.expr(st.expr)
    has_key = torch.ones(B, Hq, Nq, dtype=torch.bool) if ev.keep is None else ev.keep.any(-1)
    out = torch.where(has_key[..., None], ev.values["out"].expand(B, Hq, Nq, Dv), 0.0)
    if not return_lse:
        return out
    if not cascade.has_lse:
        return out, None
    lse_val = ev.values["lse"].expand(B, Hq, Nq, 1)[..., 0]
    return out, torch.where(has_key, lse_val, -math.inf)
