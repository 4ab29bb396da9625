"""Count the tiles a generated kernel really visits, against the tiles the mask needs.

A kernel run under Triton's interpreter (CPU) is instrumented, not asked: every ``q·kᵀ`` tile
product the forward kernel computes is recorded with the program's query tile and the key tile it
covers. The key tile is read from the data itself — ``k[..., 0]`` holds ``j + 1`` and ``q[..., 0]``
is 0, so the product's right operand names its keys and the scores are unchanged by the tag — so a
count can never agree with the planner by construction. A tile is *needed* when it holds at least
one pair the float64 reference's mask keeps. A grid variant's kernel runs on the tokens permuted
into grid tiles (``runtime/layout.py``); its tiles are counted in that order, keys tagged with
their permuted positions (a tile of padding alone carries no tag and would go uncounted; the
kernels never visit one, as padding is masked off).

    from attnc.testing.tiles import count_tiles
    c = count_tiles(attnc.load("causal"), n_q=1024, n_kv=1024, block_m=64, block_n=64)
    c.ratio, c.missed          # 1.0, 0

Interpreter cost grows with the tiles visited: N = 4096 with 64-wide tiles takes seconds to a
minute per mask. ``benchmarks/bench_tiles.py`` prints the table of ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.compiler import Attention, interpreter_tiles
from ..runtime.reference import reference_keep
from .kit import with_captured

HEAD_DIM = 16  # BLOCK_D = 16: the q·kᵀ product is [BLOCK_M, 16] × [16, BLOCK_N] ...
HEAD_DIM_V = 32  # ... and p·v is [BLOCK_M, BLOCK_N] × [BLOCK_N, 32]: never the same shapes

_lock = threading.Lock()


@dataclass(frozen=True)
class TileCount:
    """Per (query tile, key tile) of batch 0, head 0: ``visits`` counts the kernel's ``q·kᵀ``
    products over all its passes, ``needed`` says whether the mask keeps a pair there."""

    block_m: int
    block_n: int
    passes: int
    visits: np.ndarray  # int [query tiles, key tiles]
    needed: np.ndarray  # bool [query tiles, key tiles]

    @property
    def visited(self) -> float:
        """Tiles visited per pass over the keys."""
        return float(self.visits.sum()) / self.passes

    @property
    def needed_count(self) -> int:
        return int(self.needed.sum())

    @property
    def missed(self) -> int:
        """Needed tiles no pass visited (must be 0: a skipped kept pair changes the result)."""
        return int((self.needed & (self.visits == 0)).sum())

    @property
    def ratio(self) -> float:
        """Tiles visited / tiles needed (1.0 is exact; ``nan`` when nothing is needed)."""
        return self.visited / self.needed_count if self.needed_count else float("nan")


@contextlib.contextmanager
def _recording(block_m: int, block_n: int, visits: np.ndarray):
    """Patch the interpreter's dot to record which (query tile, key tile) each q·kᵀ covers."""
    from triton.runtime import interpreter

    builder_cls = interpreter.InterpreterBuilder
    original = builder_cls.create_dot

    def create_dot(self, a, b, d, *args):
        if a.data.shape[-1] == HEAD_DIM and b.data.shape == (HEAD_DIM, block_n):
            tags = b.data[0]
            if (tags > 0).any():
                key_tile = int(tags.max() - 1) // block_n
                visits[self.grid_idx[0], key_tile] += 1
        return original(self, a, b, d, *args)

    builder_cls.create_dot = create_dot
    try:
        yield
    finally:
        builder_cls.create_dot = original


