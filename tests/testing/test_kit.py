"""attnc.testing: the property-testing kit users run on their own variants, and proof it can fail."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
import attnc.codegen.generate as generate_mod
import attnc.testing as at

F32 = (torch.float32,)


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))


BAND = "attention band(w: int):\n    mask = kv_idx <= q_idx and q_idx - kv_idx < w\n"


def test_problems_respect_declared_types_and_relations():
    attn = attnc.compile("attention t(w: int, c: float = 2.0, bias: tensor[H, N_KV] float, ids: tensor[B, _] int):\n"
                         "    score = score + bias[h, kv_idx] + c\n    mask = ids[b, q_idx] == ids[b, kv_idx] or w > 3\n")

    @settings(max_examples=60, deadline=None)
    @given(at.problems(attn, params={"w": st.integers(1, 5)}))
    def run(p):
        assert p.Hq % p.Hkv == 0 and p.Nq >= 1 and p.Nkv >= 1
        assert 1 <= p.scalars["w"] <= 5 and "c" not in p.scalars  # c keeps its default
        q, k, v, params = p.inputs()
        assert q.dtype == p.dtype and params["bias"].shape == (p.Hq, p.Nkv)
        assert params["ids"].shape == (p.B, p.Nkv) and params["ids"].dtype == torch.int64
    run()


def test_check_passes_on_a_correct_kernel():
    at.check(attnc.compile(BAND), examples=8, seed=1, params={"w": st.integers(0, 20)})
    at.check(attnc.load("softmax_sink"), examples=6, seed=2)


def test_assert_matches_reference_in_a_users_test():
    attn = attnc.load("sliding_window")

    @settings(max_examples=6, deadline=None)
    @given(at.problems(attn, dtypes=F32, params={"window": st.integers(1, 9)}))
    def test_window(problem):
        at.assert_matches_reference(attn, problem)

    test_window()


def test_an_injected_off_by_one_is_caught_with_a_shrunk_report(monkeypatch):
    # The generated mask `kv_idx <= q_idx` is broken into `kv_idx < q_idx` in the kernel source
    # only (boundary tiles test the rows' key intervals [lo_r, hi_r)): the reference keeps the
    # diagonal, the kernel drops it.
    real = generate_mod.generate

    def broken(c, spec, plan=None):
        src = real(c, spec, plan)
        text = src.text.replace("(rel_n[None, :] < hi_rel[:, None])", "(rel_n[None, :] < hi_rel[:, None] - 1)")
        assert text != src.text, "the injection point moved; update this test"
        return dataclasses.replace(src, text=text)

    monkeypatch.setattr("attnc.runtime.compiler.generate", broken)
    attn = attnc.compile("attention diag:\n    mask = kv_idx <= q_idx\n")
    with pytest.raises(AssertionError) as info:
        at.check(attn, examples=30, seed=0, dtypes=F32, max_batch=2, heads=((1, 1), (2, 1)), max_len=20)
    report = str(info.value)
    assert "diag: property `reference` fails" in report and "relative error" in report and "worst element" in report
    assert "keep[i, j]" in report  # the definition is shown
    # shrunk: hypothesis reduces the failing problem to the smallest one (one query row)
    assert "Nq=1," in report and "B=1," in report, report
    # the kv side of the worst row: the reference keeps the diagonal key the kernel dropped
    assert "that row keeps 1 of 1 keys: 0\n" in report and "lse of that row: kernel -inf" in report


def test_params_refuses_tensor_parameters_by_name():
    attn = attnc.load("softmax_sink")
    with pytest.raises(ValueError, match="`params` narrows scalar parameters only; sink is a tensor"):
        at.problems(attn, params={"sink": torch.zeros(4)})
    with pytest.raises(ValueError, match="has no parameter"):
        at.problems(attn, params={"sinks": 1})
