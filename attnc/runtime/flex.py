"""``attnc.flex_attention``: FlexAttention's call, so migrating is an import change.

    from attnc import flex_attention            # was: from torch.nn.attention.flex_attention import ...
    out = flex_attention(q, k, v, score_mod=rel_bias, block_mask=create_block_mask(causal, B, H, N, N))

The functions are traced once (``runtime/jit.py``) and the attention is kept, per (score_mod,
mask_mod) pair, in a small least-recently-used table, so calling again with the same functions
reuses the traced attention and its compiled kernels — as long as the globals and closure values
they read are the same objects (a rebound global traces again; a tensor updated in place is read
at every call anyway). A tensor computed inside a function is fixed when it is traced. A ``BlockMask`` is read for its
``mask_mod`` only: attnc derives the block sparsity from the mask itself, never from the block
mask's O(N²/block²) tensors. ``kernel_options`` is accepted and ignored (attnc picks its own
tiles).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import torch

from ..dsl.errors import SpecError
from .jit import JitAttention, build

CACHE_SIZE = 64  # traced attentions kept, by (score_mod, mask_mod) identity
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def _noop_mask():
    from torch.nn.attention.flex_attention import noop_mask

    return noop_mask


def _identity_score(score, b, h, q_idx, kv_idx):
    return score


def _mask_of(block_mask, Nq: int, Nkv: int):
    """The mask_mod of a ``BlockMask`` (None: keeps every pair), checked against the call's lengths."""
    if block_mask is None:
        return None
    mask_mod = getattr(block_mask, "mask_mod", None)
    lengths = getattr(block_mask, "seq_lengths", None)
    if mask_mod is None or lengths is None:
        raise TypeError(f"`block_mask` must be a torch BlockMask (from create_block_mask), got "
                        f"{type(block_mask).__name__}")
    if tuple(lengths) != (Nq, Nkv):
        raise ValueError(f"`block_mask` was made for (Q_LEN, KV_LEN) = {tuple(lengths)}, but the query and key have "
                         f"{Nq} and {Nkv} tokens; create it for these lengths (or `block_mask._adjust(...)`)")
    if mask_mod is _noop_mask():
        # from_kv_blocks without a mask_mod: then the block lists alone are the mask, which attnc does not read
        full = block_mask.full_kv_num_blocks
        partial = block_mask.kv_num_blocks
        blocks = -(-Nkv // block_mask.BLOCK_SIZE[1])
        listed = partial if full is None else partial + full
        if not bool((listed == blocks).all()):
            raise SpecError("`block_mask` has no mask_mod (BlockMask.from_kv_blocks without one), so its block lists "
                            "alone say which keys each query sees, and attnc reads masks, not block lists; pass the "
                            "mask_mod to from_kv_blocks, or build the block mask with create_block_mask(mask_mod, ...)")
        return None
    return mask_mod


def _environment(fn, seen=None) -> tuple:
    """What a function reads besides its arguments, as objects: its closure cells, the globals its
    code names, a partial's bound arguments — and theirs, for the functions among them (and_masks
    holds the mask_mods it combines). Equal by identity to a later call's: the trace still holds."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return ()
    seen.add(id(fn))
    out: list = []
    while isinstance(fn, functools.partial):
        out += [*fn.args, *fn.keywords.values()]
        fn = fn.func
    code = getattr(fn, "__code__", None)
    if code is not None:
        out += [c.cell_contents for c in (fn.__closure__ or ()) if _filled(c)]
        names = set(code.co_names) | {n for const in code.co_consts if hasattr(const, "co_names") for n in const.co_names}
        out += [fn.__globals__[n] for n in sorted(names) if n in fn.__globals__]
    elif callable(fn) and hasattr(fn, "__dict__"):
        out += list(vars(fn).values())
    nested = [x for x in out if callable(x) and not isinstance(x, type) and not isinstance(x, torch.Tensor)
              and getattr(x, "__module__", None) not in ("torch", "math", "builtins")]
    return tuple(out) + tuple(y for x in nested for y in _environment(x, seen))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def traced(score_mod, mask_mod) -> JitAttention:
    """The attention for this (score_mod, mask_mod) pair: traced on first use, then kept while what
    the functions read (globals, closures; ``_environment``) is the same objects. A rebound global
    (`SOFTCAP = 0.5`, `doc = new_tensor`) traces again; a tensor changed in place does not need to."""
    key = (score_mod, mask_mod)
    env = _environment(score_mod) + _environment(mask_mod)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and _same(hit[0], env):
            _cache.move_to_end(key)
            return hit[1]
    attn = build(score_mod if score_mod is not None else (None if mask_mod is not None else _identity_score),
                 mask_mod, name="flex_attention")
    with _cache_lock:
        _cache[key] = (env, attn)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return attn


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, score_mod=None, block_mask=None,
                   scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: dict | None = None, *, return_aux=None):
    """``torch.nn.attention.flex_attention.flex_attention``'s signature and results, on attnc's
    kernels: ``[B, H, N, D]`` tensors, softmax attention with ``score_mod`` and the mask of
    ``block_mask``; ``(out, lse)`` with ``return_lse``, ``(out, AuxOutput(lse=...))`` with
    ``return_aux=AuxRequest(lse=True)`` (``max_scores`` is not offered). Gradients flow to query,
    key, value and to tensors the functions capture that require them."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"`{name}` must be a 4-d tensor [B, H, N, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads and key {key.shape[1]}: pass enable_gqa=True for "
                         f"grouped-query attention (as flex_attention requires)")
    if kernel_options is not None and not isinstance(kernel_options, dict):
        raise TypeError(f"`kernel_options` must be a dict or None, got {type(kernel_options).__name__}")
    want_lse = bool(return_lse)
    if return_aux is not None:
        if return_lse:
            raise ValueError("pass return_lse or return_aux, not both (as flex_attention says)")
        if getattr(return_aux, "max_scores", False):
            raise ValueError("return_aux=AuxRequest(max_scores=True): attnc does not return the row maxima; "
                             "ask for lse only")
        want_lse = bool(getattr(return_aux, "lse", False))
    mask_mod = _mask_of(block_mask, query.shape[2], key.shape[2])
    attn = traced(score_mod, mask_mod)
    got = attn(query, key, value, scale=scale, return_lse=want_lse)
    if return_aux is not None:
        from torch.nn.attention.flex_attention import AuxOutput

        out, lse = got if want_lse else (got, None)
        return out, AuxOutput(lse=lse)
    return got
