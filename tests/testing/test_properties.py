"""attnc.testing's properties beyond the reference: they hold on correct library kernels, each one
fails on a kernel with the bug it exists to catch, and they refuse definitions they do not fit."""

import dataclasses

import pytest
import torch
from hypothesis import strategies as st

import attnc
import attnc.codegen.generate as generate_mod
import attnc.testing as at

F32 = (torch.float32,)
SMALL = {"dtypes": F32, "max_len": 20, "head_dims": (16,)}


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))


class Buggy(attnc.Attention):
    """The float64 reference posing as the kernel, with one injected bug: fast enough for
    hypothesis to shrink, and exactly right apart from the bug."""

    def __init__(self, name: str, bug):
        base = attnc.load(name) if "\n" not in name else attnc.compile(name)
        super().__init__(base.cascade, base.origin)
        self.bug = bug

    def __call__(self, q, k, v, *, scale=None, return_lse=False, **params):
        out, lse = self.bug(self, q, k, v, scale=scale, **params)
        out = out.to(q.dtype)
        lse = None if lse is None else lse.float()
        return (out, lse) if return_lse else out

    def correct(self, q, k, v, **kw):
        return self.reference(q, k, v, return_lse=True, **kw)


def problem(**kw):
    base = {"B": 1, "Hq": 1, "Hkv": 1, "Nq": 5, "Nkv": 7, "D": 16, "Dv": 16, "dtype": torch.float32, "seed": 3}
    return at.Problem(**{**base, **kw})


# ---------------------------------------------------------------------------- correct kernels pass


@pytest.mark.parametrize(("name", "options"), [
    ("causal", {}),
    ("sliding_window", {"params": {"window": st.integers(0, 12)}}),
    ("alibi", {}),
    ("softmax_sink", {"heads": ((4, 2),)}),  # sink[h] is permuted with the heads
    ("document", {"max_batch": 3}),  # doc[b, ...] is sliced with the batch
    ("chunked", {"params": {"chunk": st.integers(1, 8)}, "dtypes": (torch.float16,)}),
])
def test_every_applicable_property_holds_on_library_kernels(name, options):
    attn = attnc.load(name)
    at.check(attn, examples=4, seed=0, properties="all", **{**SMALL, **options})


def test_tensor_parameters_follow_the_split_and_the_permutation():
    # Per-batch documents and per-head sinks that differ: a property that forgot to slice or
    # permute them would compare different problems and fail.
    doc = attnc.load("document")
    p = problem(B=3, Hq=2, Hkv=1, Nq=6, Nkv=6, tensor_specs=(("doc", (3, 6), "int"),))
    assert len({tuple(x) for x in p.inputs()[3]["doc"].tolist()}) > 1
    at.assert_batch_split(doc, p)
    sink = attnc.load("softmax_sink")
    p = problem(B=1, Hq=4, Hkv=2, Nq=3, Nkv=4, tensor_specs=(("sink", (4,), "float"),))
    at.assert_head_permutation(sink, p)


# ---------------------------------------------------------------------------- each property can fail


def test_batch_split_catches_a_kernel_that_ignores_the_batch_stride_of_k():
    def bug(self, q, k, v, **kw):  # every batch element reads batch 0's keys
        return self.correct(q, k[:1].expand_as(k), v, **kw)

    with pytest.raises(AssertionError) as info:
        at.check(Buggy("causal", bug), examples=30, seed=0, properties=("batch_split",), **SMALL)
    report = str(info.value)
    assert "causal: property `batch_split` fails" in report
    assert "one at a time" in report and "whole batch" in report and "expected exactly equal" in report
    assert "B=2," in report and "Nq=1," in report and "Nkv=1," in report, report  # shrunk
    assert "worst element: b=1," in report  # batch 0 is right; batch 1 is not


