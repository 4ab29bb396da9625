"""The kit's core: drawn problems, the reference's keep mask, the comparison with the reference
and the failure report every property shares. ``check`` and the other properties are in
``properties.py``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from hypothesis import assume
from hypothesis import strategies as st

from ..ir import nodes as n
from ..ir.evaluate import eval_size_expr
from ..ir.printer import cascade_text
from ..runtime.check import TOLERANCE, draw_tensor, tensor_shape
from ..runtime.compiler import Attention
from ..runtime.layout import fit_grid, grid_params
from ..runtime.reference import reference_keep
from ..runtime.validate import sizes_of

__all__ = ["LAYOUTS", "Problem", "assert_matches_reference", "keep_mask", "problems"]

REL_FLOOR = 1e-3  # see assert_matches_reference
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
    device: str = "cpu"  # where the inputs live (drawn on the CPU from the seed, then moved): "cuda" runs compiled kernels
    layout: str = "contiguous"  # how q, k, v sit in memory: one of LAYOUTS (the values do not change)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        dt = str(self.dtype).replace("torch.", "")
        params = ", ".join([f"{k}={v!r}" for k, v in self.scalars.items()]
                           + [f"{name}: {elem} tensor {list(shape)}" for name, shape, elem in self.tensor_specs])
        scale = f", scale={self.scale}" if self.scale is not None else ""
        device = f", device={self.device}" if self.device != "cpu" else ""
        device += f", layout={self.layout}" if self.layout != "contiguous" else ""
        return (f"Problem(B={self.B}, Hq={self.Hq}, Hkv={self.Hkv}, Nq={self.Nq}, Nkv={self.Nkv}, D={self.D}, "
                f"Dv={self.Dv}, {dt}{scale}{device}, seed={self.seed}; {params or 'no parameters'})")

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """q, k, v in the problem's dtype and every parameter value, deterministic in the seed."""
        g = torch.Generator().manual_seed(self.seed)
        q = torch.randn(self.B, self.Hq, self.Nq, self.D, generator=g)
        k = torch.randn(self.B, self.Hkv, self.Nkv, self.D, generator=g)
        v = torch.randn(self.B, self.Hkv, self.Nkv, self.Dv, generator=g)
        params = dict(self.scalars)
        for name, shape, elem in self.tensor_specs:
            params[name] = draw_tensor(shape, elem, g).to(self.device)
        return (*(_laid_out(x.to(self.device, self.dtype), self.layout) for x in (q, k, v)), params)


# Memory layouts of q, k, v [B, H, N, D] (same values): the kernels take a fast path for inputs with
# unit head-dim stride and 16-byte multiples elsewhere (``runtime/compiler.py: fast_path``).
LAYOUTS = {
    "contiguous": "row-major [B, H, N, D]",
    "bshd": "[B, N, H, D] memory viewed as [B, H, N, D] (after a fused qkv projection)",
    "padded": "each head-dim row padded by one element (strides not multiples of 16 bytes: the general path)",
}


def _laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return x.contiguous()
    if layout == "bshd":
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "padded":
        out = torch.zeros(*x.shape[:-1], x.shape[-1] + 1, dtype=x.dtype, device=x.device)[..., :x.shape[-1]]
        return out.copy_(x)
    raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def _scalar_strategy(p: n.ParamSpec, int_range, float_range):
    if p.kind == n.INT:
        return st.integers(*int_range)
    if p.kind == n.BOOL:
        return st.booleans()
    return st.floats(*float_range, allow_nan=False, allow_infinity=False)


