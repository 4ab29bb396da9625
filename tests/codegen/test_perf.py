"""The static performance model (``attnc/runtime/perf.py``) and issue 15's targets, on a sample.

The model reads each fast-path kernel's SASS (ahead-of-time builds, no GPU) and costs one
iteration of its main key loop; ``perf.target_for`` states what every build must show. CI builds:

* forward, sm_90, fp16 and bf16, D = 64 and 128, the core variants (full, causal,
  sliding_window, document): issue-bound ceiling ≥ 90 %, ≤ 1.0 non-MMA instructions per 1000 MMA
  FLOP, K/V by 16-byte cp.async (or TMA), the wgmma carried into the next iteration, no spill
  instruction in the loop;
* forward, sm_80, the core variants, bf16 at D = 64 and fp16 at D = 128: ceiling ≥ 90 %;
* backward (both kernels), sm_90, fp16 and bf16, D = 64 and 128, causal and full: wgmma, ≥ 2
  stages, ceiling ≥ 60 %;
* forward, sm_90, every other library variant at one rotating (dtype, D): ceiling ≥ 60 %, except
  the builds in ``KNOWN_BELOW``, which must stay within their recorded floor (an xfail that
  fails if they get worse, and says so if they meet the target).

``ATTNC_PERF=full`` builds every target case (the table in docs/performance.md comes from
``python -m attnc.runtime.aot --perf``). The builds skip, saying why, without Triton's NVIDIA
backend.
"""

from __future__ import annotations

import os

import pytest

import attnc
from attnc.runtime import perf
from attnc.codegen.tuning import LaunchConfig
from attnc.runtime.aot import AotJob, AotResult, library_backward_jobs, library_jobs, run_jobs, toolchain_problem

VARIANTS = attnc.library.names()
FULL = os.environ.get("ATTNC_PERF", "") == "full"

# Builds below their target, with the lowest ceiling accepted and why (measured; docs/performance.md).
KNOWN_BELOW = {
    # Special-function bound: per score element cap·tanh(s/cap) and the softmax's exponential take
    # two MUFU operations (tanh.approx, ex2) at 16 per clock per SM, while D = 64 gives the tensor
    # cores 256 FLOP of work per element at 4096 per clock: 50 % at most (docs/performance.md).
    ("softcap", 64): 0.48,
    # ConViT's GPSA: a second softmax over positional scores computed per pair (integer % and //,
    # three FMAs, a second exp) and two sets of running statistics; spills in the loop. Not tuned yet.
    ("gpsa", 64): 0.17,
    # Stick-breaking: per score two logsigmoids (each an exp and a log on the MUFU unit) and a
    # cumulative sum within the key tile (tl.cumsum: log2(BLOCK_N) shuffle steps per element), and
    # P·V in fp32 (the weights' bound exp(logsigmoid + c) ≤ 1 is not proven). Not tuned yet.
    ("stick_breaking", 64): 0.11,
    # Linear attention: the key tile mapped through elu every iteration and P·V in fp32 (weights
    # unbounded); 59 % at bf16 D = 64, the README's 48–56 % elsewhere. Not tuned yet.
    ("linear_attention", 64): 0.55,
    ("stick_breaking_bias", 64): 0.11,
}


def _jobs():
    core_90 = library_jobs(perf.CORE, (90,), ("float16", "bfloat16"), (64, 128), all_configs=False, perf=True)
    core_80 = [j for j in library_jobs(perf.CORE, (80,), ("float16", "bfloat16"), (64, 128), all_configs=False, perf=True)
               if FULL or (j.dtype, j.head_dim) in (("bfloat16", 64), ("float16", 128))]
    bwd = library_backward_jobs(("causal", "full"), (90,), ("float16", "bfloat16"), (64, 128), perf=True)
    others = [name for name in VARIANTS if name not in perf.CORE]
    rest = library_jobs(others, (90,), ("float16", "bfloat16"), (64, 128), all_configs=False, perf=True)
    if not FULL:  # one (dtype, D) per variant, rotating, always including the known misses' D = 64
        cases = [("float16", 64), ("bfloat16", 128), ("bfloat16", 64), ("float16", 128)]
        pick = {name: cases[i % 4] for i, name in enumerate(others)}
        pick.update({name: ("bfloat16", 64) for name, _ in KNOWN_BELOW})
        rest = [j for j in rest if (j.dtype, j.head_dim) == pick[j.variant]]
    return core_90 + core_80 + bwd + rest


JOBS = _jobs()