def test_head_permutation_catches_a_wrong_gqa_mapping():
    def bug(self, q, k, v, **kw):  # query head h reads kv head h % Hkv instead of h // (Hq // Hkv)
        idx = torch.arange(q.shape[1]) % k.shape[1]
        out, lse = self.correct(q, k[:, idx], v[:, idx], **kw)
        return out, lse

    attn = Buggy("softmax_sink", bug)
    with pytest.raises(AssertionError) as info:
        at.check(attn, examples=30, seed=0, properties=["head_permutation"], **SMALL)
    report = str(info.value)
    assert "softmax_sink: property `head_permutation` fails" in report
    assert "Hq=4, Hkv=2," in report, report  # the smallest shape where h % Hkv != h // group
    assert "query heads permuted: new head h' is old head" in report
    assert "tensor parameters permuted along H: sink" in report


# The kernel applies a mask by setting q·k to −inf on dropped pairs; at −200 instead, a dropped
# key gets a weight of about 2^-72 (with the test's scale) instead of 0.
LEAK = ('qk = tl.where(keep, qk, float("-inf"))', 'qk = tl.where(keep, qk, -200.0)')


CAUSAL = "mask = kv_idx <= q_idx + (n_kv - n_q)"


def _broken_kernel(monkeypatch, name, old, new):
    """A causal variant whose kernel source has ``old`` replaced by ``new`` (``name`` must be new
    to this process: kernels are cached in memory by their cascade)."""
    real = generate_mod.generate

    def broken(c, spec, plan=None):
        src = real(c, spec, plan)
        text = src.text.replace(old, new)
        assert text != src.text, "the injection point moved; update this test"
        return dataclasses.replace(src, text=text)

    monkeypatch.setattr("attnc.runtime.compiler.generate", broken)
    return attnc.compile(f"attention {name}:\n    {CAUSAL}\n")


def test_masked_keys_catches_a_leak_the_reference_comparison_cannot_see(monkeypatch):
    attn = _broken_kernel(monkeypatch, "leaky", *LEAK)
    p = problem(Nq=4, Nkv=6)
    at.assert_matches_reference(attn, p)  # a 2^-72 weight on N(0, 1) values is far below any bound
    with pytest.raises(AssertionError) as info:
        at.check(attn, examples=20, seed=0, properties="masked_keys", max_batch=1, heads=((1, 1),),
                 **{**SMALL, "max_len": 17})
    report = str(info.value)
    assert "leaky: property `masked_keys` fails: keys the mask drops change the output" in report
    assert "overwritten keys (k: NaN, ±inf" in report and "compared rows: the" in report
    assert "Nq=2," in report and "Nkv=2," in report, report  # shrunk: query 0 drops key 1
    assert "worst element: b=0, h=0, q_idx=0," in report and "that row keeps 1 of 2 keys: 0\n" in report
    assert "b=0, kv head 0: 1\n" in report  # the overwritten key


def test_empty_rows_catches_nan_from_a_missing_empty_row_rule(monkeypatch):
    attn = _broken_kernel(monkeypatch, "no_empty_rule", "out = tl.where(has_key[:, None], s_out, 0.0)",
                          "out = s_out")  # 0 / 0 on a row with no key
    with pytest.raises(AssertionError) as info:
        at.check(attn, examples=20, seed=0, properties="empty_rows", max_batch=1, heads=((1, 1),),
                 **{**SMALL, "max_len": 17})
    report = str(info.value)
    assert "no_empty_rule: property `empty_rows` fails: a row with no kept key is not exactly 0" in report
    assert "kernel nan, required 0" in report
    assert "that row keeps none of the 1 keys (an empty row)" in report
    assert "Nq=2," in report and "Nkv=1," in report, report  # shrunk: the first query sits before key 0


def test_empty_rows_catches_a_finite_lse_from_a_constant_normalizer_term():
    # softmax_off_by_one's formula gives lse = log(1) = 0 on a row with no key; the rule says -inf.
    spec = f"attention t:\n    {CAUSAL}\n    norm = softmax_off_by_one\n"

    def bug(self, q, k, v, **kw):
        out, lse = self.correct(q, k, v, **kw)
        return out, torch.where(torch.isneginf(lse), 0.0, lse)

    with pytest.raises(AssertionError) as info:
        at.check(Buggy(spec, bug), examples=20, seed=0, properties="empty_rows", **SMALL)
    report = str(info.value)
    assert "property `empty_rows` fails: a row with no kept key has an lse other than -inf" in report
    assert "lse of that row: kernel 0, required -inf" in report


