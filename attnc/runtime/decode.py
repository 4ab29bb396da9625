"""Decoding over a KV cache: ``attn.decode(q, k_cache, v_cache, cache_seqlens, ...)``.

A few new query tokens per sequence attend to a cache of earlier keys and values, contiguous
or paged. The call is the variant over absolute positions (``ir/offsets.py``): the new queries
are the last tokens of each row's sequence, so masks, scores and norms see exactly what one
full call over the whole sequence would, for every variant and every norm (multi-pass ones
included: the kernel makes every pass over the row's keys). The kernel reads each row's length
from ``cache_seqlens`` — no tile, page or slot past it is touched — and, for a paged cache, the
page of each key from the block table (``codegen/forward.py.jinja``, ``KV_LENS``/``PAGE_SIZE``).

Semantics follow FlashAttention's ``flash_attn_with_kvcache``: ``cache_seqlens[b]`` keys are in
the cache; with ``k``/``v`` given, the new tokens' keys and values are first written at positions
``cache_seqlens[b] ..`` (in place) and attended too. The queries sit at the last positions:
``q_offset = length - n_new``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

LAYOUTS = ("NHD", "HND")  # a page is [page_size, Hkv, D] (vLLM, FlashInfer's default) or [Hkv, page_size, D]


@dataclass(frozen=True)
class CacheView:
    """A KV cache as the forward kernel reads it: row b's ``lens[b]`` keys, from page
    ``pages[b, n // page_size]`` slot ``n % page_size`` when paged."""

    lens: torch.Tensor  # int32 [B]
    capacity: int  # keys a row can hold: the cache's length, or max_pages * page_size
    longest: int  # max(lens): the keys any row reaches
    pages: torch.Tensor | None = None  # int32 [B, max_pages]
    page_size: int = 0
    splits: int = 1  # split-KV: the keys of a row over this many programs (one-pass variants)


def _int_tensor(what: str, t, shape_words: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{what}` must be an integer tensor {shape_words}, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"`{what}` must be an integer tensor {shape_words}, got a {t.dtype} tensor")
    return t


def cache_views(q, k_cache, v_cache, block_table, kv_layout: str):
    """(k, v as the kernel reads them, their logical shape [B, Hkv, capacity, D(v)], the block
    table as int32 or None, the page size or 0), after checking the cache's shapes."""
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            want = ("[num_pages, page_size, Hkv, D]" if kv_layout == "NHD" else "[num_pages, Hkv, page_size, D]") \
                if block_table is not None else "[B, Hkv, capacity, D]"
            raise ValueError(f"`{name}` must have 4 dimensions {want}, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"`{name}` must match q's dtype and device ({q.dtype}, {q.device}), got {t.dtype}, "
                            f"{t.device}")
    if kv_layout not in LAYOUTS:
        raise ValueError(f"`kv_layout` must be 'NHD' (pages [num_pages, page_size, Hkv, D]) or 'HND' "
                         f"([num_pages, Hkv, page_size, D]), got {kv_layout!r}")
    B = q.shape[0]
    if block_table is None:
        if k_cache.shape[0] != B or v_cache.shape[0] != B:
            raise ValueError(f"a contiguous cache is [B, Hkv, capacity, D] with B = {B} (q's batch), got k_cache "
                             f"{tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}; a paged cache needs block_table=")
        if v_cache.shape[1:3] != k_cache.shape[1:3]:
            raise ValueError(f"`v_cache` must be [B, Hkv, capacity, Dv] like k_cache {tuple(k_cache.shape)}, got "
                             f"{tuple(v_cache.shape)}")
        return k_cache, v_cache, tuple(k_cache.shape), tuple(v_cache.shape), None, 0
    table = _int_tensor("block_table", block_table, f"[B, max_pages] = [{B}, max_pages]")
    if table.dim() != 2 or table.shape[0] != B:
        raise ValueError(f"`block_table` must be [B, max_pages] = [{B}, max_pages], got shape {tuple(table.shape)}")
    if table.device != q.device:
        raise ValueError(f"`block_table` must be on q's device {q.device}, got {table.device}")
    # the kernel's view of a page: [pages, Hkv, page_size, D]
    k, v = (t.permute(0, 2, 1, 3) if kv_layout == "NHD" else t for t in (k_cache, v_cache))
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"`v_cache` must hold the pages of k_cache {tuple(k_cache.shape)} (any head dim), got "
                         f"{tuple(v_cache.shape)}")
    pages, Hkv, page_size = k.shape[:3]
    if pages == 0 or page_size == 0:
        raise ValueError(f"the paged cache holds no page or empty pages: k_cache {tuple(k_cache.shape)}")
    capacity = table.shape[1] * page_size
    return (k, v, (B, Hkv, capacity, k.shape[3]), (B, Hkv, capacity, v.shape[3]),
            table.to(torch.int32).contiguous(), page_size)


def check_pages(table: torch.Tensor, total: torch.Tensor, page_size: int, pages: int) -> None:
    """The block table's entries a row uses (its first ⌈length / page_size⌉) are page numbers;
    the rest is never read (padding such as −1 is fine)."""
    used = torch.arange(table.shape[1], device=table.device)[None, :] < (-(-total // page_size))[:, None]
    bad = used & ((table < 0) | (table >= pages))
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"`block_table[{b}, {i}]` = {int(table[b, i])} is not a page number 0..{pages - 1}, and row {b} "
                         f"({int(total[b])} tokens) uses it")


def append(k_cache, v_cache, table, page_size: int, kv_layout: str, k_new, v_new, start: torch.Tensor) -> None:
    """Write the new tokens' keys and values ([B, Hkv, n_new, D]) at positions ``start[b] + t`` of
    each row, in place, into a contiguous cache or into the pages of a paged one."""
    B, _, n_new, _ = k_new.shape
    pos = start.long()[:, None] + torch.arange(n_new, device=start.device)  # [B, n_new]
    rows = torch.arange(B, device=start.device)[:, None].expand(B, n_new)
    with torch.no_grad():
        for cache, new in ((k_cache, k_new), (v_cache, v_new)):
            tokens = new.permute(0, 2, 1, 3)  # [B, n_new, Hkv, D]
            if table is None:  # [B, Hkv, capacity, D]
                cache.permute(0, 2, 1, 3)[rows, pos] = tokens
                continue
            page, slot = table.long()[rows, pos // page_size], pos % page_size
            if kv_layout == "NHD":
                cache[page, slot] = tokens
            else:
                cache.permute(0, 2, 1, 3)[page, slot] = tokens


def shape_only(like: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A tensor of ``shape`` that holds nothing (one element, broadcast): what the parameter
    binding and checks read of a cache is its logical shape, dtype and device."""
    return like.new_zeros(()).expand(shape)


def lengths(q, cache_seqlens, n_new: int, appending: bool, capacity: int, positions) -> torch.Tensor:
    """Each row's length after the call (int64 [B]), checked against the cache's capacity and the
    number of new queries."""
    B = q.shape[0]
    start = positions("cache_seqlens", cache_seqlens, B, q.device).long()
    total = start + n_new if appending else start
    if B and int(total.max()) > capacity:
        b = int(total.argmax())
        raise ValueError(f"row {b} needs {int(total[b])} cache slots{' after appending' if appending else ''}, but the "
                         f"cache holds {capacity} per row; grow the cache (or its block table)")
    if B and not appending and int(total.min()) < n_new:
        b = int(total.argmin())
        raise ValueError(f"cache_seqlens[{b}] = {int(total[b])} is fewer keys than the {n_new} new queries, which sit "
                         f"at the last positions of the cache; pass the new tokens' k= and v= to append them")
    return total


MAX_SPLITS = 64
MIN_SPLIT_KEYS = 256  # a split shorter than a few key tiles costs more in its merge than it saves


def split_problem(attn, dtype: torch.dtype, device) -> str | None:
    """Why ``attn``'s decode kernel cannot split a row's keys over programs, or None when it can
    (``codegen/generate.py: split_problem``; GQA packing does not change it)."""
    from ..ir.offsets import with_offsets
    from .compiler import _DTYPES, Specialization, kernel_for

    if attn.cascade.grid is not None:
        return "it is a grid variant"
    cascade = attn.cascade if any(p.name == "_seq_len" for p in attn.cascade.params) else with_offsets(attn.cascade)
    source = kernel_for(cascade, Specialization(_DTYPES[dtype], torch.device(device).type == "cpu")).source
    return source.split_problem


def choose_splits(attn, rows: torch.Tensor, heads: int, total: torch.Tensor, num_splits) -> int:
    """The number of splits for a decode call (``num_splits`` checked, or chosen): on a GPU,
    enough programs to fill the device twice over — the query tiles of every (row, kv head)
    times the splits — without splits shorter than ``MIN_SPLIT_KEYS``; 1 on the CPU and for a
    variant whose keys cannot be split (``codegen/generate.py: split_problem``)."""
    from .compiler import _DTYPES, Specialization, kernel_for

    source = kernel_for(attn.cascade, Specialization(_DTYPES[rows.dtype], rows.device.type == "cpu")).source
    if num_splits is not None:
        if isinstance(num_splits, bool) or not hasattr(num_splits, "__index__") or \
                not 1 <= operator.index(num_splits) <= MAX_SPLITS:
            raise ValueError(f"`num_splits` must be an int in 1..{MAX_SPLITS} (or None to choose), got {num_splits!r}")
        num_splits = operator.index(num_splits)
        if num_splits > 1 and source.split is None:
            raise ValueError(f"{attn.name} cannot split a row's keys over programs: {source.split_problem}; "
                             f"decode it with num_splits=1 (or None)")
        return num_splits
    longest = int(total.max()) if total.numel() else 0
    if source.split is None or rows.device.type != "cuda" or longest < 2 * MIN_SPLIT_KEYS:
        return 1
    programs = max(1, heads * -(-rows.shape[2] // 64))
    sms = torch.cuda.get_device_properties(rows.device).multi_processor_count
    return max(1, min(MAX_SPLITS, -(-2 * sms // programs), longest // MIN_SPLIT_KEYS))
