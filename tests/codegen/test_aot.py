"""Ahead-of-time builds of every library kernel for sm_80 and sm_90, on a machine without a GPU.

Each case is ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` of the kernel
the CUDA runtime would launch (fp16 and fp32, D = Dv = 64 and 128), then the bundled
``cuobjdump --dump-resource-usage`` and ptxas's ``-v`` log: the build must succeed, spill
nothing (``LOCAL`` 0, and no stack frame / spill stores — ptxas puts spilled registers in the
stack frame, which ``LOCAL`` does not count) and fit the architecture's shared memory.

How much is built (``ATTNC_AOT``; a build takes about 10 s of CPU):

* ``ci`` (default): half of the matrix. Every variant in four of the eight (arch, dtype, D)
  cases — on each arch both dtypes, with D = 64 for one and 128 for the other, swapped on the
  other arch and from one variant to the next — so every case is built for ten variants and
  every variant meets both archs, dtypes and head dims. First config of
  ``codegen.tuning.gpu_configs`` (the one the runtime uses when it does not autotune).
  88 builds (22 variants) on CI's two cores: a build takes 1–2 s of CPU when it does not spill,
  3–10 s when ptxas fights spills. The default since the suite neared CI's 30 minutes.
* ``first``: every variant in every case, first config — 176 builds, about 3½ minutes on two
  cores (with the backward sample: 321 s). Run it (``ATTNC_AOT=first``) after changing codegen.
* ``full`` (or ``ATTNC_AOT_FULL=1``): every config of every case — the acceptance sweep, about
  twice ``first``. ``benchmarks/bench_forward.py`` records the ``first`` sweep in
  ``docs/performance.md``.

The backward kernels (``attnc_bwd_rows`` and ``attnc_bwd_kv``, ``codegen/backward.py``) are built
the same way with the one config the runtime launches them with (``codegen.tuning.bwd_gpu_config``),
fp16, bf16 and fp32, D = Dv = 64 and 128, ``GRAD_*`` flags at their default (every gradient on).
fp16/bf16 builds must not spill; fp32 builds spilling at most ``FP32_SPILL_TOLERANCE`` bytes are
reported as xfail (no fp32 config is spill-free, see ``bwd_gpu_config``). The whole backward
matrix is 480 builds, about 1.1 s of CPU each (530 s of CPU, 4¾ minutes on two otherwise idle
cores), more than every run should add; ``ATTNC_AOT_BWD`` picks how much:

* ``sample`` (default, also with ``ATTNC_AOT=ci``): both kernels of every variant in two of the
  twelve (arch, dtype, D) cases, one per arch, the dtype and head dim rotating with the variant —
  so every case is built for three or four variants, every variant meets both archs, two dtypes
  and both head dims. 80 builds.
* ``full`` (or ``ATTNC_AOT=full`` / ``ATTNC_AOT_FULL=1``): every variant in every case, 480 builds.
* ``off``: none.

The builds run on a process pool, one worker per CPU (``ATTNC_AOT_WORKERS`` overrides); only
the cases pytest selected are built. The cases skip, saying why, when Triton's NVIDIA backend
or its ptxas/cuobjdump is missing.
"""

from __future__ import annotations

import os

import pytest

import attnc
from attnc.runtime.aot import (BACKWARD_KERNELS, AotResult, library_backward_jobs, library_jobs, parse_ptxas_log,
                               parse_resource_usage, run_jobs, toolchain_problem)

CAPABILITIES = (80, 90)
DTYPES = ("float16", "float32")
HEAD_DIMS = (64, 128)
MODE = "full" if os.environ.get("ATTNC_AOT_FULL", "") not in ("", "0") else os.environ.get("ATTNC_AOT", "ci")
if MODE not in ("ci", "first", "full"):
    raise ValueError(f"ATTNC_AOT must be ci, first or full, got {MODE!r}")
VARIANTS = attnc.library.names()
ALL_JOBS = library_jobs(VARIANTS, CAPABILITIES, DTYPES, HEAD_DIMS, all_configs=MODE == "full")


def _ci_cases(i: int) -> set:
    """The four (arch, dtype, D) cases the ``ci`` mode builds for the i-th variant: on each arch
    both dtypes, one D each; the other head dims on the other arch; alternating with ``i``."""
    pairs = [(d, h) for d in DTYPES for h in HEAD_DIMS]  # (fp16, 64) (fp16, 128) (fp32, 64) (fp32, 128)
    return {(80, *pairs[i % 2]), (80, *pairs[2 + (i + 1) % 2]), (90, *pairs[(i + 1) % 2]), (90, *pairs[2 + i % 2])}


if MODE == "ci":
    _index = {name: i for i, name in enumerate(VARIANTS)}
    JOBS = [j for j in ALL_JOBS if (j.capability, j.dtype, j.head_dim) in _ci_cases(_index[j.variant])]