def test_the_reference_report_shows_the_keys_of_the_worst_row():
    def bug(self, q, k, v, **kw):  # every output 1.5 times too large
        out, lse = self.correct(q, k, v, **kw)
        return out * 1.5, lse

    with pytest.raises(AssertionError) as info:
        at.assert_matches_reference(Buggy("sliding_window", bug), problem(Nq=20, Nkv=20, scalars={"window": 13}))
    report = str(info.value)
    assert "property `reference` fails: the kernel disagrees with the reference" in report
    assert "relative error" in report and "lse of that row: kernel" in report
    row = int(report.split("q_idx=")[1].split(",")[0])
    first = max(0, row - 12)
    kept = f"{first}..{row}" if row > first else f"{row}"
    assert f"that row keeps {row - first + 1} of 20 keys: {kept}" in report, report


# ---------------------------------------------------------------------------- when properties apply


def test_head_permutation_refuses_a_definition_with_h_in_arithmetic():
    alibi = attnc.load("alibi")
    reason = at.why_not_applicable(alibi, "head_permutation")
    assert "reads `h`" in reason and "s[i, j] = " in reason and "n_heads" in reason
    with pytest.raises(at.NotApplicable, match="property `head_permutation` does not apply to alibi"):
        at.assert_head_permutation(alibi, problem(Hq=2))
    with pytest.raises(at.NotApplicable):
        at.check(alibi, examples=1, properties=("reference", "head_permutation"))
    # a tensor read with h at an axis declared H is fine; at an axis declared `_` it is not
    ok = attnc.compile("attention t(slope: tensor[H] float):\n    score = score + slope[h] * (kv_idx - q_idx)\n")
    assert at.why_not_applicable(ok, "head_permutation") is None
    bad = attnc.compile("attention t(slope: tensor[_] float):\n    score = score + slope[h]\n")
    assert "reads `h`" in at.why_not_applicable(bad, "head_permutation")
    mixed = attnc.compile("attention t(w: tensor[H] float):\n    score = score + w[h] + w[kv_idx]\n")
    assert "read both with `h` and with another index" in at.why_not_applicable(mixed, "head_permutation")


def test_batch_split_refuses_b_outside_axes_declared_b():
    lens = attnc.compile("attention t(lens: tensor[_] int):\n    mask = kv_idx < lens[b]\n")
    assert "reads `b`" in at.why_not_applicable(lens, "batch_split")
    first = attnc.compile("attention t(ids: tensor[B, N_KV] int):\n    mask = ids[0, kv_idx] == 1\n")
    assert "axis 0 of `ids` is declared B but read with an index other than `b`" in \
        at.why_not_applicable(first, "batch_split")
    assert at.why_not_applicable(attnc.load("document"), "batch_split") is None


def test_jit_variants_with_captured_tensors():
    # Captured tensors are bound by the callable itself (declared `_`): one indexed by positions
    # only leaves every property applicable; one indexed by h rules out head_permutation.
    doc_id = torch.tensor([0] * 9 + [1] * 11)

    @attnc.jit
    def same_doc(b, h, q_idx, kv_idx):
        return doc_id[q_idx] == doc_id[kv_idx]

    assert all(at.why_not_applicable(same_doc, name) is None for name in at.PROPERTIES)
    at.check(same_doc, examples=3, seed=0, properties="all", **SMALL)
    bias = torch.randn(4)

    @attnc.jit
    def head_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h]

    assert "reads `h`" in at.why_not_applicable(head_bias, "head_permutation")


def test_mask_properties_need_a_mask_and_all_runs_only_what_applies():
    full = attnc.load("full")
    for name in ("masked_keys", "empty_rows"):
        assert "no mask" in at.why_not_applicable(full, name)
    with pytest.raises(at.NotApplicable, match="masked_keys"):
        at.assert_masked_keys(full, problem())
    at.check(full, examples=1, seed=0, properties="all", **SMALL)  # reference, batch_split, head_permutation


