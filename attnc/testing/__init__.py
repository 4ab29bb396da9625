"""Property-test your own attention variants (public API).

    import attnc, attnc.testing as at

    attn = attnc.compile("my_variant.attn")
    at.check(attn, examples=50)                          # kernel vs float64 reference; shrinks failures
    at.check(attn, examples=50, properties="all")        # every property that applies to the definition

    from hypothesis import given, strategies as st
    @given(at.problems(attn, params={"window": st.integers(1, 8)}))
    def test_my_variant(problem):
        at.assert_matches_reference(attn, problem)
        at.assert_masked_keys(attn, problem)

``problems(attn)`` draws everything a definition needs, related values together: B, Hq and Hkv
with Hq % Hkv == 0, Nq and Nkv (1 and the tile edges 15, 16, 17 included), D and Dv, the dtype,
and the definition's own parameters from their declared types — ints and floats in ranges you
can narrow per parameter, tensors of the declared shape and element type. Scalar parameters with
a default keep it unless named in ``params=`` or ``defaults=False`` is passed. ``layouts=`` draws
the memory layout of q, k, v too (``LAYOUTS``: contiguous, ``bshd`` as after a fused qkv
projection, ``padded`` rows whose strides force the kernels' general path), and a ``Problem``
with ``device="cuda"`` runs the compiled kernels (the reference runs there too).

Properties (``PROPERTIES``; ``check(attn, properties=(...))`` or one ``assert_*`` each):

* ``reference`` (``assert_matches_reference``): the kernel matches the float64 reference within
  the dtype's bound (relative Frobenius error 1e-5 fp32, 2e-3 fp16, 1e-2 bf16), has no NaN the
  reference lacks, and its lse is −inf on exactly the reference's empty rows.
* ``batch_split`` (``assert_batch_split``): running each batch element alone (tensor parameters
  sliced along their axes declared ``B``) and concatenating equals the whole batch.
* ``head_permutation`` (``assert_head_permutation``): permuting the query heads — kv groups as
  a whole, as GQA's h // (Hq // Hkv) requires, and any order within a group — together with the
  kv heads and the ``H`` axes of tensor parameters read with ``h`` (``sink[h]``) permutes the
  output the same way.
* ``masked_keys`` (``assert_masked_keys``): overwriting the keys a row drops (by the reference's
  mask) — k with NaN, ±inf and huge values, v with huge finite ones — leaves that row unchanged.
  v stays finite because a dropped key's weight is an exact 0 and 0 · NaN is NaN: NaN or inf in a
  dropped key's v does reach the output — the reference's on every row of that kv head, the
  kernel's on the rows whose key tiles load that key.
* ``empty_rows`` (``assert_empty_rows``): a row whose mask keeps no key has out exactly 0 and
  lse −inf, never NaN. A problem without an empty row is tried with more queries than keys,
  where the library's bottom-right aligned masks leave the first rows empty.
* ``gradients`` (``assert_gradients``): dq, dk, dv and float tensor-parameter gradients of the
  backward kernels match torch.autograd through the float64 reference (1e-4 fp32, 5e-3 fp16,
  2e-2 bf16); applies when the compiler derives a backward.
* ``decode`` (``assert_decode``): the last rows of a self-attention, computed by ``attn.decode``
  from a paged cache of the keys (pages of 16 shuffled, NaN past the sequence, two splits where
  the variant splits), equal those rows of the full call within the dtype's bound; every
  definition but the grid variants.

``batch_split``, ``head_permutation`` and ``masked_keys`` compare two kernel runs and demand
exactly equal values, NaN matching NaN (the kit runs kernels on CPU tensors, through Triton's
interpreter, where a (batch, head) is computed the same way whatever else is in the call);
``empty_rows`` demands exact 0 and −inf. The properties do not apply to every
definition: ``batch_split`` needs ``b`` read only as the index of axes declared ``B``,
``head_permutation`` needs ``h`` read only as the index of axes declared ``H`` (so not
``alibi``, whose slope is arithmetic in ``h``), ``masked_keys`` and ``empty_rows`` need a mask,
``gradients`` a derivable backward.
``why_not_applicable(attn, name)`` says why; ``assert_*`` and ``check`` raise ``NotApplicable``
(a ValueError) for a property named that does not apply, and ``properties="all"`` skips them.

A failure names the property and reports the definition, the problem, the worst element
(b, h, q_idx, f) with both values, which keys the mask keeps in that row (``keeps 13 of 20
keys: 0..12``), lse where the definition has one, and the measure (relative error against the
bound, or how many elements differ); hypothesis shrinks it to the smallest failing case first.
``keep_mask(attn, problem)`` gives the reference's mask itself.
"""

from .kit import LAYOUTS, Problem, assert_matches_reference, keep_mask, problems
from .properties import (
    PROPERTIES,
    NotApplicable,
    assert_batch_split,
    assert_decode,
    assert_empty_rows,
    assert_gradients,
    assert_head_permutation,
    assert_masked_keys,
    check,
    why_not_applicable,
)

__all__ = [
    "LAYOUTS", "PROPERTIES", "NotApplicable", "Problem", "assert_batch_split", "assert_decode", "assert_empty_rows", "assert_gradients",
    "assert_head_permutation",
    "assert_masked_keys", "assert_matches_reference", "check", "keep_mask", "problems", "why_not_applicable",
]
