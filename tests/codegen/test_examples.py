"""Every attention in examples/ compiles to a kernel that matches the float64 reference."""

from pathlib import Path

import pytest
import torch

import attnc
from attnc.runtime.check import random_params

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ATTENTIONS = [(path, d.name) for path in sorted(EXAMPLES.glob("*.attn"))
              for d in attnc.spec_from_file(path).module.defs if d.kind == "attention"]


@pytest.fixture(autouse=True)
def _poison(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(("path", "name"), ATTENTIONS, ids=lambda x: x.stem if isinstance(x, Path) else x)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_example_kernel_matches_reference(path, name, dtype):
    attn = attnc.compile(path, name)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 19, 16, generator=g).to(dtype)
    k = torch.randn(1, 1, 23, 16, generator=g).to(dtype)
    v = torch.randn(1, 1, 23, 16, generator=g).to(dtype)
    params = random_params(attn, q, k, v, {}, g)  # declared shapes and types, defaults kept
    got = attn(q, k, v, **params)
    ref = attn.reference(q, k, v, **params)
    bound = 1e-5 if dtype == torch.float32 else 2e-3
    assert not torch.isnan(got).any()
    assert (got.double() - ref).norm() <= bound * ref.norm().clamp_min(1e-30)
