"""The runtime tile classification (``runtime/sparsity.py``) against the float64 reference's mask:
sound for every mask it is used for (never *empty* where a pair is kept, never *full* where one is
dropped), exact for sorted document ids, and cached by the contents of the mask's inputs."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc
from attnc.runtime.reference import reference_keep
from attnc.runtime.sparsity import EMPTY, FULL, PARTIAL, TileCache, classify
from attnc.runtime.validate import bind_params, sizes_of

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _truth(keep: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """Exact classes from a materialized mask [B, H, Nq, Nkv]: full needs every pair of a
    non-ragged key tile (rows past n_q do not count)."""
    B, H, Nq, Nkv = keep.shape
    qt, kt = -(-Nq // block_m), -(-Nkv // block_n)
    pad = torch.zeros(B, H, qt * block_m, kt * block_n, dtype=torch.bool)
    valid = torch.zeros_like(pad)
    pad[..., :Nq, :Nkv] = keep
    valid[..., :Nq, :Nkv] = True
    tiles = pad.view(B, H, qt, block_m, kt, block_n)
    ok = valid.view(B, H, qt, block_m, kt, block_n)
    some = tiles.any(5).any(3)
    every = (tiles | ~ok).all(5).all(3) & (torch.arange(1, kt + 1) * block_n <= Nkv)
    return torch.where(some, torch.where(every, FULL, PARTIAL), EMPTY)


def _classes(name: str, n_q: int, n_kv: int, block_m: int, block_n: int, batch: int = 1, **params):
    attn = attnc.load(name)
    q, k = torch.zeros(batch, 1, n_q, 4), torch.zeros(batch, 1, n_kv, 4)
    sizes = sizes_of(q, k, k, None)
    got = classify(attn.cascade, bind_params(attn.cascade, params, sizes), sizes, block_m, block_n).classes
    want = _truth(reference_keep(attn.cascade, q, k, k, **params), block_m, block_n)
    return got.long().expand_as(want), want


TILES = st.sampled_from([(16, 16), (8, 32), (32, 8), (1, 4)])


@SETTINGS
@given(data=st.data(), tiles=TILES, batch=st.integers(1, 2))
def test_sorted_documents_are_classified_exactly(data, tiles, batch):
    n_kv = data.draw(st.integers(1, 120))
    n_q = data.draw(st.integers(1, n_kv))
    ids = data.draw(st.lists(st.lists(st.integers(0, 6), min_size=n_kv, max_size=n_kv), min_size=batch, max_size=batch))
    doc = torch.sort(torch.tensor(ids), dim=1).values
    got, want = _classes("document", n_q, n_kv, *tiles, batch=batch, doc=doc)
    assert torch.equal(got, want)


@SETTINGS
@given(data=st.data(), tiles=TILES)
def test_classification_is_sound_for_unsorted_documents(data, tiles):
    n_kv = data.draw(st.integers(1, 100))
    n_q = data.draw(st.integers(1, n_kv))
    doc = torch.tensor([data.draw(st.lists(st.integers(0, 3), min_size=n_kv, max_size=n_kv))])
    got, want = _classes("document", n_q, n_kv, *tiles, doc=doc)
    assert not ((got == EMPTY) & (want != EMPTY)).any()  # a tile with a kept pair is visited
    assert not ((got == FULL) & (want != FULL)).any()  # a full tile keeps every pair


@SETTINGS
@given(width=st.integers(1, 12), height=st.integers(1, 12), kernel=st.integers(1, 5), dilation=st.integers(1, 3),
       tiles=TILES)
def test_classification_is_sound_for_natten2d(width, height, kernel, dilation, tiles):
    n = width * height
    got, want = _classes("natten2d", n, n, *tiles, width=width, kernel_h=kernel, kernel_w=kernel,
                         dilation_h=dilation, dilation_w=dilation)
    assert not ((got == EMPTY) & (want != EMPTY)).any()
    assert not ((got == FULL) & (want != FULL)).any()


def test_natten2d_with_image_rows_as_tiles_is_exact():
    got, want = _classes("natten2d", 256, 256, 16, 16, width=16, kernel_h=5, kernel_w=5)
    assert torch.equal(got, want)


def test_the_cache_follows_the_contents_of_the_mask_inputs():
    cascade = attnc.load("document").cascade
    q = torch.zeros(1, 1, 64, 4)
    sizes = sizes_of(q, q, q, None)
    doc = torch.repeat_interleave(torch.arange(4), 16).view(1, 64)
    cache = TileCache()
    first = cache.get(cascade, {"doc": doc}, sizes, 16, 16, q.device)
    assert cache.get(cascade, {"doc": doc.clone()}, sizes, 16, 16, q.device) is first  # same ids, new tensor
    assert cache.misses == 1
    doc[0, 20:] = 1  # edited in place: classified again
    second = cache.get(cascade, {"doc": doc}, sizes, 16, 16, q.device)
    assert cache.misses == 2 and not torch.equal(second.classes, first.classes)
    cache.get(cascade, {"doc": doc}, sizes, 16, 32, q.device)  # another tile size: another entry
    assert cache.misses == 3
    # the lists the kernels read: partial tiles first, then full ones, per query tile
    lists = second.lists[0, 0]
    for row, classes in zip(lists, second.classes[0, 0], strict=True):
        n_part, n_full = int(row[0]), int(row[1])
        idx = row[2:].long()
        assert (classes[idx[:n_part]] == PARTIAL).all() and (classes[idx[n_part:n_part + n_full]] == FULL).all()
        assert n_part + n_full == int((classes != EMPTY).sum())


def test_a_kernel_call_reuses_the_classification():
    attn = attnc.load("document")
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    doc = torch.repeat_interleave(torch.arange(4), 10).view(1, 40)
    misses = attn.tile_cache.misses
    first = attn(q, k, v, doc=doc)
    assert attn.tile_cache.misses == misses + 1
    torch.testing.assert_close(attn(q, k, v, doc=doc.clone()), first, rtol=0, atol=0)
    assert attn.tile_cache.misses == misses + 1
    doc[0, :] = 0  # one document: every pair kept, a new classification and a new result
    torch.testing.assert_close(attn(q, k, v, doc=doc), attnc.load("softmax")(q, k, v), rtol=1e-5, atol=1e-6)
    assert attn.tile_cache.misses == misses + 2


@SETTINGS
@given(data=st.data(), tiles=TILES)
def test_classification_is_sound_with_nan_and_inf_in_a_float_mask_input(data, tiles):
    # NaN is false in every comparison, negated ones included, so a NaN anywhere in the tensor
    # must not make a range look decided; inf - inf must not either.
    attn = attnc.compile("attention a(w: tensor[N_KV] float):\n"
                         "    mask = not (w[kv_idx] - w[q_idx] > 0.5) and kv_idx <= q_idx + 3\n")
    n = data.draw(st.integers(1, 60))
    w = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0, -2.0, float("nan"), float("inf"), float("-inf")]),
                                        min_size=n, max_size=n)), dtype=torch.float64)
    q = torch.zeros(1, 1, n, 4)
    sizes = sizes_of(q, q, q, None)
    got = classify(attn.cascade, {"w": w}, sizes, *tiles).classes.long()
    want = _truth(reference_keep(attn.cascade, q, q, q, w=w), *tiles)
    assert not ((got == EMPTY) & (want != EMPTY)).any()
    assert not ((got == FULL) & (want != FULL)).any()


MORTON = """
attention natten_morton(radius: int = 1):
    # tokens in Z-order over a 2-D grid of 2^3 × 2^3 cells: x from the even bits, y from the odd ones
    let qx = (q_idx & 1) | ((q_idx >> 1) & 2) | ((q_idx >> 2) & 4)
    let qy = ((q_idx >> 1) & 1) | ((q_idx >> 2) & 2) | ((q_idx >> 3) & 4)
    let kx = (kv_idx & 1) | ((kv_idx >> 1) & 2) | ((kv_idx >> 2) & 4)
    let ky = ((kv_idx >> 1) & 1) | ((kv_idx >> 2) & 2) | ((kv_idx >> 3) & 4)
    mask = abs(qx - kx) <= radius and abs(qy - ky) <= radius