def count_tiles(attn: Attention, n_q: int, n_kv: int, /, block_m: int = 64, block_n: int = 64,
                **params) -> TileCount:
    """Run ``attn``'s forward kernel (fp32, interpreter, batch 1, one head) on ``n_q × n_kv`` with
    ``block_m × block_n`` tiles and count the tiles it visits; ``params`` as for ``attn``."""
    from ..ir.passes import plan_passes

    q = torch.randn(1, 1, n_q, HEAD_DIM)
    k = torch.randn(1, 1, n_kv, HEAD_DIM)
    v = torch.randn(1, 1, n_kv, HEAD_DIM_V)
    q[..., 0] = 0.0
    # a grid variant runs on its tokens permuted into grid tiles (runtime/layout.py): tiles are
    # counted in that order, so keys are tagged with their permuted positions
    pos_q, pos_k = torch.arange(n_q), torch.arange(n_kv)
    rows, cols = n_q, n_kv
    if attn.permuted is not None:
        plan = attn.grid_plan(q, k, v, block_m, block_n, **params)
        pos_q, pos_k, rows, cols = plan.q.pos, plan.k.pos, plan.q.padded, plan.k.padded
    k[..., 0] = (pos_k + 1).to(torch.float32)  # exact in fp32 below 2**24
    tiles_m, tiles_n = -(-rows // block_m), -(-cols // block_n)
    visits = np.zeros((tiles_m, tiles_n), dtype=np.int64)
    with _lock, torch.no_grad(), interpreter_tiles(block_m, block_n), _recording(block_m, block_n, visits):
        attn(q, k, v, **params)
    keep = reference_keep(attn.cascade, q, k, v, **with_captured(attn, params))[0, 0]
    padded = torch.zeros(tiles_m * block_m, tiles_n * block_n, dtype=torch.bool)
    padded[pos_q[:, None], pos_k[None, :]] = keep
    needed = padded.view(tiles_m, block_m, tiles_n, block_n).any(3).any(1).numpy()
    return TileCount(block_m, block_n, plan_passes(attn.cascade).num_passes, visits, needed)


def count_pages(attn: Attention, cache_len: int, page_size: int, /, n_new: int = 1, seed: int = 0, group: int = 1,
                **params) -> TileCount:
    """Run ``attn.decode`` (fp32, interpreter, batch 1, one key/value head and ``group`` query
    heads, packed into one program's rows) for ``n_new`` queries over a
    paged cache of ``cache_len`` keys in pages of ``page_size``, the pages shuffled, with key
    tiles of one page, and count the pages the kernel reads (each tile's keys are tagged with their
    logical positions, so a page is named by its data) against the pages holding a key the
    reference mask keeps for the new rows. ``TileCount``'s key tiles are the logical pages."""
    from ..ir.passes import plan_passes

    g = torch.Generator().manual_seed(seed)
    k = torch.randn(1, 1, cache_len, HEAD_DIM, generator=g)
    v = torch.randn(1, 1, cache_len, HEAD_DIM_V, generator=g)
    q = torch.randn(1, group, cache_len, HEAD_DIM, generator=g)
    q[..., 0] = 0.0
    k[..., 0] = torch.arange(1, cache_len + 1, dtype=torch.float32)
    n_pages = -(-cache_len // page_size)
    table = torch.randperm(n_pages, generator=g).view(1, n_pages)
    kp = torch.zeros(n_pages, page_size, 1, HEAD_DIM)
    vp = torch.zeros(n_pages, page_size, 1, HEAD_DIM_V)
    for logical in range(n_pages):
        part = slice(logical * page_size, min((logical + 1) * page_size, cache_len))
        width = part.stop - part.start
        kp[table[0, logical], :width, 0] = k[0, 0, part]
        vp[table[0, logical], :width, 0] = v[0, 0, part]
    block_m = 16
    rows = group * n_new  # the packed rows of the one kv head
    tiles_m = -(-rows // block_m)
    visits = np.zeros((tiles_m, n_pages), dtype=np.int64)
    with _lock, torch.no_grad(), interpreter_tiles(block_m, page_size), _recording(block_m, page_size, visits):
        attn.decode(q[:, :, cache_len - n_new:], kp, vp, cache_len, block_table=table, **params)
    keep = reference_keep(attn.cascade, q, k, v, **with_captured(attn, params))[0, :, cache_len - n_new:]
    padded = torch.zeros(tiles_m * block_m, n_pages * page_size, dtype=torch.bool)
    padded[:rows, :cache_len] = keep.reshape(rows, cache_len)
    needed = padded.view(tiles_m, block_m, n_pages, page_size).any(3).any(1).numpy()
    return TileCount(block_m, page_size, plan_passes(attn.cascade).num_passes, visits, needed)
