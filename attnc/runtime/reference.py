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
"""

from __future__ import annotations

import math

import torch

from ..ir import nodes as n
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

    def expr(self, e: n.Expr) -> torch.Tensor:
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
            for dim, ie in zip(t.shape, e.indices):
                x = self.expr(ie)
                idx.append(x.clamp(0, dim - 1))
            idx = torch.broadcast_tensors(*idx)
            return t[tuple(idx)]
        if isinstance(e, n.Ref):
            return self.values[e.stage]
        if isinstance(e, n.Unary):
            x = self.expr(e.operand)
            return torch.logical_not(x) if e.op == "not" else -x
        if isinstance(e, n.Binary):
            return self.binary(e.op, self.expr(e.left), self.expr(e.right))
        if isinstance(e, n.Select):
            return torch.where(self.expr(e.cond), self.expr(e.then), self.expr(e.other))
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
        if op == "and":
            return torch.logical_and(a, b)
        if op == "or":
            return torch.logical_or(a, b)
        return {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}[op](a, b)

    @staticmethod
    def call(fn: str, args: list[torch.Tensor]) -> torch.Tensor:
        x = args[0]
        if fn == "exp":
            return torch.exp(x)
        if fn == "exp2":
            return torch.exp2(x)
        if fn == "log":
            return torch.log(x)
        if fn == "log2":
            return torch.log2(x)
        if fn == "log1p":
            return torch.log1p(x)
        if fn == "sqrt":
            return torch.sqrt(x)
        if fn == "rsqrt":
            return torch.rsqrt(x)
        if fn == "tanh":
            return torch.tanh(x)
        if fn == "sigmoid":
            return torch.sigmoid(x)
        if fn == "softplus":
            return torch.logaddexp(x, torch.zeros_like(x))
        if fn == "sin":
            return torch.sin(x)
        if fn == "cos":
            return torch.cos(x)
        if fn == "abs":
            return torch.abs(x)
        if fn == "relu":
            return torch.clamp_min(x, 0)
        if fn in ("min", "max"):
            out = x
            for y in args[1:]:
                out = torch.minimum(out, y) if fn == "min" else torch.maximum(out, y)
            return out
        if fn == "clamp":
            return torch.minimum(torch.maximum(x, args[1]), args[2])
        if fn == "floor":
            return torch.floor(x).to(_I64)
        if fn == "ceil":
            return torch.ceil(x).to(_I64)
        if fn == "float":
            return x.to(_F64)
        raise TypeError(f"the reference has no function {fn}")


def _as_tensor(spec: n.ParamSpec, value) -> torch.Tensor:
    if spec.kind == "tensor":
        dtype = {n.INT: _I64, n.FLOAT: _F64, n.BOOL: torch.bool}[spec.elem]
        return value.detach().to(device="cpu", dtype=dtype)
    dtype = {n.INT: _I64, n.FLOAT: _F64, n.BOOL: torch.bool}[spec.kind]
    return torch.tensor(value, dtype=dtype)


def reference(cascade: n.Cascade, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              scale: float | None = None, return_lse: bool = False, **params):
    """Evaluate ``cascade`` on q [B, Hq, Nq, D], k [B, Hkv, Nkv, D], v [B, Hkv, Nkv, Dv].

    Returns ``out`` [B, Hq, Nq, Dv] in float64 on the CPU, and with ``return_lse=True`` also
    ``lse`` [B, Hq, Nq] (natural log; −inf for rows with no kept key; NaN-free only where the
    cascade defines lse, else ``None``).
    """
    B, Hq, Hkv, Nq, Nkv, D, Dv = check_inputs(q, k, v)
    sizes = sizes_of(q, k, v, scale)
    bound = bind_params(cascade, params, sizes)
    values = {p.name: _as_tensor(p, bound[p.name]) for p in cascade.params}

    group = Hq // Hkv
    q64 = q.detach().to("cpu", _F64)
    k64 = k.detach().to("cpu", _F64).repeat_interleave(group, dim=1)
    v64 = v.detach().to("cpu", _F64).repeat_interleave(group, dim=1)
    out = torch.zeros(B, Hq, Nq, Dv, dtype=_F64)
    lse = torch.full((B, Hq, Nq), -math.inf, dtype=_F64)
    if Nkv == 0 or Nq == 0:
        return (out, lse if cascade.has_lse else None) if return_lse else out

    index = {
        "b": torch.arange(B).view(B, 1, 1, 1), "h": torch.arange(Hq).view(1, Hq, 1, 1),
        "i": torch.arange(Nq).view(1, 1, Nq, 1), "j": torch.arange(Nkv).view(1, 1, 1, Nkv),
    }
    ev = _Eval(cascade, sizes, values, index)
    ev.pair_shape = (B, Hq, Nq, Nkv)
    ev.v = v64
    for st in cascade.stages:
        if isinstance(st.expr, n.Dot):
            ev.values[st.name] = q64 @ k64.transpose(-1, -2)
            continue
        value = ev.expr(st.expr)
        if st.name == "keep":
            value = value.expand(ev.pair_shape)
            ev.keep = value
        ev.values[st.name] = value
    has_key = torch.ones(B, Hq, Nq, dtype=torch.bool) if ev.keep is None else ev.keep.any(-1)
    out = torch.where(has_key[..., None], ev.values["out"].expand(B, Hq, Nq, Dv), 0.0)
    if not return_lse:
        return out
    if not cascade.has_lse:
        return out, None
    lse_val = ev.values["lse"].expand(B, Hq, Nq, 1)[..., 0]
    return out, torch.where(has_key, lse_val, -math.inf)
