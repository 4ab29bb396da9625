#!/usr/bin/env python3
"""Adversarial hardening harness for attnc (issue 16): about 460 bad or edge inputs and 70
unusual valid ones — spec text, `@attnc.jit` functions, call arguments, varlen offsets, CLI
arguments, cache-directory conditions — each in its own subprocess (60 s timeout, ~4 GB
address-space cap), classified PASS (a clean SpecError/ValueError/TypeError, or a valid input
matching the float64 reference), FAIL or WARN (a clean error whose message misses the location).

    python3 benchmarks/adversarial.py [-j JOBS] [-k SUBSTR] [--list]     # ~16 min on one core

ATTNC_ROOT picks another checkout (default: this one); results.txt and results.json go to
$ADV_OUT (default: a new temporary directory). Not part of the test suite: too slow for CI.
Known, documented outcomes it still reports as FAIL: scores or sums past float32's range (the
kernels' domain, docs/semantics.md: NaN where the float64 reference is finite).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.environ.get("ATTNC_ROOT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
OUT = os.environ.get("ADV_OUT") or tempfile.mkdtemp(prefix="attnc-adversarial-")
PY = os.environ.get("ADV_PYTHON", sys.executable or "python3")
TIMEOUT = float(os.environ.get("ADV_TIMEOUT", "60"))
MEM = int(float(os.environ.get("ADV_MEM_GB", "4")) * (1 << 30))
CLEAN = ("SpecError", "ValueError", "TypeError")

RUNNER = r'''# The child side of adversarial.py: runs ONE case (a JSON file) and prints one @@RESULT@@ line.
import json
import os
import sys
import time
import traceback
import warnings

ROOT = os.environ["ATTNC_ROOT"]
sys.path.insert(0, ROOT)
CASE = json.load(open(sys.argv[1]))
RES = {"exc": None, "checks": [], "fails": [], "warns": [], "notes": [], "warnings": []}
_T0 = time.time()


def _emit():
    RES["elapsed"] = time.time() - _T0
    sys.stdout.write("\n@@RESULT@@" + json.dumps(RES, default=repr) + "\n")
    sys.stdout.flush()


def _describe(e: BaseException) -> dict:
    tb = traceback.extract_tb(e.__traceback__)
    frames = [(f.filename, f.lineno, f.name) for f in tb]
    root = os.path.realpath(ROOT)
    in_root = [i for i, f in enumerate(frames) if os.path.realpath(f[0]).startswith(root + os.sep)]
    leaked = None
    if in_root and in_root[-1] != len(frames) - 1:
        fn, ln, nm = frames[-1]
        leaked = f"{fn}:{ln} in {nm}"
    msg = str(e)
    chain = []
    c = e.__cause__ or e.__context__
    while c is not None and len(chain) < 3:
        chain.append(f"{type(c).__name__}: {str(c)[:200]}")
        c = c.__cause__ or c.__context__
    return {"type": type(e).__name__, "mro": [k.__name__ for k in type(e).__mro__], "msg": msg[:4000],
            "first": (msg.strip().splitlines() or [""])[0][:300], "innermost": frames[-1] if frames else None,
            "attnc_frame": frames[in_root[-1]] if in_root else None, "leaked_from": leaked, "chain": chain}


import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
import attnc  # noqa: E402
from attnc import SpecError  # noqa: E402,F401

TEXT = CASE.get("text")
FIX = CASE["fix"]
WORK = CASE["work"]
os.chdir(WORK)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def BAD(msg):
    RES["fails"].append(str(msg)[:500])


def ODD(msg):
    RES["warns"].append(str(msg)[:500])


def NOTE(msg):
    RES["notes"].append(str(msg)[:500])


def T(*shape, dtype=torch.float32, seed=0, mul=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float32) * mul).to(dtype)


def QKV(B=1, H=2, Hkv=None, N=16, Nkv=None, D=16, Dv=None, dtype=torch.float32, seed=0, mul=1.0):
    Hkv = H if Hkv is None else Hkv
    Nkv = N if Nkv is None else Nkv
    Dv = D if Dv is None else Dv
    return (T(B, H, N, D, dtype=dtype, seed=seed, mul=mul), T(B, Hkv, Nkv, D, dtype=dtype, seed=seed + 1, mul=mul),
            T(B, Hkv, Nkv, Dv, dtype=dtype, seed=seed + 2))


def _cmp(label, got, ref, dtype, vnorm_rms, bound=None):
    info = {"label": label, "dtype": str(dtype).replace("torch.", "")}
    if not isinstance(got, torch.Tensor):
        info["problem"] = f"kernel returned {type(got).__name__}"
        return info
    if tuple(got.shape) != tuple(ref.shape):
        info["problem"] = f"shape {tuple(got.shape)} vs reference {tuple(ref.shape)}"
        return info
    g = got.detach().double().cpu()
    r = ref.detach().double().cpu()
    fin = torch.isfinite(r)
    nan_where_finite = int((~torch.isfinite(g) & fin).sum())
    info["nan_where_ref_finite"] = nan_where_finite
    inf_r = torch.isinf(r)
    info["inf_mismatch"] = int((inf_r & (g != r)).sum())
    info["ref_nonfinite"] = int((~fin).sum())
    info["numel"] = r.numel()
    gf, rf = g[fin & torch.isfinite(g)], r[fin & torch.isfinite(g)]
    floor = 1e-3 * vnorm_rms * math.sqrt(max(1, rf.numel()))
    denom = max(float(rf.norm()), floor, 1e-300)
    info["err"] = float((gf - rf).norm()) / denom if rf.numel() else 0.0
    info["bound"] = bound if bound is not None else TOL.get(dtype, 1e-5)
    if nan_where_finite:
        info["problem"] = f"{nan_where_finite} non-finite kernel values where the reference is finite"
    elif info["inf_mismatch"]:
        info["problem"] = f"{info['inf_mismatch']} infinities of the reference not reproduced"
    return info


def CHECK(attn, q, k, v, *, lse=None, bound=None, label="", _p=None, **params):
    """Kernel vs float64 reference on the same call (``_p``: parameters whose names clash with ours)."""
    params.update(_p or {})
    has = attn.cascade.has_lse if lse is None else lse
    got = attn(q, k, v, return_lse=has, **params)
    ref = attn.reference(q, k, v, return_lse=has, **params)
    if has:
        (got, glse), (ref, rlse) = got, ref
    dtype = q.dtype
    vr = float(v.detach().double().pow(2).mean().sqrt()) if v.numel() else 1.0
    info = _cmp(label or "out", got, ref, dtype, vr if math.isfinite(vr) else 1.0, bound)
    if isinstance(got, torch.Tensor) and got.dtype != dtype:
        info.setdefault("problem", f"output dtype {got.dtype}, inputs {dtype}")
    RES["checks"].append(info)
    if has:
        li = _cmp((label or "out") + ".lse", glse, rlse, dtype, 1.0, bound)
        RES["checks"].append(li)
    return got


def RUN(attn, B=1, H=2, Hkv=None, N=16, Nkv=None, D=16, Dv=None, dtype=torch.float32, seed=0, _p=None, **params):
    q, k, v = QKV(B, H, Hkv, N, Nkv, D, Dv, dtype, seed)
    return CHECK(attn, q, k, v, _p=_p, **params)


def VCHECK(attn, q, k, v, cu_q, cu_k, seq_params=None, **params):
    """varlen vs the reference run per sequence (dense [1, H, n, D])."""
    has = attn.cascade.has_lse
    got = attn.varlen(q, k, v, cu_q, cu_k, return_lse=has, **params)
    if has:
        got, glse = got
    outs, lses = [], []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cq) - 1):
        qs = q[cq[b]:cq[b + 1]].transpose(0, 1)[None]
        ks = k[ck[b]:ck[b + 1]].transpose(0, 1)[None]
        vs = v[ck[b]:ck[b + 1]].transpose(0, 1)[None]
        p = dict(params)
        if seq_params:
            p.update(seq_params(b))
        r = attn.reference(qs, ks, vs, return_lse=has, **p)
        if has:
            r, rl = r
            lses.append(rl[0].transpose(0, 1))
        outs.append(r[0].transpose(0, 1))
    ref = torch.cat(outs) if outs else torch.zeros(0)
    RES["checks"].append(_cmp("varlen", got, ref, q.dtype, 1.0))
    if has:
        RES["checks"].append(_cmp("varlen.lse", glse, torch.cat(lses), q.dtype, 1.0))
    return got


def GCHECK(attn, B=1, H=2, N=16, D=16, dtype=torch.float32, **params):
    """dq, dk, dv of the kernel vs autograd through the reference."""
    q, k, v = QKV(B, H, None, N, None, D, None, dtype)
    w = T(B, H, N, D, seed=9).to(dtype)
    grads = []
    for fn in (attn, attn.reference):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = fn(qq, kk, vv, **params)
        (out.double() * w.double()).sum().backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for name, a, b in zip("qkv", grads[0], grads[1]):
        RES["checks"].append(_cmp("d" + name, a, b, dtype, 1.0, bound=1e-4 if dtype == torch.float32 else 2e-2))


G = {"__name__": "__case__"}
G.update({k: v for k, v in globals().items() if not k.startswith("_")})
_path = os.path.join(WORK, "case_code.py")
with open(_path, "w") as _f:
    _f.write(CASE["code"])
with warnings.catch_warnings(record=True) as _ws:
    warnings.simplefilter("always")
    try:
        exec(compile(CASE["code"], _path, "exec"), G)
    except BaseException as _e:  # noqa: BLE001
        RES["exc"] = _describe(_e)
    RES["warnings"] = [f"{w.category.__name__}: {str(w.message)[:200]}" for w in _ws][:5]
_emit()
sys.stdout.flush()
os._exit(0)
'''

CASES: list[dict] = []


def py(cid, code, expect="error", text=None, need=(), forbid=(), warn_forbid=(), env=None, timeout=None):
    """expect: 'error' (must raise a clean error), 'valid' (must run and match), 'either'."""
    assert cid not in {c["id"] for c in CASES}, cid
    CASES.append(dict(id=cid, kind="py", code=code, expect=expect, text=text, need=list(need), forbid=list(forbid),
                      warn_forbid=list(warn_forbid), env=env or {}, timeout=timeout))


def cli(cid, args, expect="error", need=(), forbid=(), env=None, timeout=None, post=None, warn_forbid=()):
    assert cid not in {c["id"] for c in CASES}, cid
    CASES.append(dict(id=cid, kind="cli", args=list(args), expect=expect, need=list(need), forbid=list(forbid),
                      warn_forbid=list(warn_forbid), env=env or {}, timeout=timeout, post=post))


LOC = r":\d+:\d+"  # a file:line:col location in a SpecError


def spec(cid, text, expect="error", call="RUN(a)", need=(LOC,), name=None, **kw):
    """Compile spec text, then call the result on small tensors and check it."""
    nm = "" if name is None else f", {name!r}"
    py(cid, f"a = attnc.compile(TEXT{nm})\n{call}\n", expect=expect, text=text, need=need, **kw)


# =====================================================================================
# 1. spec text
# =====================================================================================
SYNTAX = {
    "syn-empty-rhs": "attention a:\n    mask = \n",
    "syn-open-paren-def": "attention a(\n",
    "syn-trailing-op": "mask m = q_idx <\n",
    "syn-no-indent-body": "attention a:\nmask = causal\n",
    "syn-mixed-tabs": "attention a:\n\tmask = causal\n        norm = softmax\n",
    "syn-double-op": "score sc = score +* 2.0\n",
    "syn-digit-name": "attention 1a:\n    mask = causal\n",
    "syn-unknown-stage": "attention a:\n    foo = causal\n",
    "syn-dup-def": "mask m = q_idx < kv_idx\nmask m = True\n",
    "syn-nul": "\x00",
    "syn-bad-exp-literal": "mask m = q_idx < 1e\n",
    "syn-hex-literal": "mask m = q_idx < 0x10\n",
    "syn-pow-pow": "score sc = score ** ** 2.0\n",
    "syn-unterminated-string": 'from "abc import x\n',
    "syn-only-keyword": "attention\n",
    "syn-colon-only": ":\n",
    "syn-lambda": "score sc = lambda x: x\n",
    "syn-python-import": "import os\n",
    "syn-dunder-attr": "score sc = score.__class__\n",
    "syn-call-on-call": "score sc = exp(score)(1.0)\n",
    "syn-subscript-builtin": "mask m = q_idx[0] < 1\n",
    "syn-semicolon": "mask m = q_idx < 1; mask n = True\n",
    "syn-walrus": "mask m = (x := q_idx) < 1\n",
    "syn-string-literal": "score sc = score + \"1\"\n",
    "syn-dict": "score sc = {1: 2}\n",
    "syn-backslash-cont": "mask m = q_idx < \\\n 1\n",
    "syn-fstring": "score sc = f\"{score}\"\n",
    "syn-unicode-op": "mask m = q_idx \u2264 kv_idx\n",
    "syn-zero-width-space": "mask m\u200b = q_idx < kv_idx\n",
    "syn-rtl-override-name": "mask m\u202e = True\n",
    "syn-emoji-name": "attention \U0001F600:\n    mask = causal\n",
    "syn-fullwidth-digit": "mask m = q_idx < \uff11\n",
    "syn-lone-surrogate": "mask m = q_idx < 1 # \ud800\n",
    "syn-form-feed-indent": "attention a:\n\x0c    mask = causal\n",
    "syn-vertical-tab": "mask m = q_idx\x0b< kv_idx\n",
    "syn-cr-only": "attention a:\r    mask = causal\r",
    "syn-if-no-else": "score sc = score if q_idx < 1\n",
    "syn-chained-eq-garbage": "mask m = q_idx == == kv_idx\n",
    "syn-reduction-no-var": "norm nn:\n    out[i] = sum(v[j] for)\n",
    "syn-stage-3-index": "norm nn:\n    x[i, j, k] = 1.0\n    out[i] = sum(v[j] for j)\n",
    "syn-deep-indent-jump": "attention a:\n    mask = causal\n            norm = softmax\n",
    "syn-tensor-no-dims": "score sc(t: tensor[] float) = score\n",
    "syn-tensor-bad-dim": "score sc(t: tensor[1.5] float) = score\n",
    "syn-tensor-neg-dim": "score sc(t: tensor[-1] float) = score + t[0]\n",
    "syn-tensor-zero-dim": "score sc(t: tensor[0] float) = score + t[0]\n",
    "syn-tensor-huge-dim": "score sc(t: tensor[4294967296] float) = score + t[0]\n",
    "syn-grid-4-axes": "mask g:\n    grid (a, b, c, d) = (1, 1, 1, n_kv)\n    mask = True\n",
    "syn-grid-mismatch": "mask g:\n    grid (y, x) = (n_kv)\n    mask = True\n",
    "syn-grid-dup-axis": "mask g(w: int = 4):\n    grid (y, y) = (n_kv // w, w)\n    mask = True\n",
    "syn-two-grids": "mask g1(w: int = 4):\n    grid (y, x) = (n_kv // w, w)\n    mask = q_y == kv_y\n"
                     "mask g2(w: int = 2):\n    grid (y, x) = (n_kv // w, w)\n    mask = q_x == kv_x\n"
                     "attention a:\n    mask = g1 and g2\n",
    "syn-dilated-zero": "mask g:\n    grid (x) = (n_kv) dilated (0)\n    mask = True\n",
}
for cid, t in SYNTAX.items():
    spec(cid, t)

NAMES_TYPES = {
    "name-unknown-var": "mask m = q_idx < foo\n",
    "name-unknown-fn": "score sc = bar(score)\n",
    "name-unknown-norm": "attention a:\n    norm = nonexistent\n",
    "name-norm-as-mask": "attention a:\n    mask = softmax\n",
    "name-mask-as-norm": "attention a:\n    norm = causal\n",
    "name-mask-as-score": "attention a:\n    score = causal\n",
    "name-score-as-mask": "attention a:\n    mask = softcap\n",
    "name-import-missing": "from library import nonexistent\n",
    "name-too-many-args": "mask m = causal(3)\n",
    "name-dup-kwarg": "mask m = sliding_window(window=1, window=2)\n",
    "name-too-many-pos": "mask m = sliding_window(1, 2)\n",
    "name-self-recursive": "mask m = m\n",
    "name-mutual-recursion": "mask a1 = b1\nmask b1 = a1\n",
    "name-shadow-library-recursive": "mask causal = causal\n",
    "name-shadow-softmax": "attention softmax:\n    norm = softmax\n",
    "name-param-unknown-default": "score sc(x: int, y: int = z) = score\n",
    "name-dup-param": "score sc(x: float, x: float) = score * x\n",
    "name-builtin-as-param": "score sc(q_idx: int) = score\n",
    "name-keyword-param": "score sc(mask: float) = score\n",
    "name-reserved-underscore": "score sc(_x: float = 1.0) = score * _x\n",
    "type-mask-int": "mask m = q_idx + kv_idx\n",
    "type-score-bool": "score sc = q_idx < kv_idx\n",
    "type-mask-uses-score": "mask m = score > 0.0\n",
    "type-floordiv-float": "mask m(x: float = 2.0) = q_idx // x == 0\n",
    "type-mod-float-literal": "mask m = 1.5 % 2 == 0\n",
    "type-and-on-floats": "score sc = score and score\n",
    "type-not-int": "mask m = not q_idx\n",
    "type-bool-arith": "score sc(x: bool = True) = score + x\n",
    "type-float-mask-from-tensor": "mask m(t: tensor[H] float) = t[h]\n",
    "type-tensor-wrong-rank-index": "mask m(t: tensor[H] int) = t[h, h] == 0\n",
    "type-tensor-unindexed": "mask m(t: tensor[H] int) = t == 0\n",
    "type-tensor-float-index": "mask m(t: tensor[H] int) = t[1.5] == 0\n",
    "type-if-int-cond": "score sc = score if q_idx else 0.0\n",
    "type-clamp-arity": "score sc = clamp(score)\n",
    "type-exp-two-args": "score sc = exp(score, score)\n",
    "type-float-default-for-int": "mask m(w: int = 2.5) = q_idx < w\n",
    "type-bool-default-for-float": "score sc(x: float = True) = score * x\n",
    "type-int-shape-from-float": "score sc(x: float = 2.0, t: tensor[x] float) = score + t[0]\n",
    "type-shape-from-later-param": "score sc(t: tensor[n] float, n: int = 3) = score + t[0]\n",
    "type-attention-two-norms": "attention a:\n    norm = softmax\n    norm = sigmoid\n",
    "type-norm-v-nonlinear": "norm nn:\n    out[i] = sum(v[j] * v[j] for j)\n",
    "type-norm-no-out": "norm nn:\n    m[i] = max(s[i, j] for j)\n",
    "type-norm-v-outside-sum": "norm nn:\n    out[i] = v[j]\n",
    "type-norm-out-pair": "norm nn:\n    out[i, j] = sum(v[j] for j)\n",
    "type-norm-out-no-v": "norm nn:\n    out[i] = sum(s[i, j] for j)\n",
    "type-norm-exp-v": "norm nn:\n    out[i] = sum(exp(v[j]) for j)\n",
    "type-norm-unknown-redvar": "norm nn:\n    out[i] = sum(v[j] for k)\n",
    "type-norm-reserved-stage": "norm nn:\n    _x[i] = 1.0\n    out[i] = sum(v[j] for j)\n",
    "type-norm-dup-stage": "norm nn:\n    out[i] = sum(v[j] for j)\n    out[i] = sum(v[j] for j)\n",
    "type-norm-lse-pair": "norm nn:\n    out[i] = sum(v[j] for j)\n    lse[i] = s[i, j]\n",
    "type-norm-self-ref": "norm nn:\n    x[i] = x[i] + 1.0\n    out[i] = sum(v[j] for j)\n",
    "type-norm-forward-ref": "norm nn:\n    out[i] = sum(v[j] for j) / z[i]\n    z[i] = 1.0\n",
    "type-norm-v-in-max": "norm nn:\n    m[i] = max(v[j] for j)\n    out[i] = sum(v[j] for j)\n",
    "type-norm-nested-sum": "norm nn:\n    out[i] = sum(sum(v[j] for j) for j)\n",
    "type-norm-s-without-j": "norm nn:\n    out[i] = sum(s[i, i] * v[j] for j)\n",
    "type-norm-v-times-v-sum": "norm nn:\n    z[i] = sum(v[j] for j)\n    out[i] = sum(v[j] for j) * z[i]\n",
}
for cid, t in NAMES_TYPES.items():
    spec(cid, t)

# deep nesting and blow-up
spec("deep-plus-chain-130", "score sc = " + " + ".join(["score"] * 131) + "\n")
spec("deep-unary-minus-500", "score sc = " + "-" * 500 + "score\n")
spec("deep-exp-130", "score sc = " + "exp(" * 130 + "score" + ")" * 130 + "\n")
spec("deep-parens-5000", "score sc = " + "(" * 5000 + "score" + ")" * 5000 + "\n", expect="either")
spec("deep-parens-100000", "score sc = " + "(" * 100000 + "score" + ")" * 100000 + "\n", expect="either")
spec("deep-not-3000", "mask m = " + "not " * 3000 + "True\n")
spec("deep-and-500", "mask m = " + " and ".join(["q_idx >= kv_idx"] * 500) + "\n", expect="either")
spec("deep-if-else-200", "score sc = " + "".join(f"{i}.0 if q_idx == {i} else " for i in range(200)) + "score\n")
spec("deep-lets-200", "score sc:\n" + "".join(f"    let x{i} = {'score' if i == 0 else f'x{i-1}'} + 1.0\n"
                                          for i in range(200)) + "    score = x199\n")
spec("deep-defs-150", "".join(f"score d{i} = {'score' if i == 0 else f'd{i-1}'} + 1.0\n" for i in range(150))
     + "attention a:\n    score = d149\n")
spec("blowup-lets-doubling-40", "score sc:\n    let x0 = score\n" +
     "".join(f"    let x{i} = x{i-1} + x{i-1}\n" for i in range(1, 41)) + "    score = x40\n")
spec("blowup-mask-defs-doubling-40", "mask m0 = q_idx >= kv_idx\n" +
     "".join(f"mask m{i} = m{i-1} and m{i-1}\n" for i in range(1, 41)) + "attention a:\n    mask = m40\n")
spec("blowup-score-defs-doubling-30", "score t0 = score + 1.0\n" +
     "".join(f"score t{i}(x: float = 1.0) = t{i-1}(x) + t{i-1}(x)\n" for i in range(1, 31))
     + "attention a:\n    score = t30\n")
spec("deep-calls-nested-args-60", "score f(x: float = 1.0) = score * x\nattention a:\n    score = f("
     + "exp(" * 60 + "1.0" + ")" * 60 + ")\n")
spec("blowup-norm-stages-doubling", "norm nn:\n    m0[i] = max(s[i, j] for j)\n" +
     "".join(f"    m{i}[i] = m{i-1}[i] + m{i-1}[i]\n" for i in range(1, 41)) +
     "    out[i] = sum(exp(s[i, j] - m0[i]) * v[j] for j) / sum(exp(s[i, j] - m0[i]) for j) + m40[i] * 0.0\n"
     "attention a:\n    norm = nn\n", expect="either")
spec("deep-plus-chain-100-valid", "score sc = " + " + ".join(["score * 0.01"] * 100) + "\n", expect="valid",
     need=())

# huge literals and constant expressions
LITS = {
    "lit-float-1e39": ("score sc = score + 1e39\n", "error"),
    "lit-float-1e308": ("score sc = score + 1e308\n", "error"),
    "lit-float-1e309": ("score sc = score + 1e309\n", "error"),
    "lit-float-3.5e38": ("score sc = score * 0.0 + 3.5e38\n", "error"),
    "lit-int-2p31": ("mask m = q_idx < 2147483648\n", "error"),
    "lit-int-min-minus1": ("mask m = q_idx > -2147483649\n", "error"),
    "lit-int-2p40": ("mask m = q_idx < 1099511627776\n", "error"),
    "lit-int-40digits": ("mask m = q_idx < 99999999999999999999999999999999999999999\n", "error"),
    "lit-int-5000digits": ("mask m = q_idx < " + "9" * 5000 + "\n", "error"),
    "const-2pow40": ("mask m = q_idx < 2 ** 40\n", "error"),
    "const-mul-overflow": ("mask m = q_idx < 65536 * 65536\n", "error"),
    "const-int-min-floordiv-neg1": ("mask m = q_idx < (-2147483647 - 1) // -1\n", "error"),
    "const-neg-int-min": ("mask m = q_idx < -(-2147483647 - 1)\n", "error"),
    "const-abs-int-min": ("mask m = q_idx < abs(-2147483647 - 1)\n", "error"),
    "const-float-pow-overflow": ("score sc = score + 2.0 ** 1000\n", "error"),
    "const-float-10pow400": ("score sc = score + 10.0 ** 400\n", "error"),
    "const-exp-1000": ("score sc = score + exp(1000.0)\n", "error"),
    "const-float-mul-overflow": ("score sc = score + 1e38 * 10.0\n", "error"),
    "const-tower-2pow": ("mask m = q_idx < 2 ** 2 ** 2 ** 2 ** 2\n", "error"),
    "const-10pow10pow10": ("mask m = q_idx < 10 ** 10 ** 10\n", "error"),
    "const-9pow9pow9-float": ("score sc = score + 9.0 ** 9.0 ** 9.0\n", "error"),
    "const-zero-pow-neg": ("score sc = score + 0 ** -1\n", "either"),
    "const-neg-pow-half": ("score sc = score + (-8.0) ** 0.5\n", "either"),
    "const-log-zero": ("score sc = score + log(0.0)\n", "either"),
    "const-log-neg": ("score sc = score + log(-1.0)\n", "either"),
    "const-sqrt-neg": ("score sc = score + sqrt(-1.0)\n", "either"),
    "const-one-div-zero": ("score sc = score + 1.0 / 0.0\n", "either"),
    "const-zero-div-zero": ("score sc = score + 0.0 / 0.0\n", "either"),
    "const-int-floordiv-zero": ("mask m = q_idx < 1 // 0 + 5\n", "either"),
    "const-int-mod-zero": ("mask m = q_idx % 0 == q_idx\n", "either"),
    "const-rsqrt-zero": ("score sc = score + rsqrt(0.0)\n", "either"),
    "const-float-of-huge": ("score sc = score * float(2147483647) * float(2147483647) * 1e20\n", "either"),
    "lit-int-min-ok": ("mask m = q_idx > -2147483648\n", "either"),
    "lit-float-3.4e38-ok": ("score sc = score + 3.4e38 * 0.0\n", "either"),
    "lit-subnormal": ("score sc = score + 1e-45\n", "either"),
    "lit-underflow-1e-400": ("score sc = score + 1e-400\n", "either"),
    "score-div-zero-runtime": ("score sc = score / 0.0\n", "either"),
    "score-pow-big": ("score sc = score ** 1e10\n", "either"),
    "score-exp-exp": ("score sc = exp(exp(score))\n", "either"),
    "score-log-score": ("score sc = log(score)\n", "either"),
}
for cid, (t, ex) in LITS.items():
    spec(cid, t, expect=ex)

# division by zero and edge values of runtime parameters
DIVP = {
    "param-softcap-cap0": ("attnc.load('softcap')", "cap=0.0"),
    "param-softcap-cap-neg0": ("attnc.load('softcap')", "cap=-0.0"),
    "param-softcap-cap-1e-45": ("attnc.load('softcap')", "cap=1e-45"),
    "param-softcap-cap-1e-39": ("attnc.load('softcap')", "cap=1e-39"),
    "param-softcap-cap-1e39": ("attnc.load('softcap')", "cap=1e39"),
    "param-softcap-cap-inf": ("attnc.load('softcap')", "cap=float('inf')"),
    "param-softcap-cap-nan": ("attnc.load('softcap')", "cap=float('nan')"),
    "param-relu-divisor0": ("attnc.load('relu')", "divisor=0.0"),
    "param-sigmoid-bias-inf": ("attnc.load('sigmoid')", "bias=float('inf')"),
    "param-sigmoid-bias-ninf": ("attnc.load('sigmoid')", "bias=-float('inf')"),
    "param-clipped-zeta-eq-gamma": ("attnc.load('clipped_softmax')", "zeta=0.0, gamma=0.0"),
    "param-clipped-zeta-1e300": ("attnc.load('clipped_softmax')", "zeta=1e300"),
    "param-chunked-chunk0": ("attnc.load('chunked')", "chunk=0"),
    "param-chunked-chunk-neg": ("attnc.load('chunked')", "chunk=-3"),
    "param-dilated-dilation0": ("attnc.load('dilated_window')", "window=4, dilation=0"),
    "param-dilated-2p30": ("attnc.load('dilated_window')", "window=2**30, dilation=4"),
    "param-sliding-window-intmin": ("attnc.load('sliding_window')", "window=-2**31"),
    "param-sink-window-neg": ("attnc.load('sink_window')", "sinks=-1, window=-1"),
    "param-prefix-lm-intmax": ("attnc.load('prefix_lm')", "prefix=2**31-1"),
    "param-natten1d-dilation0": ("attnc.load('natten1d')", "dilation=0"),
    "param-natten1d-kernel0": ("attnc.load('natten1d')", "kernel=0"),
    "param-natten1d-kernel-neg": ("attnc.load('natten1d')", "kernel=-7"),
    "param-natten1d-kernel-huge": ("attnc.load('natten1d')", "kernel=2**31-1"),
    "param-natten2d-width0": ("attnc.load('natten2d')", "width=0"),
    "param-natten2d-width-neg": ("attnc.load('natten2d')", "width=-4"),
    "param-natten2d-width-nondiv": ("attnc.load('natten2d')", "width=5"),
    "param-natten3d-hw0": ("attnc.load('natten3d')", "height=0, width=0"),
    "param-natten2d-dilation-huge": ("attnc.load('natten2d')", "width=4, dilation_h=2**31-1"),
}
for cid, (mk, params) in DIVP.items():
    py(cid, f"a = {mk}\nRUN(a, {params})\n", expect="either", need=[r"`?\w+`?"])

USER_DIV = {
    "udiv-float-param-zero": ("score sc(x: float = 1.0) = score / x\n", "x=0.0"),
    "udiv-recip-param-zero": ("score sc(x: float = 1.0) = score * (1.0 / x)\n", "x=0.0"),
    "upow-param-neg-exp": ("score sc(x: float = 1.0) = score * x ** -1.0\n", "x=0.0"),
    "upow-param-zero-zero": ("score sc(x: float = 1.0) = score + x ** x\n", "x=0.0"),
    "upow-neg-base-half": ("score sc(x: float = 1.0) = score + x ** 0.5\n", "x=-4.0"),
    "ulog-param-zero": ("score sc(x: float = 1.0) = score + log(x)\n", "x=0.0"),
    "ulog-param-neg": ("score sc(x: float = 1.0) = score + log(x)\n", "x=-1.0"),
    "usqrt-param-neg": ("score sc(x: float = 1.0) = score + sqrt(x)\n", "x=-1.0"),
    "ursqrt-param-zero": ("score sc(x: float = 1.0) = score * rsqrt(x)\n", "x=0.0"),
    "uexp-param-big": ("score sc(x: float = 1.0) = score + exp(x) * 0.0\n", "x=1000.0"),
    "ufloordiv-int-param-zero": ("mask m(x: int = 1) = q_idx // x == 0\n", "x=0"),
    "umod-int-param-zero": ("mask m(x: int = 1) = q_idx % x == 0\n", "x=0"),
    "umod-int-param-neg1-intmin": ("mask m(x: int = 1) = x % -1 == 0 and q_idx >= kv_idx\n", "x=-2**31"),
    "ufloordiv-intmin-neg1": ("mask m(x: int = 1) = x // -1 > q_idx\n", "x=-2**31"),
    "uneg-intmin": ("mask m(x: int = 1) = -x > q_idx\n", "x=-2**31"),
    "uabs-intmin": ("mask m(x: int = 1) = abs(x) > q_idx\n", "x=-2**31"),
    "umul-int-overflow": ("mask m(x: int = 1) = x * x > q_idx\n", "x=2**30"),
    "uadd-int-overflow": ("mask m(x: int = 1) = q_idx + x > kv_idx\n", "x=2**31-1"),
    "ufloat-int-div-zero": ("score sc(x: int = 1) = score / x\n", "x=0"),
    "ufloat-of-int-big": ("score sc(x: int = 1) = score + float(x) * 0.0\n", "x=2**31-1"),
    "udefault-log-nkv": ("score sc(x: float = log(n_kv - n_kv)) = score + x\n", ""),
    "udefault-div-zero": ("score sc(x: float = 1.0 / (n_q - n_q)) = score + x\n", ""),
    "udefault-int-div-zero": ("mask m(x: int = n_q // (n_q - n_q)) = q_idx < x\n", ""),
    "udefault-int-overflow": ("mask m(x: int = n_q * 2147483647) = q_idx < x\n", ""),
    "utensor-shape-neg": ("score sc(n: int = 2, t: tensor[n] float) = score + t[0]\n", "n=-1, t=torch.zeros(1)"),
    "utensor-shape-param-zero": ("score sc(n: int = 2, t: tensor[n] float) = score + t[0]\n", "n=0, t=torch.zeros(0)"),
    "uclamp-inverted": ("score sc(lo: float = 0.0, hi: float = 1.0) = clamp(score, lo, hi)\n", "lo=1.0, hi=-1.0"),
    "uclamp-nan": ("score sc(lo: float = 0.0, hi: float = 1.0) = clamp(score, lo, hi)\n", "lo=float('nan')"),
}
for cid, (t, params) in USER_DIV.items():
    spec(cid, t, expect="either", call=f"RUN(a, {params})", need=())

# names colliding with generated-code identifiers
COLLIDE = ["q", "k", "v", "scale", "return_lse", "Nq", "Hkv", "Nkv", "t_size0", "m_old", "old_s_m", "def", "torch",
           "math", "params", "sizes", "tl", "triton", "np", "self", "out", "lse", "i", "j", "score", "None", "True",
           "print", "__import__", "exp", "softmax", "causal", "BLOCK_M", "BLOCK_D", "u_x", "s_m", "q_ptr", "grid",
           "cu_seqlens_q", "block_m", "stride_qb", "pid_m", "acc", "qk", "keep", "off_b", "exec", "cls",
           "kwargs", "args", "sink", "device", "dtype", "interpret", "lambda", "async", "match", "_tanh", "mask",
           "float", "int", "abs", "max"]
for name in COLLIDE:
    spec(f"collide-param-{name}", f"score sc({name}: float = 1.0) = score * {name}\n", expect="either",
         call=f"RUN(a, _p={{{name!r}: 0.5}})", need=[re.escape(name) + "|" + LOC])
for name in ["q", "k", "m_old", "old_s_m", "acc", "tl", "scale", "def", "torch", "s_m", "size0_u_t", "qk", "keep",
             "lse_i", "o", "exp", "z", "i", "j", "b", "h"]:
    spec(f"collide-stage-{name}", f"norm nn:\n    {name}[i] = max(s[i, j] for j)\n"
         f"    out[i] = sum(exp(s[i, j] - {name}[i]) * v[j] for j) / sum(exp(s[i, j] - {name}[i]) for j)\n"
         "attention a:\n    norm = nn\n", expect="either", need=[re.escape(name) + "|" + LOC])
for name in ["q", "d", "offs_n", "torch", "def", "keep", "row_ok", "n_q", "score", "tl"]:
    spec(f"collide-let-{name}", f"mask mm:\n    let {name} = q_idx - kv_idx\n    mask = {name} >= 0\n"
         "attention a:\n    mask = mm\n", expect="either", need=[re.escape(name) + "|" + LOC])
for name in ["q", "attnc_fwd", "torch", "triton", "tl", "def", "main", "sys", "attention", "__init__", "Attention",
             "traced"]:
    spec(f"collide-defname-{name}", f"attention {name}:\n    mask = causal\n", expect="either",
         need=[re.escape(name) + "|" + LOC])
for name in ["t_size0", "q", "stride0_u_t", "u_t", "grad_u_t", "torch"]:
    spec(f"collide-tensor-{name}", f"score sc({name}: tensor[H] float) = score + {name}[h]\n", expect="either",
         call=f"RUN(a, _p={{{name!r}: torch.ones(2)}})", need=[re.escape(name) + "|" + LOC])

# imports of odd paths (compile(text)) and attnc.load / compile(path)
IMPORTS = {
    "imp-dev-zero": "/dev/zero", "imp-dev-stdin": "/dev/stdin", "imp-dev-null": "/dev/null",
    "imp-dev-urandom": "/dev/urandom", "imp-dev-full": "/dev/full", "imp-proc-fd0": "/proc/self/fd/0",
    "imp-dir-tmp": "/tmp", "imp-dir-dot": ".", "imp-missing": "/nonexistent/x.attn",
    "imp-symlink-loop": "@FIX@/loop1.attn", "imp-self-symlink": "@FIX@/self_loop.attn",
    "imp-etc-passwd": "/etc/passwd", "imp-etc-shadow": "/etc/shadow", "imp-proc-environ": "/proc/self/environ",
    "imp-proc-mem": "/proc/self/mem", "imp-proc-status": "/proc/self/status", "imp-fifo": "@FIX@/fifo.attn",
    "imp-big": "@FIX@/big.attn", "imp-binary": "@FIX@/binary.attn", "imp-nul-file": "@FIX@/nul.attn",
    "imp-bad-syntax-file": "@FIX@/bad_syntax.attn", "imp-cycle": "@FIX@/cycle_a.attn",
    "imp-selfimport": "@FIX@/selfimport.attn", "imp-dir-attn": "@FIX@/dir.attn",
    "imp-secret-txt": "@FIX@/secret.txt", "imp-secret-parses-txt": "@FIX@/secret_parses.txt",
    "imp-link-passwd": "@FIX@/link_to_passwd.attn", "imp-dangling": "@FIX@/dangling.attn",
    "imp-utf16": "@FIX@/utf16.attn", "imp-relative-escape": "../../../../../../../../etc/passwd",
    "imp-empty-path": "", "imp-nul-in-path": "/tmp/a\x00b.attn", "imp-long-path": "/tmp/" + "a" * 5000 + ".attn",
    "imp-long-component": "/tmp/" + "b" * 300 + ".attn", "imp-unreadable": "@FIX@/unreadable.attn",
    "imp-newline-path": "/tmp/a\\nb.attn",
}
LEAKS = ["root:", "SECRET", "PATH=", "ATTNC_ROOT", "VmPeak"]
for cid, p in IMPORTS.items():
    forbid = LEAKS if "parses" not in cid else []
    warn_forbid = ["SECRET"] if "parses" in cid else []
    spec(cid, f'from "{p}" import x\nattention a:\n    mask = x\n', forbid=forbid, warn_forbid=warn_forbid,
         need=[LOC + r"|'|\""])
for cid, p in {"path-etc-passwd": "/etc/passwd", "path-dev-zero": "/dev/zero", "path-dir": "/tmp",
               "path-fifo": "@FIX@/fifo.attn", "path-loop": "@FIX@/loop1.attn", "path-big": "@FIX@/big.attn",
               "path-secret-parses": "@FIX@/secret_parses.txt", "path-missing": "/nonexistent.attn",
               "path-bad-syntax": "@FIX@/bad_syntax.attn", "path-binary": "@FIX@/binary.attn",
               "path-proc-environ": "/proc/self/environ", "path-stdin": "/dev/stdin"}.items():
    warn_forbid = ["SECRET"] if "parses" in cid else []
    py(cid, f"a = attnc.compile(pathlib.Path({p!r}.replace('@FIX@', FIX)))\nRUN(a)\n".replace(
        "a = ", "import pathlib\na = ", 1), forbid=[x for x in LEAKS if not warn_forbid], warn_forbid=warn_forbid,
       need=[r"'|\"|" + LOC])
for cid, arg in {"load-path-passwd": "'/etc/passwd'", "load-none": "None", "load-int": "123", "load-empty": "''",
                 "load-traversal": "'../library/causal'", "load-with-suffix": "'causal.attn'",
                 "load-unicode": "'c\u0430usal'", "load-bytes": "b'causal'", "load-long": "'x' * 100000",
                 "load-dunder": "'__init__'", "load-nul": "'causal\\x00'", "load-list": "['causal']",
                 "load-pathlike": "__import__('pathlib').Path('causal')"}.items():
    py(cid, f"a = attnc.load({arg})\nRUN(a)\n", need=[r"librar|variant|name|str"])
for cid, arg in {"compile-none": "None", "compile-int": "42", "compile-bytes": "b'mask m = True\\n'",
                 "compile-list": "['mask m = True']", "compile-name-missing": None}.items():
    if arg is None:
        py(cid, "a = attnc.compile('mask m = True\\n', 'nonexistent')\nRUN(a)\n", need=["nonexistent"])
    else:
        py(cid, f"a = attnc.compile({arg})\nRUN(a)\n", need=[r"path|text|str"])

# empty / comment-only / unicode / long / big specs
EMPTY = {"empty-string": "", "empty-comment-only": "# nothing here\n", "empty-newlines": "\n\n\n",
         "empty-spaces-nl": "   \n  \n", "empty-bom": "\ufeff\n", "empty-imports-only": "from library import causal\n",
         "empty-tab-only": "\t\n"}
for cid, t in EMPTY.items():
    spec(cid, t, need=[r"definition|empty|nothing|no "])
spec("uni-nonascii-ident", "attention caf\u00e9:\n    mask = causal\n", expect="either")
spec("uni-greek-param", "score sc(\u03b1: float = 1.0) = score * \u03b1\n", expect="either")
spec("uni-confusable-name", "attention a:\n    mask = c\u0430usal\n")  # Cyrillic a
spec("uni-nbsp-indent", "attention a:\n\u00a0\u00a0\u00a0\u00a0mask = causal\n")
spec("uni-line-sep-in-comment", "# a\u2028b\u2029c\x85d\nattention a:\n    mask = causal\n    norm = nope\n")
spec("long-identifier-100k", "attention " + "a" * 100000 + ":\n    mask = causal\n", expect="either", need=())
spec("long-param-name-100k", "score sc(" + "p" * 100000 + ": float = 1.0) = score * " + "p" * 100000 + "\n",
     expect="either", need=())
spec("long-line-error-at-end", "mask m = " + "q_idx < kv_idx or " * 20000 + "\n")
spec("big-text-2MiB-comment", "# " + "x" * (2 << 20) + "\nattention a:\n    mask = causal\n", expect="either",
     need=())
spec("big-text-4MiB-defs", "".join(f"mask m{i} = q_idx >= kv_idx\n" for i in range(160000)), expect="either",
     call="pass", need=())
spec("big-text-many-lines-error", "\n" * 1_000_000 + "mask m = q_idx <\n", need=[r":1000001:"])

# =====================================================================================
# 2. @attnc.jit
# =====================================================================================
JIT = {
    "jit-default-inf": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap: float = float('inf')):\n"
                       "    return cap * torch.tanh(score / cap)\nRUN(f)\n",
    "jit-default-nan": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap: float = float('nan')):\n"
                       "    return score + cap\nRUN(f)\n",
    "jit-default-1e39": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap: float = 1e39):\n"
                        "    return score + cap\nRUN(f)\n",
    "jit-default-int-2p40": "@attnc.jit\ndef f(b, h, q_idx, kv_idx, w: int = 2**40):\n"
                            "    return q_idx - kv_idx < w\nRUN(f)\n",
    "jit-default-str": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap='30'):\n    return score\nRUN(f)\n",
    "jit-default-none": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap=None):\n    return score\nRUN(f)\n",
    "jit-default-complex": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap=1j):\n    return score\nRUN(f)\n",
    "jit-default-tensor": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap=torch.tensor(1.0)):\n"
                          "    return score * cap\nRUN(f)\n",
    "jit-no-default-no-annot": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap):\n    return score * cap\n"
                               "RUN(f, cap=2.0)\n",
    "jit-annot-str": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap: 'float' = 1.0):\n    return score * cap\n"
                     "RUN(f)\n",
    "jit-annot-list": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap: list = 1.0):\n    return score * cap\n"
                      "RUN(f)\n",
    "jit-param-torch": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, torch: float = 1.0):\n"
                       "    return score * torch\nRUN(f)\n",
    "jit-param-q": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, q: float = 1.0):\n    return score * q\nRUN(f)\n",
    "jit-param-scale": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, scale: float = 1.0):\n"
                       "    return score * scale\nRUN(f)\n",
    "jit-param-return_lse": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, return_lse: bool = False):\n"
                            "    return score\nRUN(f)\n",
    "jit-param-underscore": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, _c: float = 1.0):\n"
                            "    return score * _c\nRUN(f)\n",
    "jit-param-nonascii": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, \u00e7: float = 1.0):\n"
                          "    return score * \u00e7\nRUN(f)\n",
    "jit-param-mask-keyword": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, mask: float = 1.0):\n"
                              "    return score * mask\nRUN(f)\n",
    "jit-param-n_kv-builtin": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, n_kv: int = 1):\n"
                              "    return score\nRUN(f)\n",
    "jit-varargs": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, *args):\n    return score\nRUN(f)\n",
    "jit-kwargs": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, **kw):\n    return score\nRUN(f)\n",
    "jit-kwonly": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, *, cap: float = 2.0):\n    return score * cap\n"
                  "RUN(f)\n",
    "jit-three-args": "@attnc.jit\ndef f(a, b, c):\n    return a\nRUN(f)\n",
    "jit-no-args": "@attnc.jit\ndef f():\n    return True\nRUN(f)\n",
    "jit-wrong-names": "@attnc.jit\ndef f(s, bb, hh, qi, ki):\n    return s\nRUN(f)\n",
    "jit-if-symbolic": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    if q_idx > kv_idx:\n        return True\n"
                       "    return False\nRUN(f)\n",
    "jit-python-and": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    return q_idx >= kv_idx and q_idx - kv_idx < 4\n"
                      "RUN(f)\n",
    "jit-int-of-symbol": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    return int(q_idx) >= 0\nRUN(f)\n",
    "jit-math-sin": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return math.sin(score)\nRUN(f)\n",
    "jit-numpy-exp": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return np.exp(score)\nRUN(f)\n",
    "jit-torch-softmax": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return torch.softmax(score, 0)\n"
                         "RUN(f)\n",
    "jit-where-nan": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                     "    return torch.where(q_idx >= kv_idx, score, float('nan'))\nRUN(f)\n",
    "jit-where-posinf": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                        "    return torch.where(q_idx >= kv_idx, score, float('inf'))\nRUN(f)\n",
    "jit-return-none": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return None\nRUN(f)\n",
    "jit-return-str": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return 'score'\nRUN(f)\n",
    "jit-return-tuple": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score, score\nRUN(f)\n",
    "jit-return-tensor": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return torch.ones(3)\nRUN(f)\n",
    "jit-return-number-mask": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    return 3\nRUN(f)\n",
    "jit-return-inf-score": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return float('inf')\nRUN(f)\n",
    "jit-return-huge-float": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score + 1e39\nRUN(f)\n",
    "jit-return-huge-int": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    return q_idx < 2**40\nRUN(f)\n",
    "jit-generator": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    yield score\nRUN(f)\n",
    "jit-async": "@attnc.jit\nasync def f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-builtin-fn": "f = attnc.jit(max)\nRUN(f)\n",
    "jit-partial": "import functools\ndef g(score, b, h, q_idx, kv_idx, c):\n    return score * c\n"
                   "f = attnc.jit(functools.partial(g, c=2.0))\nRUN(f)\n",
    "jit-callable-object": "class C:\n    def __call__(self, score, b, h, q_idx, kv_idx):\n        return score\n"
                           "f = attnc.jit(C())\nRUN(f)\n",
    "jit-not-callable": "f = attnc.jit(123)\n",
    "jit-norm-unknown": "@attnc.jit(norm='nonexistent')\ndef f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-norm-int": "@attnc.jit(norm=123)\ndef f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-norm-is-mask": "@attnc.jit(norm='causal')\ndef f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-norm-bad-text": "@attnc.jit(norm='norm z:\\n    out[i] = sum(v[j] for\\n')\n"
                         "def f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-norm-text-import": "@attnc.jit(norm='from \"/etc/passwd\" import x\\nnorm z:\\n    out[i] = sum(v[j] for j)\\n')\n"
                            "def f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-name-def": "@attnc.jit(name='def')\ndef f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-name-space": "@attnc.jit(name='bad name')\ndef f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-mask-mod-not-callable": "@attnc.jit(mask_mod=5)\ndef f(score, b, h, q_idx, kv_idx):\n    return score\n"
                                 "RUN(f)\n",
    "jit-mask-mod-is-score-mod": "@attnc.jit(mask_mod=lambda score, b, h, q_idx, kv_idx: score)\n"
                                 "def f(score, b, h, q_idx, kv_idx):\n    return score\nRUN(f)\n",
    "jit-capture-0d": "t = torch.tensor(2.0)\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score * t[()]\n"
                      "RUN(f)\n",
    "jit-capture-complex": "t = torch.ones(4, dtype=torch.complex64)\n@attnc.jit\n"
                           "def f(score, b, h, q_idx, kv_idx):\n    return score * t[h]\nRUN(f)\n",
    "jit-capture-slice": "t = torch.ones(4, 4)\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                         "    return score * t[h, :]\nRUN(f)\n",
    "jit-capture-float-index": "t = torch.ones(4)\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                               "    return score * t[score]\nRUN(f)\n",
    "jit-capture-meta": "t = torch.ones(4, device='meta')\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                        "    return score * t[h]\nRUN(f)\n",
    "jit-capture-sparse": "t = torch.ones(4).to_sparse()\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                          "    return score * t[h]\nRUN(f)\n",
    "jit-capture-int64-2p33": "doc = torch.tensor([0] * 8 + [2**33] * 8)\n@attnc.jit\n"
                              "def f(b, h, q_idx, kv_idx):\n    return doc[q_idx] == doc[kv_idx]\nRUN(f)\n",
    "jit-capture-empty": "t = torch.ones(0)\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                         "    return score + t[q_idx]\nRUN(f)\n",
    "jit-capture-requires-grad-int": "t = torch.arange(16)\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                                     "    return score + t[q_idx] * 0.1\nt.add_(1)\nRUN(f)\n",
    "jit-pass-captured": "t = torch.ones(4)\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                         "    return score * t[h]\nRUN(f, t=torch.zeros(4))\n",
    "jit-closure-mutated-after": "c = [2.0]\n@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n"
                                 "    return score * c[0]\nc[0] = 0.5\nRUN(f)\n",
    "jit-xor": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    return q_idx ^ kv_idx\nRUN(f)\n",
    "jit-bool-arith": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score + (q_idx > kv_idx)\nRUN(f)\n",
    "jit-raise-inside": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score / 0\nRUN(f)\n",
    "jit-float-div-zero-lit": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score * (1.0 / 0.0)\n",
    "jit-shift": "@attnc.jit\ndef f(b, h, q_idx, kv_idx):\n    return (q_idx << 2) > kv_idx\nRUN(f)\n",
    "jit-matmul": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score @ score\nRUN(f)\n",
    "jit-iter": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return sum(x for x in score)\nRUN(f)\n",
    "jit-float-of-symbol": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return float(score)\nRUN(f)\n",
    "jit-round": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return round(score)\nRUN(f)\n",
    "jit-hash": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score + hash(score)\nRUN(f)\n",
    "jit-unknown-method": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    return score.softmax(0)\nRUN(f)\n",
    "jit-deep-recursion": "def g(x, n):\n    return x if n == 0 else g(x + 0.0, n - 1)\n@attnc.jit\n"
                          "def f(score, b, h, q_idx, kv_idx):\n    return g(score, 400)\nRUN(f)\n",
    "jit-huge-expression": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    x = score\n"
                           "    for _ in range(5000):\n        x = x * 1.0 + 0.0\n    return x\nRUN(f)\n",
    "jit-doubling-expression": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx):\n    x = score\n"
                               "    for _ in range(60):\n        x = x + x\n    return x\nRUN(f)\n",
    "jit-kernel-param-passed-str": "@attnc.jit\ndef f(score, b, h, q_idx, kv_idx, cap: float = 1.0):\n"
                                   "    return score * cap\nRUN(f, cap='x')\n",
}
for cid, code in JIT.items():
    py(cid, code, expect="either" if cid in ("jit-no-default-no-annot", "jit-annot-str", "jit-kwonly",
                                             "jit-partial", "jit-callable-object", "jit-closure-mutated-after",
                                             "jit-capture-requires-grad-int", "jit-deep-recursion",
                                             "jit-raise-inside", "jit-float-div-zero-lit",
                                             "jit-param-scale") else "error",
       need=[r"case_code\.py:\d+|`\w+`|'\w+'"])

# =====================================================================================
# 3. call arguments
# =====================================================================================
A = "a = attnc.load('sliding_window')\nq, k, v = QKV()\n"
CALLS = {
    "call-q-list": A + "a(q.tolist(), k, v, window=4)",
    "call-q-numpy": A + "a(q.numpy(), k, v, window=4)",
    "call-q-none": A + "a(None, k, v, window=4)",
    "call-q-float64": A + "a(q.double(), k.double(), v.double(), window=4)",
    "call-q-int": A + "a(q.int(), k.int(), v.int(), window=4)",
    "call-q-bool": A + "a(q > 0, k > 0, v > 0, window=4)",
    "call-q-complex": A + "a(q.to(torch.complex64), k.to(torch.complex64), v.to(torch.complex64), window=4)",
    "call-q-fp8": A + "a(q.to(torch.float8_e4m3fn), k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn), window=4)",
    "call-q-rank3": A + "a(q[0], k[0], v[0], window=4)",
    "call-q-rank5": A + "a(q[None], k[None], v[None], window=4)",
    "call-q-rank0": A + "a(torch.tensor(1.0), k, v, window=4)",
    "call-q-meta": A + "a(q.to('meta'), k.to('meta'), v.to('meta'), window=4)",
    "call-q-sparse": A + "a(q.to_sparse(), k, v, window=4)",
    "call-q-nested": A + "a(torch.nested.nested_tensor([q[0,0], q[0,0,:3]]), k, v, window=4)",
    "call-mixed-dtypes": A + "a(q.half(), k, v, window=4)",
    "call-mixed-bf16-fp16": A + "a(q.bfloat16(), k.half(), v.half(), window=4)",
    "call-batch-mismatch": A + "a(q, torch.cat([k, k]), torch.cat([v, v]), window=4)",
    "call-headdim-mismatch": A + "a(q, k[..., :8], v, window=4)",
    "call-v-len-mismatch": A + "a(q, k, v[:, :, :5], window=4)",
    "call-v-heads-mismatch": A + "a(q, k, v[:, :1], window=4)",
    "call-gqa-3-2": "a = attnc.load('sliding_window')\nq, k, v = QKV(H=3, Hkv=2)\na(q, k, v, window=4)",
    "call-gqa-2-4": "a = attnc.load('sliding_window')\nq, k, v = QKV(H=2, Hkv=4)\na(q, k, v, window=4)",
    "call-hkv-0": "a = attnc.load('sliding_window')\nq, k, v = QKV(H=2, Hkv=0)\na(q, k, v, window=4)",
    "call-d-0": "a = attnc.load('sliding_window')\nq, k, v = QKV(D=0)\na(q, k, v, window=4)",
    "call-d-300": "a = attnc.load('sliding_window')\nq, k, v = QKV(N=2, D=300)\na(q, k, v, window=4)",
    "call-dv-0": "a = attnc.load('sliding_window')\nq, k, v = QKV(Dv=0)\na(q, k, v, window=4)",
    "call-scale-str": A + "a(q, k, v, scale='0.5', window=4)",
    "call-scale-complex": A + "a(q, k, v, scale=1j, window=4)",
    "call-scale-list": A + "a(q, k, v, scale=[0.5], window=4)",
    "call-scale-tensor-2": A + "a(q, k, v, scale=torch.ones(2), window=4)",
    "call-scale-reqgrad": A + "a(q, k, v, scale=torch.tensor(0.5, requires_grad=True), window=4)",
    "call-scale-bool": A + "a(q, k, v, scale=True, window=4)",
    "call-return-lse-str": A + "r = a(q, k, v, return_lse='no', window=4)\nif isinstance(r, tuple): ODD('return_lse=\"no\" (a str) accepted; returned (out, lse)')",
    "call-unknown-param": A + "a(q, k, v, window=4, windw=3)",
    "call-missing-param": A + "a(q, k, v)",
    "call-positional-param": A + "a(q, k, v, 4)",
    "call-window-str": A + "a(q, k, v, window='4')",
    "call-window-none": A + "a(q, k, v, window=None)",
    "call-window-float-frac": A + "a(q, k, v, window=3.5)",
    "call-window-2p31": A + "a(q, k, v, window=2**31)",
    "call-window-2p70": A + "a(q, k, v, window=2**70)",
    "call-window-nan": A + "a(q, k, v, window=float('nan'))",
    "call-window-inf": A + "a(q, k, v, window=float('inf'))",
    "call-window-complex": A + "a(q, k, v, window=4+0j)",
    "call-window-list": A + "a(q, k, v, window=[4])",
    "call-window-tensor-2": A + "a(q, k, v, window=torch.tensor([4, 5]))",
    "call-window-tensor-float-frac": A + "a(q, k, v, window=torch.tensor(3.5))",
    "call-window-tensor-reqgrad": A + "a(q, k, v, window=torch.tensor(4.0, requires_grad=True))",
    "call-window-np-uint64-huge": A + "a(q, k, v, window=np.uint64(2**63))",
    "call-window-decimal": A + "import decimal\na(q, k, v, window=decimal.Decimal(4))",
    "call-window-fraction": A + "import fractions\na(q, k, v, window=fractions.Fraction(7, 2))",
    "call-cap-str": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap='30')",
    "call-cap-none": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap=None)",
    "call-cap-bool": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap=True)",
    "call-cap-reqgrad": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap=torch.tensor(30.0, requires_grad=True))",
    "call-cap-complex-tensor": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap=torch.tensor(1+1j))",
    "call-cap-np-array-2": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap=np.array([1.0, 2.0]))",
    "call-cap-meta-tensor": "a = attnc.load('softcap')\nq, k, v = QKV()\na(q, k, v, cap=torch.tensor(3.0, device='meta'))",
    "call-bool-param-int": "a = attnc.load('natten1d')\nq, k, v = QKV()\na(q, k, v, causal=1)",
    "call-bool-param-str": "a = attnc.load('natten1d')\nq, k, v = QKV()\na(q, k, v, causal='False')",
    "call-doc-float": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(1, 16))",
    "call-doc-wrong-shape": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(1, 15, dtype=torch.long))",
    "call-doc-rank1": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(16, dtype=torch.long))",
    "call-doc-list": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=[[0] * 16])",
    "call-doc-meta": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(1, 16, dtype=torch.long, device='meta'))",
    "call-doc-sparse": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(1, 16, dtype=torch.long).to_sparse())",
    "call-doc-bool": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(1, 16, dtype=torch.bool))",
    "call-doc-missing": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v)",
    "call-doc-uint64": "a = attnc.load('document')\nq, k, v = QKV()\nRUN(a, doc=torch.tensor([[0]*8 + [2**40]*8], dtype=torch.uint64))",
    "call-doc-complex": "a = attnc.load('document')\nq, k, v = QKV()\na(q, k, v, doc=torch.zeros(1, 16, dtype=torch.complex64))",
    "call-sink-wrong-shape": "a = attnc.load('softmax_sink')\nq, k, v = QKV()\na(q, k, v, sink=torch.zeros(3))",
    "call-sink-int": "a = attnc.load('softmax_sink')\nq, k, v = QKV()\na(q, k, v, sink=torch.zeros(2, dtype=torch.int32))",
    "call-sink-scalar": "a = attnc.load('softmax_sink')\nq, k, v = QKV()\na(q, k, v, sink=0.5)",
    "call-table-wrong-shape": "a = attnc.load('relative_bias')\nq, k, v = QKV()\na(q, k, v, table=torch.zeros(2, 16))",
    "call-table-fp16-vs-fp32": "a = attnc.load('relative_bias')\nq, k, v = QKV()\nCHECK(a, q, k, v, table=torch.randn(2, 31).half())",
    "call-lse-on-no-lse-norm": "a = attnc.load('sigmoid_attention')\nq, k, v = QKV()\na(q, k, v, return_lse=True)",
    "call-kernel-path-bad-dtype": "a = attnc.load('causal')\na.kernel_path(torch.float64)",
    "call-kernel-path-str-dtype": "a = attnc.load('causal')\na.kernel_path('float16')",
    "call-reference-int-q": A + "a.reference(q.int(), k.int(), v.int(), window=4)",
    "call-reference-rank3": A + "a.reference(q[0], k[0], v[0], window=4)",
    "call-natten2d-n-not-grid": "a = attnc.load('natten2d')\nq, k, v = QKV(N=16)\na(q, k, v, width=3)",
    "call-natten2d-nq-ne-nkv": "a = attnc.load('natten2d')\nq, k, v = QKV(N=16, Nkv=32)\na(q, k, v, width=4)",
}
CALL_NEED = [("call-q-", r"\bq\b"), ("call-reference-", r"\bq\b"), ("call-mixed", r"dtype|float|half|bfloat"),
             ("batch", r"batch"), ("headdim", r"head dim"), ("v-len", r"\bv\b"), ("v-heads", r"\bv\b"),
             ("gqa", r"heads"), ("hkv", r"heads"), ("doc", r"doc"), ("call-d", r"head dim|D="), ("scale", r"scale"),
             ("return-lse", r"return_lse"), ("unknown-param", r"windw"), ("missing-param", r"window"),
             ("positional", r"positional|argument"), ("window", r"window"), ("cap", r"cap"), ("bool-param", r"causal"),
             ("doc", r"doc"), ("sink", r"sink"), ("table", r"table"), ("lse-on", r"lse"), ("kernel-path", r"dtype"),
             ("natten", r"grid|width|n_q|n_kv|16")]
for cid, code in CALLS.items():
    need = next((n for key, n in CALL_NEED if key in cid), r"\w")
    py(cid, code + "\n", need=[need])

# int64 tensor parameters beyond int32, NaN/inf inputs, huge values: run and compare (silent wrong answers)
VALUES = {
    "doc-ids-2p32": "a = attnc.load('document')\ndoc = torch.tensor([[0]*8 + [2**32]*8])\nRUN(a, doc=doc)",
    "doc-ids-2p32-plus1": "a = attnc.load('document')\ndoc = torch.tensor([[1]*8 + [2**32 + 1]*8])\nRUN(a, doc=doc)",
    "doc-ids-neg-2p32": "a = attnc.load('document')\ndoc = torch.tensor([[5]*8 + [5 - 2**32]*8])\nRUN(a, doc=doc)",
    "doc-ids-int64-max": "a = attnc.load('document')\ndoc = torch.tensor([[2**63-1]*8 + [-1]*8])\nRUN(a, doc=doc)",
    "doc-ids-2p31": "a = attnc.load('document')\ndoc = torch.tensor([[2**31]*8 + [-2**31]*8])\nRUN(a, doc=doc)",
    "int-tensor-param-index-2p32": "a = attnc.compile('score sc(t: tensor[_] int) = score + float(t[q_idx])\\n')\n"
                                   "RUN(a, t=torch.full((16,), 2**32 + 3))",
    "float-tensor-param-fp64-huge": "a = attnc.compile('score sc(t: tensor[H] float) = score + t[h] * 0.0\\n')\n"
                                    "RUN(a, t=torch.full((2,), 1e300, dtype=torch.float64))",
    "sink-inf": "a = attnc.load('softmax_sink')\nRUN(a, sink=torch.full((2,), float('inf')))",
    "sink-nan": "a = attnc.load('softmax_sink')\nRUN(a, sink=torch.full((2,), float('nan')))",
    "table-nan": "a = attnc.load('relative_bias')\nRUN(a, table=torch.full((2, 31), float('nan')))",
    "table-inf": "a = attnc.load('relative_bias')\nRUN(a, table=torch.full((2, 31), float('inf')))",
    "table-neg-inf": "a = attnc.load('relative_bias')\nRUN(a, table=torch.full((2, 31), -float('inf')))",
    "q-nan-one": "a = attnc.load('causal')\nq, k, v = QKV()\nq[0, 0, 3, 0] = float('nan')\nCHECK(a, q, k, v)",
    "k-inf-one": "a = attnc.load('causal')\nq, k, v = QKV()\nk[0, 0, 3, 0] = float('inf')\nCHECK(a, q, k, v)",
    "v-inf-kept": "a = attnc.load('full')\nq, k, v = QKV()\nv[0, 0, 3, 0] = float('inf')\nCHECK(a, q, k, v)",
    "q-all-inf": "a = attnc.load('full')\nq, k, v = QKV()\nq.fill_(float('inf'))\nCHECK(a, q, k, v)",
    "q-huge-fp32-1e30": "a = attnc.load('full')\nq, k, v = QKV(mul=1e30)\nCHECK(a, q, k, v)",
    "scale-1e10-full-fp32": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=1e10)",
    "scale-1e10-causal-fp32": "a = attnc.load('causal')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=1e10)",
    "scale-1e6-full-fp32": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=1e6)",
    "scale-inf": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=float('inf'))",
    "scale-nan": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=float('nan'))",
    "scale-1e39": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=1e39)",
    "scale-2p100-int": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=2**100)",
    "scale-1e-45": "a = attnc.load('full')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=1e-45)",
    "bf16-near-3e38": "a = attnc.load('full')\nq, k, v = QKV(dtype=torch.bfloat16)\nq = (q.float() * 3e38).clamp(-3e38, 3e38).bfloat16()\n"
                      "k = k.float().clamp(-1, 1).bfloat16()\nCHECK(a, q, k, v)",
    "bf16-q-k-3e38": "a = attnc.load('causal')\nq = torch.full((1, 2, 16, 16), 3e38, dtype=torch.bfloat16)\n"
                     "k = torch.full((1, 2, 16, 16), 3e38, dtype=torch.bfloat16)\nv = T(1, 2, 16, 16).bfloat16()\nCHECK(a, q, k, v)",
    "bf16-v-3e38": "a = attnc.load('causal')\nq, k, v = QKV(dtype=torch.bfloat16)\nv = (v.float() * 3e38).clamp(-3e38, 3e38).bfloat16()\nCHECK(a, q, k, v)",
    "fp16-v-60000": "a = attnc.load('causal')\nq, k, v = QKV(dtype=torch.float16)\nv = (v.float() * 60000).clamp(-65000, 65000).half()\nCHECK(a, q, k, v)",
    "fp16-q-k-large": "a = attnc.load('causal')\nq, k, v = QKV(dtype=torch.float16, mul=200)\nCHECK(a, q, k, v)",
    "fp16-relu-large": "a = attnc.load('relu')\nq, k, v = QKV(dtype=torch.float16, mul=30)\nCHECK(a, q, k, v)",
    "fp16-none-norm-large": "a = attnc.load('none')\nq, k, v = QKV(dtype=torch.float16, mul=30)\nCHECK(a, q, k, v)",
    "softcap-cap-1e-30-fp32": "a = attnc.load('softcap')\nRUN(a, cap=1e-30)",
    "alibi-many-heads": "a = attnc.load('alibi')\nRUN(a, H=64, N=4, D=4)",
}
for cid, code in VALUES.items():
    py(cid, code + "\n", expect="either", need=[r"\w"])

# =====================================================================================
# 4. varlen
# =====================================================================================
V = ("a = attnc.load('sliding_window')\nq = T(12, 2, 16); k = T(12, 2, 16, seed=1); v = T(12, 2, 16, seed=2)\n")
VARLEN = {
    "varlen-non-monotone": V + "cu = torch.tensor([0, 8, 4, 12], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-float-cu": V + "cu = torch.tensor([0., 4., 12.])\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-int16-cu": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int16)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-uint8-cu": V + "cu = torch.tensor([0, 4, 12], dtype=torch.uint8)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-bool-cu": V + "cu = torch.tensor([False, True])\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-2d-cu": V + "cu = torch.tensor([[0, 4, 12]], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-list-cu": V + "a.varlen(q, k, v, [0, 4, 12], [0, 4, 12], window=4)",
    "varlen-numpy-cu": V + "cu = np.array([0, 4, 12], dtype=np.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-not-start-0": V + "cu = torch.tensor([1, 4, 12], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-short-end": V + "cu = torch.tensor([0, 4, 10], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-over-end": V + "cu = torch.tensor([0, 4, 20], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-negative": V + "cu = torch.tensor([0, -4, 12], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-empty-cu": V + "cu = torch.tensor([], dtype=torch.int32)\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-count-mismatch": V + "a.varlen(q, k, v, torch.tensor([0, 12], dtype=torch.int32), torch.tensor([0, 4, 12], dtype=torch.int32), window=4)",
    "varlen-huge-int64": V + "cu = torch.tensor([0, 2**40, 12])\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-int64-wraps-to-valid": V + "cu = torch.tensor([0, 4 + 2**32, 12])\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-meta-cu": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int32, device='meta')\na.varlen(q, k, v, cu, cu, window=4)",
    "varlen-q-4d": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int32)\na.varlen(q[None], k[None], v[None], cu, cu, window=4)",
    "varlen-d-mismatch": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int32)\na.varlen(q, k[..., :8], v, cu, cu, window=4)",
    "varlen-kv-rows-mismatch": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int32)\na.varlen(q, k, v[:10], cu, cu, window=4)",
    "varlen-grid-variant": "a = attnc.load('natten2d')\nq = T(16, 2, 16)\ncu = torch.tensor([0, 16], dtype=torch.int32)\n"
                           "a.varlen(q, q, q, cu, cu, width=4)",
    "varlen-relu-default": "a = attnc.load('relu')\nq = T(12, 2, 16)\ncu = torch.tensor([0, 4, 12], dtype=torch.int32)\n"
                           "a.varlen(q, q, q, cu, cu)",
    "varlen-q-float64": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int32)\na.varlen(q.double(), k.double(), v.double(), cu, cu, window=4)",
    "varlen-q-none": V + "cu = torch.tensor([0, 4, 12], dtype=torch.int32)\na.varlen(None, k, v, cu, cu, window=4)",
    "varlen-noncontig-cu": V + "cu = torch.tensor([0, 99, 4, 99, 12, 99], dtype=torch.int32)[::2]\n"
                           "VCHECK(a, q, k, v, cu, cu, window=4)",
    "varlen-doc-wrong-rows": "a = attnc.load('document')\nq = T(12, 2, 16)\ncu = torch.tensor([0, 4, 12], dtype=torch.int32)\n"
                             "a.varlen(q, q, q, cu, cu, doc=torch.zeros(1, 8, dtype=torch.long))",
    "varlen-cu-reqgrad-float": V + "cu = torch.tensor([0., 4., 12.], requires_grad=True)\na.varlen(q, k, v, cu, cu, window=4)",
}
for cid, code in VARLEN.items():
    py(cid, code + "\n", expect="either" if cid in ("varlen-noncontig-cu",) else "error",
       need=[r"cu_seqlens|`q`|`k`|`v`|grid|relu|divisor|doc|q|k|v"])

# =====================================================================================
# 5. CLI
# =====================================================================================
CLI = {
    "cli-nq-huge": ["check", "causal", "--nq", "99999999999", "--dtype", "float32"],
    "cli-nq-float": ["check", "causal", "--nq", "1e8"],
    "cli-nq-neg": ["check", "causal", "--nq", "-5"],
    "cli-nq-zero": ["check", "causal", "--nq", "0"],
    "cli-nkv-huge": ["check", "causal", "--nq", "4", "--nkv", "3000000000", "--dtype", "float32"],
    "cli-batch-huge": ["check", "causal", "--nq", "4", "--batch", "100000000000", "--dtype", "float32"],
    "cli-heads-huge": ["check", "causal", "--nq", "4", "--heads", "4294967296", "--kv-heads", "1", "--dtype", "float32"],
    "cli-head-dim-1000": ["check", "causal", "--nq", "4", "--head-dim", "1000", "--dtype", "float32"],
    "cli-head-dim-v-300": ["check", "causal", "--nq", "4", "--head-dim-v", "300", "--dtype", "float32"],
    "cli-gqa-bad": ["check", "causal", "--nq", "4", "--heads", "3", "--kv-heads", "2", "--dtype", "float32"],
    "cli-kv-heads-gt-heads": ["check", "causal", "--nq", "4", "--heads", "2", "--kv-heads", "4", "--dtype", "float32"],
    "cli-seed-expr": ["check", "causal", "--nq", "4", "--seed", "2**70"],
    "cli-seed-2p70": ["check", "causal", "--nq", "4", "--dtype", "float32", "--seed", str(2**70)],
    "cli-seed-neg": ["check", "causal", "--nq", "4", "--dtype", "float32", "--seed", "-1"],
    "cli-seed-2p64": ["check", "causal", "--nq", "4", "--dtype", "float32", "--seed", str(2**64)],
    "cli-seed-10k-digits": ["check", "causal", "--nq", "4", "--seed", "9" * 10000],
    "cli-param-no-eq": ["check", "sliding_window", "--nq", "4", "--param", "window"],
    "cli-param-empty-name": ["check", "sliding_window", "--nq", "4", "--param", "=5"],
    "cli-param-bad-value": ["check", "sliding_window", "--nq", "4", "--param", "window=abc"],
    "cli-param-1e400": ["check", "sliding_window", "--nq", "4", "--param", "window=1e400"],
    "cli-param-nan-int": ["check", "sliding_window", "--nq", "4", "--param", "window=nan"],
    "cli-param-inf-int": ["check", "sliding_window", "--nq", "4", "--param", "window=inf"],
    "cli-param-huge-int": ["check", "sliding_window", "--nq", "4", "--param", "window=99999999999"],
    "cli-param-huge-digits": ["check", "sliding_window", "--nq", "4", "--param", "window=" + "9" * 5000],
    "cli-param-unknown": ["check", "sliding_window", "--nq", "4", "--param", "windw=3"],
    "cli-param-repeated": ["check", "sliding_window", "--nq", "4", "--dtype", "float32", "--param", "window=1",
                           "--param", "window=2"],
    "cli-param-float-for-int": ["check", "sliding_window", "--nq", "4", "--param", "window=2.5"],
    "cli-param-str-for-bool": ["check", "natten1d", "--nq", "4", "--param", "causal=maybe"],
    "cli-param-cap0": ["check", "softcap", "--nq", "4", "--dtype", "float32", "--param", "cap=0"],
    "cli-param-cap-inf": ["check", "softcap", "--nq", "4", "--dtype", "float32", "--param", "cap=inf"],
    "cli-param-tensor": ["check", "document", "--nq", "4", "--param", "doc=3"],
    "cli-param-chunk0": ["check", "chunked", "--nq", "4", "--dtype", "float32", "--param", "chunk=0"],
    "cli-param-natten-width0": ["check", "natten2d", "--nq", "16", "--dtype", "float32", "--param", "width=0"],
    "cli-param-relu-div0": ["check", "relu", "--nq", "4", "--dtype", "float32", "--param", "divisor=0"],
    "cli-param-unicode-name": ["check", "sliding_window", "--nq", "4", "--param", "w\u00efndow=3"],
    "cli-device-cuda": ["check", "causal", "--nq", "4", "--device", "cuda"],
    "cli-device-tpu": ["check", "causal", "--nq", "4", "--device", "tpu"],
    "cli-device-empty": ["check", "causal", "--nq", "4", "--device", ""],
    "cli-device-meta": ["check", "causal", "--nq", "4", "--device", "meta"],
    "cli-device-cpu99": ["check", "causal", "--nq", "4", "--dtype", "float32", "--device", "cpu:99"],
    "cli-device-cuda-neg": ["check", "causal", "--nq", "4", "--device", "cuda:-1"],
    "cli-dtype-float64": ["check", "causal", "--nq", "4", "--dtype", "float64"],
    "cli-examples-zero": ["check", "causal", "--examples", "0"],
    "cli-examples-huge": ["check", "causal", "--examples", "99999999999", "--dtype", "float32"],
    "cli-property-bogus": ["check", "causal", "--examples", "1", "--property", "bogus"],
    "cli-property-no-examples": ["check", "causal", "--property", "reference"],
    "cli-unknown-command": ["frobnicate"],
    "cli-no-command": [],
    "cli-unknown-option": ["list", "--bogus"],
    "cli-check-missing-spec": ["check", "/nonexistent/x.attn"],
    "cli-check-unknown-variant": ["check", "causl"],
    "cli-check-passwd": ["check", "/etc/passwd"],
    "cli-check-dev-zero": ["check", "/dev/zero"],
    "cli-check-dir": ["check", "/tmp"],
    "cli-check-fifo": ["check", "@FIX@/fifo.attn"],
    "cli-check-symlink-loop": ["check", "@FIX@/loop1.attn"],
    "cli-check-binary": ["check", "@FIX@/binary.attn"],
    "cli-check-secret-parses": ["check", "@FIX@/secret_parses.txt"],
    "cli-check-bad-syntax": ["check", "@FIX@/bad_syntax.attn"],
    "cli-check-big": ["check", "@FIX@/big.attn"],
    "cli-check-proc-environ": ["check", "/proc/self/environ"],
    "cli-check-wrong-name": ["check", "@FIX@/good.attn", "nonexistent"],
    "cli-check-empty-spec-arg": ["check", ""],
    "cli-check-dash-spec": ["check", "-"],
    "cli-explain-unknown": ["explain", "nonexistent_variant"],
    "cli-explain-bad-name": ["explain", "causal", "nope"],
    "cli-explain-passwd": ["explain", "/etc/passwd"],
    "cli-show-block-3": ["show", "causal", "--nq", "8", "--block-m", "3", "--no-visits"],
    "cli-show-nq-huge": ["show", "causal", "--nq", "99999999999", "--no-visits"],
    "cli-show-pixels-0": ["show", "causal", "--nq", "8", "--pixels", "0", "--no-visits"],
    "cli-show-pixels-huge": ["show", "causal", "--nq", "8", "--pixels", "100000", "--no-visits"],
    "cli-show-o-dev-full": ["show", "causal", "--nq", "8", "--no-visits", "-o", "@FULLDEV_SHOW@"],
    "cli-show-o-missing-dir": ["show", "causal", "--nq", "8", "--no-visits", "-o", "@FIX@/nodir_show/sub/x.png"],
    "cli-show-o-dir": ["show", "causal", "--nq", "8", "--no-visits", "-o", "@FIX@"],
    "cli-show-o-symlink": ["show", "causal", "--nq", "8", "--no-visits", "-o", "@FIX@/symlink_out.png"],
    "cli-show-o-txt-ext": ["show", "causal", "--nq", "8", "--no-visits", "-o", "out.txt"],
    "cli-show-param-missing": ["show", "sliding_window", "--nq", "8", "--no-visits", "--param", "window=-2147483649"],
    "cli-show-natten-width0": ["show", "natten2d", "--nq", "16", "--no-visits", "--param", "width=0"],
    "cli-show-nkv-huge-visits": ["show", "causal", "--nq", "8", "--nkv", "3000000000"],
    "cli-compile-o-missing-dir": ["compile", "causal", "-o", "@FIX@/nodir_compile/sub/k.py"],
    "cli-compile-o-dir": ["compile", "causal", "-o", "@FIX@"],
    "cli-compile-o-dev-full": ["compile", "causal", "-o", "@FULLDEV_COMPILE@"],
    "cli-compile-o-symlink": ["compile", "causal", "-o", "@FIX@/symlink_out.py"],
    "cli-compile-o-empty": ["compile", "causal", "-o", ""],
    "cli-compile-o-parent-is-file": ["compile", "causal", "-o", "@FIX@/secret.txt/k.py"],
    "cli-compile-o-long-name": ["compile", "causal", "-o", "k" * 300 + ".py"],
    "cli-compile-o-proc": ["compile", "causal", "-o", "/proc/self/k.py"],
    "cli-compile-dtype-float64": ["compile", "causal", "--dtype", "float64"],
    "cli-compile-unknown": ["compile", "nonexistent_variant"],
    "cli-compile-name-mask-only": ["compile", "causal", "causal", "-o", "x-y.py"],
}
CLI_NEED = [("cli-nq", r"nq"), ("cli-nkv", r"nkv"), ("cli-batch", r"batch"), ("cli-heads", r"heads"),
            ("cli-head-dim", r"head.dim"), ("cli-gqa", r"heads"), ("cli-seed", r"seed"),
            ("cli-param", r"param|window|cap|chunk|width|divisor|causal|doc"), ("cli-device", r"device"),
            ("cli-dtype", r"dtype"), ("cli-examples", r"examples"), ("cli-property", r"property"),
            ("-o-", r"-o|output"), ("cli-show-block", r"block"), ("cli-show-nq", r"nq"), ("cli-show-pixels", r"pixels"),
            ("cli-show-nkv", r"nkv"), ("cli-show-param", r"param|window"), ("cli-show-natten", r"param|width|grid"),
            ("cli-compile-dtype", r"dtype"), ("cli-check-wrong-name", r"nonexistent"),
            ("cli-explain-bad-name", r"nope")]


def _is_dev(name):
    def post(fix, work):
        p = SUBST.get(name, "")
        if p.startswith(fix) and not stat.S_ISCHR(os.lstat(p).st_mode):
            return f"the character device given to -o was replaced by a regular file ({p})"
    return post


def _not_created(sub):
    def post(fix, work):
        if os.path.exists(os.path.join(fix, sub)):
            return f"created the missing directory {sub}/ and wrote into it"
    return post


def _victim(name):
    def post(fix, work):
        if open(os.path.join(fix, name)).read() != "VICTIM\n":
            return f"overwrote the symlink's target {name}"
    return post


POST = {"cli-show-o-dev-full": _is_dev("@FULLDEV_SHOW@"), "cli-compile-o-dev-full": _is_dev("@FULLDEV_COMPILE@"),
        "cli-show-o-missing-dir": _not_created("nodir_show"), "cli-compile-o-missing-dir": _not_created("nodir_compile"),
        "cli-show-o-symlink": _victim("victim_png.txt"), "cli-compile-o-symlink": _victim("victim_py.txt")}
for cid, args in CLI.items():
    need = next(([n] for key, n in CLI_NEED if key in cid), [])
    cli(cid, args, expect="either" if cid in ("cli-param-repeated", "cli-device-cpu99", "cli-seed-neg",
                                              "cli-seed-2p70", "cli-seed-2p64", "cli-show-o-txt-ext",
                                              "cli-compile-o-long-name", "cli-compile-name-mask-only",
                                              "cli-param-cap-inf", "cli-param-cap0") else "error", need=need,
        forbid=["root:x:", "PATH="] + (["SECRET"] if "parses" not in cid else []),
        warn_forbid=["SECRET"] if "parses" in cid else [], post=POST.get(cid))

# =====================================================================================
# 6. cache directory conditions
# =====================================================================================
CACHE_RUN = "a = attnc.load('causal')\nRUN(a)\n"
CACHE = {
    "cache-regular-file": ("open('cf', 'w').write('x')\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('cf')\n", "error"),
    "cache-dangling-symlink": ("os.symlink('/nonexistent/zzz', 'dl')\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('dl')\n", "error"),
    "cache-symlink-loop": ("os.symlink('l2', 'l1'); os.symlink('l1', 'l2')\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('l1')\n", "error"),
    "cache-dev-null": ("os.environ['ATTNC_CACHE_DIR'] = '/dev/null'\n", "error"),
    "cache-under-proc": ("os.environ['ATTNC_CACHE_DIR'] = '/proc/self/attnc_cache'\n", "error"),
    "cache-under-file": ("open('cf', 'w').write('x')\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('cf') + '/sub'\n", "error"),
    "cache-long-path": ("os.environ['ATTNC_CACHE_DIR'] = '/tmp/' + 'c' * 5000\n", "error"),
    "cache-nul-byte": ("os.environ = dict(os.environ, ATTNC_CACHE_DIR='/tmp/advwork/a\\x00b')\n", "error"),
    "cache-readonly-dir": ("os.mkdir('ro', 0o500)\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('ro')\n"
                           "NOTE('running as uid %d' % os.getuid())\n", "either"),
    "cache-world-writable": ("os.mkdir('ww'); os.chmod('ww', 0o777)\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('ww')\n",
                             "valid"),
    "cache-sticky-1777": ("os.mkdir('st'); os.chmod('st', 0o1777)\nos.environ['ATTNC_CACHE_DIR'] = os.path.abspath('st')\n",
                          "error"),  # a shared directory (like /tmp) is refused, never chmod-ed
    "cache-relative": ("os.environ['ATTNC_CACHE_DIR'] = 'rel/cache'\n", "either"),
    "cache-empty-string": ("os.environ['ATTNC_CACHE_DIR'] = ''\nos.environ['HOME'] = os.path.abspath('home')\n", "either"),
    "cache-symlink-to-dir": ("os.mkdir('real')\nos.symlink(os.path.abspath('real'), 'sl')\n"
                             "os.environ['ATTNC_CACHE_DIR'] = os.path.abspath('sl')\n", "valid"),
    "cache-home-unusable": ("os.environ.pop('ATTNC_CACHE_DIR')\nopen('hf', 'w').write('x')\n"
                            "os.environ['HOME'] = os.path.abspath('hf')\n", "valid"),
    "cache-newline-in-name": ("os.environ['ATTNC_CACHE_DIR'] = os.path.abspath('a\\nb')\n", "valid"),
}
for cid, (setup, ex) in CACHE.items():
    post = ""
    if cid in ("cache-world-writable", "cache-sticky-1777"):
        d = "ww" if "world" in cid else "st"
        post = f"m = os.stat('{d}').st_mode & 0o7777\nNOTE('mode after: %o' % m)\nif m & 0o022: BAD('still group/world-writable: %o' % m)\n"
        if d == "st":
            post += "if m != 0o1777: ODD('a shared sticky 1777 directory (like /tmp) was chmod-ed to %o' % m)\n"
    py(cid, setup + CACHE_RUN + post, expect=ex, need=["ATTNC_CACHE_DIR"])

PLANT = ("cd = os.path.abspath('c'); os.environ['ATTNC_CACHE_DIR'] = cd\n"
         "a = attnc.load('causal')\nRUN(a)\n"
         "files = [f for f in os.listdir(cd) if f.endswith('.py')]\n"
         "import attnc.runtime.compiler as C\nC._memory.clear()\n"
         "for k_ in [m for m in sys.modules if m.startswith('attnc_kernel_')]: del sys.modules[k_]\n"
         "marker = os.path.abspath('pwned')\n"
         "evil = 'import os\\nopen(%r, \"w\").write(\"x\")\\n' % marker\n")
PLANTS = {
    "plant-evil-py": "for f in files: open(os.path.join(cd, f), 'w').write(evil)\n",
    "plant-truncated": "for f in files:\n    p = os.path.join(cd, f); t = open(p).read(); open(p, 'w').write(t[:len(t)//2])\n",
    "plant-garbage-bytes": "for f in files: open(os.path.join(cd, f), 'wb').write(os.urandom(4096))\n",
    "plant-dir-in-place": "for f in files:\n    p = os.path.join(cd, f); os.unlink(p); os.mkdir(p)\n",
    "plant-symlink-to-victim": "victim = os.path.abspath('victim.txt'); open(victim, 'w').write('VICTIM')\n"
                               "for f in files:\n    p = os.path.join(cd, f); os.unlink(p); os.symlink(victim, p)\n",
    "plant-pycache": "os.makedirs(os.path.join(cd, '__pycache__'), exist_ok=True)\nimport py_compile, importlib.util\n"
                     "for f in files:\n    p = os.path.join(cd, f); st = os.stat(p)\n"
                     "    src = os.path.join(WORK, 'evil_src.py'); open(src, 'w').write(evil)\n"
                     "    pyc = importlib.util.cache_from_source(p)\n"
                     "    py_compile.compile(src, cfile=pyc)\n"
                     "    data = bytearray(open(pyc, 'rb').read()); import struct\n"
                     "    data[8:16] = struct.pack('<II', int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)\n"
                     "    open(pyc, 'wb').write(bytes(data))\n",
    "plant-chmod-000": "for f in files: os.chmod(os.path.join(cd, f), 0)\n",
    "plant-fifo": "for f in files:\n    p = os.path.join(cd, f); os.unlink(p); os.mkfifo(p)\n",
    "plant-cache-dir-replaced-by-file": "import shutil\nshutil.rmtree(cd)\nopen(cd, 'w').write('x')\n",
}
for cid, corrupt in PLANTS.items():
    code = PLANT + corrupt + ("RUN(a)\n" if "replaced" in cid else "a = attnc.load('causal')\nRUN(a)\n") + \
        "if os.path.exists(marker): BAD('planted code ran')\n" + \
        ("if open(victim).read() != 'VICTIM': BAD('symlink target overwritten')\n" if "victim" in cid else "")
    py(cid, code, expect="either" if "replaced" in cid else "valid", need=["ATTNC_CACHE_DIR|cache"])

# =====================================================================================
# 7. unusual but valid inputs (must run and match the reference)
# =====================================================================================
VALID = {
    "ok-full-n1": "RUN(attnc.load('full'), N=1)",
    "ok-causal-n17-d3": "RUN(attnc.load('causal'), N=17, D=3)",
    "ok-causal-nq1-nkv64": "RUN(attnc.load('causal'), N=1, Nkv=64)",
    "ok-causal-nq64-nkv1": "RUN(attnc.load('causal'), N=64, Nkv=1)",
    "ok-causal-d1": "RUN(attnc.load('causal'), D=1)",
    "ok-causal-dv-ne-d": "RUN(attnc.load('causal'), D=8, Dv=24)",
    "ok-causal-gqa-4-1": "RUN(attnc.load('causal'), H=4, Hkv=1)",
    "ok-causal-b0": "RUN(attnc.load('causal'), B=0)",
    "ok-causal-nq0": "RUN(attnc.load('causal'), N=0, Nkv=8)",
    "ok-causal-nkv0": "RUN(attnc.load('causal'), N=8, Nkv=0)",
    "ok-causal-fp16": "RUN(attnc.load('causal'), N=33, dtype=torch.float16)",
    "ok-causal-bf16": "RUN(attnc.load('causal'), N=33, dtype=torch.bfloat16)",
    "ok-sliding-window0": "RUN(attnc.load('sliding_window'), window=0)",
    "ok-sliding-window-neg": "RUN(attnc.load('sliding_window'), window=-5)",
    "ok-sliding-window-intmax": "RUN(attnc.load('sliding_window'), window=2**31-1)",
    "ok-sliding-window-np-int64": "RUN(attnc.load('sliding_window'), window=np.int64(5))",
    "ok-sliding-window-0d-tensor": "RUN(attnc.load('sliding_window'), window=torch.tensor(5))",
    "ok-sliding-window-float-int": "RUN(attnc.load('sliding_window'), window=5.0)",
    "ok-chunked": "RUN(attnc.load('chunked'), N=40, chunk=7)",
    "ok-dilated-window": "RUN(attnc.load('dilated_window'), N=40, window=3, dilation=3)",
    "ok-prefix-lm": "RUN(attnc.load('prefix_lm'), N=20, Nkv=30, prefix=9)",
    "ok-sink-window": "RUN(attnc.load('sink_window'), N=40, sinks=2, window=5)",
    "ok-alibi": "RUN(attnc.load('alibi'), H=4, N=20)",
    "ok-softcap-default": "RUN(attnc.load('softcap'), N=20)",
    "ok-softcap-np-float32": "RUN(attnc.load('softcap'), cap=np.float32(5.0))",
    "ok-softcap-0d-tensor": "RUN(attnc.load('softcap'), cap=torch.tensor(5.0))",
    "ok-softcap-int": "RUN(attnc.load('softcap'), cap=5)",
    "ok-relu": "RUN(attnc.load('relu'), N=20)",
    "ok-sigmoid": "RUN(attnc.load('sigmoid'), N=20, bias=-2.0)",
    "ok-sigmoid-attention": "RUN(attnc.load('sigmoid_attention'), N=20)",
    "ok-off-by-one": "RUN(attnc.load('softmax_off_by_one'), N=20)",
    "ok-softmax-sink": "RUN(attnc.load('softmax_sink'), N=20, sink=torch.randn(2))",
    "ok-softmax-sink-neginf": "RUN(attnc.load('softmax_sink'), sink=torch.full((2,), -float('inf')))",
    "ok-softmax-sink-fp64": "RUN(attnc.load('softmax_sink'), sink=torch.randn(2, dtype=torch.float64))",
    "ok-relative-bias": "RUN(attnc.load('relative_bias'), N=12, Nkv=20, table=torch.randn(2, 31))",
    "ok-clipped-softmax": "RUN(attnc.load('clipped_softmax'), N=20)",
    "ok-none-norm": "RUN(attnc.load('none'), N=20)",
    "ok-document-neg-ids": "RUN(attnc.load('document'), doc=torch.tensor([[-5]*5 + [-2**31]*5 + [2**31-1]*6]))",
    "ok-document-noncontig": "d = torch.tensor([[0]*8 + [1]*8, [0]*16]).t().contiguous().t()[:1]\nRUN(attnc.load('document'), doc=d)",
    "ok-natten1d": "RUN(attnc.load('natten1d'), N=20, kernel=5, dilation=2)",
    "ok-natten2d": "RUN(attnc.load('natten2d'), N=36, width=6, kernel_h=3, kernel_w=3)",
    "ok-natten3d": "RUN(attnc.load('natten3d'), N=32, height=4, width=4, kernel_d=1, causal_d=True)",
    "ok-q-transposed": "a = attnc.load('causal')\nq, k, v = QKV()\nq = q.transpose(2, 3).contiguous().transpose(2, 3)\nCHECK(a, q, k, v)",
    "ok-bnhd-layout": "a = attnc.load('causal')\nq, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in QKV(N=20))\nCHECK(a, q, k, v)",
    "ok-kv-expanded-stride0": "a = attnc.load('causal')\nq, k, v = QKV(H=4)\nk = k[:, :1].expand(1, 4, 16, 16); v = v[:, :1].expand(1, 4, 16, 16)\nCHECK(a, q, k, v)",
    "ok-q-sliced-every-other": "a = attnc.load('causal')\nq, k, v = QKV(D=32)\nCHECK(a, q[..., ::2], k[..., ::2], v[..., ::2])",
    "ok-q-offset-storage": "a = attnc.load('causal')\nq, k, v = QKV(N=17)\nCHECK(a, q[:, :, 1:], k[:, :, 1:], v[:, :, 1:])",
    "ok-scale-zero": "a = attnc.load('causal')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=0.0)",
    "ok-scale-neg": "a = attnc.load('causal')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=-0.5)",
    "ok-scale-np": "a = attnc.load('causal')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=np.float64(0.3))",
    "ok-scale-0d-tensor": "a = attnc.load('causal')\nq, k, v = QKV()\nCHECK(a, q, k, v, scale=torch.tensor(0.3))",
    "ok-q-requires-grad-forward": "a = attnc.load('causal')\nq, k, v = QKV()\nCHECK(a, q.requires_grad_(), k, v)",
    "ok-no-grad-mode": "a = attnc.load('causal')\nq, k, v = QKV()\nwith torch.inference_mode():\n    CHECK(a, q, k, v)",
    "ok-mask-false": "a = attnc.compile('mask m = False\\n')\nRUN(a)",
    "ok-spec-crlf": "a = attnc.compile('attention a(w: int = 4):\\r\\n    mask = sliding_window(w)\\r\\n')\nRUN(a)",
    "ok-spec-bom-text": "a = attnc.compile('\\ufeffattention a:\\n    mask = causal\\n')\nRUN(a)",
    "ok-spec-unicode-comment": "a = attnc.compile('# \u00fcnic\u00f6de \U0001F600 \u202e\\nattention a:\\n    mask = causal  # \u4e2d\u6587\\n')\nRUN(a)",
    "ok-spec-1MiB-file": "a = attnc.compile(FIX + '/exact1m.attn')\nRUN(a)",
    "ok-spec-bom-file": "a = attnc.compile(FIX + '/bom.attn')\nRUN(a)",
    "ok-spec-long-line-file": "a = attnc.compile(FIX + '/longline.attn')\nRUN(a)",
    "ok-spec-int-min-literal": "a = attnc.compile('mask m = q_idx + kv_idx > -2147483648\\n')\nRUN(a)",
    "ok-spec-nest-110": "a = attnc.compile('score sc = ' + '(' * 50 + ' + '.join(['score * 0.01'] * 110) + ')' * 50 + '\\n')\nRUN(a)",
    "ok-examples-all": "import glob\nfrom attnc.runtime.check import random_params\n"
                       "for f in sorted(glob.glob(os.path.join(os.environ['ATTNC_ROOT'], 'examples', '*.attn'))):\n"
                       "    sf = attnc.spec_from_file(f)\n    for nm in sf.names:\n"
                       "        if sf.definition(nm).kind != 'attention': continue\n"
                       "        a = attnc.compile(f, nm)\n        q, k, v = QKV(N=12)\n"
                       "        ps = {x: y for x, y in random_params(a, q, k, v, {}, torch.Generator().manual_seed(0)).items()\n"
                       "              if isinstance(y, torch.Tensor)}\n"
                       "        CHECK(a, q, k, v, label=nm, **ps)",
    "ok-jit-softcap": "@attnc.jit(mask_mod=lambda b, h, q_idx, kv_idx: q_idx >= kv_idx)\n"
                      "def sc(score, b, h, q_idx, kv_idx, cap: float = 30.0):\n    return cap * torch.tanh(score / cap)\nRUN(sc, cap=5.0)",
    "ok-jit-document": "doc_id = torch.tensor([0] * 6 + [1] * 10)\n@attnc.jit\ndef dc(b, h, q_idx, kv_idx):\n"
                       "    return (q_idx >= kv_idx) & (doc_id[q_idx] == doc_id[kv_idx])\nRUN(dc)\ndoc_id[:] = 0\nRUN(dc)",
    "ok-jit-lambda-mask": "f = attnc.jit(lambda b, h, q_idx, kv_idx: (q_idx - kv_idx) % 3 == 0)\nRUN(f)",
    "ok-jit-captured-fp64": "sl = torch.randn(2, dtype=torch.float64)\n@attnc.jit\ndef al(score, b, h, q_idx, kv_idx):\n"
                            "    return score + sl[h] * (kv_idx - q_idx)\nRUN(al)",
    "ok-jit-where-mask": "@attnc.jit\ndef w(score, b, h, q_idx, kv_idx):\n    return torch.where(q_idx >= kv_idx, score, -float('inf'))\nRUN(w)",
    "ok-varlen-zero-len-seqs": "a = attnc.load('sliding_window')\nq = T(23, 2, 16); k = T(23, 2, 16, seed=1); v = T(23, 2, 16, seed=2)\n"
                               "cu = torch.tensor([0, 5, 5, 22, 22, 23], dtype=torch.int32)\nVCHECK(a, q, k, v, cu, cu, window=4)",
    "ok-varlen-int64-cu-gqa": "a = attnc.load('causal')\nq = T(20, 4, 8); k = T(30, 2, 8, seed=1); v = T(30, 2, 8, seed=2)\n"
                              "VCHECK(a, q, k, v, torch.tensor([0, 7, 20]), torch.tensor([0, 12, 30]))",
    "ok-varlen-document": "a = attnc.load('document')\nq = T(20, 2, 8)\ndoc = torch.tensor([[0]*5 + [1]*7, [3]*12])\n"
                          "VCHECK(a, q, q, q, torch.tensor([0, 8, 20]), torch.tensor([0, 8, 20]), seq_params=lambda b: {'doc': doc[b:b+1, :(8 if b == 0 else 12)]}, doc=doc)",
    "ok-varlen-relu-explicit": "a = attnc.load('relu')\nq = T(12, 2, 8)\ncu = torch.tensor([0, 4, 12], dtype=torch.int32)\nVCHECK(a, q, q, q, cu, cu, divisor=3.0)",
    "ok-grad-softcap": "GCHECK(attnc.load('softcap'), N=12, cap=5.0)",
    "ok-grad-sliding": "GCHECK(attnc.load('sliding_window'), N=20, window=3)",
    "ok-standalone-compile-run": "import subprocess\nr = subprocess.run([sys.executable, '-m', 'attnc', 'compile', 'softcap', '-o', 'sk.py', '--dtype', 'float32'], capture_output=True, text=True)\n"
                                 "assert r.returncode == 0, r.stderr\nNOTE(r.stdout.strip())",
    "ok-compile-count-stable": "a = attnc.load('sliding_window')\nRUN(a, window=3)\nc = attnc.compile_count()\nRUN(a, window=7, N=20)\n"
                               "if attnc.compile_count() != c: BAD('recompiled for a new window/size')",
}
for cid, code in VALID.items():
    py(cid, code + "\n", expect="valid", need=())


MODS = {"ok-mod-literal-diff": "mask m = (q_idx - kv_idx) % 3 == 0\n",
        "ok-mod-literal-rev": "mask m = (kv_idx - q_idx) % 2 == 1\n",
        "ok-mod-literal-both": "mask m = q_idx % 4 == kv_idx % 4\n",
        "ok-floordiv-literal-diff": "mask m = (q_idx - kv_idx) // 3 == 0\n",
        "ok-mod-param-diff": "mask m(d: int = 3) = (q_idx - kv_idx) % d == 0\n"}
for cid, t in MODS.items():
    spec(cid, t, expect="valid", need=())

OVERRIDE = {"syn-mixed-tabs": "prefer-error", "syn-backslash-cont": "either", "syn-lone-surrogate": "either",
            "syn-form-feed-indent": "either", "const-2pow40": "either", "jit-param-torch": "either",
            "jit-numpy-exp": "either", "jit-name-def": "either", "jit-annot-list": "prefer-error",
            "call-return-lse-str": "either", "cli-show-o-symlink": "either", "call-table-fp16-vs-fp32": "either", "cli-param-chunk0": "either",
            "ok-spec-bom-text": "either"}
for c in CASES:
    c["expect"] = OVERRIDE.get(c["id"], c["expect"])
DROP = set("""
jit-float-div-zero-lit
syn-open-paren-def syn-colon-only syn-call-on-call syn-semicolon syn-walrus syn-string-literal syn-dict syn-fstring syn-fullwidth-digit syn-vertical-tab syn-chained-eq-garbage syn-reduction-no-var syn-if-no-else syn-only-keyword syn-subscript-builtin syn-tensor-no-dims syn-grid-mismatch syn-pow-pow syn-double-op syn-bad-exp-literal syn-unknown-stage syn-emoji-name
name-unknown-var name-unknown-fn name-unknown-norm name-too-many-pos name-builtin-as-param name-keyword-param type-mod-float-literal type-and-on-floats type-not-int type-bool-arith type-float-mask-from-tensor type-tensor-unindexed type-if-int-cond type-clamp-arity type-exp-two-args type-norm-out-pair type-norm-exp-v type-norm-unknown-redvar type-norm-reserved-stage type-norm-dup-stage name-mask-as-score name-score-as-mask name-dup-kwarg type-norm-v-outside-sum
lit-float-1e308 lit-int-min-minus1 lit-int-40digits const-log-neg const-sqrt-neg const-zero-div-zero const-rsqrt-zero score-exp-exp score-log-score lit-underflow-1e-400
param-softcap-cap-neg0 param-softcap-cap-1e-39 param-sigmoid-bias-ninf param-chunked-chunk-neg param-natten1d-kernel-neg param-natten2d-width-neg param-sink-window-neg param-prefix-lm-intmax
upow-param-zero-zero ulog-param-neg usqrt-param-neg ursqrt-param-zero uexp-param-big ufloat-of-int-big uadd-int-overflow uclamp-nan
collide-param-Nkv collide-param-math collide-param-sizes collide-param-triton collide-param-np collide-param-i collide-param-j collide-param-True collide-param-print collide-param-exp collide-param-softmax collide-param-causal collide-param-BLOCK_D collide-param-s_m collide-param-q_ptr collide-param-grid collide-param-block_m collide-param-stride_qb collide-param-pid_m collide-param-acc collide-param-qk collide-param-keep collide-param-off_b collide-param-exec collide-param-cls collide-param-args collide-param-sink collide-param-device collide-param-dtype collide-param-interpret collide-param-lambda collide-param-async collide-param-match collide-param-_tanh collide-param-float collide-param-int collide-param-abs collide-param-max
collide-stage-k collide-stage-scale collide-stage-torch collide-stage-qk collide-stage-keep collide-stage-lse_i collide-stage-o collide-stage-exp collide-stage-z collide-stage-i collide-stage-j collide-stage-b collide-stage-h
collide-let-d collide-let-def collide-let-n_q collide-let-score collide-let-tl
collide-defname-triton collide-defname-tl collide-defname-main collide-defname-sys collide-defname-attention collide-defname-Attention collide-defname-traced
collide-tensor-q collide-tensor-u_t collide-tensor-torch
imp-dev-null imp-dev-full imp-dir-dot imp-etc-shadow imp-proc-status imp-nul-file imp-dangling imp-long-component imp-newline-path imp-self-symlink imp-unreadable imp-dev-urandom
path-missing path-bad-syntax path-binary path-dir path-big
load-bytes load-list load-dunder load-unicode load-with-suffix load-long
compile-list compile-bytes
empty-spaces-nl empty-tab-only empty-newlines
uni-greek-param long-param-name-100k big-text-2MiB-comment
jit-default-str jit-default-none jit-default-complex jit-annot-str jit-param-q jit-param-return_lse jit-param-underscore jit-param-mask-keyword jit-varargs jit-three-args jit-no-args jit-wrong-names jit-python-and jit-int-of-symbol jit-torch-softmax jit-where-posinf jit-return-str jit-return-tuple jit-return-tensor jit-return-number-mask jit-generator jit-async jit-norm-int jit-name-space jit-mask-mod-not-callable jit-capture-float-index jit-capture-meta jit-capture-empty jit-xor jit-bool-arith jit-iter jit-float-of-symbol jit-hash
call-q-bool call-q-rank0 call-q-numpy call-q-int call-mixed-bf16-fp16 call-v-heads-mismatch call-dv-0 call-scale-list call-scale-bool call-window-none call-window-complex call-window-list call-window-decimal call-window-inf call-cap-bool call-cap-str call-cap-none call-doc-list call-doc-complex call-doc-bool call-doc-float call-doc-rank1 call-sink-scalar call-kernel-path-str-dtype call-reference-rank3 call-bool-param-int call-window-tensor-2 call-cap-np-array-2 call-positional-param call-gqa-2-4
doc-ids-2p32-plus1 doc-ids-neg-2p32 scale-1e10-causal-fp32 table-inf fp16-none-norm-large scale-2p100-int
varlen-uint8-cu varlen-bool-cu varlen-numpy-cu varlen-empty-cu varlen-q-none varlen-q-float64 varlen-kv-rows-mismatch
cli-nq-zero cli-head-dim-v-300 cli-kv-heads-gt-heads cli-seed-2p64 cli-param-empty-name cli-param-inf-int cli-param-huge-digits cli-param-float-for-int cli-param-unicode-name cli-device-empty cli-device-cuda-neg cli-no-command cli-unknown-option cli-check-binary cli-check-big cli-explain-passwd cli-show-pixels-huge cli-show-o-txt-ext cli-compile-o-long-name cli-compile-name-mask-only cli-check-dash-spec cli-check-empty-spec-arg cli-param-nan-int cli-heads-huge cli-batch-huge cli-check-dir cli-explain-unknown cli-compile-unknown cli-check-symlink-loop cli-show-pixels-0
cache-symlink-loop cache-under-file cache-relative plant-chmod-000 plant-garbage-bytes
ok-causal-d1 ok-sliding-window-float-int ok-softcap-int ok-scale-np ok-softmax-sink-fp64 ok-q-offset-storage ok-sigmoid ok-off-by-one ok-spec-bom-file ok-mod-literal-rev ok-mod-literal-both ok-floordiv-literal-diff ok-causal-nq64-nkv1 ok-softcap-0d-tensor ok-scale-neg ok-no-grad-mode ok-spec-long-line-file ok-causal-fp16 ok-document-noncontig ok-varlen-relu-explicit ok-chunked ok-q-requires-grad-forward
""".split())
assert DROP <= {c["id"] for c in CASES}, DROP - {c["id"] for c in CASES}
CASES[:] = [c for c in CASES if c["id"] not in DROP]

# =====================================================================================
# fixtures, execution, classification
# =====================================================================================
def make_fixtures(fix: str) -> None:
    if os.path.isdir(fix):
        for root, dirs, files in os.walk(fix):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(fix)
    os.makedirs(fix)

    def w(name, data, mode="w"):
        with open(os.path.join(fix, name), mode) as f:
            f.write(data)

    os.symlink("loop2.attn", os.path.join(fix, "loop1.attn"))
    os.symlink("loop1.attn", os.path.join(fix, "loop2.attn"))
    os.symlink("self_loop.attn", os.path.join(fix, "self_loop.attn"))
    os.mkfifo(os.path.join(fix, "fifo.attn"))
    body = "attention x:\n    mask = causal\n"
    w("big.attn", body + "# " + "x" * (1 << 20) + "\n")
    pad = (1 << 20) - len(body) - 3
    w("exact1m.attn", body + "#" + "y" * pad + "\n\n")
    assert os.path.getsize(os.path.join(fix, "exact1m.attn")) == 1 << 20
    w("longline.attn", "# " + "z" * 900_000 + "\n" + body)
    w("binary.attn", bytes(range(256)) * 8, "wb")
    w("nul.attn", "mask x = q_idx\x00 < kv_idx\n")
    w("bad_syntax.attn", "mask x = q_idx <\n")
    w("cycle_a.attn", 'from "cycle_b.attn" import b\nmask x = b\nmask a = b\n')
    w("cycle_b.attn", 'from "cycle_a.attn" import a\nmask b = a\n')
    w("selfimport.attn", 'from "selfimport.attn" import x\nmask x = True\n')
    os.mkdir(os.path.join(fix, "dir.attn"))
    w("secret.txt", "SECRET-TOKEN-12345 = hunter2\nroot:x:0:0:root:/root:/bin/bash\n")
    w("secret_parses.txt", "mask x = SECRET_TOKEN_12345 < 1\n")
    w("good.attn", "attention g(window: int = 4):\n    mask = sliding_window(window)\n")
    os.symlink("/etc/passwd", os.path.join(fix, "link_to_passwd.attn"))
    os.symlink(os.path.join(fix, "nonexistent"), os.path.join(fix, "dangling.attn"))
    w("utf16.attn", body.encode("utf-16"), "wb")
    w("bom.attn", "\ufeff" + body)
    w("unreadable.attn", body)
    os.chmod(os.path.join(fix, "unreadable.attn"), 0)
    w("victim.txt", "VICTIM\n")
    w("victim_py.txt", "VICTIM\n")
    w("victim_png.txt", "VICTIM\n")
    os.symlink(os.path.join(fix, "victim_py.txt"), os.path.join(fix, "symlink_out.py"))
    os.symlink(os.path.join(fix, "victim_png.txt"), os.path.join(fix, "symlink_out.png"))
    for tok, name in (("@FULLDEV_SHOW@", "fulldev_show"), ("@FULLDEV_COMPILE@", "fulldev_compile")):
        # a private copy of /dev/full (char 1,7): `-o` must never replace a device, and as root
        # a rename over the real /dev/full would (this harness never targets it when it can mknod)
        try:
            os.mknod(os.path.join(fix, name), 0o666 | stat.S_IFCHR, os.makedev(1, 7))
            SUBST[tok] = os.path.join(fix, name)
        except OSError:
            SUBST[tok] = "/dev/full" if os.getuid() != 0 else "/dev/null/x"


SUBST: dict[str, str] = {}


def _subst(a: str, fix: str) -> str:
    for k, val in SUBST.items():
        a = a.replace(k, val)
    return a.replace("@FIX@", fix)


def _limits():
    os.setsid()
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEM, MEM))
    except (ValueError, OSError):
        pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_case(case: dict, fix: str, work_root: str) -> dict:
    work = tempfile.mkdtemp(prefix=re.sub(r"[^\w.-]", "_", case["id"])[:60] + ".", dir=work_root)
    env = dict(os.environ)
    env.update({"ATTNC_ROOT": ROOT, "PYTHONPATH": ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
                "ATTNC_CACHE_DIR": os.path.join(work, "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning",
                "TRITON_CACHE_DIR": os.path.join(work_root, "triton_cache"), "TMPDIR": work,
                "HOME": os.path.join(work, "home")})
    env.pop("TRITON_INTERPRET", None)
    env.update(case["env"])
    timeout = case["timeout"] or TIMEOUT
    if case["kind"] == "py":
        payload = dict(case, fix=fix, work=work, text=case["text"].replace("@FIX@", fix) if case["text"] is not None else None)
        payload["code"] = case["code"].replace("@FIX@", fix)
        cpath = os.path.join(work, "case.json")
        with open(cpath, "w") as f:
            json.dump(payload, f)
        rpath = os.path.join(work_root, "_runner.py")
        argv = [PY, rpath, cpath]
    else:
        argv = [PY, "-m", "attnc", *[_subst(a, fix) for a in case["args"]]]
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_limits)
    timed_out = False
    try:
        out, err = proc.communicate(input=b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    elapsed = time.time() - t0
    r = {"rc": proc.returncode, "timed_out": timed_out, "elapsed": elapsed, "fix": fix,
         "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace"), "work": work}
    if case["kind"] == "py":
        m = re.search(r"^@@RESULT@@(.*)$", r["stdout"], re.M)
        r["result"] = json.loads(m.group(1)) if m else None
        r["stdout"] = r["stdout"][-3000:]
    if len(r["stderr"]) > 8000:
        r["stderr"] = r["stderr"][:3000] + "\n[...]\n" + r["stderr"][-5000:]
    return r


def _need_ok(need, text):
    return all(re.search(n, text, re.I | re.S) for n in need)


def _check_summary(checks):
    worst = None
    for c in checks:
        if "problem" in c:
            return "FAIL", f"{c['label']}: {c['problem']} (err {c.get('err', float('nan')):.1e})"
        e, b = c.get("err", 0.0), c.get("bound", 1e-5)
        if e != e or e > 10 * b:
            return "FAIL", f"{c['label']} {c['dtype']}: silent wrong answer, rel err {e:.2e} (bound {b:.0e})"
        if e > b and (worst is None or e / b > worst[0]):
            worst = (e / b, f"{c['label']} {c['dtype']}: rel err {e:.2e} above bound {b:.0e} (within 10x)")
    if worst:
        return "WARN", worst[1]
    errs = [c.get("err", 0.0) for c in checks]
    return "PASS", (f"{len(checks)} checks, max rel err {max(errs):.1e}" if checks else "ran")


def classify(case: dict, r: dict) -> tuple[str, str]:
    if r["timed_out"]:
        return "FAIL", f"timeout after {r['elapsed']:.0f}s"
    if case["kind"] == "py":
        res = r["result"]
        if res is None:
            tail = (r["stderr"].strip().splitlines() or [""])[-1][:200]
            return "FAIL", f"child died rc={r['rc']} ({'killed by signal ' + str(-r['rc']) if r['rc'] < 0 else tail})"
        exc = res["exc"]
        notes = "; ".join(res["notes"])
        if res["fails"]:
            return "FAIL", "; ".join(res["fails"])
        if exc:
            head = f"{exc['type']}: {exc['first']}"
            text = exc["msg"]
            for bad in case["forbid"]:
                if bad in text:
                    return "FAIL", f"message discloses {bad!r}: {head}"
            if case["expect"] == "valid":
                return "FAIL", f"valid input refused/crashed: {head}"
            if not any(t in exc["mro"] for t in CLEAN):
                chain = f" [from {exc['chain'][0]}]" if exc["chain"] else ""
                return "FAIL", f"unclean {head}{chain}"
            for bad in case["warn_forbid"]:
                if bad in text:
                    return "WARN", f"message quotes the non-spec file ({bad!r}): {head}"
            if exc["leaked_from"]:
                return "WARN", f"clean type but raised inside {exc['leaked_from']}: {head}"
            if not text.strip() or not _need_ok(case["need"], text):
                return "WARN", f"unhelpful message (no {case['need']}): {head}"
            if res["warns"]:
                return "WARN", "; ".join(res["warns"])
            return "PASS", head
        verdict, detail = _check_summary(res["checks"])
        if case["expect"] == "error":
            return "FAIL", f"bad input accepted silently ({detail})" + (f" [{notes}]" if notes else "")
        if case["expect"] == "prefer-error" and verdict == "PASS":
            return "WARN", f"questionable input accepted without error ({detail})"
        if res["warns"] and verdict == "PASS":
            return "WARN", "; ".join(res["warns"])
        return verdict, detail + (f" [{notes}]" if notes else "")
    # CLI
    err, out, rc = r["stderr"], r["stdout"], r["rc"]
    lines = [x for x in err.splitlines() if x.strip()]
    first = lines[0] if lines else ""
    if case.get("post"):
        msg = case["post"](r["fix"], r["work"])
        if msg:
            return "FAIL", msg + f" (rc {rc}: {(first or out.strip())[:120]})"
    for bad in case["forbid"]:
        if bad in err or bad in out:
            return "FAIL", f"output discloses {bad!r}"
    for bad in case["warn_forbid"]:
        if bad in err or bad in out:
            return "WARN", f"output quotes the non-spec file ({bad!r}): {first[:150]}"
    if "Traceback (most recent call last)" in err:
        last = [x for x in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", x)]
        return "FAIL", f"traceback, rc={rc}: {(last[-1] if last else lines[-1])[:200]}"
    if rc is not None and rc < 0:
        return "FAIL", f"killed by signal {-rc}"
    if rc == 0:
        if case["expect"] == "error":
            return "FAIL", f"bad input accepted (rc 0): {(out.strip().splitlines() or [''])[-1][:150]}"
        return "PASS", f"rc 0: {(out.strip().splitlines() or [''])[-1][:150]}"
    if case["expect"] == "valid":
        return "FAIL", f"rc {rc}: {first[:200] or out.strip()[-200:]}"
    if rc not in (1, 2):
        return "FAIL", f"exit code {rc}: {first[:200]}"
    if not lines:
        tail = (out.strip().splitlines() or [""])[-1]
        return "WARN", f"rc {rc}, nothing on stderr; stdout ends: {tail[:150]}"
    is_spec = re.match(r"^\S.*:\d+:\d+: error: ", first)
    if not (first.startswith("error:") or is_spec):
        return "WARN", f"rc {rc}, stderr does not start with `error:`: {first[:200]}"
    other = [x for x in lines[1:] if not is_spec and not x.startswith("note:")]
    if other and not is_spec:
        return "WARN", f"rc {rc}, multi-line stderr ({len(lines)} lines): {first[:150]} | {other[0][:80]}"
    if not _need_ok(case["need"], first):
        return "WARN", f"rc {rc}, message does not name {case['need']}: {first[:200]}"
    return "PASS", f"rc {rc}: {first[:200]}"


def describe_input(case):
    if case["kind"] == "cli":
        return "python3 -m attnc " + " ".join(repr(a) if (" " in a or not a) else a for a in case["args"])
    s = case["code"] if case["text"] is None else f"TEXT={case['text']!r}; {case['code']}"
    return s if len(s) < 400 else s[:300] + f"... ({len(s)} chars)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("ADV_JOBS", "2")))
    ap.add_argument("-k", "--only", action="append", help="run cases whose id contains this (repeatable)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or any(s in c["id"] for s in args.only)]
    if args.list:
        for c in cases:
            print(c["id"], c["kind"], c["expect"])
        print(len(cases), "cases")
        return 0
    os.makedirs(OUT, exist_ok=True)
    work_root = tempfile.mkdtemp(prefix="run.", dir=OUT)
    fix = os.path.join(work_root, "fix")
    make_fixtures(fix)
    with open(os.path.join(work_root, "_runner.py"), "w") as f:
        f.write(RUNNER)
    print(f"attnc adversarial harness: {len(cases)} cases against {ROOT} ({args.jobs} jobs, {TIMEOUT:.0f}s timeout)",
          flush=True)
    lock = threading.Lock()
    results = {}
    t0 = time.time()

    def one(case):
        r = run_case(case, fix, work_root)
        verdict, detail = classify(case, r)
        with lock:
            results[case["id"]] = (verdict, detail, r)
            print(f"{verdict} {case['id']} {detail}  ({r['elapsed']:.1f}s)", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(one, sorted(cases, key=lambda c: -(c["timeout"] or 0))))
    counts = {"PASS": 0, "FAIL": 0, "WARN": 0}
    bad_in = sum(1 for c in cases if c["expect"] != "valid")
    lines = []
    for c in cases:
        verdict, detail, r = results[c["id"]]
        counts[verdict] += 1
        lines.append(f"{verdict} {c['id']} {detail}")
    summary = (f"SUMMARY: {len(cases)} cases ({bad_in} bad/edge, {len(cases) - bad_in} valid): "
               f"PASS {counts['PASS']}  FAIL {counts['FAIL']}  WARN {counts['WARN']}  "
               f"({time.time() - t0:.0f}s, ATTNC_ROOT={ROOT})")
    print(summary)
    with open(os.path.join(OUT, "results.txt"), "w") as f:
        f.write("\n".join(lines) + "\n" + summary + "\n\n# inputs of FAIL/WARN cases\n")
        for c in cases:
            verdict, detail, r = results[c["id"]]
            if verdict != "PASS":
                f.write(f"{verdict} {c['id']}\n  input: {describe_input(c)}\n  observed: {detail}\n")
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({c["id"]: {"verdict": results[c["id"]][0], "detail": results[c["id"]][1],
                             "input": describe_input(c), "expect": c["expect"],
                             "raw": {k: v for k, v in results[c["id"]][2].items() if k != "stdout" or c["kind"] == "cli"}}
                   for c in cases}, f, indent=1, default=repr)
    if not os.environ.get("ADV_KEEP"):
        shutil.rmtree(work_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
