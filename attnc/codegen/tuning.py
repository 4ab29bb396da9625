"""Launch configurations (tile sizes, warps, pipeline stages) per GPU architecture.

The runtime autotunes over ``gpu_configs(...)`` on CUDA; the ahead-of-time test compiles every
config for sm_80 and sm_90 and asserts that none spills. The interpreter (CPU) runs one small
config, ``INTERPRETER_CONFIG``: its cost grows with the tile, and tests want ragged edges.

Why these numbers: they are the largest tiles found (by ahead-of-time builds with ptxas's
spill report) at which no library kernel spills. FlashAttention-style 128×64 tiles spilled for
every variant, 8 B to 3 KB. The tiles are therefore narrower in keys than FlashAttention's;
lowering register pressure in the generated code (integer mask arithmetic, three copies of the
key loop) is what would allow larger ones, and only a GPU run can say what the small tiles cost.
Hopper (sm_90) takes one more software-pipeline stage for one-pass plans.
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


def gpu_configs(capability: int, dtype: str, block_d: int, block_dv: int, num_passes: int = 1) -> list[LaunchConfig]:
    """Autotuning candidates for a compute capability (80, 90, ...), dtype and padded head dims.

    Every candidate compiles without register spills for every library kernel (no LOCAL, no
    stack frame, no ptxas spill stores; checked ahead of time by ``tests/codegen/test_aot.py``
    over 20 variants × sm_80/sm_90 × fp16/bf16/fp32 × D 64/128). The first is the one used when
    tuning is off. The tiles are small where the masks' integer arithmetic (NATTEN, dilated
    windows) or fp32 dots (``input_precision="ieee"``, no tensor cores) raise register
    pressure; larger tiles spilled for at least one library variant.
    """
    wide, hopper = max(block_d, block_dv), capability >= 90
    if dtype == "float32":
        if wide <= 64:
            return [LaunchConfig(32, 32, 4, 2)] if hopper else [LaunchConfig(32, 32, 8, 2), LaunchConfig(16, 32, 8, 2)]
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


def bwd_gpu_config(capability: int, dtype: str, block_d: int, block_dv: int) -> LaunchConfig:
    """The backward kernels' tiles (one config, not tuned). BLOCK_M tiles the queries, BLOCK_N the
    keys. Chosen from ahead-of-time sweeps over the library (sm_80/sm_90, ptxas spill reports):
    for fp16/bf16, 64×32 tiles with 8 warps (D ≤ 64) and 32×32 with 8 warps (D = 128) spill for
    no variant but one fp16 D = 128 case; for fp32 (IEEE dots without tensor cores) no config
    tried is spill-free for every variant — 32×16 with 8 warps spills least (see
    tests/codegen/test_aot.py, which reports the spilling builds)."""
    wide = max(block_d, block_dv)
    if dtype == "float32":
        return LaunchConfig(32, 16, 8, 1) if wide <= 64 else LaunchConfig(16, 16, 8, 1)
    if wide <= 64:
        return LaunchConfig(64, 32, 8, 1)
    return LaunchConfig(32, 32, 8, 1) if wide <= 128 else LaunchConfig(16, 16, 8, 1)
