"""Generated forward kernels (Triton interpreter on CPU) against the float64 reference.

A first slice of issue 3: every library variant, fp32/fp16/bf16, ragged tile edges, GQA,
Dv != D. Outputs are poisoned with NaN before each run.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
TILE = 16  # the interpreter's BLOCK_M/BLOCK_N

PARAMS = {
    "sliding_window": {"window": 5}, "chunked": {"chunk": 4}, "prefix_lm": {"prefix": 3},
    "sink_window": {"sinks": 2, "window": 4}, "dilated_window": {"window": 3, "dilation": 2},
}


pytestmark = pytest.mark.usefixtures("poison")


def _params(name, B, Hq, Nq, Nkv, g):
    if name == "document":
        return {"doc": torch.sort(torch.randint(0, 3, (B, Nkv), generator=g), dim=1).values}
    if name == "relative_bias":
        return {"table": torch.randn(Hq, Nq + Nkv - 1, generator=g)}
    if name == "softmax_sink":
        return {"sink": torch.randn(Hq, generator=g)}
    if name == "stick_breaking_bias":
        return {"bias": torch.randn(Hq, generator=g) - 0.5}
    if name == "differential":
        return {"lam": torch.rand(Hq, generator=g), "causal": True}
    if name == "gpsa":
        return {"width": 4, "gate": torch.randn(Hq, generator=g), "vpos": torch.randn(Hq, 3, generator=g)}
    return dict(PARAMS.get(name, {}))


SEQ = st.sampled_from([1, TILE - 1, TILE + 1, 5, 2 * TILE + 3])
# the NATTEN grids need n_q = n_kv = the grid's token count: test_natten2d_kernel below, tests/library/test_natten.py
VARIANTS = sorted(name for name in attnc.library.names() if not name.startswith("natten"))


@settings(max_examples=80)
@given(name=st.sampled_from(VARIANTS), dtype=st.sampled_from(list(TOL)), nq=SEQ, nkv=SEQ,
       heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]), dims=st.sampled_from([(16, 16), (32, 16), (24, 40)]),
       seed=st.integers(0, 2**16))
def test_kernel_matches_reference(name, dtype, nq, nkv, heads, dims, seed):
    g = torch.Generator().manual_seed(seed)
    (Hq, Hkv), (D, Dv) = heads, dims
    q = torch.randn(1, Hq, nq, D, generator=g).to(dtype)
    k = torch.randn(1, Hkv, nkv, D, generator=g).to(dtype)
    v = torch.randn(1, Hkv, nkv, Dv, generator=g).to(dtype)
    params = _params(name, 1, Hq, nq, nkv, g)
    attn = attnc.load(name)
    lse_wanted = attn.cascade.has_lse
    got = attn(q, k, v, return_lse=lse_wanted, **params)
    ref = attnc.reference(attn.cascade, q, k, v, return_lse=lse_wanted, **params)
    if lse_wanted:
        (got, got_lse), (ref, ref_lse) = got, ref
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(got_lse), finite)
        assert torch.allclose(got_lse[finite].double(), ref_lse[finite], atol=TOL[dtype] * 10, rtol=TOL[dtype])
    assert got.dtype == dtype and not torch.isnan(got).any()
    err = (got.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    assert err <= TOL[dtype] or ref.norm() == 0, f"{name} {dtype}: rel err {err:.2e}"


def test_natten2d_kernel():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 36, 16, generator=g) for _ in range(3))
    attn = attnc.load("natten2d")
    params = {"width": 6, "kernel_h": 3, "kernel_w": 3, "dilation_h": 2, "dilation_w": 2}
    got = attn(q, k, v, **params)
    ref = attnc.reference(attn.cascade, q, k, v, **params)
    assert (got.double() - ref).norm() / ref.norm() < 1e-5


def test_bitwise_operators_with_constants_and_runtime_values():
    """Constant bitwise sub-expressions fold (a kernel cannot call `.to` on a Python int), shift
    counts from runtime values are clamped into 0..31, and the kernel agrees with the reference."""
    attn = attnc.compile(
        "attention a(n: int = 3, c: int = 40):\n"
        "    score = score + float(5 & 3) * 0.1 - float(~3) * 0.01 + float(1 << 2) * 0.001 + float(0x0F ^ 0b101)\n"
        "    score = score + float((q_idx >> n) & 3) * 0.2 - float(kv_idx << (n - c) | q_idx) * 0.001\n"
        "    mask = (q_idx ^ kv_idx) & 0b11 != 3 or kv_idx >> 2 == q_idx >> 2\n")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 16, generator=g) for _ in range(3))
    for shift in (3, -2, 40):  # a count below 0 or above 31 is taken as 0 or 31
        got = attn(q, k, v, n=shift)
        ref = attnc.reference(attn.cascade, q, k, v, n=shift)
        assert (got.double() - ref).norm() / ref.norm() < 1e-5, shift


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    attn = attnc.compile("attention a:\n    mask = kv_idx < q_idx - 3\n")
    q, k, v = (torch.randn(1, 1, 8, 16) for _ in range(3))
    out, lse = attn(q, k, v, return_lse=True)
    assert torch.equal(out[0, 0, :4], torch.zeros(4, 16)) and torch.isinf(lse[0, 0, :4]).all()
    assert torch.isfinite(lse[0, 0, 4:]).all()


def test_sizes_and_scalar_parameters_never_recompile():
    attn = attnc.load("sliding_window")
    g = torch.Generator().manual_seed(1)
    attn(torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16), window=2)
    before = attnc.compile_count()
    for _ in range(6):
        B, n, m = (int(x) for x in torch.randint(1, 20, (3,), generator=g))
        w = int(torch.randint(1, 9, (1,), generator=g))
        attn(torch.randn(B, 1, n, 16), torch.randn(B, 1, m, 16), torch.randn(B, 1, m, 16), window=w)
    assert attnc.compile_count() == before


def test_generated_source_is_a_readable_cached_file():
    path = attnc.load("softmax").kernel_path(torch.float32)
    text = path.read_text()
    assert path.suffix == ".py" and "cascade softmax" in text and "tl.dot" in text
    assert "softmax" not in text.split("import triton", 1)[1]  # the kernel body never names the variant


@pytest.mark.parametrize("bad, err", [
    (lambda q, k, v: (q[0], k, v), ValueError),
    (lambda q, k, v: (q, k.half(), v), TypeError),
    (lambda q, k, v: (q, k[:, :, :, :8], v), ValueError),
    (lambda q, k, v: (torch.randn(1, 3, 4, 16), k, v), ValueError),
])
def test_validation_errors_name_the_argument(bad, err):
    q, k, v = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)
    with pytest.raises(err):
        attnc.load("softmax")(*bad(q, k, v))
    with pytest.raises(TypeError, match="window"):
        attnc.load("sliding_window")(q, k, v)
