"""Every library variant's exp path at large logits, fp32/fp16/bf16 (issue 16's extreme-value
fence): with the score scaled so |scale·q·k| reaches ~1e4 — far past any trained model's logits,
where fp16/bf16 inputs still hold — the kernel agrees with the float64 reference and has no NaN.
The documented limit of the fp32 exponent (|logits| ≥ 2^29: docs/semantics.md) is beyond it."""

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
