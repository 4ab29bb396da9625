"""torch.compile over attnc attention: the custom ops ``attnc::forward``/``attnc::backward``
(``runtime/autograd.py``) promise one opaque op per call — no graph break, and no recompile when
sizes or parameter values change.

A small module (attnc attention with a learned per-head sink, then a linear projection) is
compiled with ``fullgraph=True``, so any graph break fails the test, and compared with the same
module run eagerly: forward (out and lse) and the gradients of q, k, v, the sink and the
projection.

* backends ``eager``, ``aot_eager`` and ``inductor`` (the default; it compiles the projection
  with the C++ CPU backend, ~10 s), ``dynamic=False``: a second call with the same sizes and
  scalars reuses the compiled frame;
* ``dynamic=True``: calls with other n_q and n_kv, other values of an int parameter
  (``window``), other values of a float parameter (``cap``) — three tests — reuse the one compiled frame (counted by a
  ``CompileCounter`` backend) and still match eager. With ``dynamic=False`` new sizes recompile
  by design (static shapes), so that is not asserted;
* the library's ``softmax_sink`` (a tensor parameter, no scalar) compiles for inference under
  ``torch.no_grad()`` too.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import attnc

SPEC = """
attention capped_window_sink(sink: tensor[H] float, window: int = 8, cap: float = 20.0):
    score = softcap(cap)
    mask  = sliding_window(window)
    norm  = softmax_sink(sink)