else:
    JOBS = ALL_JOBS


BWD_DTYPES = ("float16", "bfloat16", "float32")
# fp32 backward builds still spill a little at bwd_gpu_config (at most 64 bytes over the full
# matrix when it was chosen; the config before it spilled 1-2 KB): up to this much is an xfail.
FP32_SPILL_TOLERANCE = 128
BWD_MODE = os.environ.get("ATTNC_AOT_BWD", "") or ("full" if MODE == "full" else "sample")
if BWD_MODE not in ("sample", "full", "off"):
    raise ValueError(f"ATTNC_AOT_BWD must be sample, full or off, got {BWD_MODE!r}")
ALL_BWD_JOBS = library_backward_jobs(VARIANTS, CAPABILITIES, BWD_DTYPES, HEAD_DIMS)


def _bwd_sample_cases(i: int) -> set:
    """The two (arch, dtype, D) cases the ``sample`` mode builds for the i-th variant: one per arch;
    over six consecutive variants each arch meets every (dtype, D) pair."""
    return {(80, BWD_DTYPES[i % 3], HEAD_DIMS[i % 2]), (90, BWD_DTYPES[(i + 1) % 3], HEAD_DIMS[(i + 1) % 2])}


if BWD_MODE == "sample":
    _index = {name: i for i, name in enumerate(VARIANTS)}
    BWD_JOBS = [j for j in ALL_BWD_JOBS if (j.capability, j.dtype, j.head_dim) in _bwd_sample_cases(_index[j.variant])]
elif BWD_MODE == "full":
    BWD_JOBS = ALL_BWD_JOBS
else:
    BWD_JOBS = []


def _problem() -> str | None:
    return next((p for p in (toolchain_problem(cap) for cap in CAPABILITIES) if p), None)


