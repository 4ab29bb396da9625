"""Render a mask and its tile classification as a PNG (``attnc show``).

    from attnc.runtime.show import render_mask
    r = render_mask(attnc.load("sliding_window"), 256, 256, 64, 64, "sw.png", window=48)
    r.classes            # int8 [query tiles, key tiles]: 0 empty, 1 partial, 2 full
    r.needed, r.full, r.visited, r.missed

The mask is batch 0 / head 0 of the float64 reference (``reference_keep``). A tile is *empty*
when it keeps no pair, *full* when it keeps every pair it holds (a ragged last tile holds fewer),
else *partial*. The tiles the generated kernel really visits come from
``attnc.testing.tiles.count_tiles`` (the kernel run under Triton's interpreter: seconds at
N = 1024, minutes at 8192; ``visits=False`` skips it). Rows are queries i (top to bottom), columns
keys j. Each pair is ``pixels × pixels`` pixels, chosen so the longest side is at most
``MAX_SIDE``; beyond ``MAX_SIDE`` pairs one pixel covers ``f × f`` pairs (f a power of two) and is
drawn kept when any pair in it is kept. Needs Pillow (``pip install 'attnc[show]'``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..ir import nodes as n
from .cache import user_file_mode, write_atomic
from .compiler import Attention
from .validate import bind_params, sizes_of

EMPTY, PARTIAL, FULL = 0, 1, 2
MAX_SIDE = 1024  # the mask area's longest side, in pixels (tile grid lines add a few)
MAX_PIXELS = 16  # per pair, for tiny shapes
MAX_PAIRS = 2**26  # every pair is evaluated (and, with visits, run under the interpreter)

# Tile classes tint the pairs: a kept pair is the dark shade of its tile's class, a dropped one the
# light shade (an empty tile has only dropped pairs, a full tile only kept ones).
COLORS = {
    "empty": (226, 226, 226),  # a pair in an empty tile
    "partial_dropped": (255, 224, 166),  # a dropped pair in a partial tile
    "partial_kept": (208, 112, 16),  # a kept pair in a partial tile
    "full_kept": (34, 118, 58),  # a pair in a full tile
    "wasted": (36, 84, 230),  # outline: an empty tile the kernel visits anyway
    "missed": (225, 0, 0),  # outline and cross: a needed tile the kernel skips (a bug)
    "grid": (255, 255, 255),
    "frame": (110, 110, 110),
    "text": (0, 0, 0),
    "background": (255, 255, 255),
}
# Colour of a pixel, indexed by class * 2 + kept; the two impossible combinations (a kept pair in
# an empty tile, a dropped one in a full tile) never occur, downsampled or not.
_PALETTE = np.array([COLORS["empty"], COLORS["partial_kept"], COLORS["partial_dropped"], COLORS["partial_kept"],
                     COLORS["partial_dropped"], COLORS["full_kept"]], dtype=np.uint8)
_BATCH_DIMS = ("B", "H", "H_KV")  # tensor dims that may hold a whole batch / all heads: index 0 is shown


class PillowMissing(ImportError):
    """Pillow is not installed; the message says how to install it."""


def require_pillow():
    """Pillow's Image, ImageDraw and ImageFont modules, or ``PillowMissing`` with the install hint."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as err:
        raise PillowMissing("drawing a PNG needs Pillow: pip install 'attnc[show]' (or pip install 'pillow>=10')") \
            from err
    return Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class ShowResult:
    """What ``render_mask`` drew: the tile classes, the kernel's visits, and where things are."""

    path: Path
    name: str
    n_q: int
    n_kv: int
    block_m: int
    block_n: int
    classes: np.ndarray  # int8 [query tiles, key tiles]: EMPTY, PARTIAL or FULL
    visits: np.ndarray | None  # int [query tiles, key tiles]: q·kᵀ products over all passes; None: not counted
    passes: int
    pixels: int  # pixels per pair (or per downsampled cell), each side
    pairs_per_pixel: int  # 1, or f: one pixel covers f × f pairs (kept if any is kept)
    params: dict[str, str]  # the parameters as shown in the title
    size: tuple[int, int]  # (width, height) of the image
    plot: tuple[int, int]  # (x, y) of the mask area's top-left pixel
    _col_x: np.ndarray = field(repr=False)  # first pixel of each display column / row, from ``plot``
    _row_y: np.ndarray = field(repr=False)
    order: str = "token order"  # or, for a grid variant, "positions in grid-tile order"

    @property
    def tiles(self) -> int:
        return int(self.classes.size)

    @property
    def needed(self) -> int:
        return int((self.classes != EMPTY).sum())

    @property
    def full(self) -> int:
        return int((self.classes == FULL).sum())

    @property
    def partial(self) -> int:
        return int((self.classes == PARTIAL).sum())

    @property
    def visited(self) -> int | None:
        """Tiles the kernel visits at least once (``None`` when visits were not counted)."""
        return None if self.visits is None else int((self.visits > 0).sum())

    @property
    def wasted(self) -> int | None:
        """Empty tiles the kernel visits anyway."""
        return None if self.visits is None else int(((self.visits > 0) & (self.classes == EMPTY)).sum())

    @property
    def missed(self) -> int | None:
        """Needed tiles the kernel never visits (must be 0: a skipped kept pair changes the result)."""
        return None if self.visits is None else int(((self.visits == 0) & (self.classes != EMPTY)).sum())

    @property
    def ratio(self) -> float | None:
        """Tiles visited / tiles needed (1.0 is exact; ``nan`` when nothing is needed)."""
        if self.visits is None:
            return None
        return self.visited / self.needed if self.needed else float("nan")

    def pair_xy(self, i: int, j: int) -> tuple[int, int]:
        """The image pixel (x, y) at the centre of pair (query i, key j)."""
        f = self.pairs_per_pixel
        return (self.plot[0] + int(self._col_x[j // f]) + self.pixels // 2,
                self.plot[1] + int(self._row_y[i // f]) + self.pixels // 2)

    def tile_box(self, ti: int, tj: int) -> tuple[int, int, int, int]:
        """The pixels (x0, y0, x1, y1), inclusive, of tile (query tile ti, key tile tj)."""
        f = self.pairs_per_pixel
        c0, c1 = tj * self.block_n // f, (min((tj + 1) * self.block_n, self.n_kv) - 1) // f
        r0, r1 = ti * self.block_m // f, (min((ti + 1) * self.block_m, self.n_q) - 1) // f
        x, y = self.plot
        return (x + int(self._col_x[c0]), y + int(self._row_y[r0]),
                x + int(self._col_x[c1]) + self.pixels - 1, y + int(self._row_y[r1]) + self.pixels - 1)

    def summary(self) -> str:
        head = (f"wrote {self.path}: {self.name} {self.n_q}x{self.n_kv}, tiles {self.block_m}x{self.block_n}: "
                f"needed {self.needed} of {self.tiles} (full {self.full})")
        if self.visits is None:
            return head + ", kernel visits not counted"
        return head + f", visited {self.visited} (ratio {self.ratio:.2f}), missed {self.missed}"


def _is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1 and not x & (x - 1)


def _check_args(n_q, n_kv, block_m, block_n, pixels) -> None:
    for name, value in (("n_q", n_q), ("n_kv", n_kv)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_q * n_kv > MAX_PAIRS:
        raise ValueError(f"n_q·n_kv = {n_q}·{n_kv} pairs: the picture evaluates every pair; draw at most "
                         f"{MAX_PAIRS:,} (e.g. --nq 8192 --nkv 8192)")
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if not _is_pow2(value):
            raise ValueError(f"{name} must be a power of two, got {value!r}")
    if pixels is not None and (not isinstance(pixels, int) or isinstance(pixels, bool) or not 1 <= pixels <= 64):
        raise ValueError(f"pixels must be an int in 1..64 (pixels per pair), got {pixels!r}")


def _probe(n_q: int, n_kv: int):
    """q, k, v exactly as ``count_tiles`` draws them (same order, seed 0 in ``render_mask``), so a
    mask that reads the score sees the same scores in the picture and in the visit count."""
    from ..testing.tiles import HEAD_DIM, HEAD_DIM_V

    q = torch.randn(1, 1, n_q, HEAD_DIM)
    k = torch.randn(1, 1, n_kv, HEAD_DIM)
    v = torch.randn(1, 1, n_kv, HEAD_DIM_V)
    q[..., 0] = 0.0
    k[..., 0] = torch.arange(1, n_kv + 1, dtype=torch.float32)
    return q, k, v


def mask_params(attn: Attention, n_q: int, n_kv: int, params: dict, *, draw_missing: bool = False) -> dict:
    """``params`` ready for a batch-1, one-head call on ``n_q × n_kv``, validated as the kernel does
    (``TypeError``/``ValueError`` naming the parameter). Tensors move to the CPU, and those declared
    over ``B``/``H``/``H_KV`` may hold a whole batch: index 0 of those dims is kept. With
    ``draw_missing``, parameters not given are drawn as ``attnc check`` draws them."""
    from ..testing.kit import with_captured

    out = dict(params)
    specs = {p.name: p for p in attn.cascade.params}
    for name, value in params.items():
        p = specs.get(name)
        if p is None or p.kind != "tensor" or not isinstance(value, torch.Tensor):
            continue  # bind_params reports it
        value = value.detach().cpu()
        if value.dim() == len(p.dims):
            for axis, d in enumerate(p.dims):
                if isinstance(d, n.Var) and d.name in _BATCH_DIMS and value.shape[axis] > 1:
                    value = value.narrow(axis, 0, 1)
        out[name] = value
    from ..testing.tiles import HEAD_DIM, HEAD_DIM_V

    q, k, v = (torch.empty(1, 1, size, dim) for size, dim in ((n_q, HEAD_DIM), (n_kv, HEAD_DIM), (n_kv, HEAD_DIM_V)))
    if draw_missing:
        from .check import random_params

        out = random_params(attn, q, k, v, out, torch.Generator().manual_seed(0))
    scale = out.pop("scale", None)
    sizes = sizes_of(q, k, v, scale)
    bind_params(attn.cascade, with_captured(attn, out), sizes)
    return out if scale is None else {**out, "scale": scale}


def classify(keep: np.ndarray, block_m: int, block_n: int) -> np.ndarray:
    """Tile classes of the bool mask ``keep`` [n_q, n_kv]: EMPTY, PARTIAL or FULL (int8); pairs
    past n_q / n_kv in a ragged last tile do not exist, so they cannot make a tile partial."""
    n_q, n_kv = keep.shape
    tm, tn = -(-n_q // block_m), -(-n_kv // block_n)
    padded = np.zeros((tm * block_m, tn * block_n), dtype=np.int64)
    padded[:n_q, :n_kv] = keep
    kept = padded.reshape(tm, block_m, tn, block_n).sum(axis=(1, 3))
    rows = np.minimum(np.arange(1, tm + 1) * block_m, n_q) - np.arange(tm) * block_m
    cols = np.minimum(np.arange(1, tn + 1) * block_n, n_kv) - np.arange(tn) * block_n
    classes = np.full((tm, tn), PARTIAL, dtype=np.int8)
    classes[kept == 0] = EMPTY
    classes[kept == rows[:, None] * cols[None, :]] = FULL
    return classes


def _layout(n_q: int, n_kv: int, block_m: int, block_n: int, pixels: int | None) -> tuple[int, int, int]:
    """(pixels per cell, pairs per cell f, grid gap): f > 1 only past MAX_SIDE pairs."""
    longest = max(n_q, n_kv)
    if pixels is not None:
        px, f = pixels, 1
    elif longest <= MAX_SIDE:
        px, f = min(MAX_PIXELS, MAX_SIDE // longest), 1
    else:
        px, f = 1, 1
        while -(-longest // f) > MAX_SIDE:
            f *= 2
    # grid lines only between tiles at least 8 pixels wide (f then divides both tile sizes)
    gap = 1 if min(block_m, block_n) * px >= 8 * f else 0
    return px, f, gap


def _cells(count: int, block: int, f: int, px: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: the first pixel of each display cell, and the cell of each pixel (-1: grid)."""
    cells = -(-count // f)
    first = np.arange(cells) * px + (np.arange(cells) * f // block) * gap
    owner = np.full(int(first[-1]) + px, -1, dtype=np.int64)
    owner[(first[:, None] + np.arange(px)).ravel()] = np.repeat(np.arange(cells), px)
    return first, owner


def _downsample(a: np.ndarray, f: int, reduce) -> np.ndarray:
    if f == 1:
        return a
    rows, cols = -(-a.shape[0] // f), -(-a.shape[1] // f)
    padded = np.zeros((rows * f, cols * f), dtype=a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    return reduce(padded.reshape(rows, f, cols, f), axis=(1, 3))


def _shown(attn: Attention, params: dict, given: set[str]) -> dict[str, str]:
    """The parameters as the title shows them: scalars by value, tensors by shape."""
    shown = {}
    for name, value in params.items():
        if isinstance(value, torch.Tensor):
            text = f"tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
        else:
            text = repr(value)
        shown[name] = text + ("" if name in given else " (drawn)")
    return shown


def render_mask(attn: Attention, n_q: int, n_kv: int, /, block_m: int = 64, block_n: int = 64,
                path: str | os.PathLike | None = None, *, pixels: int | None = None, visits: bool = True,
                draw_missing: bool = False, **params) -> ShowResult:
    """Draw ``attn``'s mask on ``n_q × n_kv`` (batch 0, head 0) with its ``block_m × block_n``
    tile classes, and the kernel's visits unless ``visits=False``, into the PNG ``path``
    (default ``NAME.png``). ``pixels`` per pair: default automatic (at most ``MAX_SIDE`` pixels
    a side). ``params`` as for ``attn(q, k, v, **params)``, ``scale`` included; with
    ``draw_missing``, parameters not given are drawn like ``attnc check`` does."""
    Image, ImageDraw, ImageFont = require_pillow()  # before any work: a missing Pillow fails at once
    from ..ir.passes import plan_passes
    from ..testing.kit import with_captured
    from .reference import reference_keep

    _check_args(n_q, n_kv, block_m, block_n, pixels)
    given = set(params)
    params = mask_params(attn, n_q, n_kv, params, draw_missing=draw_missing)
    path = Path(path if path is not None else f"{attn.name}.png")

    with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
        torch.manual_seed(0)
        q, k, v = _probe(n_q, n_kv)
        keep = reference_keep(attn.cascade, q, k, v, **with_captured(attn, params))[0, 0].numpy()
    order, tokens_q, tokens_kv = "token order", n_q, n_kv
    if attn.permuted is not None:  # the kernel runs on the grid's tiles: draw what it sees
        keep, n_q, n_kv = _permuted_keep(attn, keep, q, k, v, params, block_m, block_n)
        order = "positions in grid-tile order"
    classes = classify(keep, block_m, block_n)
    counted = None
    if visits:
        from ..testing.tiles import count_tiles

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same q, k, v as _probe above
            counted = count_tiles(attn, tokens_q, tokens_kv, block_m, block_n, **params).visits

    px, f, gap = _layout(n_q, n_kv, block_m, block_n, pixels)
    pair_class = classes[np.arange(n_q) // block_m][:, np.arange(n_kv) // block_n]
    kept = _downsample(keep, f, np.any)
    cell_class = _downsample(pair_class, f, np.max)  # a cell over several tiles shows the largest class
    col_x, col_owner = _cells(n_kv, block_n, f, px, gap)
    row_y, row_owner = _cells(n_q, block_m, f, px, gap)
    colors = _PALETTE[cell_class.astype(np.int64) * 2 + kept]
    plot = np.empty((len(row_owner), len(col_owner), 3), dtype=np.uint8)
    plot[:] = COLORS["grid"]
    inside = (row_owner[:, None] >= 0) & (col_owner[None, :] >= 0)
    plot[inside] = colors[np.maximum(row_owner, 0)[:, None], np.maximum(col_owner, 0)[None, :]][inside]

    shown = _shown(attn, params, given)
    result_args = {"name": attn.name, "n_q": n_q, "n_kv": n_kv, "block_m": block_m, "block_n": block_n,
                   "classes": classes, "visits": counted, "passes": plan_passes(attn.cascade).num_passes,
                   "pixels": px, "pairs_per_pixel": f, "params": shown, "_col_x": col_x, "_row_y": row_y,
                   "order": order}
    try:
        font = ImageFont.load_default(size=13)  # Pillow >= 10.1 with FreeType
    except (TypeError, ValueError, OSError):
        font = ImageFont.load_default()
    line_h = font.getbbox("Ag")[3] + 5
    margin = 12
    draft = ShowResult(path=path, size=(0, 0), plot=(0, 0), **result_args)
    header = _header(draft)
    legend = _legend(draft)
    text_w = max(int(font.getlength(t)) for t in header + [label for _, label in legend])
    top = margin + line_h * len(header) + 6
    width = max(plot.shape[1], text_w + 20) + 2 * margin
    height = top + plot.shape[0] + 12 + line_h * len(legend) + margin

    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = COLORS["background"]
    canvas[top: top + plot.shape[0], margin: margin + plot.shape[1]] = plot
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for row, text in enumerate(header):
        draw.text((margin, margin + row * line_h), text, fill=COLORS["text"], font=font)
    draw.rectangle([margin - 1, top - 1, margin + plot.shape[1], top + plot.shape[0]], outline=COLORS["frame"])
    result = ShowResult(path=path, size=(width, height), plot=(margin, top), **result_args)
    if counted is not None:
        visited = counted > 0
        for kind, where in (("wasted", visited & (classes == EMPTY)), ("missed", ~visited & (classes != EMPTY))):
            for ti, tj in np.argwhere(where).tolist():
                _mark(draw, result.tile_box(ti, tj), COLORS[kind], cross=kind == "missed")
    y = top + plot.shape[0] + 12
    for swatch, label in legend:
        box = (margin, y + 1, margin + 11, y + 12)
        if swatch in ("wasted", "missed"):
            draw.rectangle(box, fill=COLORS["empty"])
            _mark(draw, box, COLORS[swatch], cross=swatch == "missed")
        elif swatch:
            draw.rectangle(box, fill=COLORS[swatch])
        draw.text((margin + (18 if swatch else 0), y), label, fill=COLORS["text"], font=font)
        y += line_h
    png = io.BytesIO()
    image.save(png, format="PNG")
    write_atomic(path, png.getvalue(), mode=user_file_mode(), parents=False)  # never a half-written PNG
    return result


def _permuted_keep(attn: Attention, keep: np.ndarray, q, k, v, params: dict, block_m: int, block_n: int):
    """``keep`` in the order a grid variant's kernel sees its tokens (``runtime/layout.py``):
    rows and columns are positions in grid tiles; padding positions keep nothing."""
    plan = attn.grid_plan(q, k, v, block_m, block_n, **params)
    out = np.zeros((plan.q.padded, plan.k.padded), dtype=bool)
    out[plan.q.pos.numpy()[:, None], plan.k.pos.numpy()[None, :]] = keep
    return out, plan.q.padded, plan.k.padded


def _mark(draw, box: tuple[int, int, int, int], color, cross: bool) -> None:
    """Outline a tile (filled when too small to outline), with a diagonal, or a cross for a miss."""
    x0, y0, x1, y1 = box
    size = min(x1 - x0, y1 - y0) + 1
    if size < 4:
        draw.rectangle(box, fill=color)
        return
    draw.rectangle(box, outline=color, width=2 if size >= 8 else 1)
    if size >= 8:
        draw.line([(x0, y0), (x1, y1)], fill=color, width=1)
        if cross:
            draw.line([(x0, y1), (x1, y0)], fill=color, width=1)


def _header(r: ShowResult) -> list[str]:
    params = ", ".join(f"{k}={v}" for k, v in r.params.items()) or "none"
    counts = (f"tiles: {r.tiles}, needed {r.needed} (full {r.full}, partial {r.partial}), "
              f"empty {r.tiles - r.needed}")
    if r.visits is None:
        counts += "; kernel visits not counted"
    else:
        counts += (f"; kernel visits {r.visited} (ratio {r.ratio:.2f}, {r.passes} "
                   f"pass{'es' if r.passes > 1 else ''}), wasted {r.wasted}, missed {r.missed}")
    f = r.pairs_per_pixel
    scale = (f"1 pixel = {f}x{f} pairs, kept if any pair in it is kept" if f > 1 else
             "1 pixel = 1 pair" if r.pixels == 1 else f"{r.pixels}x{r.pixels} pixels per pair")
    what = "i = " if r.order == "token order" else "at grid-tile positions "
    return [f"{r.name}: n_q={r.n_q}, n_kv={r.n_kv}, tiles {r.block_m}x{r.block_n} (batch 0, head 0)",
            f"parameters: {params}",
            counts,
            f"rows: queries {what}0..{r.n_q - 1} (down); columns: keys {what.replace('i = ', 'j = ')}"
            f"0..{r.n_kv - 1} (right); {scale}"]


def _legend(r: ShowResult) -> list[tuple[str, str]]:
    rows = [("full_kept", "full tile: every pair kept"),
            ("partial_kept", "partial tile: kept pair"),
            ("partial_dropped", "partial tile: dropped pair"),
            ("empty", "empty tile: no pair kept")]
    if r.visits is None:
        return rows + [("", "kernel visits not counted")]
    return rows + [("wasted", "visited by the kernel though empty (wasted work)"),
                   ("missed", "needed but never visited by the kernel (a bug)")]
