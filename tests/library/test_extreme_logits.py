"""Every library variant's exp path at large logits, fp32/fp16/bf16 (issue 16's extreme-value
fence): with the score scaled so |scale·q·k| reaches ~1e4 — far past any trained model's logits,
where fp16/bf16 inputs still hold — the kernel agrees with the float64 reference and has no NaN.
Huge logits, up to 1e30, have their own test below."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.ir.printer import cascade_text
from attnc.library import names
from attnc.testing.kit import assert_matches_reference, problems



def _has_exp_path(name: str) -> bool:
    return "exp(" in cascade_text(attnc.library_cascade(name))


# the variants whose normalization exponentiates the score (the others' outputs grow with the
# logits and may leave fp16's range, correctly); grid variants need a grid-shaped call and are
# covered by their own tests
VARIANTS = [x for x in names() if not x.startswith("natten") and _has_exp_path(x)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_large_logits_match_the_reference(variant, dtype):
    attn = attnc.load(variant)

    @settings(max_examples=2, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems(attn, dtypes=(dtype,), max_len=24), st.sampled_from([1500.0, -1500.0]))
    def run(problem, scale):
        assert_matches_reference(attn, dataclasses.replace(problem, scale=scale))

    run()


# Huge logits (issue 16, item 4): |scale·q·k| from 1e8 (|m·log2 e| ≈ 2^30, where the folded FMA
# exponent used to round past exp2's range: NaN rows) to 1e30. A query tile with a shift beyond
# 2^20 (or a non-finite result) runs again with exact exponents (forward.py.jinja), and the
# backward recomputes those tiles alike (its EXACT build).
HUGE = [1e8, -1e8, 1e20, 1e30]


def _one_hot_rows(q, k, scale, keep):
    """Rows whose two largest kept logits differ by far more than fp32's rounding of q·k: there
    the reference's softmax is one-hot and the kernel must pick the same key."""
    s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) * scale
    s = s.masked_fill(~keep, float("-inf"))
    top = s.topk(2, dim=-1).values
    gap = (top[..., 0] - top[..., 1]).abs()
    return gap > 1e-3 * top[..., 0].abs().clamp_min(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", ["full", "causal", "alibi", "softcap", "softmax_off_by_one"])
def test_huge_logits_give_no_nan_and_pick_the_reference_key(variant, dtype):
    attn = attnc.load(variant)
    g = torch.Generator().manual_seed(hash((variant, str(dtype))) % 2**31)
    for scale in HUGE:
        q, k, v = (torch.randn(1, 2, 40, 16, generator=g).to(dtype) for _ in range(3))
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out = attn(q, k, v, scale=scale)
        want = attn.reference(q.detach(), k.detach(), v.detach(), scale=scale)
        assert torch.isfinite(want).all()
        assert torch.isfinite(out).all(), f"{variant} {dtype} scale={scale}: NaN/inf rows"
        if variant in ("full", "causal"):
            keep = torch.ones(40, 40, dtype=torch.bool)
            if variant == "causal":
                keep = torch.tril(keep)
            rows = _one_hot_rows(q.detach(), k.detach(), scale, keep)
            tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
            err = (out.double() - want).abs().amax(-1)
            assert (err[rows] <= tol).all(), f"{variant} {dtype} scale={scale}: max err {err[rows].max():.3g}"
        grads = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=g).to(dtype))
        # dq, dk carry scale times fp32's rounding noise (the true ones are ~0 at one-hot rows):
        # past fp16's range at scale 1e20 that is ±inf, correctly rounded; never NaN
        ok = (lambda x: ~torch.isnan(x)) if dtype == torch.float16 and abs(scale) > 1e10 else torch.isfinite
        assert all(ok(x).all() for x in grads), f"{variant} {dtype} scale={scale}: NaN/inf gradients"


def test_exact_reruns_only_tiles_with_huge_shifts():
    """The forward marks rows it recomputed exactly with 2 in its saved has-key column (the
    backward's cue): none at ordinary logits, the huge tiles' rows at scale 1e8."""
    attn = attnc.load("full")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 40, 16, generator=g) for _ in range(3))
    for scale, expect in ((0.25, False), (1500.0, False), (1e8, True)):
        _, _, stats = attn.launch_forward(q, k, v, [], [], scale, save_stats=True)
        exact = stats[..., -1] == 2.0
        assert bool(exact.any()) == expect, scale
        assert ((stats[..., -1] == 1.0) | exact).all()


def test_scores_past_float32_give_nan_rows_not_a_silent_average():
    """q·k beyond float32's range is +inf in the kernel (the float64 reference stays finite): the
    row comes out NaN, as a +inf score makes it in the reference, not the finite average over the
    infinite scores the running sums would otherwise give (an adversarial pass's silent error)."""
    attn = attnc.load("full")
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 1, 8, 16, generator=g) for _ in range(3))
    out = attn(q * 1e30, k * 1e30, v)
    s = (q.double() * 1e30) @ (k.double() * 1e30).transpose(-1, -2) / 4.0
    over = s.amax(-1) > 3.4e38
    assert over.any() and torch.isnan(out[over]).all()
