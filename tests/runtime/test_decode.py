"""Decoding over a KV cache (issue 19 items 2–3): ``attn.decode`` over contiguous and paged
caches equals the last rows of the full call — against the float64 reference over the whole
sequence for every library variant, against the full call's own kernel in a generation loop
over a growing paged cache with a shared prefix; the pages a sliding window reads are the pages
it needs (counted on a kernel run); a refused call leaves the cache untouched."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.testing.tiles import count_pages
from tests.codegen.test_forward_kernels import _params

pytestmark = pytest.mark.usefixtures("poison")

GRIDS = ("natten1d", "natten2d", "natten3d")
UNSPLIT = {"clipped_softmax": "2 passes", "document": "classified at run time", "stick_breaking": "in key order",
           "stick_breaking_bias": "in key order"}  # why their keys are not split over programs
VARIANTS = sorted(name for name in attnc.library.names() if name not in GRIDS)


def _close(got, want, tol):
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs err {err:.3g}"


def _paged(k, v, page_size, spare=3, seed=0, layout="NHD"):
    """The contiguous cache [B, Hkv, capacity, D] as shuffled pages and a block table; pages no
    row lists are filled with NaN (a kernel that reads one poisons its row)."""
    B, Hkv, cap, D = k.shape
    per = cap // page_size
    g = torch.Generator().manual_seed(seed)
    table = torch.randperm(B * per + spare, generator=g)[:B * per].view(B, per)
    kp = torch.full((B * per + spare, page_size, Hkv, D), float("nan"), dtype=k.dtype)
    vp = torch.full((B * per + spare, page_size, Hkv, v.shape[3]), float("nan"), dtype=v.dtype)
    for b in range(B):
        for i in range(per):
            kp[table[b, i]] = k[b, :, i * page_size:(i + 1) * page_size].transpose(0, 1)
            vp[table[b, i]] = v[b, :, i * page_size:(i + 1) * page_size].transpose(0, 1)
    if layout == "HND":
        kp, vp = kp.transpose(1, 2).contiguous(), vp.transpose(1, 2).contiguous()
    return kp, vp, table


def _cache(B, Hq, Hkv, cap, n_new, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, n_new, 16, generator=g).to(dtype)
    k = torch.randn(B, Hkv, cap, 16, generator=g).to(dtype)
    v = torch.randn(B, Hkv, cap, 24, generator=g).to(dtype)
    return q, k, v


def _want(attn, q, k, v, lengths, **params):
    """Row b's new queries as the last of its ``lengths[b]`` tokens, by the float64 reference."""
    n = q.shape[2]
    return torch.cat([attn.reference(q[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L], q_offset=int(L) - n, seq_len=int(L),
                                     **{p: (t[b:b + 1] if isinstance(t, torch.Tensor) and t.dim() and
                                            t.shape[0] == q.shape[0] and _batched(attn, p) else t)
                                        for p, t in params.items()})
                      for b, L in enumerate(lengths)])