@pytest.fixture(scope="module")
def built(request):
    """Results of every job that this session selected, built once on a process pool."""
    problem = _problem()
    if problem:
        pytest.skip(f"ahead-of-time builds need Triton's NVIDIA backend: {problem}")
    selected = [item.callspec.params["job"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "job" in item.callspec.params]
    return run_jobs(selected)


def _check(job, result, remedy: str):
    if not isinstance(result, AotResult):
        pytest.fail(f"{job.label}: the ahead-of-time build failed: {result}", pytrace=False)
    problems = []
    if result.local_bytes:
        problems.append(f"declares {result.local_bytes} bytes of local memory (LOCAL)")
    if result.spilled:
        problems.append(f"spills registers (lower the pressure: {remedy})")
    if not result.fits_shared:
        problems.append(f"needs {result.shared_bytes + result.static_shared_bytes} bytes of shared memory, "
                        f"sm_{job.capability} allows {result.shared_limit}")
    if problems:
        pytest.fail(f"{result.describe()}\n  " + "\n  ".join(problems), pytrace=False)


# Forward builds known to spill, with the most bytes accepted, and why (an xfail, not hidden).
KNOWN_FORWARD_SPILLS = {
    # natten2d's runtime tile lists (issue 6, docs/sparsity.md): its index arithmetic (nested
    # `//`/`%` per pair) sits one ptxas occupancy step (80 registers on 8 warps) over the cap at
    # this tile; measured 12 B. One list loop instead of two still spilled 4 B, and the other
    # fp32 tiles at D = 128 spill more in other variants.
    ("natten2d", 90, "float32", 128): 16,
    # The grid variants (issue 6) read per-position tables and keep each axis's window bounds per
    # query row live across the key loop (a dozen row vectors for natten3d): at BLOCK_M = 128 on
    # sm_80 and at the fp32 tiles they spill. Measured on the final code; variant-aware tiles in
    # codegen/tuning.py are the fix, not done yet (docs/performance.md).
    ("natten1d", 90, "float32", 128): 16,
    ("natten2d", 80, "float16", 64): 400,
    ("natten2d", 80, "float16", 128): 16,
    ("natten2d", 90, "float32", 64): 80,
    ("natten3d", 80, "float16", 64): 900,
    ("natten3d", 80, "float16", 128): 300,
    ("natten3d", 90, "float16", 64): 320,
    ("natten3d", 90, "float16", 128): 80,
    ("natten3d", 90, "float32", 64): 160,
}


@pytest.mark.parametrize("job", JOBS, ids=[j.label for j in JOBS])
def test_library_kernel_builds_without_spills(built, job):
    result = built[job]
    limit = KNOWN_FORWARD_SPILLS.get((job.variant, job.capability, job.dtype, job.head_dim))
    if (limit is not None and isinstance(result, AotResult) and result.spilled and not result.local_bytes
            and result.spilled_bytes <= limit and result.fits_shared):
        pytest.xfail(f"known forward spill: {result.describe()}")
    _check(job, built[job], "smaller BLOCK_M/BLOCK_N, more warps or fewer stages for this case in "
                            "attnc/codegen/tuning.py")


@pytest.mark.parametrize("job", BWD_JOBS, ids=[j.label for j in BWD_JOBS])
def test_library_backward_kernel_builds_without_spills(built, job):
    result = built[job]
    if isinstance(result, AotResult):
        assert result.function == job.function
        if (job.dtype == "float32" and result.spilled and result.spilled_bytes <= FP32_SPILL_TOLERANCE
                and not result.local_bytes and result.fits_shared):
            # Known open point of issue 5 (docs/backward.md): no fp32 config is spill-free (IEEE
            # dots without tensor cores keep fp32 operands live in the rows kernel; see
            # bwd_gpu_config). Reported as xfail, not hidden; fp16/bf16 must not spill at all, and
            # an fp32 build that fails, declares LOCAL memory, spills more than the tolerance or
            # exceeds shared memory still fails below.
            pytest.xfail(f"fp32 spills (known): {result.describe()}")
        limit = KNOWN_BACKWARD_SPILLS.get((job.variant, job.function, job.capability, job.dtype, job.head_dim))
        if (limit is not None and result.spilled and not result.local_bytes and result.spilled_bytes <= limit
                and result.fits_shared):
            pytest.xfail(f"known backward spill: {result.describe()}")
    _check(job, result, "smaller BLOCK_M/BLOCK_N or more warps in bwd_gpu_config, attnc/codegen/tuning.py")


# Backward builds known to spill outside fp32, with the most bytes accepted (an xfail, not hidden):
# natten3d's dK/dV kernel keeps three axes' window bounds per key column live (issue 6, grid
# variants; measured 32 B in the sample; the full backward matrix of the grid variants is not swept).
KNOWN_BACKWARD_SPILLS = {
    ("natten3d", "attnc_bwd_kv", 90, "bfloat16", 64): 48,
}


def test_the_selection_covers_every_variant_and_case():
    cases = {(c, d, h) for c in CAPABILITIES for d in DTYPES for h in HEAD_DIMS}
    assert {j.variant for j in JOBS} == set(VARIANTS)
    assert {(j.capability, j.dtype, j.head_dim) for j in JOBS} == cases
    if MODE != "ci":
        built = {(j.variant, j.capability, j.dtype, j.head_dim) for j in JOBS}
        assert built == {(v, *c) for v in VARIANTS for c in cases}


@pytest.mark.skipif(BWD_MODE == "off", reason="ATTNC_AOT_BWD=off")
def test_the_backward_selection_covers_every_variant_kernel_and_case():
    cases = {(c, d, h) for c in CAPABILITIES for d in BWD_DTYPES for h in HEAD_DIMS}
    assert {j.function for j in ALL_BWD_JOBS} == set(BACKWARD_KERNELS)
    assert {(j.variant, j.function) for j in BWD_JOBS} == {(v, f) for v in VARIANTS for f in BACKWARD_KERNELS}
    assert {(j.capability, j.dtype, j.head_dim) for j in BWD_JOBS} == cases
    # both kernels of a variant are built in the same cases
    by = {}
    for j in BWD_JOBS:
        by.setdefault((j.variant, j.function), set()).add((j.capability, j.dtype, j.head_dim))
    for v in VARIANTS:
        assert by[(v, BACKWARD_KERNELS[0])] == by[(v, BACKWARD_KERNELS[1])]
        assert {c for c, _, _ in by[(v, BACKWARD_KERNELS[0])]} == set(CAPABILITIES)
        assert {h for _, _, h in by[(v, BACKWARD_KERNELS[0])]} == set(HEAD_DIMS)
    if BWD_MODE == "full":
        assert len(BWD_JOBS) == len(VARIANTS) * len(cases) * len(BACKWARD_KERNELS)


# ---------------------------------------------------------------------------- parsers (no toolchain)


def test_parse_resource_usage():
    text = """
Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function attnc_fwd:
  REG:255 STACK:232 SHARED:1024 LOCAL:0 CONSTANT[0]:688 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    usage = parse_resource_usage(text, "attnc_fwd")
    assert (usage["REG"], usage["STACK"], usage["SHARED"], usage["LOCAL"]) == (255, 232, 1024, 0)
    assert parse_resource_usage(text)["REG"] == 255
    with pytest.raises(ValueError):
        parse_resource_usage(text, "other")


def test_parse_ptxas_log():
    log = ("ptxas info    : Function properties for attnc_fwd\n"
           "    232 bytes stack frame, 228 bytes spill stores, 440 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 232 bytes cumulative stack size\n")
    assert parse_ptxas_log(log) == {"stack_frame": 232, "spill_stores": 228, "spill_loads": 440, "registers": 255}
    assert parse_ptxas_log("") == {}
