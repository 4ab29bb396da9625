"""Property-testing a variant of your own with attnc.testing, in pytest.

    python3 -m pytest -q examples/test_tempered.py

The variant is `examples/tempered.attn`. The README's section "Property-testing your own
variant" walks through these tests and through reading the report of the one that fails.
"""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
import attnc.testing as at

SPEC = Path(__file__).with_name("tempered.attn")
tempered = attnc.compile(SPEC, "tempered")
tempered_naive = attnc.compile(SPEC, "tempered_naive")

# The parameters as the model uses them: temperatures down to 0.005, windows up to the length.
PARAMS = {"temp": st.floats(0.005, 2.0), "window": st.integers(0, 40)}


@settings(max_examples=20, deadline=None)
@given(at.problems(tempered, params=PARAMS))
def test_tempered_matches_the_reference(problem):
    # kernel vs the float64 reference, on drawn shapes, dtypes and parameters
    at.assert_matches_reference(tempered, problem)


def test_tempered_properties():
    # every property that applies: reference, batch_split, head_permutation, masked_keys, empty_rows
    at.check(tempered, examples=8, seed=0, properties="all", params=PARAMS)


def test_the_textbook_softmax_overflows_at_low_temperature():
    # exp(s) without subtracting the row max overflows float32 once s / temp > 88; the reference
    # computes in float64 and does not. The kit finds it and shrinks it to one query and one key.
    with pytest.raises(AssertionError, match="NaN in the kernel's output") as info:
        at.check(tempered_naive, examples=60, seed=0, params=PARAMS)
    assert "Nq=1, Nkv=1" in str(info.value)