def problems(attn: Attention, *, dtypes=(torch.float32, torch.float16, torch.bfloat16), max_batch: int = 2,
             heads=((1, 1), (2, 1), (2, 2), (4, 2)), max_len: int = 40, head_dims=(16, 32), value_dims=None,
             params: dict | None = None, int_range=(0, 48), float_range=(-4.0, 4.0),
             defaults: bool = True, layouts=("contiguous",)) -> st.SearchStrategy[Problem]:
    """Problems for ``attn``. ``params`` maps a parameter name to a strategy (or a fixed value) to
    narrow it; scalar parameters with a default keep it unless ``defaults=False``; ``layouts``
    (names of ``LAYOUTS``) are the memory layouts of q, k, v drawn (fast and general kernel paths)."""
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad or not layouts:
        raise ValueError(f"`layouts` must name some of {', '.join(LAYOUTS)}, got {list(layouts)!r}")
    given_params = params or {}
    unknown = set(given_params) - {p.name for p in attn.cascade.params}
    if unknown:
        raise ValueError(f"{attn.name} has no parameter(s) {', '.join(sorted(unknown))}")
    tensors = sorted(p.name for p in attn.cascade.params if p.kind == "tensor" and p.name in given_params)
    if tensors:
        raise ValueError(f"`params` narrows scalar parameters only; {', '.join(tensors)} "
                         f"{'is a tensor' if len(tensors) == 1 else 'are tensors'}, drawn from the declared type")

    # A grid variant's tokens must form its whole grid (n_q = n_kv = the product of its sizes):
    # the length and the grid's int parameters that are drawn are drawn together, from the
    # combinations that make it whole (``runtime/layout.py``: ``fit_grid``), read from the cascade.
    c = attn.cascade
    chosen = [p for p in grid_params(c) if p not in given_params and (c.param(p).default is None or not defaults)]
    grids = None
    if c.grid is not None and not any(isinstance(given_params.get(p), st.SearchStrategy) for p in grid_params(c)):
        grids = fit_grid(c, range(1, max_len + 1), {p: x for p, x in given_params.items() if p in grid_params(c)}, chosen)
        if not grids:
            raise ValueError(f"{attn.name}: no length up to max_len={max_len} makes its grid whole with "
                             f"{', '.join(f'{p}={given_params[p]}' for p in grid_params(c) if p in given_params)}")

    @st.composite
    def draw(draw_):
        B = draw_(st.integers(1, max_batch))
        Hq, Hkv = draw_(st.sampled_from(list(heads)))
        # integers first: hypothesis shrinks towards the first branch, so a failure reduces to its
        # smallest length instead of stopping at a tile edge
        lengths = st.one_of(st.integers(1, max_len), st.sampled_from(TILE_EDGES))
        Nq, Nkv = (draw_(lengths), draw_(lengths)) if c.grid is None else (0, 0)  # a grid's: below
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
            elif p.name in chosen and c.grid is not None:
                continue  # drawn with the length, below
            elif p.default is None or not defaults:
                scalars[p.name] = draw_(_scalar_strategy(p, int_range, float_range))
        if c.grid is not None:
            fixed = {p: x for p, x in scalars.items() if p in grid_params(c)}
            options = grids if grids is not None else fit_grid(c, range(1, max_len + 1), fixed, chosen)
            assume(bool(options))  # a drawn grid parameter that no length fits
            Nq, values = draw_(st.sampled_from(options))
            Nkv = Nq
            scalars.update(values)
        seed = draw_(st.integers(0, 2**31 - 1))
        layout = draw_(st.sampled_from(list(layouts)))
        return Problem(B, Hq, Hkv, Nq, Nkv, D, Dv, dtype, seed, None, scalars,
                       _tensor_specs(attn, B, Hq, Hkv, Nq, Nkv, D, Dv, scalars), layout=layout)

    return draw()


