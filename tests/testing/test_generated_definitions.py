"""The compiler on programs nobody wrote: random well-typed definitions (attnc.testing.specs),
rendered as spec text, parsed back, compiled to a kernel and run on drawn problems.

Three results must agree on every definition: the kernel (within the dtype's bound, through
``attnc.testing.assert_matches_reference``), attnc's float64 reference interpreter, and the
generator's own float64 evaluation of the same trees (written from the language docs, not from
attnc's lowering). Any exception is a bug: the generator only writes valid definitions, so there
is no expected rejection.

``ATTNC_SPECGEN_EXAMPLES`` sets the number of definitions (CI: 400; the nightly profile in
docs/testing.md runs 5000).
"""

from __future__ import annotations

import os
import zlib
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attnc
from attnc.testing import LAYOUTS, Problem, assert_decode, assert_matches_reference, problems
from attnc.ir import verify
from attnc.testing.specs import definitions

EXAMPLES = int(os.environ.get("ATTNC_SPECGEN_EXAMPLES", "400"))


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))


def _close(got, want, what, d):
    # both float64 on the same inputs: only the order of operations differs
    bad = ~torch.isclose(got, want, rtol=1e-7, atol=1e-9, equal_nan=False)
    assert not bad.any(), (f"{what}: attnc's reference and the generator's evaluation disagree at "
                           f"{bad.nonzero()[0].tolist()}: {got[bad][0].item()!r} vs {want[bad][0].item()!r}\n{d.text}")


def _reference_agrees_with_the_generator(d, attn, problem):
    q, k, v, params = problem.inputs()
    has_lse = attn.cascade.has_lse
    ref = attn.reference(q, k, v, return_lse=has_lse, **params)
    ref_out, ref_lse = ref if has_lse else (ref, None)
    want_out, want_lse = d.expected(q, k, v, params)
    _close(ref_out, want_out, "out", d)
    if has_lse:
        assert want_lse is not None, d.text
        _close(ref_lse, want_lse, "lse", d)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(d=definitions(), data=st.data())
def test_generated_definitions_lower_to_what_they_say(d, data):
    # The front half alone (no kernel, so many more definitions per second): the text parses,
    # the cascade verifies, and the reference interpreter computes the generator's evaluation.
    cascade = attnc.spec_from_text(d.text).cascade(d.name)
    verify(cascade)
    attn = attnc.compile(d.text)
    problem = data.draw(problems(attn, max_batch=2, heads=((1, 1), (2, 1)), max_len=12, head_dims=(4,),
                                 dtypes=(torch.float32,),
                                 params=d.param_strategies, defaults=False), label="problem")
    _reference_agrees_with_the_generator(d, attn, problem)


def test_generated_definitions_agree_with_the_reference_and_an_independent_evaluation():
    stats = Counter()

    # no explain phase: it traces every rerun with sys.settrace, ten times slower under the interpreter
    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck), phases=[p for p in Phase if p.name != "explain"])
    @given(d=definitions(), data=st.data())
    def run(d, data):
        attn = attnc.compile(d.text)  # must not raise: every generated definition is valid
        # every memory layout and a padded head dim: the kernels' fast and general paths
        problem = data.draw(problems(attn, max_batch=2, heads=((1, 1), (2, 1), (2, 2)), max_len=24,
                                     head_dims=(16, 24), params=d.param_strategies, defaults=False,
                                     layouts=tuple(LAYOUTS)), label="problem")
        _reference_agrees_with_the_generator(d, attn, problem)
        assert_matches_reference(attn, problem)
        if zlib.crc32(d.text.encode()) % 8 == 0 and attn.cascade.grid is None:  # one definition in eight
            assert_decode(attn, problem)  # split-KV merges by each generated norm's own factors
            stats["decoded"] += 1
        stats["definitions"] += 1
        stats[f"layout={problem.layout}"] += 1
        stats[f"passes={attnc.plan_passes(attn.cascade).num_passes}"] += 1
        stats[f"norm={d.norm.family}"] += 1
        stats["masked"] += d.mask is not None
        stats[str(problem.dtype)] += 1

    run()
    print(dict(stats))
    # the run checked what it claims, across the families the generator draws
    assert stats["definitions"] >= EXAMPLES * 0.95, stats
    assert stats["passes=2"] + stats["passes=3"] >= EXAMPLES * 0.05, stats
    assert stats["masked"] >= EXAMPLES * 0.3, stats
    assert stats["decoded"] >= EXAMPLES * 0.04, stats
    for family in ("library", "softmax_like", "elementwise", "multipass", "two_maps", "scan"):
        assert stats[f"norm={family}"] >= EXAMPLES * 0.05, stats
    for layout in LAYOUTS:
        assert stats[f"layout={layout}"] >= EXAMPLES * 0.1, stats


def test_a_reference_that_cancels_to_zero_is_not_a_mismatch():
    # Found by the nightly profile: tanh(s - mean_j s) with a constant score is 0 up to float64
    # rounding (1e-16) in the reference and exactly 0 in the kernel — a "relative error" of 1.
    # The kit floors the denominator at 1e-3 of the output's natural size; a real error on such
    # an output (here: the kernel's output replaced by ones) is still caught.
    text = ("norm centered:\n    mu[i] = sum(s[i, j] for j) / n_kv\n    out[i] = sum(tanh(s[i, j] - mu[i]) * v[j] for j)\n\n"
            "attention generated:\n    score = 0.09\n    norm = centered\n")
    attn = attnc.compile(text)
    problem = Problem(1, 1, 1, 1, 15, 16, 16, torch.float32, 0)
    assert_matches_reference(attn, problem)
    broken = type("Broken", (), {"__call__": lambda self, q, k, v, **kw: torch.ones(1, 1, 1, 16),
                                 "__getattr__": lambda self, name: getattr(attn, name)})()
    with pytest.raises(AssertionError, match="disagrees with the reference"):
        assert_matches_reference(broken, problem)


@pytest.mark.parametrize("c0", [6.654837035633454e-104, 1e-40, -1e-39, 0.0, 0.5])
def test_a_subnormal_float_parameter_in_a_bf16_kernel(c0):
    # Found by the nightly profile: Triton's interpreter zeroed a bf16 kernel's whole output when
    # a float parameter below float32's smallest normal went through tanh. Kernels now receive
    # float parameters rounded to float32 with subnormals flushed to 0.
    text = ("norm g:\n    z[i] = sum(sigmoid(s[i, j]) for j) + 1.0\n    out[i] = sum(0.01 * v[j] for j) / z[i]\n\n"
            "attention generated(c0: float):\n    score = score * 0.0 + tanh(c0) * 0.0\n    norm = g\n")
    attn = attnc.compile(text)
    assert_matches_reference(attn, Problem(1, 1, 1, 3, 5, 16, 16, torch.bfloat16, 0, None, {"c0": c0}))
