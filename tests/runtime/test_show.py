"""`attnc show`: tile classes against hand computations, the PNG's pixels against the legend's
colours, and the command line (summary, default path, one-line errors, no file on error).

Kernel visits may change as the generator improves: only ``missed == 0`` and
``visited >= needed`` are asserted of them."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import attnc
from attnc.runtime import show
from attnc.runtime.cli import main
from attnc.runtime.show import COLORS, EMPTY, FULL, PARTIAL, render_mask


def hand_classes(keep, n_q: int, n_kv: int, bm: int, bn: int) -> np.ndarray:
    """Tile classes from a keep(i, j) predicate, with plain loops."""
    tm, tn = -(-n_q // bm), -(-n_kv // bn)
    out = np.zeros((tm, tn), dtype=np.int8)
    for ti in range(tm):
        for tj in range(tn):
            pairs = [(i, j) for i in range(ti * bm, min((ti + 1) * bm, n_q))
                     for j in range(tj * bn, min((tj + 1) * bn, n_kv))]
            kept = sum(bool(keep(i, j)) for i, j in pairs)
            out[ti, tj] = EMPTY if kept == 0 else FULL if kept == len(pairs) else PARTIAL
    return out


def rgb(image, xy) -> tuple[int, int, int]:
    return tuple(image.getpixel(xy))[:3]


def test_causal_classes_pixels_and_legend(tmp_path):
    n, b = 40, 16
    path = tmp_path / "causal.png"
    r = render_mask(attnc.load("causal"), n, n, b, b, path)
    expected = hand_classes(lambda i, j: j <= i, n, n, b, b)
    np.testing.assert_array_equal(r.classes, expected)
    assert r.classes.dtype == np.int8
    assert (r.needed, r.full, r.tiles) == (6, 3, 9)
    assert r.missed == 0 and r.visited >= r.needed
    assert r.path == path and path.is_file()
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left behind

    image = Image.open(path).convert("RGB")
    assert image.size == r.size
    px = r.pixels
    assert px >= 1 and max(image.size) <= 1024 + 100
    plot_w = n * px + 2  # 40 pairs and two 1-pixel grid lines between the three tiles
    x0, y0 = r.plot
    assert rgb(image, (x0 + plot_w - 1, y0 + 1)) == COLORS["empty"]  # the last column of the mask ...
    assert rgb(image, (x0 + plot_w, y0 + 1)) == COLORS["frame"]  # ... and the frame right after it
    assert rgb(image, (x0 + 1, y0 + n * px + 2)) == COLORS["frame"]

    assert rgb(image, r.pair_xy(5, 2)) == COLORS["partial_kept"]  # tile (0, 0) is partial
    assert rgb(image, r.pair_xy(2, 5)) == COLORS["partial_dropped"]
    assert rgb(image, r.pair_xy(20, 3)) == COLORS["full_kept"]  # tile (1, 0) is full
    assert rgb(image, r.pair_xy(3, 30)) == COLORS["empty"]  # tile (0, 1) is empty
    assert rgb(image, r.pair_xy(39, 39)) == COLORS["partial_kept"]  # the ragged corner tile
    assert rgb(image, (x0 + b * px, r.pair_xy(20, 3)[1])) == COLORS["grid"]  # a grid line between tiles

    # the legend's swatches (left of the labels, under the mask) use the same colours
    below = {rgb(image, (x0 + 5, y)) for y in range(y0 + n * px + 3, image.size[1])}
    for name in ("full_kept", "partial_kept", "partial_dropped", "empty"):
        assert COLORS[name] in below


def test_ragged_tiles_ignore_pairs_past_the_end(tmp_path):
    # 20 queries in 16-row tiles: the second query tile holds rows 16..19 only; bottom-right causal
    n_q, n_kv = 20, 24
    r = render_mask(attnc.load("causal"), n_q, n_kv, 16, 8, tmp_path / "c.png", visits=False)
    np.testing.assert_array_equal(r.classes, hand_classes(lambda i, j: j <= i + n_kv - n_q, n_q, n_kv, 16, 8))
    assert r.classes[1, 1] == FULL  # rows 16..19 keep keys 8..15 (j <= i + 4): every pair that exists
    assert r.visits is None and r.visited is None and r.missed is None
    assert "not counted" in r.summary()


def test_visited_but_empty_and_missed_tiles_are_marked(tmp_path, monkeypatch):
    from attnc.testing import tiles

    needed = hand_classes(lambda i, j: j <= i, 48, 48, 16, 16) != EMPTY

    def doctored(attn, n_q, n_kv, block_m, block_n, **params):
        # an exact kernel, except that it skips needed tile (1, 1) and visits empty tile (0, 2)
        visits = needed.astype(np.int64)
        visits[1, 1], visits[0, 2] = 0, 1
        return tiles.TileCount(block_m, block_n, 1, visits, needed)

    monkeypatch.setattr(tiles, "count_tiles", doctored)
    path = tmp_path / "marks.png"
    r = render_mask(attnc.load("causal"), 48, 48, 16, 16, path)
    assert (r.wasted, r.missed) == (1, 1)
    image = Image.open(path).convert("RGB")
    x, y, x1, y1 = r.tile_box(0, 2)
    assert rgb(image, (x, y)) == rgb(image, (x1, y1)) == COLORS["wasted"]
    assert rgb(image, r.tile_box(1, 1)[:2]) == COLORS["missed"]
    assert rgb(image, r.tile_box(0, 1)[:2]) == COLORS["empty"]  # an unmarked empty tile

    code = main(["show", "causal", "--nq", "48", "--block-m", "16", "--block-n", "16", "-o", str(tmp_path / "m2.png")])
    assert code == 1  # a skipped needed tile is a kernel bug


def test_tensor_parameter_batch_zero_is_shown(tmp_path):
    n = 48
    doc = torch.tensor([[0] * 20 + [1] * 28, [0] * 48])  # batch 1 differs: only batch 0 is drawn
    r = render_mask(attnc.load("document"), n, n, 16, 16, tmp_path / "doc.png", doc=doc)
    d = doc[0].tolist()
    np.testing.assert_array_equal(r.classes, hand_classes(lambda i, j: d[i] == d[j], n, n, 16, 16))
    assert r.missed == 0 and r.visited >= r.needed
    assert r.params == {"doc": "tensor[1, 48] int64"}
    with pytest.raises(ValueError, match="parameter `doc`"):
        render_mask(attnc.load("document"), n, n, 16, 16, tmp_path / "bad.png", visits=False, doc=doc[:, :10])
    assert not (tmp_path / "bad.png").exists()


def test_large_shapes_downsample_with_any(tmp_path):
    n = 1100  # past 1024: one pixel covers 2 × 2 pairs
    r = render_mask(attnc.load("causal"), n, n, 64, 64, tmp_path / "big.png", visits=False)
    assert (r.pixels, r.pairs_per_pixel) == (1, 2)
    image = Image.open(r.path).convert("RGB")
    assert max(image.size) <= 1024 + 100
    assert rgb(image, r.pair_xy(0, 2)) == COLORS["partial_dropped"]  # pairs (0..1, 2..3): none kept
    assert rgb(image, r.pair_xy(2, 3)) == COLORS["partial_kept"]  # (2..3, 2..3): (2, 2) is kept


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_q=st.integers(1, 48), n_kv=st.integers(1, 48), window=st.integers(0, 50),
       bm=st.sampled_from([4, 8, 16]), bn=st.sampled_from([4, 8, 16]), data=st.data())
def test_sliding_window_classes_match_the_formula(n_q, n_kv, window, bm, bn, data):
    def keep(i, j):
        return 0 <= i + n_kv - n_q - j < window

    with tempfile.TemporaryDirectory() as tmp:
        r = render_mask(attnc.load("sliding_window"), n_q, n_kv, bm, bn, Path(tmp) / "sw.png", visits=False,
                        window=window)
        np.testing.assert_array_equal(r.classes, hand_classes(keep, n_q, n_kv, bm, bn))
        i, j = data.draw(st.integers(0, n_q - 1)), data.draw(st.integers(0, n_kv - 1))
        cls = r.classes[i // bm, j // bn]
        want = {EMPTY: "empty", FULL: "full_kept"}.get(cls, "partial_kept" if keep(i, j) else "partial_dropped")
        assert rgb(Image.open(r.path).convert("RGB"), r.pair_xy(i, j)) == COLORS[want]


# ---------------------------------------------------------------------------- the command line


def test_cli_writes_the_png_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "sw.png"
    code = main(["show", "sliding_window", "--nq", "48", "--block-m", "16", "--block-n", "16",
                 "--param", "window=10", "-o", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert out.is_file() and Image.open(out).format == "PNG"
    assert len(stdout.strip().splitlines()) == 1
    assert stdout.startswith(f"wrote {out}: sliding_window 48x48, tiles 16x16: needed ")
    assert "visited " in stdout and "ratio " in stdout and "missed 0" in stdout


def test_cli_default_path_is_the_name_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["show", "causal", "--nq", "20", "--nkv", "30", "--block-m", "8", "--block-n", "8", "--no-visits"])
    stdout, _ = capsys.readouterr()
    assert code == 0
    assert (tmp_path / "causal.png").is_file()
    assert "kernel visits not counted" in stdout


@pytest.mark.parametrize("argv, named", [
    (["sliding_window", "--param", "windw=3"], "--param"),
    (["sliding_window", "--param", "window=abc"], "--param"),
    (["sliding_window", "--param", "window"], "--param"),
    (["document", "--param", "doc=3"], "--param"),
    (["sliding_window", "--block-m", "48"], "--block-m"),
    (["sliding_window", "--block-n", "0"], "--block-n"),
    (["sliding_window", "--nq", "0"], "--nq"),
    (["sofmax"], "SPEC"),
    (["causal", "nope"], "NAME"),
])
def test_cli_errors_exit_2_with_one_line_and_no_file(tmp_path, capsys, argv, named):
    out = tmp_path / "x.png"
    code = main(["show", *argv, "-o", str(out), "--no-visits"])
    stdout, err = capsys.readouterr()
    assert code == 2
    assert stdout == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and named in err
    assert list(tmp_path.iterdir()) == []


def test_missing_pillow_gives_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import ...` now raises ImportError
    with pytest.raises(show.PillowMissing, match=r"pip install 'attnc\[show\]'"):
        render_mask(attnc.load("causal"), 8, 8, 4, 4, tmp_path / "a.png", visits=False)
    code = main(["show", "causal", "--nq", "8", "-o", str(tmp_path / "b.png")])
    _, err = capsys.readouterr()
    assert code == 2 and "pip install 'attnc[show]'" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
