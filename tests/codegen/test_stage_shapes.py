"""Stages whose value does not vary over all their ranks: a constant score, a mask on the query
alone or on a bool parameter, a per-row stage that is a constant, a weight free of `s`. The
kernel must still reduce and contract them at full tile shape (the spec generator found
`score = 0.0` crashing the kernel with `axis 1 out of bounds for shape []`)."""

import pytest
import torch

import attnc


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))


CASES = {
    "constant score, off-by-one": ("attention a:\n    score = 0.0\n    norm = softmax_off_by_one\n", {}),
    "score from the query alone": ("attention a:\n    score = 0.1 * float(q_idx)\n", {}),
    "score from the key alone, no mask": ("attention a:\n    score = 0.1 * float(kv_idx)\n    norm = none\n", {}),
    "mask on a bool parameter, off": ("attention a(flag: bool):\n    mask = flag\n", {"flag": False}),
    "mask on a bool parameter, on": ("attention a(flag: bool):\n    mask = flag\n", {"flag": True}),
    "bounded mask with a scalar residual": ("attention a(flag: bool):\n    mask = kv_idx <= q_idx and flag\n",
                                            {"flag": True}),
    "mask on the query alone": ("attention a:\n    mask = q_idx < 5\n    norm = none\n", {}),
    "constant row and pair stages": ("norm nn:\n    z[i] = 1.0\n    c[i, j] = 0.5\n"
                                     "    out[i] = sum(c[i, j] * v[j] for j) / z[i]\nattention a:\n    norm = nn\n", {}),
    "weight free of s": ("norm nn:\n    out[i] = sum(0.3 * v[j] for j)\nattention a:\n    norm = nn\n", {}),
    "max of a constant": ("norm nn:\n    m[i] = max(2.0 for j)\n    out[i] = sum(exp(s[i, j] - m[i]) * v[j] for j)\n"
                          "attention a:\n    mask = kv_idx <= q_idx\n    norm = nn\n", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stages_of_lower_rank_match_the_reference(case, dtype):
    text, params = CASES[case]
    attn = attnc.compile(text)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 20, 16, generator=g).to(dtype)
    k = torch.randn(1, 1, 17, 16, generator=g).to(dtype)
    v = torch.randn(1, 1, 17, 16, generator=g).to(dtype)
    got = attn(q, k, v, **params).double()
    ref = attn.reference(q, k, v, **params)
    assert not torch.isnan(got).any()
    denom = max(float(ref.norm()), 1e-30)
    assert float((got - ref).norm()) / denom <= (1e-5 if dtype == torch.float32 else 2e-3), case