def _tensor_specs(attn: Attention, B, Hq, Hkv, Nq, Nkv, D, Dv, scalars: dict) -> tuple:
    """(name, shape, elem) of the tensor parameters a problem draws (not @attnc.jit's captured ones)."""
    captured = {c.name for c in getattr(attn, "captured", ())}
    q = torch.empty(B, Hq, Nq, D, device="meta")
    k = torch.empty(B, Hkv, Nkv, D, device="meta")
    v = torch.empty(B, Hkv, Nkv, Dv, device="meta")
    sizes = sizes_of(q, k, v, None)
    values = {p.name: scalars.get(p.name, eval_size_expr(p.default, sizes, {}) if p.default is not None else 0)
              for p in attn.cascade.params if p.kind != "tensor"}
    return tuple((p.name, tensor_shape(p, sizes, values), p.elem)
                 for p in attn.cascade.params if p.kind == "tensor" and p.name not in captured)


def resized(attn: Attention, problem: Problem, Nq: int, Nkv: int) -> Problem:
    """``problem`` with other sequence lengths (tensor parameter shapes follow)."""
    p = problem
    return dataclasses.replace(p, Nq=Nq, Nkv=Nkv,
                               tensor_specs=_tensor_specs(attn, p.B, p.Hq, p.Hkv, Nq, Nkv, p.D, p.Dv, p.scalars))


def keep_mask(attn: Attention, problem: Problem) -> torch.Tensor | None:
    """The reference's mask for ``problem``: bool [B, Hq, Nq, Nkv], True where query i keeps key j;
    None when the definition has no mask (every key is kept). A mask cannot read the score, so it
    depends on sizes and parameters only (``attnc.runtime.reference.reference_keep``)."""
    if not attn.cascade.has_mask:
        return None
    q, k, v, params = problem.inputs()
    return reference_keep(attn.cascade, q, k, v, scale=problem.scale, **with_captured(attn, params))


def with_captured(attn: Attention, params: dict) -> dict:
    """``params`` and the tensors an @attnc.jit variant captured (its calls pass them itself)."""
    return {**{c.name: c.argument() for c in getattr(attn, "captured", ())}, **params}


def key_ranges(kept: torch.Tensor, limit: int = 6) -> str:
    """Indices where the bool vector ``kept`` is True, as ranges: ``0..12, 15, 20..22``."""
    idx = kept.nonzero().flatten().tolist()
    runs: list[list[int]] = []
    for j in idx:
        if runs and j == runs[-1][1] + 1:
            runs[-1][1] = j
        else:
            runs.append([j, j])
    text = [f"{a}" if a == b else f"{a}..{b}" for a, b in runs[:limit]]
    if len(runs) > limit:
        text.append(f"… ({len(runs) - limit} more ranges)")
    return ", ".join(text)


def _fmt(x: torch.Tensor) -> str:
    return f"{float(x):.6g}"


def report(attn: Attention, problem: Problem, prop: str, why: str, got: torch.Tensor, want: torch.Tensor, *,
           labels: tuple[str, str] = ("kernel", "reference"), measure: str | None = None,
           compared: torch.Tensor | None = None, got_lse: torch.Tensor | None = None,
           want_lse: torch.Tensor | None = None, at: tuple | None = None, notes=()) -> str:
    """The failure report of property ``prop``: the definition, the problem, the worst element
    (b, h, q_idx, f) with both values, and the keys the reference's mask keeps in its row.

    ``got``/``want`` are [B, Hq, Nq, Dv] in the problem's coordinates; ``compared`` (bool
    [B, Hq, Nq]) limits the search for the worst element to the rows the property constrains;
    ``at`` names the element to show instead of the worst one.
    """
    if at is None:
        g, w = got.double(), want.double()
        diff = (g - w).abs()
        diff = torch.where(torch.isnan(g) & torch.isnan(w), torch.zeros_like(diff), diff)
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        if compared is not None:
            diff = torch.where(compared[..., None], diff, torch.full_like(diff, -1.0))
        at = tuple(int(x) for x in torch.unravel_index(torch.tensor(int(diff.argmax())), diff.shape))
    b, h, i, f = at
    lines = [f"{attn.name}: property `{prop}` fails: {why}"]
    if measure:
        lines.append(f"  {measure}")
    lines += [
        f"  problem: {problem!r}",
        (f"  worst element: b={b}, h={h}, q_idx={i}, f={f}: {labels[0]} {_fmt(got[b, h, i, f])}, "
         f"{labels[1]} {_fmt(want[b, h, i, f])}"),
        f"    {_row_keys(attn, problem, b, h, i)}",
    ]
    if got_lse is not None and want_lse is not None:
        lines.append(f"    lse of that row: {labels[0]} {_fmt(got_lse[b, h, i])}, "
                     f"{labels[1]} {_fmt(want_lse[b, h, i])}")
    lines += ["  " + note for note in notes]
    lines += ["  definition:", *("    " + ln for ln in cascade_text(attn.cascade).rstrip("\n").split("\n"))]
    return "\n".join(lines)