"""


@SETTINGS
@given(n=st.integers(1, 64), radius=st.integers(0, 3), tiles=st.sampled_from([(4, 4), (8, 16), (16, 8), (2, 32)]))
def test_a_morton_order_mask_is_classified_exactly_on_aligned_tiles(n, radius, tiles):
    """Bitwise masks get block sparsity: over a tile of 2^t aligned tokens, the high bits of the
    index are fixed, and the classifier follows them through `&`, `|` and `>>` (a tile is empty
    exactly when no pair in it is kept; none is called full that is not)."""
    attn = attnc.compile(MORTON)
    q = torch.zeros(1, 1, n, 4)
    sizes = sizes_of(q, q, q, None)
    got = classify(attn.cascade, bind_params(attn.cascade, {"radius": radius}, sizes), sizes, *tiles).classes
    i = torch.arange(n)
    x = (i & 1) | ((i >> 1) & 2) | ((i >> 2) & 4)
    y = ((i >> 1) & 1) | ((i >> 2) & 2) | ((i >> 3) & 4)
    keep = ((x[:, None] - x[None]).abs() <= radius) & ((y[:, None] - y[None]).abs() <= radius)
    want = _truth(keep[None, None], *tiles)
    assert torch.equal(reference_keep(attn.cascade, q, q, q, radius=radius)[0, 0], keep)
    got = got.long().expand_as(want)
    assert torch.equal(got == EMPTY, want == EMPTY)
    assert not ((got == FULL) & (want != FULL)).any()


def test_a_bitwise_operator_over_an_integer_function_is_classified_soundly():
    """``q_idx & sign(q_idx)`` (found by the spec generator): a built-in function of an integer
    has integer bounds, which the bitwise rule needs (it raised on float bounds before)."""
    attn = attnc.compile("attention signed:\n    mask = (q_idx & sign(q_idx)) < (kv_idx << 1)\n")
    q, k = torch.zeros(1, 1, 37, 4), torch.zeros(1, 1, 29, 4)
    sizes = sizes_of(q, k, k, None)
    got = classify(attn.cascade, bind_params(attn.cascade, {}, sizes), sizes, 8, 8).classes.long()
    want = _truth(reference_keep(attn.cascade, q, k, k), 8, 8)
    sound = (want == EMPTY) | (got != EMPTY)  # a tile with a kept pair is never skipped
    assert bool(sound.all()) and bool(((got == FULL) <= (want == FULL)).all())
