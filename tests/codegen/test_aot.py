"""Ahead-of-time builds of every library kernel for sm_80 and sm_90, on a machine without a GPU:
the general path (``ALIGNED``/``EVEN_D`` off: transposed or odd strides, head dims padded), the
one inputs that do not qualify for the fast path take. The fast path's kernels are built and
costed by ``tests/codegen/test_perf.py`` (the static performance model).

Each case is ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` of the kernel
the CUDA runtime would launch, then the bundled ``cuobjdump --dump-resource-usage`` and ptxas's
``-v`` log: the build must succeed, declare no local memory (``LOCAL``: arrays indexed at run
time), fit the architecture's shared memory and spill at most ``SPILL_LIMIT`` bytes. Spilling
is no longer a failure by itself (issue 15 withdrew the "not a single byte" rule: a spill costs
where it executes, and the fast path's loops are costed, spill instructions included, by the
model); a spill past the limit means a tile far too large for the path, and fails.

How much is built (``ATTNC_AOT``; a build takes 1–5 s of CPU):

* ``ci`` (default): half of the matrix. Every variant in four of the eight (arch, dtype, D)
  cases — on each arch both dtypes, with D = 64 for one and 128 for the other, swapped on the
  other arch and from one variant to the next — so every case is built for ten variants and
  every variant meets both archs, dtypes and head dims. First config of
  ``codegen.tuning.gpu_configs(..., aligned=False)``.
* ``first``: every variant in every case, first config.
* ``full`` (or ``ATTNC_AOT_FULL=1``): every config of every case.

The backward kernels (``attnc_bwd_rows`` and ``attnc_bwd_kv``, ``codegen/backward.py``) are built
the same way with the general path's first config (``codegen.tuning.bwd_gpu_configs(..., aligned=False)``),
fp16, bf16 and fp32, D = Dv = 64 and 128, ``GRAD_*`` flags at their default (every gradient on);
``ATTNC_AOT_BWD`` picks how much:

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
from attnc.runtime.aot import (BACKWARD_KERNELS, AotResult, aot_compile, aot_compile_backward, configs_for,
                               library_backward_jobs, library_jobs, parse_ptxas_log, parse_resource_usage, run_jobs,
                               runtime_choices, toolchain_problem)

CAPABILITIES = (80, 90)
DTYPES = ("float16", "float32")
HEAD_DIMS = (64, 128)
MODE = "full" if os.environ.get("ATTNC_AOT_FULL", "") not in ("", "0") else os.environ.get("ATTNC_AOT", "ci")
if MODE not in ("ci", "first", "full"):
    raise ValueError(f"ATTNC_AOT must be ci, first or full, got {MODE!r}")
VARIANTS = attnc.library.names()
ALL_JOBS = library_jobs(VARIANTS, CAPABILITIES, DTYPES, HEAD_DIMS, all_configs=MODE == "full", fast=False)


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
BWD_MODE = os.environ.get("ATTNC_AOT_BWD", "") or ("full" if MODE == "full" else "sample")
if BWD_MODE not in ("sample", "full", "off"):
    raise ValueError(f"ATTNC_AOT_BWD must be sample, full or off, got {BWD_MODE!r}")
ALL_BWD_JOBS = library_backward_jobs(VARIANTS, CAPABILITIES, BWD_DTYPES, HEAD_DIMS, fast=False)


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


# The most a general-path build may spill (bytes of stack frame or spill stores): past it the tile is
# far too large for the path. Measured at this change: at most 360 B (natten2d/3d on sm_80 fp16
# and the natten3d dK/dV kernel, whose per-axis window bounds stay live), a few bytes elsewhere.
SPILL_LIMIT = 1024


def _check(job, result, remedy: str):
    if not isinstance(result, AotResult):
        pytest.fail(f"{job.label}: the ahead-of-time build failed: {result}", pytrace=False)
    problems = []
    if result.local_bytes:
        problems.append(f"declares {result.local_bytes} bytes of local memory (LOCAL)")
    if result.spilled_bytes > SPILL_LIMIT:
        problems.append(f"spills {result.spilled_bytes} bytes, more than {SPILL_LIMIT} (lower the pressure: {remedy})")
    if not result.fits_shared:
        problems.append(f"needs {result.shared_bytes + result.static_shared_bytes} bytes of shared memory, "
                        f"sm_{job.capability} allows {result.shared_limit}")
    if problems:
        pytest.fail(f"{result.describe()}\n  " + "\n  ".join(problems), pytrace=False)


@pytest.mark.parametrize("job", JOBS, ids=[j.label for j in JOBS])
def test_library_kernel_builds(built, job):
    _check(job, built[job], "smaller BLOCK_M/BLOCK_N, more warps or fewer stages for this case in "
                            "attnc/codegen/tuning.py")


@pytest.mark.parametrize("job", BWD_JOBS, ids=[j.label for j in BWD_JOBS])
def test_library_backward_kernel_builds(built, job):
    result = built[job]
    if isinstance(result, AotResult):
        assert result.function == job.function
    _check(job, result, "smaller BLOCK_M/BLOCK_N or more warps in bwd_gpu_configs, attnc/codegen/tuning.py")


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


# ---------------------------------------------------------------------------- shared memory on the fast path
# The fast path's tiles are the largest: on sm_90 the backward's 128×64 at D = 128 and the
# forward's 128×128 (three stages) at D = 64 come within a few KB of the 227 KB a block may use,
# and a variant with more per-row state passes it (differential, gpsa: dK/dV 233472 bytes;
# relative_bias: forward 246784). Without autotuning the runtime launches the first candidate at
# which the compiled kernels fit (``codegen.tuning.first_fitting``); these builds find that
# choice the same way, for every library variant. (The autotuned forward skips what does not fit.)
FIT_CASES = {"backward": (90, "float16", 128), "forward": (90, "float16", 64)}


@pytest.fixture(scope="module")
def runtime_choices_built():
    problem = _problem()
    if problem:
        pytest.skip(f"ahead-of-time builds need Triton's NVIDIA backend: {problem}")
    return {kind: runtime_choices(VARIANTS, cap, dtype, d, backward=kind == "backward")
            for kind, (cap, dtype, d) in FIT_CASES.items()}


@pytest.mark.parametrize("kind", sorted(FIT_CASES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_runtime_has_a_config_that_fits(runtime_choices_built, kind, variant):
    config, builds = runtime_choices_built[kind][variant]
    if config is None:
        lines = [r.describe() if isinstance(r, AotResult) else f"{j.label}: {r}" for j, r in builds.items()]
        pytest.fail(f"{variant} {kind}: no candidate fits sm_{FIT_CASES[kind][0]}'s shared memory:\n  "
                    + "\n  ".join(lines), pytrace=False)
    for job, result in builds.items():
        if job.config == config:
            assert isinstance(result, AotResult) and result.fits_shared, result


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


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_exact_builds_compile(capability):
    """The EXACT builds (query tiles the forward ran with exact exponents: huge logits,
    issue 16 item 4) are launched only then, so no other test compiles them: their inline
    add.rn/sub.rn and early exits must build, within the spill limit."""
    problem = toolchain_problem(capability)
    if problem:
        pytest.skip(f"ahead-of-time builds need Triton's NVIDIA backend: {problem}")
    cascade = attnc.library_cascade("causal")
    results = [*aot_compile_backward(cascade, "float16", 64, 64, capability, constexprs={"EXACT": True}).values(),
               aot_compile(cascade, "float16", 64, 64, capability, configs_for(cascade, capability, "float16", 64, 64)[0],
                           constexprs={"EXACT": True})]
    for result in results:
        assert result.spilled_bytes <= SPILL_LIMIT, result.describe()
