"""Launch configurations (tile sizes, warps, pipeline stages) per GPU architecture.

The runtime autotunes over ``gpu_configs(...)`` on CUDA; the ahead-of-time test compiles every
config for sm_80 and sm_90 and asserts that none spills. The interpreter (CPU) runs one small
config, ``INTERPRETER_CONFIG``: its cost grows with the tile, and tests want ragged edges.

Why these numbers: FlashAttention-2/3 and Triton's fused-attention tutorial use 128-row query
tiles with 64-key tiles on sm_80/sm_90 for D <= 128; larger head dims halve the key tile to
keep the fp32 accumulator [BLOCK_M, BLOCK_DV] plus the score tile in registers; fp32 inputs
(no 16-bit tensor-core path) and multi-pass plans (more running state) get smaller tiles.
Hopper (sm_90) has more shared memory, so it takes one more software-pipeline stage.
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

    Every candidate must compile without register spills for the library's kernels (checked ahead
    of time by ``tests/codegen/test_aot.py``); the first is the one used when tuning is off.
    """
    wide = max(block_d, block_dv)
    stages = 3 if capability >= 90 else 2
    if dtype == "float32":
        if wide <= 64:
            return [LaunchConfig(64, 32, 4, 2), LaunchConfig(32, 32, 4, 2)]
        return [LaunchConfig(32, 32, 4, 2), LaunchConfig(16, 32, 4, 2)]
    if num_passes > 1:
        stages = 2
    if wide <= 64:
        return [LaunchConfig(128, 64, 4, stages), LaunchConfig(64, 64, 4, stages)]
    if wide <= 128:
        return [LaunchConfig(128, 64, 8, stages), LaunchConfig(64, 64, 4, stages)]
    return [LaunchConfig(64, 32, 4, 2), LaunchConfig(64, 32, 8, 2)]