def _batched(attn, name):
    spec = next(p for p in attn.cascade.params if p.name == name)
    return spec.kind == "tensor" and bool(spec.dims) and getattr(spec.dims[0], "name", None) == "B"


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_decodes_contiguous_and_paged_caches(name):
    """Random lengths per row (the whole cache, a page and a bit, exactly the new queries), GQA,
    the padding past each row's length NaN: decode equals the reference over the full sequence."""
    attn = attnc.load(name)
    B, Hq, Hkv, cap, n_new = 3, 4, 2, 32, 2
    q, k, v = _cache(B, Hq, Hkv, cap, n_new, seed=len(name))
    lengths = torch.tensor([32, 11, 2])
    for b, L in enumerate(lengths.tolist()):  # nothing past a row's length may be read
        k[b, :, L:] = float("nan")
        v[b, :, L:] = float("nan")
    params = _params(name, B, Hq, cap, cap, torch.Generator().manual_seed(1))
    # defaults over n_kv differ per row here (the call refuses to guess): pass them
    params.update({"relu": {"divisor": 20.0}, "sigmoid_attention": {"bias": -3.0}}.get(name, {}))
    want = _want(attn, q, k, v, lengths, **params)
    _close(attn.decode(q, k, v, lengths, **params), want, 1e-5)
    kp, vp, table = _paged(k, v, page_size=8, seed=len(name))
    _close(attn.decode(q, kp, vp, lengths, block_table=table, **params), want, 1e-5)
    # split-KV: a row's keys over 3 programs (tiles of 16 keys: splits of 16, the last empty for
    # every row) merged by the variant's own factors — or a refusal that says why
    if name in UNSPLIT:
        with pytest.raises(ValueError, match=UNSPLIT[name]):
            attn.decode(q, kp, vp, lengths, block_table=table, num_splits=3, **params)
    else:
        _close(attn.decode(q, kp, vp, lengths, block_table=table, num_splits=3, **params), want, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_sixteen_bit_caches_in_both_page_layouts(dtype, layout):
    attn = attnc.load("alibi")
    q, k, v = _cache(2, 8, 2, 48, 3, seed=5, dtype=dtype)
    lengths = torch.tensor([48, 20])
    want = _want(attn, q, k, v, lengths)
    kp, vp, table = _paged(k, v, page_size=16, layout=layout)
    got = attn.decode(q, kp, vp, lengths, block_table=table, kv_layout=layout)
    assert got.dtype == dtype
    _close(got, want, 1e-2)


def test_a_generation_loop_over_a_growing_paged_cache_equals_prefill():
    """20 steps of one token (the first step a prompt of 5), appended through k=/v= into pages of
    4; the two rows share their first two pages (a common prefix of 8 tokens). Each step's output
    and lse equal the matching rows of one full call over the final sequence (its own kernel)."""
    B, Hq, Hkv, page, steps, prompt = 2, 4, 2, 4, 20, 5
    total = prompt - 1 + steps
    g = torch.Generator().manual_seed(7)
    q = torch.randn(B, Hq, total, 16, generator=g)
    k = torch.randn(B, Hkv, total, 16, generator=g)
    v = torch.randn(B, Hkv, total, 16, generator=g)
    k[1, :, :8], v[1, :, :8] = k[0, :, :8], v[0, :, :8]  # the shared prefix
    per_row = -(-total // page)
    table = torch.tensor([[0, 1, *range(2, per_row)], [0, 1, *range(per_row, 2 * per_row - 2)]])
    for name, params in (("sliding_window", {"window": 6}), ("sink_window", {"sinks": 2, "window": 5}),
                         ("stick_breaking_bias", {"bias": torch.randn(Hq, generator=g)})):
        attn = attnc.load(name)
        lse_too = attn.cascade.has_lse
        full, full_lse = attn(q, k, v, return_lse=True, **params) if lse_too else (attn(q, k, v, **params), None)
        kc = torch.full((2 * per_row - 2, page, Hkv, 16), float("nan"))
        vc = torch.full((2 * per_row - 2, page, Hkv, 16), float("nan"))
        seen = 0
        for t in range(steps):
            n = prompt if t == 0 else 1
            rows = slice(seen, seen + n)
            got = attn.decode(q[:, :, rows], kc, vc, seen, k=k[:, :, rows], v=v[:, :, rows], block_table=table,
                              return_lse=lse_too, **params)
            _close(got[0] if lse_too else got, full[:, :, rows], 2e-5)
            if lse_too:
                _close(got[1], full_lse[:, :, rows], 2e-5)
            seen += n


def test_decode_equals_offsets_call_on_the_same_cache():
    """``decode`` is the offsets call with the queries at the end (its documented meaning)."""
    attn = attnc.load("softcap")
    q, k, v = _cache(2, 2, 1, 20, 1, seed=9)
    lengths = torch.tensor([20, 7])
    got = attn.decode(q, k, v, lengths)
    want = attn(q, k, v, q_offset=lengths - 1, seq_len=lengths)
    _close(got, want, 1e-6)


def test_empty_rows_and_empty_calls():
    """A row with nothing in its cache and nothing appended keeps no key: out 0, lse −inf; no new
    queries, or no rows, give empty results."""
    attn = attnc.load("causal")
    q, k, v = _cache(2, 2, 2, 16, 1, seed=3)
    out, lse = attn.decode(q[:, :, :0], k, v, 0, return_lse=True)
    assert out.shape == (2, 2, 0, 24) and lse.shape == (2, 2, 0)
    out, lse = attn.decode(q[:0], k[:0], v[:0], 0, k=k[:0, :, :1], v=v[:0, :, :1], return_lse=True)
    assert out.shape == (0, 2, 1, 24)


def test_a_prompt_into_an_empty_cache():
    """cache length 0 with the prompt appended: the prefill of the prompt."""
    attn = attnc.load("causal")
    q, k, v = _cache(2, 2, 1, 16, 6, seed=4)
    kc, vc = torch.zeros_like(k), torch.zeros_like(v)
    got = attn.decode(q, kc, vc, torch.tensor([0, 0]), k=k[:, :, :6], v=v[:, :, :6])
    _close(got, attn(q, k[:, :, :6], v[:, :, :6]), 1e-6)
    assert torch.equal(kc[:, :, :6], k[:, :, :6]) and not kc[:, :, 6:].any()


def test_sliding_window_decode_reads_only_the_pages_it_needs():
    """Counted on a kernel run (``attnc.testing.tiles.count_pages``): a window of 100 over a
    1000-token cache in pages of 16 reads 7 pages, every one of them needed."""
    attn = attnc.load("sliding_window")
    for n_new, window, group in ((1, 100, 1), (4, 100, 1), (1, 16, 1), (2, 100, 8)):
        c = count_pages(attn, 1000, 16, n_new=n_new, window=window, group=group)
        assert c.missed == 0
        assert c.visited == c.needed_count, (n_new, window, c.visits)
    assert count_pages(attn, 1000, 16, window=100).needed_count == 7


def test_refused_calls_say_why_and_leave_the_cache_untouched():
    attn = attnc.load("causal")
    q, k, v = _cache(2, 2, 1, 16, 1, seed=1)
    kp, vp, table = _paged(k, v, page_size=4)
    before = kp.clone()
    new_k, new_v = k[:, :, :1], v[:, :, :1]
    cases = [
        (dict(cache_seqlens=16, k=new_k, v=new_v, block_table=table), ValueError, "needs 17 cache slots"),
        (dict(cache_seqlens=torch.tensor([0, 3]), block_table=table), ValueError, r"cache_seqlens\[0\] = 0 is fewer keys"),
        (dict(cache_seqlens=3, block_table=table + 100), ValueError, r"block_table\[0, 0\]` = \d+ is not a page number 0..10"),
        (dict(cache_seqlens=3, block_table=table.float()), TypeError, "integer tensor"),
        (dict(cache_seqlens=3, block_table=table, kv_layout="NDH"), ValueError, "kv_layout"),
        (dict(cache_seqlens=3, k=new_k, block_table=table), ValueError, "both k= and v="),
        (dict(cache_seqlens=3, k=new_k[:, :, :, :8], v=new_v, block_table=table), ValueError, "new tokens' keys"),
        (dict(cache_seqlens=3, k=new_k.double(), v=new_v, block_table=table), TypeError, "new tokens' keys"),
        (dict(cache_seqlens=3, k=new_k.clone().requires_grad_(), v=new_v, block_table=table), ValueError,
         "no gradients"),
        (dict(cache_seqlens=3, kv_layout="NDH"), ValueError, "kv_layout"),
        (dict(cache_seqlens=3, num_splits=2.0, block_table=table), ValueError, "num_splits"),
        (dict(cache_seqlens=-1, block_table=table), ValueError, "cache_seqlens"),
    ]
    for kw, error, match in cases:
        cache_seqlens = kw.pop("cache_seqlens")
        with pytest.raises(error, match=match):
            attn.decode(q, kp, vp, cache_seqlens, **kw)
    # a refused parameter is found before the cache is written: a missing one, an id past int32
    with pytest.raises(TypeError, match="window"):
        attnc.load("sliding_window").decode(q, kp, vp, 3, k=new_k, v=new_v, block_table=table)
    with pytest.raises(ValueError, match="beyond int32"):
        attnc.load("document").decode(q, kp, vp, 3, k=new_k, v=new_v, block_table=table,
                                      doc=torch.tensor([[2**40] * 16] * 2))
    with pytest.raises(ValueError, match="broadcast view"):
        attn.decode(q, kp[:1].expand_as(kp), vp, 3, k=new_k, v=new_v, block_table=table)
    assert torch.equal(kp.nan_to_num(), before.nan_to_num())
    with pytest.raises(ValueError, match="no gradients"):
        attn.decode(q.requires_grad_(), k, v, 3)
    with pytest.raises(ValueError, match="grid variant"):
        attnc.load("natten1d").decode(q.detach(), k, v, 3, kernel_size=3)


def test_split_kv_merges_every_split_shape():
    """Splits of one tile, of several, more splits than tiles, rows whose window lies in one
    split; lse merged too; huge logits (the exact rerun after the merge) included."""
    attn = attnc.load("sink_window")
    q, k, v = _cache(3, 8, 2, 96, 2, seed=11)
    lengths = torch.tensor([96, 40, 3])
    for scale, split_counts in ((None, (2, 5, 9)), (2e6, (3,))):
        want = torch.cat([attn.reference(q[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L], q_offset=L - 2, seq_len=L,
                                         sinks=3, window=20, scale=scale, return_lse=True)[1]
                          for b, L in enumerate(lengths.tolist())])
        for splits in split_counts:
            out, lse = attn.decode(q, k, v, lengths, sinks=3, window=20, num_splits=splits, scale=scale,
                                   return_lse=True)
            assert torch.isfinite(out).all()
            _close(lse, want, 1e-5)
            _close(out, attn.decode(q, k, v, lengths, sinks=3, window=20, scale=scale), 1e-5)


def test_splits_are_chosen_and_checked():
    from attnc.runtime.decode import choose_splits

    attn = attnc.load("causal")
    q, k, v = _cache(1, 2, 1, 16, 1, seed=2)
    assert choose_splits(attn, q, 1, torch.tensor([16]), None) == 1  # the CPU: one program per row
    for bad in (0, 65, 2.0, True):
        with pytest.raises(ValueError, match="num_splits"):
            attn.decode(q, k, v, 5, num_splits=bad)


def test_padding_past_a_row_s_pages_and_positions_past_its_length_are_free():
    """vLLM pads a block table with −1 past a row's pages: accepted, never read. The int32 check
    bounds positions by the rows' lengths, not the cache's capacity (a full call over the same
    sequence is accepted, so decoding it is)."""
    attn = attnc.load("causal")
    q, k, v = _cache(2, 2, 1, 16, 1, seed=6)
    kp, vp, table = _paged(k, v, page_size=4)
    lengths = torch.tensor([16, 5])
    padded = table.clone()
    padded[1, 2:] = -1  # row 1 uses pages 0 and 1 only
    _close(attn.decode(q, kp, vp, lengths, block_table=padded), _want(attn, q, k, v, lengths), 1e-5)
    strided = attnc.compile("attention strided(stride: int):\n"
                            "    mask = kv_idx * stride <= (q_idx + (n_kv - n_q)) * stride\n")
    big = torch.zeros(2, 1, 1024, 16)
    big[:, :, :16] = k
    _close(strided.decode(q, big, big, 4, stride=2**22), strided(q, k[:, :, :4], k[:, :, :4], stride=2**22), 1e-6)
