"""``@attnc.jit``: FlexAttention-style Python functions → a compiled ``Attention``.

    @attnc.jit
    def softcap(score, b, h, q_idx, kv_idx):
        return 30.0 * torch.tanh(score / 30.0)

    @attnc.jit(mask_mod=causal, norm="sigmoid")
    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

The decorated function is a score_mod (``score, b, h, q_idx, kv_idx, ...``) or a mask_mod
(``b, h, q_idx, kv_idx, ...``); the other role may be given as a keyword. ``dsl/trace.py``
turns each into a spec expression; this module writes the spec (``attn.spec_text``) and
compiles it like any spec file, so a traced variant gets the same checks, pass analysis,
kernels and reference as a written one. Extra function parameters become runtime scalar
parameters, captured tensors become tensor parameters bound automatically at each call.
"""

from __future__ import annotations

import inspect

import torch

from ..dsl import ast
from ..dsl.errors import SpecError
from ..dsl.parser import parse
from ..dsl.printer import print_module
from ..dsl.trace import (
    RESERVED,
    fn_name,
    Captured,
    ExtraParam,
    Tracer,
    _def_span,
    _num,
    as_expr,
    extra_params,
    role_of,
    trace,
)
from ..ir.lower import DEFAULT_NORM
from ..library import names as library_names
from .compiler import Attention
from .frontend import library_spec, spec_from_text


class JitAttention(Attention):
    """An ``Attention`` traced from Python functions; captured tensors are passed for you."""

    def __init__(self, cascade, origin: str, spec_text: str, captured: list[Captured]):
        super().__init__(cascade, origin)
        self.spec_text = spec_text
        self.captured = tuple(captured)

    def _with_captured(self, params: dict, q) -> dict:
        for cap in self.captured:
            if cap.name in params:
                raise TypeError(f"parameter `{cap.name}` is the tensor captured by the traced function; "
                                "update that tensor in place instead of passing it")
        device = q.device if isinstance(q, torch.Tensor) else None
        return {**{cap.name: cap.argument(device) for cap in self.captured}, **params}

    def __call__(self, q, k, v, /, *, scale=None, return_lse=False, **params):
        return super().__call__(q, k, v, scale=scale, return_lse=return_lse, **self._with_captured(params, q))

    def reference(self, q, k, v, /, *, scale=None, return_lse=False, **params):
        return super().reference(q, k, v, scale=scale, return_lse=return_lse, **self._with_captured(params, q))


def _norm_defs(norm) -> tuple[str, list[ast.Def], tuple[ast.Param, ...]]:
    """(name, defs to include in the spec, params) of a library norm name or norm spec text."""
    if not isinstance(norm, str):
        raise TypeError(f"`norm` must be a library normalization name or spec text, got {type(norm).__name__}")
    if "\n" in norm or norm.lstrip().startswith("norm "):
        module = parse(norm, "<norm>")
        norms = [d for d in module.defs if d.kind == "norm"]
        if not norms or module.imports:
            raise SpecError("`norm` spec text must define a `norm` (and no imports)")
        d = norms[-1]
        return d.name, list(module.defs), d.params
    if norm not in library_names():
        raise SpecError(f"`norm={norm!r}` is not a library normalization; see `attnc list`")
    d = library_spec(norm).definition(norm)
    if d.kind != "norm":
        raise SpecError(f"`norm={norm!r}` is a library {d.kind}, not a normalization")
    return d.name, [], d.params


def _param_ast(e: ExtraParam) -> ast.Param:
    default = None if e.default is inspect.Parameter.empty else _num(
        bool(e.default) if e.kind == "bool" else int(e.default) if e.kind == "int" else float(e.default))
    return ast.Param(e.name, ast.ScalarType(e.kind), default)


