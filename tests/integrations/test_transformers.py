"""attnc as a transformers attention implementation (issue 18 item 4): small randomly initialised
models, built from configs alone, give the logits and gradients of transformers' own "eager"
attention (the reference that supports soft-capping) in fp32 on the CPU — with and without
left padding, and while generating with a KV cache."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnc  # noqa: E402
import attnc.integrations.transformers as hf  # noqa: E402

COMMON = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, attention_dropout=0.0,
              initializer_range=0.3)  # weights large enough that attention shapes the logits
N = 10


def _configs():
    return {
        "llama (GQA)": transformers.LlamaConfig(**COMMON),
        "mistral (sliding window)": transformers.MistralConfig(**COMMON, sliding_window=4),
        "gemma2 (soft-capping, alternating windows)": transformers.Gemma2Config(
            **COMMON, sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
            query_pre_attn_scalar=16),
    }


def _pair(config, implementation="attnc"):
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager",
                                                        dtype=torch.float32)
    mine = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=implementation,
                                                         dtype=torch.float32)
    mine.load_state_dict(ref.state_dict())
    assert ref.config._attn_implementation == "eager" and mine.config._attn_implementation == implementation
    return ref, mine


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, COMMON["vocab_size"], (2, N), generator=g)
    padding = torch.ones(2, N, dtype=torch.long)
    padding[1, :3] = 0  # left padding, as for batched generation
    return ids, padding


@pytest.mark.parametrize("name", list(_configs()))
def test_logits_and_gradients_match_eager(name):
    ref, mine = _pair(_configs()[name])
    ids, padding = _inputs()
    weights = torch.randn(2, N, COMMON["vocab_size"], generator=torch.Generator().manual_seed(2))
    for attention_mask in (None, padding):
        kept = torch.ones(2, N, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        outs, grads = [], []
        for model in (ref, mine):
            model.zero_grad()
            logits = model(input_ids=ids, attention_mask=attention_mask).logits
            # the rows of padding tokens attend to nothing: eager averages there, attnc gives 0
            (logits * weights)[kept].sum().backward()
            outs.append(logits.detach()[kept])
            grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        scale = outs[0].abs().max()
        assert (outs[0] - outs[1]).abs().max() <= 2e-5 * scale, f"{name}: logits differ"
        assert grads[0].keys() == grads[1].keys()
        for k, g in grads[0].items():
            assert (g - grads[1][k]).abs().max() <= 1e-4 * max(g.abs().max(), 1e-6), f"{name}: d{k} differs"


def test_the_masks_matter_here():
    """The comparisons above could not pass with the padding or the sliding window ignored."""
    config = _configs()["mistral (sliding window)"]
    ids, padding = _inputs()
    ref, _ = _pair(config)
    wide = copy.deepcopy(config)
    wide.sliding_window = None
    _, unwindowed = _pair(wide)
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=padding).logits
        b = ref(input_ids=ids).logits
        c = unwindowed(input_ids=ids, attention_mask=padding).logits
    kept = padding.bool()
    assert (a[1][kept[1]] - b[1][kept[1]]).abs().max() > 1e-2  # padding changes the padded row
    assert (a[kept] - c[kept]).abs().max() > 1e-2  # the window changes the logits


@pytest.mark.parametrize("name, cache", [("gemma2 (soft-capping, alternating windows)", "dynamic"),
                                         ("gemma2 (soft-capping, alternating windows)", "static"),
                                         ("llama (GQA)", "static")])
def test_generation_with_a_kv_cache_matches_eager(name, cache):
    """A static cache's position counter is a tensor the cache advances in place before the layer
    attends; generate() then also makes the masks ahead and passes them back to the model."""
    ref, mine = _pair(_configs()[name])
    ids, padding = _inputs()
    runs = [model.generate(input_ids=ids, attention_mask=padding, max_new_tokens=4, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                           cache_implementation=cache) for model in (ref, mine)]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for step_ref, step_mine in zip(runs[0].logits, runs[1].logits, strict=True):
        assert (step_ref - step_mine).abs().max() <= 2e-5 * step_ref.abs().max()


def test_a_named_variant_with_another_norm():
    """register(name, norm=...) swaps the normalization and keeps the model's masks; a bad norm
    fails at registration."""
    name = hf.register("attnc_off_by_one", norm="softmax_off_by_one")
    _, mine = _pair(_configs()["llama (GQA)"], implementation=name)
    ids, padding = _inputs()
    with torch.no_grad():
        got = mine(input_ids=ids, attention_mask=padding).logits
    # the same model with each layer's attention computed by attnc's float64 reference, on the
    # mask function transformers composed, evaluated densely on index tensors
    dense_variant = attnc.compile("attention m(keep: tensor[B, 1, N_Q, N_KV] bool):\n"
                                  "    mask = keep[b, 0, q_idx, kv_idx]\n    norm = softmax_off_by_one\n")
    seen = []

    def by_hand(module, q, k, v, attention_mask, scaling=None, **kwargs):
        B, _, Nq, _ = q.shape
        Nkv = k.shape[2]
        idx = (torch.arange(B).view(-1, 1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long),
               torch.arange(Nq).view(1, 1, -1, 1), torch.arange(Nkv).view(1, 1, 1, -1))
        keep = attention_mask.mask_function(*idx).expand(B, 1, Nq, Nkv)
        seen.append(keep)
        out = dense_variant.reference(q.double(), k.double(), v.double(), scale=scaling, keep=keep)
        return out.float().transpose(1, 2).contiguous(), None

    transformers.AttentionInterface.register("by_hand_off_by_one", by_hand)
    transformers.masking_utils.AttentionMaskInterface.register("by_hand_off_by_one", hf.attnc_mask)
    mine.set_attn_implementation("by_hand_off_by_one")
    with torch.no_grad():
        want = mine(input_ids=ids, attention_mask=padding).logits
    kept = padding.bool()
    assert seen and (got[kept] - want[kept]).abs().max() <= 2e-5 * want[kept].abs().max()
    with pytest.raises(attnc.SpecError):
        hf.register("attnc_bad", norm="no_such_norm")


def test_what_attnc_does_not_offer_is_refused():
    _, mine = _pair(_configs()["llama (GQA)"])
    ids, _ = _inputs()
    with pytest.raises(ValueError, match="does not return attention weights"):
        mine(input_ids=ids, output_attentions=True)
    dropout = copy.deepcopy(_configs()["llama (GQA)"])
    dropout.attention_dropout = 0.1
    _, training = _pair(dropout)
    training.train()
    with pytest.raises(ValueError, match="no attention dropout"):
        training(input_ids=ids)
    dense = torch.ones(2, 1, N, N, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="never reads an N×N mask"):
        mine(input_ids=ids, attention_mask=dense)
    # arguments that change the attention (MiniMax's selected blocks, T5's bias, sinks) are never ignored
    forward = hf.attention_function()
    q = torch.randn(1, 2, 4, 8)
    for name in hf._REFUSED:
        with pytest.raises(ValueError, match=f"does not take `{name}`"):
            forward(torch.nn.Module(), q, q, q, None, **{name: torch.zeros(1)})
