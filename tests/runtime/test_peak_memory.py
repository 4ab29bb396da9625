"""No O(N²) allocation on the kernel path: every library variant at N = 16384, forward and
backward, allocates far less than one N×N bool mask (256 MiB).

The Triton kernels are replaced by stubs that record their arguments (under the CPU interpreter
N = 16384 would take hours); everything else runs as in a real call: argument checks, parameter
binding, the runtime tile classification (``runtime/sparsity.py``), output and statistics buffers,
autograd. The kernels themselves hold only tiles. The torch profiler records every CPU allocation
of the call; the test bounds the largest one and the peak of the running total, and checks that
no tensor handed to a kernel has N² elements or more. Tiles are 64 × 64, as on GPUs (the
classification is O(N²/(64·64)) = 65536 entries).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import attnc
import attnc.library
import attnc.runtime.compiler as compiler
from attnc.runtime.compiler import interpreter_tiles

N = 16384
D = 16
MIB = 2**20
LARGEST = 8 * MIB  # one N×N bool would be 256 MiB
# Grid variants: the runtime classification's range tables over the [N, 3·rank + 1] position
# tables are O(N log N · columns): 9.4 MiB for 3-D at this N, still ~27× under one N×N bool.
LARGEST_GRID = 12 * MIB
PEAK = 64 * MIB


def _params(name: str) -> dict:
    docs = (torch.arange(N) * 7 // N).view(1, N)  # 7 documents
    return {
        "sliding_window": {"window": 1024}, "chunked": {"chunk": 2048}, "prefix_lm": {"prefix": 512},
        "sink_window": {"sinks": 4, "window": 1024}, "dilated_window": {"window": 256, "dilation": 2},
        "document": {"doc": docs}, "natten2d": {"width": 128, "kernel_h": 7, "kernel_w": 7},
        "natten3d": {"height": 32, "width": 32, "causal_d": True},  # 16 × 32 × 32
        "relative_bias": {"table": torch.randn(2, 2 * N - 1)}, "softmax_sink": {"sink": torch.randn(2)},
        "gpsa": {"width": 64, "gate": torch.randn(2), "vpos": torch.randn(2, 3)},
        "differential": {"lam": torch.rand(2), "causal": True},
        "stick_breaking_bias": {"bias": torch.randn(2)},
    }.get(name, {})


class _Stub:
    """A kernel that records the largest tensor argument it was launched with."""

    def __init__(self, seen: list):
        self.seen = seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append(max((a.numel() for a in args if isinstance(a, torch.Tensor)), default=0))
        return launch


@pytest.fixture
def stubbed(monkeypatch):
    seen: list[int] = []
    real_fwd, real_bwd = compiler.kernel_for, compiler.backward_kernels_for

    def kernel_for(c, spec):
        kernel = real_fwd(c, spec)

        class Fwd:
            source = kernel.source
            chosen: dict = {}

            @staticmethod
            def launcher(key):
                return _Stub(seen), kernel.launcher(key)[1]
        return Fwd

    def backward_kernels_for(c, spec):
        kernels = real_bwd(c, spec)

        class Bwd:
            source = kernels.source
            configs = kernels.configs
            chosen: dict = {}
            fns = {name: _Stub(seen) for name in kernels.fns}
        return Bwd

    monkeypatch.setattr(compiler, "kernel_for", kernel_for)
    monkeypatch.setattr(compiler, "backward_kernels_for", backward_kernels_for)
    return seen


def _allocations(prof) -> tuple[int, int]:
    """(largest allocation, peak of the running total) in bytes: each op's own allocations and
    frees (``self_cpu_memory_usage``; frees outside any op are ``[memory]`` events), in time order."""
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    total = peak = largest = 0
    for e in events:
        total += e.self_cpu_memory_usage
        peak = max(peak, total)
        largest = max(largest, e.self_cpu_memory_usage)
    return largest, peak


@pytest.mark.parametrize("name", attnc.library.names())
def test_no_quadratic_allocation_on_the_kernel_path(stubbed, name):
    attn = attnc.load(name)
    params = _params(name)
    q, k, v = (torch.randn(1, 2, N, D, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, 2, N, D)
    with interpreter_tiles(64, 64), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = attn(q, k, v, **params)
        out.backward(dout)
    largest, peak = _allocations(prof)
    # the forward and both backward kernels were launched (with a partial sum the rows kernel does
    # the dK/dV kernel's work: codegen/backward.py's scan mode)
    assert len(stubbed) >= (2 if any(st.is_scan for st in attn.cascade.stages) else 3)
    assert max(stubbed) < N * N // 64, f"a kernel argument has {max(stubbed)} elements"
    limit = LARGEST_GRID if attn.cascade.grid is not None else LARGEST
    assert largest < limit, f"{name}: largest allocation {largest / MIB:.1f} MiB"
    assert peak < PEAK, f"{name}: peak {peak / MIB:.1f} MiB"


def test_the_measurement_sees_a_quadratic_allocation(stubbed):
    # the same measurement fails a call that materializes an N×N mask (the reference's way)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        mask = torch.ones(N, N, dtype=torch.bool)
        del mask
    largest, peak = _allocations(prof)
    assert largest >= N * N and peak >= N * N
    # and the measurement of a real call sees its outputs (2 × N × D fp32 for out alone)
    q, k, v = (torch.randn(1, 2, N, D) for _ in range(3))
    with interpreter_tiles(64, 64), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        attnc.load("causal")(q, k, v)
    largest, peak = _allocations(prof)
    assert largest >= 2 * N * D * 4
