"""Validation shared by the kernels' launcher and the reference interpreter.

Both check q/k/v and bind a cascade's parameters the same way, so an input either runs on both
or fails on both with the same message. Errors are ``ValueError``/``TypeError`` naming the
argument, the value it got and what was expected.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..dsl.parser import FLOAT32_MAX
from ..ir import nodes as n
from ..ir.evaluate import eval_size_expr
from ..ir.printer import expr_text
from ..ir.ranges import int32_overflows


def require_dense(what: str, t: torch.Tensor) -> None:
    """A tensor whose values the runtime or a kernel reads: dense (strided), not nested, not meta."""
    if t.is_nested:
        raise ValueError(f"{what} is a nested tensor; pass a dense one (pack sequences with `attn.varlen`)")
    if t.layout != torch.strided:
        raise ValueError(f"{what} is a {t.layout} tensor; pass a dense one (`.to_dense()`)")
    if t.device.type == "meta":
        raise ValueError(f"{what} is on the meta device, which holds no data; pass a tensor on cpu or cuda")


def check_inputs(q, k, v, dtypes: tuple | None = None) -> tuple[int, int, int, int, int, int, int]:
    """Validate q [B, Hq, Nq, D], k [B, Hkv, Nkv, D], v [B, Hkv, Nkv, Dv]; returns the sizes."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        require_dense(f"`{name}`", t)
        if t.dim() != 4:
            raise ValueError(f"`{name}` must have 4 dimensions [B, H, N, D], got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"`{name}` must be a floating-point tensor, got {t.dtype}")
        if dtypes is not None and t.dtype not in dtypes:
            raise TypeError(f"`{name}` must be one of {', '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if dtypes is not None and not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nkv, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q has {B}, k has {Bk}, v has {v.shape[0]}")
    if Dk != D:
        raise ValueError(f"q and k must share the head dim: q has {D}, k has shape {tuple(k.shape)}")
    if tuple(v.shape[1:3]) != (Hkv, Nkv):
        raise ValueError(f"`v` must have shape [{B}, {Hkv}, {Nkv}, Dv] like k, got {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    return B, Hq, Hkv, Nq, Nkv, D, v.shape[3]


def sizes_of(q, k, v, scale: float | None) -> dict:
    B, Hq, Hkv, Nq, Nkv, D, Dv = q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    scale = _number("`scale`", scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"`scale` must be a number, got {type(scale).__name__}")
    return {"n_q": Nq, "n_kv": Nkv, "head_dim": D, "n_heads": Hq, "n_kv_heads": Hkv,
            "scale": check_float32("`scale`", scale), "B": B, "H": Hq, "H_KV": Hkv, "N_Q": Nq, "N_KV": Nkv, "D": D, "D_V": Dv}


def _number(what: str, value):
    """A Python number for a one-element tensor or a numpy scalar (``np.float32(0.5)``,
    ``torch.tensor(3)``); anything else unchanged. Scalars are kernel constants and get no
    gradient, so a tensor that asks for one is refused rather than silently detached."""
    if isinstance(value, torch.Tensor):
        require_dense(what, value)
        if value.numel() != 1:
            raise TypeError(f"{what} is a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{what} is a scalar (a kernel constant) and gets no gradient, but the tensor given "
                             f"requires grad; pass `.detach()`, or declare a `tensor[1] float` parameter to learn it")
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    return value


SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)  # values torch.compile traces


def _scalar(spec: n.ParamSpec, value):
    if isinstance(value, SYMBOLIC):
        # under torch.compile(dynamic=True): kept symbolic, so a new value does not recompile;
        # the op's real implementation gets the number (and checks int32 ranges there)
        if spec.kind == n.FLOAT or isinstance(value, torch.SymBool if spec.kind == n.BOOL else torch.SymInt):
            return value
        raise TypeError(f"parameter `{spec.name}` is {spec.kind}, got a traced {type(value).__name__}")
    value = _number(f"parameter `{spec.name}`", value)
    if spec.kind == n.BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"parameter `{spec.name}` is a bool, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"parameter `{spec.name}` is {spec.kind}, got {type(value).__name__}")
    if spec.kind == n.INT:
        if isinstance(value, float):
            if not value.is_integer():
                raise TypeError(f"parameter `{spec.name}` is an int, got {value!r}")
            value = int(value)
        if not -(2**31) <= value < 2**31:
            raise ValueError(f"parameter `{spec.name}` = {value} does not fit in int32")
        return value
    return check_float32(f"parameter `{spec.name}`", value)


def check_float32(what: str, value) -> float:
    """A float kernels take as float32: a finite value past its range would become ±inf there
    (and NaN downstream, `cap · tanh(s / cap)`) while the float64 reference stays finite."""
    value = float(value)
    if torch.compiler.is_compiling():  # traced (a SymFloat scale): the op's real implementation runs
        return value                   # with the number, and dynamo cannot trace math.isfinite on it
    if math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise ValueError(f"{what} = {value:g} is beyond float32's range (±3.4e38), which kernels compute in; "
                         f"pass a value within it, or ±inf explicitly")
    return value


_PARTIAL_UINTS = tuple(getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name))


