"""Pass analysis: pass counts and rescale factors are derived, not looked up by name.

Besides the expected plans, a tiled simulator below executes each plan the way a kernel will —
keys in tiles, running reductions rescaled by the derived factors, one sweep per pass — and
must reproduce the materialized float64 reference. So a wrong proof cannot pass.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnc
from attnc.ir import nodes as n
from attnc.ir.passes import plan_passes, plan_text
from attnc.runtime.reference import _Eval
from attnc.runtime.validate import bind_params


def plan_of(text, name=None):
    c = attnc.spec_from_text(text).cascade(name)
    return c, plan_passes(c)


def _factor_value(expr, **vals):
    """Evaluate a rescale factor with Running(x, when) bound from ``vals['x_when']``."""
    def ev(e):
        if isinstance(e, n.Running):
            return torch.tensor(vals[f"{e.stage}_{e.when}"], dtype=torch.float64)
        if isinstance(e, n.Ref):
            return torch.tensor(vals[e.stage], dtype=torch.float64)
        if isinstance(e, n.Const):
            return torch.tensor(float(e.value), dtype=torch.float64)
        if isinstance(e, n.Unary):
            return -ev(e.operand)
        if isinstance(e, n.Binary):
            return _Eval.binary(e.op, ev(e.left), ev(e.right))
        if isinstance(e, n.Call):
            return _Eval.call(e.fn, [ev(a) for a in e.args])
        raise AssertionError(e)
    return float(ev(expr))


def test_softmax_is_one_pass_with_exp_rescale():
    c = attnc.library_cascade("softmax")
    plan = plan_passes(c)
    assert plan.num_passes == 1 and not plan.boundaries
    m = plan.reduction("m")
    assert m.rescale is None and m.online_over == ()
    for r in plan.reductions:
        if r.stage != "m":
            assert r.online_over == ("m",) and r.rescale_kind == "scale"
            for old, new in [(0.0, 1.5), (-3.0, 2.0), (4.0, 4.0)]:
                assert _factor_value(r.rescale, m_old=old, m_new=new) == pytest.approx(math.exp(old - new))
    assert "exp(m_old - m_new)" in plan_text(c, plan)


def test_renamed_softmax_gets_the_same_plan():
    text = (
        "norm mine:\n"
        "    top[i] = max(s[i, j] for j)\n"
        "    w[i, j] = exp(s[i, j] - top[i])\n"
        "    denom[i] = sum(w[i, j] for j)\n"
        "    out[i] = sum(w[i, j] * v[j] for j) / denom[i]\n"
    )
    c, plan = plan_of(text)
    assert plan.num_passes == 1
    assert plan.reduction("denom").online_over == ("top",)
    assert _factor_value(plan.reduction("denom").rescale, top_old=1.0, top_new=3.0) == pytest.approx(math.exp(-2.0))


@pytest.mark.parametrize("name", ["softmax_sink", "softmax_off_by_one"])
def test_sink_and_off_by_one_are_one_pass_with_rescale(name):
    plan = plan_passes(attnc.library_cascade(name))
    assert plan.num_passes == 1
    assert any(r.rescale_kind == "scale" for r in plan.reductions)


@pytest.mark.parametrize("name", ["sigmoid", "relu", "none", "sigmoid_attention"])
def test_pointwise_norms_are_one_pass_without_rescale(name):
    plan = plan_passes(attnc.library_cascade(name))
    assert plan.num_passes == 1
    assert all(r.rescale is None and r.online_over == () for r in plan.reductions)


def test_clipped_softmax_needs_two_passes_and_says_why():
    c = attnc.library_cascade("clipped_softmax")
    plan = plan_passes(c)
    assert plan.num_passes == 2
    (b,) = plan.boundaries
    assert b.before_pass == 2 and b.stage == "out" and set(b.needs) == {"m", "z"}
    assert "depends on s" in b.reason
    assert plan.reduction("z").pass_index == 1 and plan.reduction("out").pass_index == 2


def test_non_separable_dependence_forces_a_pass():
    # a variance around the row max: (s - m)^2 does not rescale by a j-free factor
    _, plan = plan_of("norm var:\n    m[i] = max(s[i, j] for j)\n    out[i] = sum((s[i, j] - m[i]) ** 2.0 * v[j] for j)\n")
    assert plan.num_passes == 2


def test_max_of_shifted_values_runs_online_with_a_shift():
    _, plan = plan_of(
        "norm g:\n    m[i] = max(s[i, j] for j)\n    m2[i] = max(s[i, j] - m[i] for j)\n"
        "    out[i] = sum(exp(s[i, j] - m[i] - m2[i]) * v[j] for j)\n"
    )
    r = plan.reduction("m2")
    assert r.pass_index == 1 and r.rescale_kind == "shift"
    assert _factor_value(r.rescale, m_old=1.0, m_new=3.0) == pytest.approx(-2.0)


def test_chained_full_reductions_count_passes():
    # each stage needs the previous one complete: three sweeps over the keys
    _, plan = plan_of(
        "norm three:\n"
        "    a[i] = sum(s[i, j] for j)\n"
        "    c[i] = sum(sigmoid(s[i, j] - a[i]) for j)\n"
        "    out[i] = sum(tanh(s[i, j] * c[i]) * v[j] for j)\n"
    )
    assert plan.num_passes == 3
    assert [bd.stage for bd in plan.boundaries] == ["c", "out"]


# ---- the tiled simulator


def simulate(c, q, k, v, tile, **params):
    """Run ``c`` the way its pass plan says a kernel would; returns out (rows with a kept key)."""
    plan = plan_passes(c)
    B, H, Nq, D = q.shape
    Nkv, Dv = k.shape[2], v.shape[3]
    sizes = {"n_q": Nq, "n_kv": Nkv, "head_dim": D, "n_heads": H, "n_kv_heads": H, "scale": 1 / math.sqrt(D)}
    bound = bind_params(c, params, sizes)  # scalar parameters only in these specs
    values = {p.name: torch.tensor(bound[p.name], dtype=torch.float64 if p.kind == "float" else torch.int64)
              for p in c.params}
    final: dict[str, torch.Tensor] = {}
    stages = c.stages
    for k_pass in range(1, plan.num_passes + 1):
        in_pass = {r.stage: r for r in plan.in_pass(k_pass)}
        state = {}
        for name, r in in_pass.items():
            init = {"sum": 0.0, "max": -math.inf, "min": math.inf}
            state[name] = torch.zeros(B, H, Nq, Dv, dtype=torch.float64) if r.op == "contract" else torch.full((B, H, Nq, 1), init[r.op], dtype=torch.float64)
        for start in range(0, Nkv, tile):
            j = torch.arange(start, min(start + tile, Nkv))
            index = {"b": torch.arange(B).view(B, 1, 1, 1), "h": torch.arange(H).view(1, H, 1, 1),
                     "i": torch.arange(Nq).view(1, 1, Nq, 1), "j": j.view(1, 1, 1, -1)}
            ev = _Eval(c, sizes, values, index)
            ev.pair_shape = (B, H, Nq, len(j))
            ev.v = v[:, :, j].double()
            ev.values.update(final)
            before = dict(state)
            for stg in stages:
                if stg.name in final:
                    continue
                if isinstance(stg.expr, n.Dot):
                    ev.values["qk"] = q.double() @ k[:, :, j].double().transpose(-1, -2)
                    continue
                if stg.name in in_pass:
                    r = in_pass[stg.name]
                    tile_val = ev.expr(stg.expr)
                    old = before[stg.name]
                    if r.rescale is not None:
                        fac = _running_eval(ev, r.rescale, before, state)
                        if r.rescale_kind == "scale":
                            old = torch.where(old == 0, old, old * fac)
                        else:
                            old = torch.where(torch.isinf(old), old, old + fac)
                    if r.op in ("sum", "contract"):
                        state[stg.name] = old + tile_val
                    elif r.op == "max":
                        state[stg.name] = torch.maximum(old, tile_val)
                    else:
                        state[stg.name] = torch.minimum(old, tile_val)
                    ev.values[stg.name] = state[stg.name]
                    continue
                if stg.is_reduction:  # a later pass
                    continue
                if all(x in ev.values for x in n.refs(stg.expr)):
                    value = ev.expr(stg.expr)
                    if stg.name == "keep":
                        value = value.expand(ev.pair_shape)
                        ev.keep = value
                    ev.values[stg.name] = value
        final.update(state)
    ev = _Eval(c, sizes, values, {"b": None, "h": None, "i": torch.arange(Nq).view(1, 1, Nq, 1), "j": None})
    ev.values.update(final)
    for stg in stages:
        if stg.ranks == n.ROW and not stg.is_reduction and stg.name not in final:
            ev.values[stg.name] = ev.expr(stg.expr)
    return ev.values["out"].expand(B, H, Nq, Dv)


def _running_eval(ev, expr, before, after):
    def sub(e):
        if isinstance(e, n.Running):
            return n.Ref(f"__{e.when}_{e.stage}", n.FLOAT)
        return e
    rewritten = n.transform(expr, sub)
    for name in before:
        ev.values[f"__old_{name}"] = before[name]
        ev.values[f"__new_{name}"] = after[name]
    return ev.expr(rewritten)


NORMS = ["softmax", "softmax_off_by_one", "sigmoid", "relu", "none", "clipped_softmax"]
SPECS = {name: f"attention t:\n    mask = kv_idx <= q_idx + 2\n    norm = {name}\n" for name in NORMS}
SPECS["diff"] = open(__file__.replace("tests/ir/test_passes.py", "examples/differential.attn")).read()
SPECS["softpick"] = open(__file__.replace("tests/ir/test_passes.py", "examples/softpick.attn")).read()
EXAMPLE_ATTENTION = {"diff": "causal_diff", "softpick": "causal_softpick"}


@settings(max_examples=40)
@given(name=st.sampled_from(sorted(SPECS)), nq=st.integers(1, 9), nkv=st.integers(3, 17), tile=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_tiled_execution_of_the_plan_matches_the_reference(name, nq, nkv, tile, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, nq, 8, generator=g, dtype=torch.float64) * 2
    k = torch.randn(1, 2, nkv, 8, generator=g, dtype=torch.float64) * 2
    v = torch.randn(1, 2, nkv, 4, generator=g, dtype=torch.float64)
    spec = attnc.spec_from_text(SPECS[name], base_dir=None)
    c = spec.cascade(EXAMPLE_ATTENTION.get(name, "t"))
    ref = attnc.reference(c, q, k, v)
    got = simulate(c, q, k, v, tile)
    # rows with at least one kept key: mask j <= i + 2, or bottom-right causal in the examples
    offset = nkv - nq if name in EXAMPLE_ATTENTION else 2
    kept_rows = torch.arange(nq) + offset >= 0
    assert torch.allclose(got[:, :, kept_rows], ref[:, :, kept_rows], rtol=1e-9, atol=1e-9)


def test_simulator_detects_a_wrong_rescale():
    """Sanity check of the simulator itself: dropping the rescale breaks softmax."""
    c = attnc.library_cascade("softmax")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 6, 8, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    ref = attnc.reference(c, q, k, v)
    assert torch.allclose(simulate(c, q, k, v, 2), ref, atol=1e-9)
    import attnc.ir.passes as passes

    real = passes._plan_cached(c)
    broken = passes.PassPlan(real.num_passes, tuple(
        passes.Reduction(r.stage, r.op, r.pass_index, r.online_over, None, None) for r in real.reductions), real.boundaries)
    passes._plan_cached.cache_clear()
    orig = passes.plan_passes
    try:
        passes.plan_passes = lambda _c: broken
        globals()["plan_passes"] = passes.plan_passes
        assert not torch.allclose(simulate(c, q, k, v, 2), ref, atol=1e-6)
    finally:
        passes.plan_passes = orig
        globals()["plan_passes"] = orig


def test_a_j_free_ratio_that_may_be_zero_or_infinite_is_not_a_rescale():
    # m_new / m_old is free of j but m_old may be 0: scaling the running sum by it is unsound
    c, plan = plan_of("norm n2:\n    m[i] = max(s[i, j] for j)\n    out[i] = sum(s[i, j] * m[i] * v[j] for j)\n")
    assert plan.num_passes == 2
    assert "not provably positive and finite" in plan.boundaries[0].reason


def test_softpick_relu_of_rescaled_weights_is_one_pass():
    # relu(e^{s-m} - e^{-m}) = e^{-m}·relu(e^s - 1): the positive factor is pulled out of the max,
    # so the contraction rescales online like softmax does.
    spec = attnc.spec_from_text(SPECS["softpick"], base_dir=None)
    plan = attnc.plan_passes(spec.cascade("causal_softpick"))
    assert plan.num_passes == 1
    assert all(r.rescale is not None for r in plan.reductions if r.op != "max")
