"""Run a compiled variant on random inputs and compare it with the float64 reference.

Used by ``attnc check`` and ``attnc demo``. Parameters the caller does not give are drawn from
their declared types: scalars take their default (int parameters without one a quarter of the
key length), float tensors standard normals, int tensors small sorted ids along the last axis
(segment-like, so document masks see several segments), bool tensors coin flips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..ir import nodes as n
from ..ir.evaluate import eval_size_expr
from .compiler import Attention
from .validate import sizes_of

# Relative error bounds (Frobenius norm of the difference over that of the reference).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


MAX_CHECK_PAIRS = 2**27  # 1 GiB per float64 score tensor


@dataclass(frozen=True)
class Shape:
    batch: int = 2
    heads: int = 4
    kv_heads: int = 2
    n_q: int = 37
    n_kv: int = 37
    head_dim: int = 32
    head_dim_v: int | None = None

    def __post_init__(self):
        # the float64 reference holds B·Hq·Nq·Nkv scores (several times): refuse what cannot fit
        # rather than die in an allocation or run for hours under the interpreter
        pairs = self.batch * self.heads * self.n_q * self.n_kv
        if pairs > MAX_CHECK_PAIRS:
            raise ValueError(f"B·Hq·Nq·Nkv = {self.batch}·{self.heads}·{self.n_q}·{self.n_kv} = {pairs:,} score pairs; "
                             f"the float64 reference of a check holds them all: keep it at most "
                             f"{MAX_CHECK_PAIRS:,} (e.g. --nq 4096 with the default --batch 2 --heads 4)")
        if max(self.head_dim, self.head_dim_v or 0) > 256:
            raise ValueError(f"head dims must be 1..256, got D={self.head_dim}, Dv={self.head_dim_v}")


@dataclass(frozen=True)
class CheckResult:
    name: str
    dtype: torch.dtype
    rel_err: float
    lse_err: float | None
    bound: float
    seconds: float
    problem: str  # "" when the outputs are well-formed

    @property
    def passed(self) -> bool:
        return not self.problem and self.rel_err <= self.bound and (self.lse_err is None or self.lse_err <= self.bound)

    def line(self) -> str:
        lse = f", lse err {self.lse_err:.1e}" if self.lse_err is not None else ""
        verdict = "PASS" if self.passed else "FAIL"
        why = f" ({self.problem})" if self.problem else ""
        return (f"{self.name:24s} {str(self.dtype).replace('torch.', ''):9s} rel err {self.rel_err:.1e}{lse} "
                f"(bound {self.bound:.0e}, {self.seconds:.1f} s)  {verdict}{why}")


def random_params(attn: Attention, q, k, v, given: dict, g: torch.Generator) -> dict:
    """Values for every parameter of ``attn`` not in ``given``, drawn from its declared type."""
    sizes = sizes_of(q, k, v, None)
    out = dict(given)
    captured = {c.name for c in getattr(attn, "captured", ())}  # @attnc.jit binds these itself
    scalars = {}
    for p in attn.cascade.params:
        if p.kind == "tensor":
            continue
        if p.name in out:
            scalars[p.name] = out[p.name]
        elif p.default is None:
            value = {n.INT: max(1, sizes["n_kv"] // 4), n.FLOAT: 1.0, n.BOOL: True}[p.kind]
            out[p.name] = scalars[p.name] = value
        else:
            scalars[p.name] = eval_size_expr(p.default, sizes, {})
    for p in attn.cascade.params:
        if p.kind != "tensor" or p.name in out or p.name in captured:
            continue
        out[p.name] = draw_tensor(tensor_shape(p, sizes, scalars), p.elem, g)
    return out


def tensor_shape(p: n.ParamSpec, sizes: dict, scalars: dict) -> tuple[int, ...]:
    """The declared shape of tensor parameter ``p`` for these sizes; ``_`` dims take N_KV."""
    return tuple(sizes["n_kv"] if d == n.ANY_DIM else max(1, int(eval_size_expr(d, sizes, scalars)))
                 for d in p.dims)


def draw_tensor(shape: tuple[int, ...], elem: str, g: torch.Generator) -> torch.Tensor:
    """Random values of a declared element type: floats standard normal, bools coin flips, ints
    small ids sorted along the last axis (so segment-style masks see several segments)."""
    if elem == n.FLOAT:
        return torch.randn(shape, generator=g)
    if elem == n.BOOL:
        return torch.rand(shape, generator=g) > 0.5
    return torch.sort(torch.randint(0, 4, shape, generator=g), dim=-1).values


def check(attn: Attention, dtype: torch.dtype, shape: Shape = Shape(), seed: int = 0, params: dict | None = None,
          device: str = "cpu") -> CheckResult:
    """Run ``attn`` once on random inputs of ``shape`` and compare it with the reference."""
    g = torch.Generator().manual_seed(seed)
    dv = shape.head_dim_v or shape.head_dim
    q = torch.randn(shape.batch, shape.heads, shape.n_q, shape.head_dim, generator=g)
    k = torch.randn(shape.batch, shape.kv_heads, shape.n_kv, shape.head_dim, generator=g)
    v = torch.randn(shape.batch, shape.kv_heads, shape.n_kv, dv, generator=g)
    bound = random_params(attn, q, k, v, params or {}, g)
    q, k, v = (t.to(dtype).to(device) for t in (q, k, v))
    bound = {name: (x.to(device) if isinstance(x, torch.Tensor) else x) for name, x in bound.items()}
    lse_wanted = attn.cascade.has_lse
    start = time.perf_counter()
    got = attn(q, k, v, return_lse=lse_wanted, **bound)
    seconds = time.perf_counter() - start
    ref = attn.reference(q, k, v, return_lse=lse_wanted, **bound)
    (got, got_lse), (ref, ref_lse) = (got, ref) if lse_wanted else ((got, None), (ref, None))
    problem = ""
    if got.dtype != dtype or got.shape != ref.shape:
        problem = f"output is {got.dtype} {tuple(got.shape)}, expected {dtype} {tuple(ref.shape)}"
    elif torch.isnan(got).any() and not torch.isnan(ref).any():
        problem = "NaN in the output"
    diff = (got.double().cpu() - ref.cpu()).norm()
    rel = float(diff / ref.norm()) if ref.norm() > 0 else float(diff)
    lse_err = None
    if lse_wanted:
        ref_lse, got_lse = ref_lse.cpu(), got_lse.cpu().double()
        finite = torch.isfinite(ref_lse)
        if not torch.equal(torch.isfinite(got_lse), finite):
            problem = problem or "lse is infinite where the reference is finite, or the reverse"
        a, b = got_lse[finite], ref_lse[finite]
        lse_err = float((a - b).norm() / b.norm()) if b.numel() and b.norm() > 0 else 0.0
    return CheckResult(attn.name, dtype, rel, lse_err, TOLERANCE[dtype], seconds, problem)
