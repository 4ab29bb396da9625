"""The derived backward plans (attnc/ir/backward.py): structure, identities and refusals.

Numerical agreement with torch autograd through the reference is tested on the kernels
(tests/runtime/test_backward.py); these tests pin down what the derivation proves."""

import pytest

import attnc
from attnc.ir import nodes as n
from attnc.ir.backward import BackwardError, derive_backward
from attnc.ir.printer import expr_text


def plan_of(name_or_text, name=None):
    attn = attnc.compile(name_or_text, name) if "\n" in name_or_text else attnc.load(name_or_text)
    return attn.cascade, derive_backward(attn.cascade)


def text(c, plan, e):
    return expr_text(e, {**{st.name: st.ranks for st in c.stages}, **plan.ranks()})


def fns(e):
    return {x.fn for x in n.walk(e) if isinstance(x, n.Call)}


def all_pair_exprs(plan):
    return [plan.ds, plan.dqk, plan.dv_weight, *(e for _, e in plan.temps)]


def test_softmax_needs_no_backward_pass_and_no_gradient_through_m():
    c, plan = plan_of("softmax")
    assert plan.stats == ("m", "z") and plan.num_row_passes == 0 and not plan.jsums
    rows = {r.name: text(c, plan, r.expr) for r in plan.rows}
    assert rows["bwd.C._acc1"] == "1.0 / z[i]"
    assert rows["bwd.G.z"] == "(bwd.dl[i] - bwd.dout[i]) / z[i]"  # D = dO·O, dL from lse
    assert "∂out/∂m = 0: the result is invariant to m" in plan.identities
    assert not any("bwd.G.m" in r.name for r in plan.rows)
    assert plan.uses_dout and plan.uses_dl


def test_sigmoid_derivative_is_written_with_sigmoid_not_exp():
    c, plan = plan_of("sigmoid_attention")
    assert plan.stats == () and not plan.uses_dout  # no reduction to save, D not needed
    used = set().union(*(fns(e) for e in all_pair_exprs(plan)))
    assert "sigmoid" in used and "exp" not in used  # σ(1−σ) cannot overflow, e^x/(1+e^x)² can


def test_softcap_gradient_carries_the_tanh_derivative():
    c, plan = plan_of("softcap")
    assert "1.0 - tanh(" in text(c, plan, plan.dqk)


def test_clipped_softmax_needs_one_backward_pass():
    c, plan = plan_of("clipped_softmax")
    assert plan.num_row_passes == 1 and len(plan.jsums) == 1
    assert plan.jsums[0].what == "part of the adjoint of z"
    assert "∂out/∂m = 0: the result is invariant to m" in plan.identities


def test_tensor_parameter_gradients_per_pair_and_per_row():
    c, plan = plan_of("relative_bias")
    (g,) = plan.load_grads
    assert g.load.tensor == "table" and g.row is None and text(c, plan, g.pair) == "bwd.ds[i, j]"
    c, plan = plan_of("softmax_sink")
    (g,) = plan.load_grads
    assert g.load.tensor == "sink" and g.row is not None and g.pair is None  # j-free: by identities


SPECS = '''
attention learned_alibi(slopes: tensor[H] float):
    score = score + slopes[h] * float(kv_idx - q_idx)
    norm = softmax

attention row_bias(bias: tensor[H, N_Q] float):
    score = score + bias[h, q_idx]
    norm = softmax

norm minmax:
    mx[i] = max(s[i, j] for j)
    mn[i] = min(s[i, j] for j)
    out[i] = sum((s[i, j] - mn[i]) / (mx[i] - mn[i] + 1.0) * v[j] for j)
'''


def test_a_per_head_slope_times_the_distance_needs_per_pair_sums():
    c, plan = plan_of(SPECS, "learned_alibi")
    (g,) = plan.load_grads
    assert g.load.tensor == "slopes" and g.pair is not None  # Σ_j p·dP·(j − i): no identity


def test_a_per_query_bias_under_softmax_reaches_only_lse():
    # softmax's out is invariant to a per-row shift, its lse moves with it: ∂/∂bias[h, i] = dL
    c, plan = plan_of(SPECS, "row_bias")
    (g,) = plan.load_grads
    assert g.pair is None and text(c, plan, g.row) == "bwd.dl[i]"


def test_no_new_exponentials_when_row_values_are_simplified():
    c, plan = plan_of("softmax_sink")
    rows = {r.name: text(c, plan, r.expr) for r in plan.rows}
    assert rows["bwd.G._r2"] == "(bwd.dl[i] - bwd.dout[i]) / (_r2[i] + exp(sink[h] - max(_r1[i], sink[h])))"
    (g,) = plan.load_grads  # only the shifted exp(sink − max(r1, sink)), which cannot overflow
    assert {text(c, plan, x.args[0]) for x in n.walk(g.row) if isinstance(x, n.Call) and x.fn == "exp"} == {
        "sink[h] - max(_r1[i], sink[h])"}


def test_a_result_that_moves_with_a_max_is_refused_with_its_span():
    c = attnc.compile(SPECS, "minmax").cascade
    with pytest.raises(BackwardError) as err:
        derive_backward(c)
    assert err.value.span.line == 12 and "`mn` = min_j(...)" in err.value.message
    assert "torch.no_grad()" in err.value.message


def test_a_gradient_with_no_kernel_spelling_is_a_backward_error_with_a_span(monkeypatch):
    from attnc.ir import backward as bw

    c = attnc.load("softcap").cascade

    def no_ir(self, *args):  # what passes._to_ir raises for a sympy form it cannot spell
        raise ValueError("no IR form for zeta(s)")

    monkeypatch.setattr(bw._Derivation, "finish", no_ir)
    bw._derive_cached.cache_clear()
    try:
        with pytest.raises(BackwardError) as err:
            derive_backward(c)
        assert "as kernel code: no IR form" in err.value.message
        assert err.value.span == c.stage("out").span
    finally:
        bw._derive_cached.cache_clear()


@pytest.mark.parametrize("name", attnc.library.names())
def test_every_library_variant_has_a_backward_plan(name):
    c, plan = plan_of(name)
    assert plan.stats == tuple(st.name for st in c.stages if isinstance(st.expr, n.Reduce))
    assert derive_backward(c) is plan  # cached per cascade