@pytest.fixture(scope="module")
def built(request):
    problem = toolchain_problem(80) or toolchain_problem(90)
    if problem:
        pytest.skip(f"ahead-of-time builds need Triton's NVIDIA backend: {problem}")
    selected = [item.callspec.params["job"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "job" in item.callspec.params]
    return run_jobs(selected)


@pytest.mark.parametrize("job", JOBS, ids=[j.label for j in JOBS])
def test_model_meets_the_target(built, job):
    result = built[job]
    if not isinstance(result, AotResult):
        pytest.fail(f"{job.label}: the ahead-of-time build failed: {result}", pytrace=False)
    target = perf.target_for(job.variant, job.function, job.capability, job.dtype, job.head_dim)
    assert target is not None, f"{job.label} has no target; the sample should only build targeted cases"
    problems = perf.target_problems(target, result.perf, job.config.num_stages)
    floor = KNOWN_BELOW.get((job.variant, job.head_dim)) if job.function == "attnc_fwd" else None
    if floor is not None:
        ceiling = result.perf.main.ceiling(job.capability)
        assert ceiling >= floor, f"{perf.describe(job, result)}\n  worse than its recorded floor {floor:.0%}"
        if problems:
            pytest.xfail(f"known, below target: {perf.describe(job, result)}")
        pytest.fail(f"{job.label} now meets its target: drop it from KNOWN_BELOW", pytrace=False)
    assert not problems, perf.describe(job, result)


def test_the_sample_covers_every_variant_and_target_kind():
    assert {j.variant for j in JOBS} == set(VARIANTS)
    kinds = {(j.function, j.capability) for j in JOBS}
    assert {("attnc_fwd", 90), ("attnc_fwd", 80), ("attnc_bwd_rows", 90), ("attnc_bwd_kv", 90)} <= kinds


# ---------------------------------------------------------------------------- the SASS reader


LISTING = """
//--------------------- .text.k                     --------------------------
        .text.k:
	//## File "/x/k.py", line 10
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
	//## File "/x/k.py", line 12
        /*0010*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0020*/                   WARPGROUP.ARRIVE ;
        /*0030*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8], RZ, !UPT, gsb0 ;
        /*0040*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
	//## File "/x/k.py", line 13
        /*0050*/                   MUFU.EX2 R5, R5 ;
        /*0060*/                   FFMA R6, R6, R7, R8 ;
        /*0070*/                   STL [R1], R6 ;
        /*0080*/                   BRA.DIV ~URZ, `(.L_x_2) ;
.L_x_3:
	//## File "/x/k.py", line 14
        /*0090*/                   HGMMA.64x128x16.F32 R24, R56, gdesc[UR8].tnspB, R24, gsb0 ;
        /*00a0*/              @!P0 BRA `(.L_x_0) ;
        /*00b0*/                   EXIT ;
.L_x_2:
        /*00c0*/                   SHFL.BFLY PT, R1, R1, 0x1, 0x1f ;
        /*00d0*/                   BRA `(.L_x_3) ;
"""

SOURCE = "\n".join(["# filler"] * 10 + ["def k():", "    for start_n in range(0, 8):  # full tiles",
                                      "        a = 1", "        b = 2", "        c = 3"])


def test_the_reader_costs_a_loop_from_sass():
    (loop,) = perf.loop_costs(LISTING, SOURCE, "k")
    assert loop.name == "full tiles" and loop.source_line == 12
    assert loop.instructions == 10 and loop.mma == 2 and loop.mma_kind == "HGMMA"
    assert loop.mma_flop == 2 * (2 * 64 * 128 * 16 // 4)  # per warp: a quarter of the warpgroup's
    assert loop.mufu == 1 and loop.spills == 1 and loop.branches == 1  # BRA.DIV: a forward branch
    assert loop.loads == {"cp.async 16 B": 1} and loop.fast_loads
    assert loop.wgmma_carried  # the last HGMMA is not waited before the back edge
    assert loop.operands == "16-bit"
    c = loop.cycles(90)
    assert c["tensor"] == loop.mma_flop / 4096 and c["issue"] == 10 / 4 and c["mufu"] == 2
    assert loop.ceiling(90) == 1.0 and loop.bound(90) == "tensor"
    assert abs(loop.nonmma_per_kflop - 8 / (loop.mma_flop / 1000)) < 1e-12


def test_a_wait_after_the_last_wgmma_is_not_carried_and_tf32_counts_double():
    waited = LISTING.replace("        /*00a0*/", "        /*0098*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;\n        /*00a0*/")
    (loop,) = perf.loop_costs(waited, SOURCE, "k")
    assert not loop.wgmma_carried
    tf32 = LISTING.replace("HGMMA.64x128x16.F32 R24, R56", "HGMMA.64x128x8.F32.TF32 R24, R56")
    (loop,) = perf.loop_costs(tf32, SOURCE, "k")
    assert loop.operands == "mixed" and loop.tf32_flop == 2 * 64 * 128 * 8 // 4
    # tf32 work at half rate: the same FLOP take twice the tensor cycles
    assert loop.cycles(90)["tensor"] == (loop.mma_flop - loop.tf32_flop) / 4096 + loop.tf32_flop / 2048


DECODE_JOBS = [AotJob(variant, 90, "float16", 128, 128, LaunchConfig(64, 64, 4, 3), perf=True, decode_page=page,
                      split=split) for variant, page, split in
               [("causal", 64, True), ("sliding_window", 16, True), ("alibi", 128, False)]]


@pytest.fixture(scope="module")
def decode_built():
    problem = toolchain_problem(90)
    if problem:
        pytest.skip(f"ahead-of-time builds need Triton's NVIDIA backend: {problem}")
    return run_jobs(DECODE_JOBS)  # in fresh processes: the interpreter's patches of tl stay out


@pytest.mark.parametrize("decode_job", DECODE_JOBS, ids=[j.label for j in DECODE_JOBS])
def test_the_decode_loop_moves_keys_and_values_in_16_byte_vectors(decode_built, decode_job):
    """Issue 19: the decode kernel (offsets cascade, GQA heads packed, per-row lengths, paged, a
    split of the keys) on sm_90 loads every K and V tile by 16-byte cp.async, plus one 4-byte load
    of a page number, with no spill in the loop (docs/performance.md, "Decode: the static model")."""
    result = decode_built[decode_job]
    assert isinstance(result, AotResult), result
    loop = result.perf.main
    assert loop.mma_kind == "HGMMA" and loop.spills == 0, loop
    assert set(loop.loads) == {"cp.async 16 B", "cp.async 4 B"} and loop.loads["cp.async 4 B"] == 1, loop.loads
    assert loop.loads["cp.async 16 B"] == 16, loop.loads  # 64 keys × 128 dims × 2 bytes, K and V, over 128 threads