def test_unknown_or_no_property_is_a_value_error_listing_the_valid_ones():
    attn = attnc.load("causal")
    with pytest.raises(ValueError, match=r"`properties`: unknown property 'batch'; choose from reference, "
                                         r"batch_split, head_permutation, masked_keys, empty_rows"):
        at.check(attn, examples=1, properties=("reference", "batch"))
    with pytest.raises(ValueError, match="`properties`: no property"):
        at.check(attn, examples=1, properties=())
    with pytest.raises(ValueError, match="unknown property 'nope'"):
        at.why_not_applicable(attn, "nope")


# ---------------------------------------------------------------------------- the mask the properties use


def test_keep_mask_is_the_reference_mask():
    p = problem(B=2, Nq=5, Nkv=9, Dv=4, scalars={"window": 3})  # Dv < Nkv: evaluated in chunks
    keep = at.keep_mask(attnc.load("sliding_window"), p)
    i, j = torch.arange(5)[:, None] + 4, torch.arange(9)[None, :]
    assert torch.equal(keep, ((0 <= i - j) & (i - j < 3)).expand(2, 1, 5, 9))
    p = problem(B=2, Nq=6, Nkv=6, tensor_specs=(("doc", (2, 6), "int"),))
    doc = p.inputs()[3]["doc"]
    assert torch.equal(at.keep_mask(attnc.load("document"), p)[:, 0], doc[:, :, None] == doc[:, None, :])
    assert at.keep_mask(attnc.load("softmax"), p) is None


def test_key_ranges_are_short():
    from attnc.testing.kit import key_ranges

    kept = torch.zeros(40, dtype=torch.bool)
    kept[0:13] = kept[15] = kept[20:23] = True
    assert key_ranges(kept) == "0..12, 15, 20..22"
    assert key_ranges(torch.arange(40) % 2 == 0, limit=3) == "0, 2, 4, … (17 more ranges)"
    assert key_ranges(torch.zeros(3, dtype=torch.bool)) == ""


# ---------------------------------------------------------------------------- gradients


def test_gradients_property_holds_and_catches_a_wrong_gradient(monkeypatch):
    attn = attnc.load("softmax_sink")
    at.check(attn, examples=2, seed=0, properties=["gradients"], **SMALL)  # kernels are right
    real = attnc.Attention.launch_backward

    def scaled_sink_grad(self, *args, **kwargs):  # a parameter gradient 1 % off
        dq, dk, dv, grads = real(self, *args, **kwargs)
        return dq, dk, dv, [None if g is None else g * 1.01 for g in grads]

    monkeypatch.setattr(attnc.Attention, "launch_backward", scaled_sink_grad)
    with pytest.raises(AssertionError, match=r"property `gradients` failed for softmax_sink: the kernel's dsink"):
        at.check(attn, examples=3, seed=0, properties=["gradients"], **SMALL)


def test_gradients_property_refuses_a_definition_without_backward():
    minmax = attnc.compile("norm minmax:\n    mx[i] = max(s[i, j] for j)\n    mn[i] = min(s[i, j] for j)\n"
                           "    out[i] = sum((s[i, j] - mn[i]) / (mx[i] - mn[i] + 1.0) * v[j] for j)\n")
    assert at.why_not_applicable(minmax, "gradients").startswith("it has no backward: the result depends on `mn`")
    with pytest.raises(at.NotApplicable):
        at.check(minmax, examples=1, properties=["gradients"], **SMALL)


def test_decode_catches_a_decode_that_loses_the_newest_key():
    """Property ``decode``: a decode that reads one key fewer than the cache holds (an
    off-by-one in the row lengths) shifts every query one position back: it fails, saying so."""

    class ShortCache(attnc.Attention):
        def decode(self, q, k_cache, v_cache, cache_seqlens, **kw):
            return super().decode(q, k_cache, v_cache, cache_seqlens - 1, **kw)

    base = attnc.load("causal")
    buggy = ShortCache(base.cascade, base.origin)
    p = problem(B=2, Hq=2, Hkv=1, Nq=9, Nkv=9)
    at.assert_decode(base, p)
    with pytest.raises(AssertionError, match="decode's rows disagree with the full call's"):
        at.assert_decode(buggy, p)
    assert "grid variant" in at.why_not_applicable(attnc.load("natten2d"), "decode")
