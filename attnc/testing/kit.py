"""The kit's core: drawn problems, the comparison with the reference and its report."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ..ir import nodes as n
from ..ir.evaluate import eval_size_expr
from ..ir.printer import cascade_text
from ..runtime.check import TOLERANCE, draw_tensor, tensor_shape
from ..runtime.compiler import Attention
from ..runtime.validate import sizes_of

__all__ = ["Problem", "assert_matches_reference", "check", "problems"]

TILE_EDGES = (1, 15, 16, 17)  # the interpreter's 16-wide tiles: one short, exact, one over


@dataclass(frozen=True)
class Problem:
    """One drawn call: sizes, dtype, scale, scalar parameter values and a seed for the tensors."""

    B: int
    Hq: int
    Hkv: int
    Nq: int
    Nkv: int
    D: int
    Dv: int
    dtype: torch.dtype
    seed: int
    scale: float | None = None
    scalars: dict = field(default_factory=dict)
    tensor_specs: tuple = ()  # (name, shape, elem) of tensor parameters, drawn from the seed

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        dt = str(self.dtype).replace("torch.", "")
        params = ", ".join([f"{k}={v!r}" for k, v in self.scalars.items()]
                           + [f"{name}: {elem} tensor {list(shape)}" for name, shape, elem in self.tensor_specs])
        scale = f", scale={self.scale}" if self.scale is not None else ""
        return (f"Problem(B={self.B}, Hq={self.Hq}, Hkv={self.Hkv}, Nq={self.Nq}, Nkv={self.Nkv}, D={self.D}, "
                f"Dv={self.Dv}, {dt}{scale}, seed={self.seed}; {params or 'no parameters'})")

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """q, k, v in the problem's dtype and every parameter value, deterministic in the seed."""
        g = torch.Generator().manual_seed(self.seed)
        q = torch.randn(self.B, self.Hq, self.Nq, self.D, generator=g)
        k = torch.randn(self.B, self.Hkv, self.Nkv, self.D, generator=g)
        v = torch.randn(self.B, self.Hkv, self.Nkv, self.Dv, generator=g)
        params = dict(self.scalars)
        for name, shape, elem in self.tensor_specs:
            params[name] = draw_tensor(shape, elem, g)
        return q.to(self.dtype), k.to(self.dtype), v.to(self.dtype), params


def _scalar_strategy(p: n.ParamSpec, int_range, float_range):
    if p.kind == n.INT:
        return st.integers(*int_range)
    if p.kind == n.BOOL:
        return st.booleans()
    return st.floats(*float_range, allow_nan=False, allow_infinity=False)


def problems(attn: Attention, *, dtypes=(torch.float32, torch.float16, torch.bfloat16), max_batch: int = 2,
             heads=((1, 1), (2, 1), (2, 2), (4, 2)), max_len: int = 40, head_dims=(16, 32), value_dims=None,
             params: dict | None = None, int_range=(0, 48), float_range=(-4.0, 4.0),
             defaults: bool = True) -> st.SearchStrategy[Problem]:
    """Problems for ``attn``. ``params`` maps a parameter name to a strategy (or a fixed value) to
    narrow it; scalar parameters with a default keep it unless ``defaults=False``."""
    given_params = params or {}
    unknown = set(given_params) - {p.name for p in attn.cascade.params}
    if unknown:
        raise ValueError(f"{attn.name} has no parameter(s) {', '.join(sorted(unknown))}")
    captured = {c.name for c in getattr(attn, "captured", ())}  # @attnc.jit binds these itself

    @st.composite
    def draw(draw_):
        B = draw_(st.integers(1, max_batch))
        Hq, Hkv = draw_(st.sampled_from(list(heads)))
        lengths = st.one_of(st.sampled_from(TILE_EDGES), st.integers(1, max_len))
        Nq, Nkv = draw_(lengths), draw_(lengths)
        D = draw_(st.sampled_from(list(head_dims)))
        Dv = draw_(st.sampled_from(list(value_dims))) if value_dims else D
        dtype = draw_(st.sampled_from(list(dtypes)))
        scalars = {}
        for p in attn.cascade.params:
            if p.kind == "tensor":
                continue
            if p.name in given_params:
                choice = given_params[p.name]
                scalars[p.name] = draw_(choice) if isinstance(choice, st.SearchStrategy) else choice
            elif p.default is None or not defaults:
                scalars[p.name] = draw_(_scalar_strategy(p, int_range, float_range))
        q = torch.empty(B, Hq, Nq, D, device="meta")
        k = torch.empty(B, Hkv, Nkv, D, device="meta")
        v = torch.empty(B, Hkv, Nkv, Dv, device="meta")
        sizes = sizes_of(q, k, v, None)
        values = {p.name: scalars.get(p.name, eval_size_expr(p.default, sizes, {}) if p.default is not None else 0)
                  for p in attn.cascade.params if p.kind != "tensor"}
        tensor_specs = []
        for p in attn.cascade.params:
            if p.kind != "tensor" or p.name in captured:
                continue
            tensor_specs.append((p.name, tensor_shape(p, sizes, values), p.elem))
        seed = draw_(st.integers(0, 2**31 - 1))
        return Problem(B, Hq, Hkv, Nq, Nkv, D, Dv, dtype, seed, None, scalars, tuple(tensor_specs))

    return draw()