def _row_keys(attn: Attention, problem: Problem, b: int, h: int, i: int) -> str:
    """Which keys the reference's mask keeps for query row (b, h, i)."""
    keep = keep_mask(attn, problem)
    if keep is None:
        return f"that row keeps all {problem.Nkv} keys (no mask)"
    row = keep[b, h, i]
    count = int(row.sum())
    if count == 0:
        return f"that row keeps none of the {problem.Nkv} keys (an empty row)"
    return f"that row keeps {count} of {problem.Nkv} keys: {key_ranges(row)}"


def run(attn: Attention, problem: Problem, q, k, v, params) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel's (out, lse) for these inputs; lse is None when the definition has none."""
    if attn.cascade.has_lse:
        return attn(q, k, v, scale=problem.scale, return_lse=True, **params)
    return attn(q, k, v, scale=problem.scale, **params), None


def assert_matches_reference(attn: Attention, problem: Problem) -> None:
    """Property ``reference``: run the kernel and the float64 reference on ``problem``;
    AssertionError with a report if the relative error exceeds the dtype's bound, the output has
    NaN, or a row the reference leaves empty (lse −inf) is not exactly 0."""
    q, k, v, params = problem.inputs()
    lse_wanted = attn.cascade.has_lse
    got, got_lse = run(attn, problem, q, k, v, params)
    ref = attn.reference(q, k, v, scale=problem.scale, return_lse=lse_wanted, **params)
    ref, ref_lse = ref if lse_wanted else (ref, None)
    bound = TOLERANCE[problem.dtype]
    diff = float((got.double() - ref).norm())
    # A reference that cancels to (nearly) zero makes the relative error meaningless (1e-16 vs an
    # exact 0 is "100 %"): the denominator is at least REL_FLOOR times the output's natural size,
    # the norm it would have if every element were the rms of v.
    natural = float(v.double().pow(2).mean().sqrt()) * ref.numel() ** 0.5 if v.numel() else 0.0
    denom = max(float(ref.norm()), REL_FLOOR * natural)
    rel = diff / denom if denom > 0 else diff
    why, at = None, None
    if torch.isnan(got).any() and not torch.isnan(ref).any():
        why = "NaN in the kernel's output"
    elif not rel <= bound:
        why = "the kernel disagrees with the reference"
    elif lse_wanted:
        empty = torch.isneginf(ref_lse)
        if not torch.equal(torch.isneginf(got_lse), empty):
            why = "lse is -inf on different rows than the reference's"
            at = (*(int(x) for x in (torch.isneginf(got_lse) != empty).nonzero()[0]), 0)
        elif empty.any() and (got[empty] != 0).any():
            why = "a row with no kept key is not exactly 0"
    if why is not None:
        measure = (f"relative error {rel:.3e} (Frobenius norm of the difference / of the reference, at least "
                   f"{REL_FLOOR:.0e} of the output's natural size), bound {bound:.0e}")
        raise AssertionError(report(attn, problem, "reference", why, got, ref, measure=measure,
                                    got_lse=got_lse, want_lse=ref_lse, at=at))
