"""attnc as a Hugging Face transformers attention implementation.

    import attnc.integrations.transformers      # registers attn_implementation="attnc"
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="attnc")

transformers builds each layer's mask from a mask function — FlexAttention's ``mask_mod(b, h,
q_idx, kv_idx)`` form: causal, sliding window, chunked, packed sequences, the padding of a 2-D
``attention_mask``, position offsets from the cache — and asks the implementation's *mask
interface* to turn it into whatever the attention function reads. attnc's mask interface keeps
the function: it is traced (``attnc.jit``) into a spec, so the padding is a ``[B, N_KV]`` bool
tensor parameter and no N×N mask is ever made, and the kernels skip the key tiles the mask rules
out. The attention function adds the model's logit soft-capping (Gemma 2) as a score and runs
attnc's kernels with the layer's scaling and grouped-query heads.

``register(name, norm=...)`` registers another name with another normalization (a library norm
name, or spec text defining one), e.g. ``register("attnc_off_by_one", norm="softmax_off_by_one")``.

Not offered (each refused with an error saying so): attention dropout in training, returning
attention weights, and a dense 4-D mask passed in by the caller.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import torch

from ..runtime.jit import DEFAULT_NORM, build

NAME = "attnc"
_CACHE_SIZE = 32  # attentions per (mask structure, soft-cap, norm); tensors are passed per call
_lock = threading.Lock()


class AttncMask:
    """What attnc's mask interface hands the attention function: the mask function of one mask
    (one per forward and layer type), and the attentions traced from it per soft-cap and norm."""

    ndim = 4  # transformers passes a prepared 4-D mask through (generate() with a static cache makes it ahead)

    def __init__(self, mask_function):
        self.mask_function = mask_function
        self._built: OrderedDict = OrderedDict()

    def attention(self, softcap: float | None, norm):
        key = (softcap, norm if isinstance(norm, str) else id(norm))
        with _lock:
            attn = self._built.get(key)
        if attn is None:
            score_mod = _softcap_mod(softcap) if softcap is not None or self.mask_function is not None else _same_score
            attn = build(score_mod, self.mask_function, norm, name="hf_attention")
            with _lock:
                self._built[key] = attn
                while len(self._built) > _CACHE_SIZE:
                    self._built.popitem(last=False)
        return attn


def _same_score(score, b, h, q_idx, kv_idx):
    return score


def _softcap_mod(softcap: float | None):
    if softcap is None:
        return None
    cap = float(softcap)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"attn_logit_softcapping must be a positive number, got {softcap!r}")

    def softcap_mod(score, b, h, q_idx, kv_idx):  # Gemma 2: cap · tanh(scaled score / cap)
        return cap * torch.tanh(score / cap)

    return softcap_mod


def attnc_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0, mask_function=None,
               attention_mask: torch.Tensor | None = None, **kwargs) -> AttncMask:
    """transformers' mask interface: the mask function with the padding and position offsets,
    as ``flex_attention_mask`` composes them, kept as a function."""
    from transformers import masking_utils as mu

    if isinstance(attention_mask, AttncMask):  # made ahead of time (generate with a static cache)
        return attention_mask
    if mask_function is None:
        mask_function = mu.causal_mask_function
    if attention_mask is not None and not bool(attention_mask.all()):
        padding = mu.prepare_padding_mask(attention_mask.to(torch.bool), kv_length, kv_offset)
        mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding))
    if not (isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == kv_offset == 0):
        # a static cache's offset is its live position counter, advanced in place by the cache
        # update before the layer attends: the mask keeps the value it had when it was made
        q_offset, kv_offset = (x.clone() if isinstance(x, torch.Tensor) else x for x in (q_offset, kv_offset))
        mask_function = mu.add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
    return AttncMask(mask_function)


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


# arguments some models pass that change the attention itself: refused, never ignored
_REFUSED = ("position_bias", "s_aux", "sinks", "block_indices", "indices", "head_mask")


def attention_function(norm=DEFAULT_NORM):
    """An ``AttentionInterface`` function running attnc with normalization ``norm``."""

    def attnc_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask, dropout: float = 0.0, scaling: float | None = None,
                                softcap: float | None = None, is_causal: bool | None = None, **kwargs):
        if dropout:
            raise ValueError(f"attn_implementation='attnc' has no attention dropout (this layer asks for {dropout}); "
                             f"set the config's attention_dropout to 0.0, or train with another implementation")
        if kwargs.get("output_attentions"):
            raise ValueError("attn_implementation='attnc' does not return attention weights (output_attentions=True); "
                             "use attn_implementation='eager' for them")
        for name in _REFUSED:
            if kwargs.get(name) is not None:
                raise ValueError(f"attn_implementation='attnc' does not take `{name}` (this model's attention adds "
                                 f"it); write the mechanism as an attnc spec instead")
        if isinstance(attention_mask, AttncMask):
            mask = attention_mask
        elif attention_mask is None:  # no mask made: causal with q_idx, kv_idx from 0 (sdpa's is_causal) or none
            causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
            mask = _SHARED[bool(causal and query.shape[2] > 1)]
        else:
            raise ValueError(f"attn_implementation='attnc' got a dense attention mask of shape "
                             f"{tuple(attention_mask.shape)}; attnc never reads an N×N mask. Pass the 2-D padding "
                             f"mask (attention_mask=[batch, keys]) to the model and let it build the mask")
        attn = mask.attention(softcap, norm)
        out = attn(query, key, value, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    return attnc_attention_forward


_SHARED = {True: AttncMask(_causal), False: AttncMask(None)}  # when the model made no mask


def register(name: str = NAME, *, norm=DEFAULT_NORM) -> str:
    """Register attnc under ``attn_implementation=name`` (attention and mask interfaces)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if not isinstance(name, str) or not name:
        raise TypeError(f"`name` must be a non-empty string, got {name!r}")
    if norm is not DEFAULT_NORM:
        build(None, _causal, norm)  # a bad norm fails here, at registration, not inside a model's forward
    AttentionInterface.register(name, attention_function(norm))
    AttentionMaskInterface.register(name, attnc_mask)
    return name


register()
