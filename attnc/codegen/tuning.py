"""Launch configurations (tile sizes, warps, pipeline stages) per GPU architecture.

The runtime autotunes over ``gpu_configs(...)`` on CUDA (the first is the one it takes untimed);
the interpreter (CPU) runs one small config, ``INTERPRETER_CONFIG``: its cost grows with the tile,
and tests want ragged edges.

Two families, chosen by the runtime from the inputs (``runtime/compiler.py: fast_path``):

* ``aligned`` (the fast path: unit head-dim stride, 16-byte multiples elsewhere, 16-bit inputs):
  FlashAttention-sized tiles, 16 query rows per warp (so one warpgroup owns 64 rows on sm_90 and
  never two the same), chosen by the static performance model (``runtime/perf.py``,
  ``python -m attnc.runtime.aot --perf``): the largest key tile whose main loop keeps no spill
  instruction and reaches the issue-bound ceiling. sm_90: 128×128 at D ≤ 64 (128×64 is issue-bound
  at 81 %: the per-iteration overhead is spread over half the work), 128×64 at D ≤ 128 (128×128
  spills in its boundary loop); sm_80: 128×64 on 8 warps at D ≤ 64, 64×64 on 4 at D ≤ 128 (128×64
  spills there).
* the general path (odd strides, misaligned starts, head dims not a multiple of 16 bytes) and
  fp32: scalar loads whose 64-bit addresses take registers; the small tiles chosen, by
  ahead-of-time builds, before the fast path existed (FlashAttention-style 128×64 tiles spilled
  8 B to 3 KB there). Its builds spill at most a few hundred bytes (``tests/codegen/test_aot.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def kwargs(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n}


INTERPRETER_CONFIG = LaunchConfig(16, 16, 1, 1)


def gpu_configs(capability: int, dtype: str, block_d: int, block_dv: int, num_passes: int = 1,
                aligned: bool = True) -> list[LaunchConfig]:
    """Autotuning candidates for a compute capability (80, 90, ...), dtype and padded head dims;
    ``aligned``: the fast path's (see the module docstring), else the general path's.

    The first candidate is the one used when tuning is off. Every candidate is built ahead of time
    by ``tests/codegen/test_perf.py`` (fast path) and ``tests/codegen/test_aot.py`` (general).
    """
    wide, hopper = max(block_d, block_dv), capability >= 90
    if aligned and dtype != "float32":
        stages = 3 if num_passes == 1 else 2
        if hopper:
            if wide <= 64:
                return [LaunchConfig(128, 128, 8, stages), LaunchConfig(128, 64, 8, stages)]
            if wide <= 128:
                return [LaunchConfig(128, 64, 8, stages), LaunchConfig(128, 128, 8, 2)]
            return [LaunchConfig(128, 32, 8, 2), LaunchConfig(64, 32, 4, 2)]
        if wide <= 64:
            return [LaunchConfig(128, 64, 8, 2), LaunchConfig(64, 64, 4, 2)]
        if wide <= 128:
            return [LaunchConfig(64, 64, 4, 2), LaunchConfig(128, 64, 8, 2)]
        return [LaunchConfig(64, 32, 4, 2)]
    if dtype == "float32":
        if wide <= 64:
            # sm_90: 8 warps since the per-row key ranges of issue 6 (4 warps spilled 8–32 B in
            # sliding_window, prefix_lm, chunked; 8 warps: no library kernel spills)
            return [LaunchConfig(32, 32, 8, 2)] if hopper else [LaunchConfig(32, 32, 8, 2), LaunchConfig(16, 32, 8, 2)]
        if wide <= 128:
            return [LaunchConfig(16, 32, 8, 2)] if hopper else [LaunchConfig(16, 32, 8, 2), LaunchConfig(16, 16, 8, 2)]
        return [LaunchConfig(16, 16, 8, 2)]
    stages = 3 if hopper and num_passes == 1 else 2
    if wide <= 64:
        if hopper:
            return [LaunchConfig(128, 16, 8, stages), LaunchConfig(64, 16, 4, stages)]
        return [LaunchConfig(128, 32, 8, 2), LaunchConfig(64, 32, 4, 2)]
    if wide <= 128:
        if hopper:
            return [LaunchConfig(64, 16, 8, stages), LaunchConfig(32, 32, 8, 2)]
        return [LaunchConfig(128, 16, 8, 2), LaunchConfig(64, 16, 4, 2)]
    return [LaunchConfig(64, 16, 4, 2)]


def bwd_gpu_configs(capability: int, dtype: str, block_d: int, block_dv: int, aligned: bool = True) -> list[LaunchConfig]:
    """The backward kernels' tiles, in order of preference (not tuned): the runtime launches
    ``attnc_bwd_rows`` and ``attnc_bwd_kv`` with the first candidate at which both fit the device's
    shared memory (``first_fitting``). BLOCK_M tiles the queries, BLOCK_N the keys.

    The fast path (``aligned``, 16-bit inputs): 64-row and 64-key tiles at least, so every dot is a
    warpgroup MMA on sm_90, two pipeline stages, chosen by the static performance model
    (``runtime/perf.py``) over causal/full at D = 64/128: sm_90 64×64 on 4 warps at D ≤ 64
    (128×64 on 8 leaves the dK/dV loop at 61 %), 128×64 on 8 at D ≤ 128 (64×64 on 4 spills 160
    instructions in the fp16 dK/dV loop), 32×64 on 8 above (64×64 spills there); sm_80 64×64 on 4
    at D ≤ 64, on 8 at D ≤ 128. Measured figures: ``docs/performance.md``.

    sm_90's 128×64 dK/dV kernel at D = 128 holds ~226 KB of its 227 KB in double-buffered Q and dO
    tiles, K, V and the transposed P and dS: a variant with two more per-row statistics, or a
    second score map, no longer fits (differential, gpsa: 233472 bytes). Its fallback, 64×64 on 8
    warps, needs 134 KB and keeps the dK/dV loop's ceiling (differential 73 %, as at 128×64).

    The general path and fp32 keep the tiles chosen before the fast path existed: the largest at
    which ahead-of-time builds did not spill (fp16/bf16), or spilled least (fp32, ≤ 64 bytes; its
    IEEE dots run without tensor cores and hold fp32 operands), over the library × sm_80/sm_90 ×
    D = 64/128. Why so irregular: ptxas caps a kernel that needs a little more than an occupancy
    step at that step and spills the rest, so a smaller tile can spill where a larger one does not.
    The lists end with a smaller fallback (but D > 128 on the general path) for heavier variants.
    """
    wide, hopper = max(block_d, block_dv), capability >= 90
    if aligned and dtype != "float32":
        if wide <= 64:
            return [LaunchConfig(64, 64, 4, 2), LaunchConfig(64, 32, 4, 2)]
        if wide <= 128:
            return ([LaunchConfig(128, 64, 8, 2), LaunchConfig(64, 64, 8, 2), LaunchConfig(64, 32, 8, 1)] if hopper
                    else [LaunchConfig(64, 64, 8, 2), LaunchConfig(64, 32, 8, 1)])
        return [LaunchConfig(32, 64, 8, 2), LaunchConfig(32, 32, 8, 1)]
    if wide > 128:
        return [LaunchConfig(16, 16, 8, 1)]
    if dtype == "float32":
        small = LaunchConfig(16, 16, 8, 1)
        return [LaunchConfig(16, 32, 8, 1), small] if wide <= 64 and not hopper else [small]
    if wide <= 64:
        return [LaunchConfig(64, 32, 8, 1), LaunchConfig(32, 32, 8, 1)] if hopper else [LaunchConfig(16, 32, 4, 1), LaunchConfig(16, 16, 4, 1)]
    return [LaunchConfig(32, 16, 8, 1), LaunchConfig(16, 16, 8, 1)] if hopper else [LaunchConfig(32, 32, 8, 1), LaunchConfig(16, 16, 8, 1)]


def first_fitting(candidates, fits) -> LaunchConfig | None:
    """The first of ``candidates`` for which ``fits(config)`` holds (its kernels fit the shared
    memory: the runtime asks the compiled kernels on the device, ``runtime/aot.py`` the builds for
    an architecture), or None. One rule for both, so the configs costed ahead of time are the ones
    launched."""
    return next((c for c in candidates if fits(c)), None)