"""
HQ, HKV, D, DV = 2, 1, 16, 8


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attnc.Attention, "POISON", True)
        yield
    torch._dynamo.reset()


class Block(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.attn = attn
        self.sink = torch.nn.Parameter(torch.randn(HQ, generator=g))
        self.proj = torch.nn.Linear(DV, DV)

    def forward(self, q, k, v, window: int, cap: float):
        out, lse = self.attn(q, k, v, sink=self.sink, window=window, cap=cap, return_lse=True)
        return self.proj(out), lse


def inputs(nq, nkv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, HQ, nq, D, generator=g)
    k = torch.randn(1, HKV, nkv, D, generator=g)
    v = torch.randn(1, HKV, nkv, DV, generator=g)
    return q, k, v


def step(module, q, k, v, window, cap, seed=0):
    """One forward and backward: (out, lse, {name: gradient}) for q, k, v and every parameter."""
    module.zero_grad(set_to_none=True)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = module(q, k, v, window, cap)
    g = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(out.shape, generator=g)
    dlse = torch.randn(lse.shape, generator=g)
    finite = torch.isfinite(lse)
    loss = (out * dout).sum() + torch.where(finite, lse * dlse, 0.0).sum()
    loss.backward()
    params = {n.removeprefix("_orig_mod."): p.grad for n, p in module.named_parameters()}  # compiled: a wrapper
    grads = {"q": q.grad, "k": k.grad, "v": v.grad, **params}
    return out.detach(), lse.detach(), grads


def assert_same(compiled, eager, tol=1e-5):
    (out, lse, grads), (out_e, lse_e, grads_e) = compiled, eager
    assert torch.allclose(out, out_e, rtol=tol, atol=tol)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_e))
    finite = torch.isfinite(lse_e)
    assert torch.allclose(lse[finite], lse_e[finite], rtol=tol, atol=tol)
    assert grads.keys() == grads_e.keys()
    for name in grads_e:
        assert grads[name] is not None and grads_e[name] is not None, name
        assert torch.isfinite(grads[name]).all(), name
        scale = grads_e[name].abs().max().clamp_min(1e-6)
        assert (grads[name] - grads_e[name]).abs().max() <= tol * scale, name


def unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compiled_module_matches_eager(backend):
    attn = attnc.compile(SPEC, "capped_window_sink")
    eager = Block(attn)
    compiled = torch.compile(copy.deepcopy(eager), backend=backend, fullgraph=True, dynamic=False)
    tol = 1e-4 if backend == "inductor" else 1e-5  # inductor's own matmul for the projection
    q, k, v = inputs(19, 23)
    assert_same(step(compiled, q, k, v, 6, 4.0), step(eager, q, k, v, 6, 4.0), tol)
    graphs = unique_graphs()
    assert graphs >= 1

    # the same sizes and scalars, new values: the compiled graph is reused
    q, k, v = inputs(19, 23, seed=5)
    assert_same(step(compiled, q, k, v, 6, 4.0, seed=5), step(eager, q, k, v, 6, 4.0, seed=5), tol)
    assert unique_graphs() == graphs


def no_recompile(calls):
    """Run ``calls`` [(n_q, n_kv, window, cap)] compiled with dynamic=True and eagerly; each
    matches, and one compiled frame serves them all."""
    attn = attnc.compile(SPEC, "capped_window_sink")
    eager = Block(attn)
    counter = CompileCounter()
    compiled = torch.compile(copy.deepcopy(eager), backend=counter, fullgraph=True, dynamic=True)
    for seed, (nq, nkv, window, cap) in enumerate(calls):
        q, k, v = inputs(nq, nkv, seed=seed)
        assert_same(step(compiled, q, k, v, window, cap, seed), step(eager, q, k, v, window, cap, seed))
    assert counter.frame_count == 1, f"{counter.frame_count} frames compiled for {len(calls)} calls"


def test_no_recompile_when_sizes_change():
    """n_q and n_kv are runtime values of the kernels."""
    no_recompile([(9, 12, 4, 4.0), (13, 20, 4, 4.0), (17, 33, 4, 4.0), (5, 5, 4, 4.0)])


def test_no_recompile_when_an_int_parameter_changes():
    """So is the int `window`."""
    no_recompile([(9, 12, 4, 4.0), (9, 12, 6, 4.0), (9, 12, 40, 4.0)])


def test_no_recompile_when_a_float_parameter_changes():
    """The float `cap` is a runtime value of the kernels too (float32 in the kernel)."""
    no_recompile([(9, 12, 4, 20.0), (9, 12, 4, 10.0), (9, 12, 4, 0.75)])


def test_compiled_inference_without_grad():
    """The library's softmax_sink (a tensor parameter, no scalars) under torch.no_grad()."""
    attn = attnc.load("softmax_sink")
    sink = torch.randn(HQ, generator=torch.Generator().manual_seed(3))

    def f(q, k, v):
        return attn(q, k, v, sink=sink) * 2.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=False)
    q, k, v = inputs(11, 17)
    with torch.no_grad():
        got, want = compiled(q, k, v), f(q, k, v)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_transposed_inputs_backward(backend):
    """q/k/v as transposed views ([B, N, H, D] → [B, H, N, D], as after a qkv projection): the
    fake backward promises the strides the kernels write (issue 16, item 5)."""
    attn = attnc.load("causal")

    def f(qt, kt, vt):
        out = attn(qt.transpose(1, 2), kt.transpose(1, 2), vt.transpose(1, 2))
        return out.transpose(1, 2)

    compiled = torch.compile(f, backend=backend, fullgraph=True, dynamic=False)
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(1, n, h, D, generator=g) for n, h in ((13, HQ), (13, HKV), (13, HKV))]
    dout = torch.randn(1, 13, HQ, D, generator=g)
    results = []
    for fn in (compiled, f):
        leaves = [t.clone().requires_grad_() for t in base]
        out = fn(*leaves)
        (out * dout).sum().backward()
        results.append((out.detach(), [t.grad for t in leaves]))
    (out_c, grads_c), (out_e, grads_e) = results
    assert torch.allclose(out_c, out_e, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_c, grads_e, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_fake_ops_match_the_real_ones_on_transposed_inputs(op):
    """``torch.library.opcheck``: the fake implementations promise the shapes, dtypes and strides
    the real ops return, for transposed q/k/v and a tensor parameter (issue 16, item 5: the
    fake backward returned ``empty_like(q)`` strides, the kernels contiguous gradients)."""
    attn = attnc.load("softmax_sink")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 13, 2, 16, generator=g).transpose(1, 2) for _ in range(3))
    sink = torch.randn(2, generator=g)
    fwd_args = (q, k, v, [sink], torch.zeros(0, dtype=torch.float64), attn.op_key, 0.25)
    if op == "forward":
        torch.library.opcheck(torch.ops.attnc.forward.default, fwd_args, test_utils=("test_faketensor",))
        return
    out, lse, stats = torch.ops.attnc.forward(*fwd_args)
    dout = torch.randn(out.shape, generator=g).transpose(1, 2).contiguous().transpose(1, 2)
    args = (dout, torch.zeros_like(lse), q, k, v, out, stats, [sink], fwd_args[4], attn.op_key, 0.25, [True])
    torch.library.opcheck(torch.ops.attnc.backward.default, args, test_utils=("test_faketensor",))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_grid_variant_under_fullgraph(backend):
    """A grid variant (natten2d: tokens permuted into grid tiles on the host) compiles with
    fullgraph=True — the whole call is one op, `attnc::grid_forward` — and its outputs and
    gradients equal eager; with dynamic=True a new kernel size does not recompile (issue 16,
    item 6)."""
    attn = attnc.load("natten2d")

    def f(q, k, v, kernel: int):
        out, lse = attn(q, k, v, width=6, kernel_h=kernel, kernel_w=3, return_lse=True)
        return out, lse

    counter = CompileCounter() if backend == "aot_eager" else backend
    compiled = torch.compile(f, backend=counter, fullgraph=True, dynamic=True)
    for seed, kernel in enumerate((3, 5)):
        g = torch.Generator().manual_seed(seed)
        base = [torch.randn(1, 2, 36, 16, generator=g) for _ in range(3)]
        dout, dlse = torch.randn(1, 2, 36, 16, generator=g), torch.randn(1, 2, 36, generator=g)
        results = []
        for fn in (compiled, f):
            leaves = [t.clone().requires_grad_() for t in base]
            out, lse = fn(*leaves, kernel)
            ((out * dout).sum() + (lse * dlse).sum()).backward()
            results.append((out.detach(), lse.detach(), [t.grad for t in leaves]))
        (out_c, lse_c, grads_c), (out_e, lse_e, grads_e) = results
        assert torch.allclose(out_c, out_e, atol=1e-5, rtol=1e-5)
        assert torch.allclose(lse_c, lse_e, atol=1e-5, rtol=1e-5)
        for a, b in zip(grads_c, grads_e, strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    if backend == "aot_eager":
        assert counter.frame_count == 1