def _tensor(spec: n.ParamSpec, value, sizes: dict, scalars: dict, device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"parameter `{spec.name}` is a tensor, got {type(value).__name__}")
    require_dense(f"parameter `{spec.name}`", value)
    if value.dim() != len(spec.dims):
        shown = ", ".join(expr_text(d) for d in spec.dims)
        raise ValueError(f"parameter `{spec.name}` must have {len(spec.dims)} dimensions [{shown}], "
                         f"got shape {tuple(value.shape)}")
    want = tuple(value.shape[k] if d == n.ANY_DIM else int(eval_size_expr(d, sizes, scalars))
                 for k, d in enumerate(spec.dims))
    if tuple(value.shape) != want:
        shown = ", ".join(expr_text(d) for d in spec.dims)
        raise ValueError(f"parameter `{spec.name}` must have shape [{shown}] = {want}, got {tuple(value.shape)}")
    if any(s <= 0 for s in want) and sizes.get("B") != 0:  # with no rows, nothing is read
        raise ValueError(f"parameter `{spec.name}` is empty (shape {want})")
    dt = value.dtype
    if spec.elem == n.INT and (dt.is_floating_point or dt.is_complex or dt == torch.bool):
        raise TypeError(f"parameter `{spec.name}` holds ints, got dtype {dt}")
    if dt in _PARTIAL_UINTS:  # torch has no min/max/indexing for them: refuse, don't half-support
        raise TypeError(f"parameter `{spec.name}` has dtype {dt}, which torch supports only partly; "
                        f"pass int32 or int64 (`.to(torch.int64)`)")
    if spec.elem == n.BOOL and dt != torch.bool:
        raise TypeError(f"parameter `{spec.name}` holds bools, got dtype {dt}")
    if spec.elem == n.FLOAT and not dt.is_floating_point:
        raise TypeError(f"parameter `{spec.name}` holds floats, got dtype {dt}")
    if device is not None and value.device != device:
        raise ValueError(f"parameter `{spec.name}` is on {value.device}, but q is on {device}")
    return value


def bind_params(c: n.Cascade, params: dict, sizes: dict, device=None) -> dict:
    """Every parameter of ``c``: given, or its default evaluated for these sizes; validated."""
    known = {p.name for p in c.params}
    unknown = sorted(set(params) - known)
    if unknown:
        from ..dsl.errors import suggest

        raise TypeError(f"{c.name} got unknown parameter(s) {', '.join(unknown)}{suggest(unknown[0], known)}; "
                        f"it takes: {', '.join(sorted(known)) or 'none'}")
    values: dict = {}
    for p in c.params:  # scalars first: tensor shapes may use int parameters
        if p.kind == "tensor":
            continue
        if p.name in params:
            values[p.name] = _scalar(p, params[p.name])
        elif p.default is not None:
            values[p.name] = _scalar(p, eval_size_expr(p.default, sizes, {}))
        else:
            raise TypeError(f"{c.name} needs parameter `{p.name}` ({p.kind})")
    scalars = dict(values)
    for p in c.params:
        if p.kind != "tensor":
            continue
        if p.name not in params:
            raise TypeError(f"{c.name} needs tensor parameter `{p.name}`")
        values[p.name] = _tensor(p, params[p.name], sizes, scalars, device)
    return values


@functools.lru_cache(maxsize=1024)
def _overflows(c: n.Cascade, env: tuple) -> tuple:
    return tuple(int32_overflows(c, dict(env)))


def check_int32(c: n.Cascade, B: int, sizes: dict, values: dict) -> None:
    """Kernels compute integer expressions in 32 bits: refuse a call for which one can leave
    int32 (the reference, in int64, would then disagree with the kernel) rather than answer wrong."""
    env = {"i": (0, sizes["n_q"] - 1), "j": (0, sizes["n_kv"] - 1), "b": (0, B - 1), "h": (0, sizes["n_heads"] - 1)}
    env |= {k: (v, v) for k, v in sizes.items() if k != "scale"}
    env |= {p.name: (int(values[p.name]),) * 2 for p in c.params if p.kind in (n.INT, n.BOOL)}
    bad = _overflows(c, tuple(sorted(env.items())))
    if bad:
        e, (lo, hi) = max(bad, key=lambda x: max(-x[1][0], x[1][1]))
        used = sorted(p.name for p in c.params if p.kind == n.INT and any(
            isinstance(x, n.Param) and x.name == p.name for x in n.walk(e)))
        given = ", ".join(f"{k}={values[k]}" for k in used)
        raise ValueError(f"{c.name}: `{expr_text(e)}` can reach {int(lo) if lo < -(2**31) else int(hi)} "
                         f"{'(' + given + ') ' if given else ''}for n_q={sizes['n_q']}, n_kv={sizes['n_kv']}, "
                         f"beyond int32: kernels compute integer expressions in 32 bits")
