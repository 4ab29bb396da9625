"""The kernels' fast path (``ALIGNED``/``EVEN_D``, chosen by ``runtime/compiler.py: fast_path``)
and general path agree with the float64 reference: hypothesis over memory layouts (strides),
head dims 16–256 (80, 96, 192 padded to a power of two), lengths that are not multiples of the
tile, dtypes; and the pieces issue 15 added to the kernels: congruence masks tested in two
instructions, fp16 score gradients scaled into fp16's range, the dK/dV kernel's scan of query
tiles (also when they are not contiguous, and per GQA head). Outputs poisoned first.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
import attnc.testing as at
from attnc.runtime import compiler
from attnc.runtime.compiler import fast_path, interpreter_tiles
from attnc.testing.kit import _tensor_specs

VARIANTS = ("causal", "sliding_window", "document", "softcap", "alibi", "relu", "dilated_window", "prefix_lm",
            "sigmoid_attention", "softmax_sink")
PARAMS = {"sliding_window": {"window": 7}, "dilated_window": {"window": 3, "dilation": 3}, "prefix_lm": {"prefix": 5}}


pytestmark = pytest.mark.usefixtures("poison")


def _problem(attn, dtype, D, Nq, Nkv, layout, seed, heads=(2, 1), scalars=None):
    Hq, Hkv = heads
    scalars = dict(PARAMS.get(attn.name, {}) if scalars is None else scalars)
    return at.Problem(1, Hq, Hkv, Nq, Nkv, D, D, dtype, seed, scalars=scalars,
                      tensor_specs=_tensor_specs(attn, 1, Hq, Hkv, Nq, Nkv, D, D, scalars), layout=layout)


# ---------------------------------------------------------------------------- which path


def test_fast_path_flags_follow_the_inputs():
    x = torch.zeros(1, 2, 40, 64, dtype=torch.float16)
    assert fast_path((x, x, x), 64, 64) == {"ALIGNED": True, "EVEN_D": True}
    y = torch.zeros(1, 2, 40, 80, dtype=torch.float16)
    assert fast_path((y, y, y), 80, 80) == {"ALIGNED": True, "EVEN_D": False}  # 80 pads to 128
    bshd = torch.zeros(1, 40, 2, 64, dtype=torch.float16).transpose(1, 2)
    assert fast_path((bshd, x, x), 64, 64)["ALIGNED"]
    padded = torch.zeros(1, 2, 40, 65, dtype=torch.float16)[..., :64]  # row stride 65 elements
    assert not fast_path((padded, x, x), 64, 64)["ALIGNED"]
    strided_d = torch.zeros(1, 2, 64, 40, dtype=torch.float16).transpose(2, 3)  # head-dim stride 40
    assert not fast_path((strided_d, x, x), 64, 64)["ALIGNED"]
    shifted = torch.zeros(1 * 2 * 40 * 64 + 1, dtype=torch.float16)[1:].view(1, 2, 40, 64)  # 2-byte offset
    assert not fast_path((shifted, x, x), 64, 64)["ALIGNED"]
    odd = torch.zeros(1, 2, 40, 36, dtype=torch.float16)  # 72 bytes per row: not a multiple of 16
    assert not fast_path((odd, odd, odd), 36, 36)["ALIGNED"]
    f32 = torch.zeros(1, 2, 40, 36, dtype=torch.float32)  # 144 bytes per row: fine in fp32
    assert fast_path((f32, f32, f32), 36, 36) == {"ALIGNED": True, "EVEN_D": False}


@pytest.fixture
def flags_seen(monkeypatch):
    """The (ALIGNED, EVEN_D) pairs the forward launches take during a test."""
    seen = set()
    real = compiler.fast_path

    def spy(tensors, d, dv):
        out = real(tensors, d, dv)
        seen.add((out["ALIGNED"], out["EVEN_D"]))
        return out
    monkeypatch.setattr(compiler, "fast_path", spy)
    return seen


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(VARIANTS), dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
       D=st.sampled_from([16, 24, 40, 64, 80, 96, 128, 192, 256]), nq=st.sampled_from([1, 15, 17, 33]),
       nkv=st.sampled_from([1, 16, 19, 40]), layout=st.sampled_from(sorted(at.LAYOUTS)),
       heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]), seed=st.integers(0, 2**20))
def test_fast_and_general_paths_match_the_reference(flags_seen, name, dtype, D, nq, nkv, layout, heads, seed):
    attn = attnc.load(name)
    at.assert_matches_reference(attn, _problem(attn, dtype, D, nq, nkv, layout, seed, heads))


def test_the_property_test_took_every_path(flags_seen):
    # the hypothesis test above cannot assert this per example: run one of each here
    attn = attnc.load("causal")
    for D, layout in ((64, "contiguous"), (80, "bshd"), (64, "padded"), (24, "padded")):
        at.assert_matches_reference(attn, _problem(attn, torch.float16, D, 21, 21, layout, 0))
    assert flags_seen == {(True, True), (True, False), (False, True), (False, False)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(("causal", "softcap", "sliding_window", "document", "relu")),
       dtype=st.sampled_from([torch.float16, torch.bfloat16]), D=st.sampled_from([16, 40, 80]),
       layout=st.sampled_from(sorted(at.LAYOUTS)), seed=st.integers(0, 2**20))
def test_gradients_on_both_paths(flags_seen, name, dtype, D, layout, seed):
    attn = attnc.load(name)
    at.assert_gradients(attn, _problem(attn, dtype, D, 23, 29, layout, seed))


# ---------------------------------------------------------------------------- congruences


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dilation=st.sampled_from([-3, -1, 0, 1, 2, 3, 15, 16, 17, 40]), window=st.integers(0, 4),
       nq=st.integers(1, 40), nkv=st.integers(1, 40), block_n=st.sampled_from([16, 32]), seed=st.integers(0, 2**20))
def test_congruence_masks_in_two_instructions(dilation, window, nq, nkv, block_n, seed):
    # dilated_window's `d % dilation == 0` runs as a multiply-add and an unsigned compare on every
    # tile (Lemire's divisibility test when the modulus is under the tile width, an equality
    # otherwise, and the single key d = 0 for modulus 0): forward and gradients at two tile widths
    attn = attnc.load("dilated_window")
    problem = _problem(attn, torch.float32, 16, nq, nkv, "contiguous", seed,
                       scalars={"window": window, "dilation": dilation})
    with interpreter_tiles(16, block_n):
        at.assert_matches_reference(attn, problem)
        at.assert_gradients(attn, problem)


def test_congruence_kernel_source_has_no_per_pair_modulo():
    from attnc.codegen.generate import Specialization, generate
    from attnc.ir.layout import kernel_cascade
    from attnc.runtime.frontend import library_cascade

    text = generate(kernel_cascade(library_cascade("dilated_window")), Specialization("float16", False)).text
    loops = text.split("# ---- pass 1")[1].split("# ---- epilogue")[0]
    assert "_fmod" not in loops and "cg_keep_0" in loops


# ---------------------------------------------------------------------------- fp16 gradients in range


def test_fp16_score_gradients_are_scaled_into_range():
    # dO·v reaches ~1e6 here, so |dS| is far past fp16's 65504: fp16 dS operands unscaled would be
    # inf. The rows kernel scales each row by a power of two from a bound of |dS|
    # (codegen/backward.py), the dK/dV kernel each key tile by the smallest over its query tiles.
    attn = attnc.load("causal")
    g = torch.Generator().manual_seed(0)
    # small q·k: nearly uniform weights, so the gradients themselves stay within fp16
    q, k = ((0.01 * torch.randn(1, 2, 37, 32, generator=g)).half().requires_grad_(True) for _ in range(2))
    v = (300 * torch.randn(1, 2, 37, 32, generator=g)).half().requires_grad_(True)
    out = attn(q, k, v)
    d_out = (3000 * torch.randn(out.shape, generator=g)).half()
    with torch.no_grad():  # |dS| = p·|dO·v − Δ| with p ≈ 1/37: about 2e6 at its largest
        p = attn.reference(q, k, torch.eye(37, dtype=torch.float64).expand(1, 2, 37, 37))  # the weights
        delta = (d_out.double() * out.double()).sum(-1, keepdim=True)
        assert float((p * (d_out.double() @ v.double().transpose(-1, -2) - delta)).abs().max()) > 10 * 65504
    got = torch.autograd.grad(out, (q, k, v), d_out)
    r = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    want = torch.autograd.grad(attn.reference(*r), r, d_out.double())
    for name, x, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert torch.isfinite(x).all(), name
        rel = float((x.double() - w).norm() / w.norm())
        assert rel < 5e-3, f"{name}: relative error {rel:.2e}"


def test_backward_sources_say_how_fp16_operands_are_taken():
    from attnc.codegen.backward import generate_backward
    from attnc.codegen.generate import Specialization
    from attnc.ir.layout import kernel_cascade
    from attnc.runtime.frontend import library_cascade

    modes = {name: dict(generate_backward(kernel_cascade(library_cascade(name)),
                                          Specialization("float16", False)).operand_modes)
             for name in ("causal", "relu", "sigmoid_attention")}
    assert modes["causal"] == {"ds": "scaled", "w": "scaled"}
    assert modes["relu"]["w"] == "fp32"  # relu(s)·v: no bound prints, tf32 dots (docs/performance.md)
    bf16 = generate_backward(kernel_cascade(library_cascade("causal")), Specialization("bfloat16", False))
    assert dict(bf16.operand_modes) == {"ds": "direct", "w": "direct"}


# ---------------------------------------------------------------------------- the dK/dV kernel's scan


def test_dkdv_scan_handles_query_tiles_that_are_not_contiguous():
    # key 0 and the keys of every other query tile: a key tile meets query tiles 0, 2, 4, ...
    # the dK/dV kernel loops from the first to the last and computes the others fully masked
    attn = attnc.compile("attention stripes:\n    mask = kv_idx == 0 or (q_idx // 16) % 2 == 0 and kv_idx <= q_idx\n")
    attn_gqa = attnc.compile("attention per_head:\n    mask = kv_idx + h * 9 <= q_idx\n")
    for a, heads in ((attn, (1, 1)), (attn_gqa, (4, 2))):
        problem = _problem(a, torch.float32, 16, 70, 70, "contiguous", 3, heads)
        at.assert_matches_reference(a, problem)
        at.assert_gradients(a, problem)


# ---------------------------------------------------------------------------- special functions


def test_hardware_tanh_only_in_compiled_16_bit_kernels():
    # tanh.approx (2^-11 relative error) where the kernel rounds to 16 bits anyway; fp32 kernels
    # and the interpreter (no inline assembly) keep the accurate formula, forward and backward
    from attnc.codegen.backward import generate_backward
    from attnc.codegen.generate import Specialization, generate
    from attnc.ir.layout import kernel_cascade
    from attnc.runtime.frontend import library_cascade

    c = kernel_cascade(library_cascade("softcap"))
    for dtype in ("float16", "bfloat16", "float32"):
        for interpret in (False, True):
            spec = Specialization(dtype, interpret)
            hardware = dtype != "float32" and not interpret
            for text in (generate(c, spec).text, generate_backward(c, spec).text):
                body = text.split("def _softplus")[1]  # past the helper definitions
                assert ("_tanh_approx(" in body) == hardware and ("_tanh(" in body) != hardware, (dtype, interpret)


def test_sigmoid_on_a_tile_matches_torch_over_its_whole_range():
    # half of a tile's reciprocals run on the FMA units (helpers.py.jinja: _rcp_fma, a bit-trick
    # guess and Newton steps): scores from −1e4 to 1e4 (σ from 0 through denormals to 1), a masked
    # key (σ(−inf) = 0) and a NaN query element (its row NaN, the others untouched)
    attn = attnc.compile("attention sig:\n    mask = kv_idx != 5\n    norm = sigmoid(0.0)\n")
    assert "_sigmoid_tile(" in attn.kernel_path(torch.float32).read_text()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 64, 16, generator=g) * torch.logspace(-3, 2, 64).view(1, 1, 64, 1)
    k, v = torch.randn(1, 1, 64, 16, generator=g), torch.randn(1, 1, 64, 16, generator=g)
    q[0, 0, 7, 3] = float("nan")
    out = attn(q, k, v)
    s = (q.double() @ k.double().transpose(-1, -2)) / 4.0
    s[..., 5] = float("-inf")
    want = torch.sigmoid(s) @ v.double()
    assert torch.isnan(out[0, 0, 7]).all()
    rows = torch.arange(64) != 7
    assert torch.allclose(out[0, 0, rows].double(), want[0, 0, rows], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- configs that fit


def test_the_first_config_whose_kernels_fit_shared_memory_is_launched(monkeypatch):
    """``_fitting_config`` on a (pretend) GPU: candidates are compiled in order, without a launch,
    until every kernel of one fits; the choice is remembered; none fitting is an error that says
    what was tried. (The ahead-of-time side of the same rule: tests/codegen/test_aot.py.)"""
    import types

    import triton.compiler.compiler as tc

    from attnc.codegen.tuning import LaunchConfig

    monkeypatch.setattr(tc, "max_shared_mem", lambda device: 232448)
    big, mid, small = LaunchConfig(128, 64, 8, 2), LaunchConfig(64, 64, 8, 2), LaunchConfig(64, 32, 8, 1)
    needs = {big: (181248, 233472), mid: (136192, 134144), small: (70000, 60000)}
    compiled = []

    def compile_(config):  # the rows and dK/dV kernels of one config, as Triton's compiled kernels
        compiled.append(config)
        return [types.SimpleNamespace(metadata=types.SimpleNamespace(shared=b)) for b in needs[config]]

    gpu, chosen = types.SimpleNamespace(type="cuda", index=0), {}
    assert compiler._fitting_config(chosen, "key", [big, mid, small], compile_, gpu, "x") == mid
    assert compiled == [big, mid]  # the smaller fallback is never built
    assert compiler._fitting_config(chosen, "key", [big, mid, small], compile_, gpu, "x") == mid
    assert compiled == [big, mid]  # remembered
    needs[mid] = (240000, 1)
    needs[small] = (240000, 1)
    with pytest.raises(ValueError, match=r"the backward kernels of `v`: no launch config fits this GPU's 232448 "
                                           r"bytes .*128x64 \(233472 bytes\), 64x64 \(240000 bytes\)"):
        compiler._fitting_config({}, "key", [big, mid, small], compile_, gpu, "the backward kernels of `v`")
    # the interpreter (or a single candidate) compiles nothing
    compiled.clear()
    cpu = types.SimpleNamespace(type="cpu", index=None)
    assert compiler._fitting_config({}, "key", [big, mid], compile_, cpu, "x") == big and compiled == []