def _report(attn: Attention, problem: Problem, got: torch.Tensor, ref: torch.Tensor, rel: float, bound: float,
            why: str) -> str:
    diff = (got.double() - ref).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    flat = int(diff.argmax())
    b, h, i, f = torch.unravel_index(torch.tensor(flat), diff.shape)
    lines = [
        f"{attn.name}: {why}",
        f"  relative error {rel:.3e} (Frobenius norm of the difference / of the reference), bound {bound:.0e}",
        f"  problem: {problem!r}",
        f"  worst element: b={int(b)}, h={int(h)}, q_idx={int(i)}, f={int(f)}: kernel {float(got[b, h, i, f]):.6g}, "
        f"reference {float(ref[b, h, i, f]):.6g}",
        "  definition:",
        *("    " + line for line in cascade_text(attn.cascade).rstrip("\n").split("\n")),
    ]
    return "\n".join(lines)


def assert_matches_reference(attn: Attention, problem: Problem) -> None:
    """Run the kernel and the float64 reference on ``problem``; AssertionError with a report if
    the relative error exceeds the dtype's bound, the output has NaN, or a row the reference
    leaves empty (lse −inf) is not exactly 0."""
    q, k, v, params = problem.inputs()
    lse_wanted = attn.cascade.has_lse
    got = attn(q, k, v, scale=problem.scale, return_lse=lse_wanted, **params)
    ref = attn.reference(q, k, v, scale=problem.scale, return_lse=lse_wanted, **params)
    (got, got_lse), (ref, ref_lse) = (got, ref) if lse_wanted else ((got, None), (ref, None))
    bound = TOLERANCE[problem.dtype]
    diff = (got.double() - ref).norm()
    rel = float(diff / ref.norm()) if ref.norm() > 0 else float(diff)
    why = None
    if torch.isnan(got).any() and not torch.isnan(ref).any():
        why = "NaN in the kernel's output"
    elif not rel <= bound:
        why = "the kernel disagrees with the reference"
    elif lse_wanted:
        empty = torch.isneginf(ref_lse)
        if not torch.equal(torch.isneginf(got_lse), empty):
            why = "lse is -inf on different rows than the reference's"
        elif empty.any() and (got[empty] != 0).any():
            why = "a row with no kept key is not exactly 0"
    if why is not None:
        raise AssertionError(_report(attn, problem, got, ref, rel, bound, why))


def check(attn: Attention, *, examples: int = 50, seed: int | None = None, **problem_options) -> None:
    """Property-test ``attn`` against the reference on ``examples`` drawn problems; raises the
    shrunk AssertionError report on failure. ``problem_options`` go to ``problems``."""
    strategy = problems(attn, **problem_options)
    settings_ = settings(max_examples=examples, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                         print_blob=False)

    @settings_
    @given(strategy)
    def run(problem):
        assert_matches_reference(attn, problem)

    if seed is not None:
        run = hypothesis_seed(seed)(run)
    run()