def build(score_mod=None, mask_mod=None, norm: str = DEFAULT_NORM, name: str | None = None) -> JitAttention:
    """The attention with ``score_mod``, ``mask_mod`` (either may be None) and ``norm``."""
    tracer = Tracer()
    mods = [(fn, role) for fn, role in ((score_mod, "score"), (mask_mod, "mask")) if fn is not None]
    extras: dict[str, ExtraParam] = {}
    for fn, role in mods:
        if not callable(fn):
            raise TypeError(f"`{role}_mod` must be a function, got {type(fn).__name__}")
        if role_of(fn) != role:
            other = "mask_mod" if role == "score" else "score_mod"
            raise SpecError(f"`{fn_name(fn)}` is passed as the {role}_mod, but its signature makes it a {other}",
                            _def_span(fn))
        for e in extra_params(fn, role):
            if e.name in extras and extras[e.name] != e:
                raise SpecError(f"parameter `{e.name}` is declared differently by the score_mod and the mask_mod",
                                _def_span(fn))
            extras[e.name] = e
    tracer.taken |= set(extras)
    score = mask = None
    masks = []
    for fn, role in mods:
        expr, masked = as_expr(trace(fn, role, tracer, list(extras.values())), role, fn, tracer)
        if role == "score":
            score = expr
            if masked is not None:
                masks.append(masked)
        else:
            masks.append(expr)
    for m in masks:
        mask = m if mask is None else ast.BoolOp("and", mask, m)

    norm_name, norm_defs, norm_params = _norm_defs(norm)
    params = [_param_ast(e) for e in extras.values()]
    params += [ast.Param(c.name, ast.TensorType(tuple(ast.Name("_") for _ in range(c.dims)), c.elem), None)
               for c in tracer.captured]
    taken = {p.name for p in params}
    for p in norm_params:
        if p.name in taken:
            raise SpecError(f"the traced functions and norm `{norm_name}` both have a parameter `{p.name}`")
        params.append(p)
    body: list[ast.Stmt] = []
    if score is not None:
        body.append(ast.Assign("score", score))
    if mask is not None:
        body.append(ast.Assign("mask", mask))
    norm_value = (ast.Call(norm_name, (), tuple(ast.Keyword(p.name, ast.Name(p.name)) for p in norm_params))
                  if norm_params else ast.Name(norm_name))
    body.append(ast.Assign("norm", norm_value))
    fn0 = mods[0][0] if mods else None
    if name is not None and (not isinstance(name, str) or not name.isidentifier() or not name.isascii()):
        raise TypeError(f"`name` must be an ASCII identifier (the attention's name in the spec), got {name!r}")
    attn_name = name or (fn_name(fn0) if fn0 is not None else None) or "traced"
    if not attn_name.isidentifier() or attn_name in RESERVED or attn_name.startswith("_") \
            or attn_name in {d.name for d in norm_defs}:
        attn_name = f"traced_{attn_name.strip('_')}" if attn_name.isidentifier() else "traced"
    module = ast.Module(tuple(norm_defs) + (ast.Def("attention", attn_name, tuple(params), tuple(body)),))
    origin = f"<jit {attn_name}>"
    where = f"{inspect.getsourcefile(fn0)}:{fn0.__code__.co_firstlineno}" if fn0 is not None and \
        hasattr(fn0, "__code__") else "<jit>"
    text = f"# traced by @attnc.jit from {where}\n" + print_module(module)
    spec = spec_from_text(text, origin)
    return JitAttention(spec.cascade(attn_name), origin, text, tracer.captured)


def jit(fn=None, *, score_mod=None, mask_mod=None, norm: str = DEFAULT_NORM, name: str | None = None):
    """Decorate a score_mod or mask_mod (bare, or with keyword arguments) → ``JitAttention``."""

    def decorate(f):
        role = role_of(f)
        if role == "score":
            if score_mod is not None:
                raise TypeError("@attnc.jit(score_mod=...) decorates a mask_mod, but this function is a score_mod")
            return build(f, mask_mod, norm, name)
        if mask_mod is not None:
            raise TypeError("@attnc.jit(mask_mod=...) decorates a score_mod, but this function is a mask_mod")
        return build(score_mod, f, norm, name)

    if fn is None:
        return decorate
    if not callable(fn):
        raise TypeError(f"@attnc.jit decorates a function, got {type(fn).__name__}")
    return decorate(fn)
