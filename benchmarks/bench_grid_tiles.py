"""Tiles a neighborhood mask needs in token order and in grid-tile order (issue 6, item 4).

For each case: the tiles holding a kept pair when the kernel runs on the tokens in their own
(row-major) order, and when it runs on them permuted into the grid tiles the runtime picks
(``Attention.grid_plan``), beside the ideal ``ceil(kept pairs / tile area)``. Counted from the
float64 reference's mask (the kernels visit exactly the needed tiles in both orders:
``tests/runtime/test_grid.py`` counts a real kernel run); CPU only, about a minute.

    python3 benchmarks/bench_grid_tiles.py
"""

from __future__ import annotations

import math
import sys

import torch

import attnc
from attnc.runtime.reference import reference_keep

CASES = [
    ("natten2d", 4096, 64, {"width": 64, "kernel_h": 7, "kernel_w": 7}),
    ("natten2d", 4096, 128, {"width": 64, "kernel_h": 7, "kernel_w": 7}),
    ("natten2d", 4096, 64, {"width": 64, "kernel_h": 13, "kernel_w": 13}),
    ("natten2d", 4096, 64, {"width": 64, "kernel_h": 7, "kernel_w": 7, "dilation_h": 2, "dilation_w": 2}),
    ("natten2d", 4096, 64, {"width": 64, "kernel_h": 7, "kernel_w": 7, "causal_h": True}),
    ("natten3d", 4096, 64, {"height": 16, "width": 16, "kernel_d": 3, "kernel_h": 7, "kernel_w": 7}),
    ("natten3d", 4096, 64, {"height": 16, "width": 16, "kernel_d": 5, "kernel_h": 5, "kernel_w": 5}),
    ("natten1d", 4096, 64, {"kernel": 63, "dilation": 4}),
]


def needed(name: str, n: int, block: int, params: dict) -> tuple[int, int, int, tuple]:
    attn = attnc.load(name)
    q = torch.zeros(1, 1, n, 4)
    keep = reference_keep(attn.cascade, q, q, q, **params)[0, 0]
    tiles = -(-n // block)
    padded = torch.zeros(tiles * block, tiles * block, dtype=torch.bool)
    padded[:n, :n] = keep
    token_order = int(padded.view(tiles, block, tiles, block).any(3).any(1).sum())
    plan = attn.grid_plan(q, q, q, block, block, **params)
    grid = torch.zeros(plan.q.padded, plan.k.padded, dtype=torch.bool)
    grid[plan.q.pos[:, None], plan.k.pos[None, :]] = keep
    grid_order = int(grid.view(plan.q.padded // block, block, plan.k.padded // block, block).any(3).any(1).sum())
    return token_order, grid_order, math.ceil(int(keep.sum()) / block**2), plan.q.ext


def main() -> int:
    print("| variant | N | tile | parameters | token order | grid order (tile shape) | ideal |")
    print("|---|---|---|---|---|---|---|")
    for name, n, block, params in CASES:
        tok, grid, ideal, ext = needed(name, n, block, params)
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        print(f"| {name} | {n} | {block} | {shown} | {tok} | {grid} ({'×'.join(map(str, ext))}) | {ideal} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
