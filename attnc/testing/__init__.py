"""Property-test your own attention variants (public API).

    import attnc, attnc.testing as at

    attn = attnc.compile("my_variant.attn")
    at.check(attn, examples=50)                          # kernel vs float64 reference; shrinks failures

    from hypothesis import given
    @given(at.problems(attn, params={"window": st.integers(1, 8)}))
    def test_my_variant(problem):
        at.assert_matches_reference(attn, problem)

``problems(attn)`` draws everything a definition needs, related values together: B, Hq and Hkv
with Hq % Hkv == 0, Nq and Nkv (1 and the tile edges 15, 16, 17 included), D and Dv, the dtype,
and the definition's own parameters from their declared types — ints and floats in ranges you
can narrow per parameter, tensors of the declared shape and element type. A failure reports the
definition, the shapes, the parameters, the worst element (b, h, q_idx, f, kernel and reference
values) and the relative error against the bound for the dtype; hypothesis shrinks it to the
smallest failing case first.
"""

from .kit import Problem, assert_matches_reference, check, problems

__all__ = ["Problem", "assert_matches_reference", "check", "problems"]
