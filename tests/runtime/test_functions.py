"""Every built-in function's Triton form, run: a score modified by the function, forward and
gradients of the interpreted kernels against the float64 reference (which uses the row's torch
form), in float32 and float16. A new row of ``attnc/dsl/functions.py`` is covered here by being
a row."""

from __future__ import annotations

import math

import pytest
import torch

import attnc
import attnc.testing as at
from attnc.dsl.functions import FUNCTIONS
from tests.runtime.test_backward import check_problem, poison  # noqa: F401 (poison: an autouse fixture)

ROWS = list(FUNCTIONS.values())


def _spec(f) -> str:
    """A score that goes through ``f`` where it is defined and keeps a share of the raw score
    (so gradients never vanish with a piecewise-constant ``f``)."""
    if f.typing == "tofloat":
        body = f"score + 0.05 * {f.name}(q_idx - kv_idx)"
    elif f.typing == "int":
        body = f"score + 0.1 * float({f.name}(2.0 * score))"
    elif f.name == "clamp":
        body = "clamp(score, -0.5, 0.75) + 0.25 * score"
    elif f.arity[1] is None:
        body = f"{f.name}(score, 0.3 * score, -0.2) + 0.25 * score"
    else:
        # tanh keeps the argument in (-1, 1), where every row is defined (tan's poles lie
        # further out); functions undefined below 0 get 1.5 + tanh, in (0.5, 2.5)
        arg = "tanh(score)" if not math.isnan(f.scalar(-0.5)) else "1.5 + tanh(score)"
        body = f"{f.name}({arg}) + 0.25 * score"
    return f"attention a:\n    score = {body}\n    mask = kv_idx <= q_idx + 3\n"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("f", ROWS, ids=lambda f: f.name)
def test_a_function_in_the_kernel_matches_the_reference(f, dtype):
    attn = attnc.compile(_spec(f), "a")
    problem = at.Problem(B=1, Hq=2, Hkv=1, Nq=19, Nkv=23, D=16, Dv=8, dtype=dtype, seed=len(f.name))
    check_problem(attn, problem, what=f"{f.name}")
