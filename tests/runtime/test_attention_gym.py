"""FlexAttention idioms as attention-gym and FlexAttention users write them (issue 18, Tests):
each function is used unchanged — through `attnc.flex_attention` with a `create_block_mask`
BlockMask, the import being the only change — and compared with torch's eager `flex_attention`
on the CPU (forward) and with torch autograd through FlexAttention's definition materialized in
float64 (gradients of q, k, v; flex has no CPU backward). The functions are written here from
the masks' published definitions (attention-gym's `attn_gym/masks` and `attn_gym/mods`, NATTEN,
Sliding Tile Attention, Sparse VideoGen), not imported from those projects."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import and_masks, create_block_mask, or_masks
from torch.nn.attention.flex_attention import flex_attention as torch_flex

import attnc
from tests.runtime.test_jit import _dense_flex, make_qkv, rel_err

TOL32 = 1e-5


pytestmark = pytest.mark.usefixtures("poison")


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window(window):
    def in_window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx <= window
    return and_masks(causal, in_window)


def prefix_lm(prefix):
    def in_prefix(b, h, q_idx, kv_idx):
        return kv_idx < prefix
    return or_masks(in_prefix, causal)


def document(doc_ids):
    def same_document(b, h, q_idx, kv_idx):
        return doc_ids[q_idx] == doc_ids[kv_idx]
    return and_masks(causal, same_document)


def dilated_sliding_window(window, dilation):
    def mask(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx
        return (diff.abs() <= window) & (diff % dilation == 0)
    return mask


def _neighborhood(kernel_w, kernel_h, canvas_w, canvas_h, coords):
    """NATTEN: the window is centred on the query, its centre clamped half a kernel from the edge."""
    def mask(b, h, q_idx, kv_idx):
        (qx, qy), (kx, ky) = coords(q_idx), coords(kv_idx)
        cx = qx.clamp(kernel_w // 2, canvas_w - 1 - kernel_w // 2)
        cy = qy.clamp(kernel_h // 2, canvas_h - 1 - kernel_h // 2)
        return ((cx - kx).abs() <= kernel_w // 2) & ((cy - ky).abs() <= kernel_h // 2)
    return mask


def natten(canvas_w, canvas_h, kernel_w, kernel_h):
    return _neighborhood(kernel_w, kernel_h, canvas_w, canvas_h, lambda i: (i % canvas_w, i // canvas_w))


def tiled_natten(canvas_w, canvas_h, kernel_w, kernel_h, tile_w, tile_h):
    def coords(i):  # tokens stored tile by tile, each tile row-major, tiles row-major over the canvas
        tile, within = i // (tile_w * tile_h), i % (tile_w * tile_h)
        tiles_per_row = canvas_w // tile_w
        return (tile % tiles_per_row) * tile_w + within % tile_w, (tile // tiles_per_row) * tile_h + within // tile_w
    return _neighborhood(kernel_w, kernel_h, canvas_w, canvas_h, coords)


def _compact_even_bits(z):  # the inverse of spreading a 16-bit number over the even bits of 32
    z = z & 0x55555555
    z = (z | (z >> 1)) & 0x33333333
    z = (z | (z >> 2)) & 0x0F0F0F0F
    z = (z | (z >> 4)) & 0x00FF00FF
    return (z | (z >> 8)) & 0x0000FFFF


def morton_natten(canvas_w, canvas_h, kernel_w, kernel_h):
    return _neighborhood(kernel_w, kernel_h, canvas_w, canvas_h,
                         lambda i: (_compact_even_bits(i), _compact_even_bits(i >> 1)))


def sliding_tile(canvas, kernel, tile, text=0):
    """Sliding Tile Attention (2-D or 3-D): tiles of `tile` tokens attend to the kernel of tiles
    around theirs (clamped into the canvas); text tokens after the video see everything up to
    the text's end, video tokens also see the text."""
    tiles = [c // t for c, t in zip(canvas, tile)]
    ktiles = [k // t for k, t in zip(kernel, tile)]
    per_tile = 1
    for t in tile:
        per_tile *= t
    video = 1
    for c in canvas:
        video *= c

    def tile_coords(i):
        t = i // per_tile
        out = []
        for n in reversed(tiles):
            out.append(t % n)
            t = t // n
        return out[::-1]

    def mask(b, h, q_idx, kv_idx):
        near = None
        for qt, kt, n, k in zip(tile_coords(q_idx), tile_coords(kv_idx), tiles, ktiles):
            left, right = k // 2, k // 2 + k % 2 - 1
            centre = qt.clamp(left, n - 1 - right)
            axis = (kt >= centre - left) & (kt <= centre + right)
            near = axis if near is None else near & axis
        both_video = (q_idx < video) & (kv_idx < video)
        video_to_text = (q_idx < video) & (kv_idx >= video) & (kv_idx < video + text)
        text_to_all = (q_idx >= video) & (kv_idx < video + text)
        return (both_video & near) | video_to_text | text_to_all
    return mask


def spatial_head(prompt, per_frame, width, round_to, sink):
    """Sparse VideoGen's spatial head: the prompt row and column, and a band of `width` frames
    (rounded down to a multiple of `round_to`) around the diagonal; with `sink`, the first frame."""
    band = (width * per_frame) // round_to * round_to

    def mask(b, h, q_idx, kv_idx):
        column = kv_idx < (prompt + per_frame if sink else prompt)
        return column | (q_idx < prompt) | (torch.abs(q_idx - kv_idx) < band)
    return mask


def temporal_head(prompt, frames, per_frame, width):
    """Sparse VideoGen's temporal head: the same place in other frames."""
    band = (width * per_frame) // frames

    def mask(b, h, q_idx, kv_idx):
        same_place = torch.abs((q_idx - prompt) % per_frame - (kv_idx - prompt) % per_frame) < band
        return (kv_idx < prompt) | (q_idx < prompt) | same_place
    return mask


_SLOPES = torch.tensor([2.0 ** (-8 * (h + 1) / 4) for h in range(4)])


def alibi(score, b, h, q_idx, kv_idx):
    return score + _SLOPES[h] * (kv_idx - q_idx)


def tanh_softcap(cap):
    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)
    return softcap


_DOC = torch.tensor([0] * 7 + [1] * 12 + [2] * 5 + [3] * 8)

# name: (mask_mod, score_mod, (Hq, Hkv, N))
IDIOMS = {
    "causal": (causal, None, (2, 1, 40)),
    "sliding window": (sliding_window(5), None, (2, 1, 40)),
    "prefix LM": (prefix_lm(6), None, (2, 1, 40)),
    "document": (document(_DOC), None, (2, 1, 32)),
    "dilated sliding window": (dilated_sliding_window(8, 3), None, (2, 1, 40)),
    "NATTEN 2-D": (natten(8, 6, 3, 5), None, (2, 2, 48)),
    "tiled NATTEN": (tiled_natten(8, 6, 5, 3, 4, 2), None, (2, 2, 48)),
    "Morton NATTEN": (morton_natten(8, 8, 3, 3), None, (2, 2, 64)),
    "STA 2-D": (sliding_tile((8, 8), (4, 4), (2, 2), text=6), None, (2, 1, 70)),
    "STA 3-D": (sliding_tile((4, 4, 4), (2, 4, 2), (2, 2, 2)), None, (2, 1, 64)),
    "spatial head": (spatial_head(3, 12, 1, 4, True), None, (2, 1, 51)),
    "temporal head": (temporal_head(3, 4, 12, 2), None, (2, 1, 51)),
    "ALiBi (causal)": (causal, alibi, (4, 2, 40)),
    "soft-cap": (None, tanh_softcap(2.0), (2, 1, 40)),
    "soft-cap + sliding window": (sliding_window(9), tanh_softcap(1.5), (2, 1, 40)),
}


@pytest.mark.parametrize("name", list(IDIOMS))
def test_attention_gym_idiom_matches_flex(name):
    mask_mod, score_mod, (Hq, Hkv, N) = IDIOMS[name]
    q, k, v = make_qkv(1, Hq, Hkv, N, N, seed=len(name))
    block_mask = create_block_mask(mask_mod, 1, Hq, N, N, device="cpu") if mask_mod is not None else None
    want = torch_flex(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=Hq != Hkv)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    got = attnc.flex_attention(*x, score_mod=score_mod, block_mask=block_mask, enable_gqa=Hq != Hkv)
    assert rel_err(got.detach(), want) <= TOL32, f"{name}: rel err {rel_err(got.detach(), want):.3g}"
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((got * w).sum(), x)
    x64 = [t.double().requires_grad_() for t in (q, k, v)]
    dense = _dense_flex(*x64, mask_mod, score_mod)
    wants = torch.autograd.grad((dense * w.double()).sum(), x64)
    for what, g, f in zip("qkv", grads, wants):
        assert rel_err(g, f) <= 1e-4, f"{name}: d{what} rel err {rel_err(g, f):.3g}"


def test_the_idioms_mask_something():
    """Each mask keeps some pairs and drops others at the sizes above (else it tests nothing)."""
    for name, (mask_mod, _, (_, _, N)) in IDIOMS.items():
        if mask_mod is None:
            continue
        i, j = torch.arange(N).view(-1, 1), torch.arange(N).view(1, -1)
        keep = torch.as_tensor(mask_mod(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), i, j))
        assert 0 < int(keep.sum()) < N * N, name
