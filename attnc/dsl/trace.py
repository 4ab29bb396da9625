"""The Python frontend: FlexAttention-style ``score_mod`` / ``mask_mod`` functions → spec AST.

A function is called once with symbolic stand-ins (``Sym``) for ``score, b, h, q_idx, kv_idx``
and its extra parameters. Every operation on them — Python operators, ``torch.where``,
``torch.tanh``, ``tensor[q_idx]`` on a captured tensor, ... — builds a spec expression instead of
computing a value, so the function is never run per element, and what comes out is the same
AST a spec file parses to. Anything without a spec meaning (``if`` on a symbolic value, an
unsupported torch function) raises a ``SpecError`` that points at the Python line doing it.

Captured tensors become tensor parameters (``name: tensor[_, ...] elem``); the tracer keeps the
tensor objects, so each call reads their current contents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import linecache
import math
import os
import threading
from dataclasses import dataclass, field

import torch

from . import ast
from .functions import FUNCTIONS, lookup_traced
from .errors import Source, Span, SpecError
from .parser import FLOAT32_MAX, KEYWORDS

SCORE_ARGS = ("score", "b", "h", "q_idx", "kv_idx")
MASK_ARGS = ("b", "h", "q_idx", "kv_idx")
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the attnc package
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
# Names the spec language gives a meaning to; a user name equal to one cannot be a parameter.
RESERVED = frozenset(KEYWORDS) | {
    "q_idx", "kv_idx", "b", "h", "n_q", "n_kv", "head_dim", "n_heads", "n_kv_heads", "scale",
    "B", "H", "H_KV", "N_Q", "N_KV", "D", "D_V", "sum", "i", "j", "s", "v", "out", "lse", "dot",
    # the call's own keywords (ir/names.py CALL_ARGUMENTS): a captured `q_offset` becomes `q_offset_t`
    "q", "k", "return_lse", "cu_seqlens_q", "cu_seqlens_k", "block_m", "block_n", "q_offset", "kv_offset", "seq_len",
} | set(FUNCTIONS)


# ---------------------------------------------------------------------------- source locations


def _user_frame():
    """The innermost frame outside attnc and torch: the user's line being traced."""
    frame = inspect.currentframe()
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith((_HERE + os.sep, _TORCH + os.sep)):
            return frame
        frame = frame.f_back
    return None


def _span_of_frame(frame) -> Span | None:
    return None if frame is None else _span_at(frame.f_code, frame.f_lineno, frame.f_lasti)


def _span_at(code, lineno: int, lasti: int) -> Span:
    path = code.co_filename
    line, col, end_line, end_col = lineno, 0, lineno, 0
    try:
        pos = list(code.co_positions())[lasti // 2]
        if pos[0] is not None:
            line, end_line = pos[0], pos[1] or pos[0]
            col, end_col = (pos[2] or 0), (pos[3] or 0)
    except (AttributeError, IndexError):
        pass
    text = "".join(linecache.getlines(path))
    return Span(Source(path, text), line, col + 1, end_line, max(end_col + 1, col + 2))


def _def_span(fn) -> Span | None:
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    text = "".join(linecache.getlines(code.co_filename))
    line = code.co_firstlineno
    src = Source(code.co_filename, text)
    width = len(src.line(line))
    return Span(src, line, 1, line, max(width + 1, 2))


# torch's plumbing, not a call the user made: dispatch, Tensor's operator wrappers, device modes
_DISPATCH = tuple(os.path.join(_TORCH, f) for f in ("overrides.py", "_tensor.py", os.path.join("utils", "_device.py")))


def _torch_callee(user):
    """The torch function the user's line called, when the failing operation ran inside it (torch's
    own Python code between the user's frame and attnc's), e.g. ``F.dropout``; else None."""
    frame, callee = inspect.currentframe(), None
    while frame is not None and frame is not user:
        path = os.path.abspath(frame.f_code.co_filename)
        if (path.startswith(_TORCH + os.sep) and not path.startswith(_DISPATCH)
                and frame.f_code.co_name not in ("__torch_function__", "__torch_dispatch__")):
            callee = frame
        frame = frame.f_back
    return callee


def trace_error(message: str) -> SpecError:
    frame = _user_frame()
    where = f"in `{frame.f_code.co_name}`: " if frame is not None else ""
    callee = _torch_callee(frame) if frame is not None else None
    if callee is not None:
        module = os.path.relpath(callee.f_code.co_filename, os.path.dirname(_TORCH))
        where += f"inside torch's `{callee.f_code.co_name}` ({module}), called here: "
    return SpecError(where + message, _span_of_frame(frame))


# ---------------------------------------------------------------------------- symbolic values


def _num(x) -> ast.Expr:
    if isinstance(x, bool):
        return ast.Bool(x)
    if isinstance(x, int):
        if not -(2**31) <= x < 2**31:
            raise trace_error(f"the integer {x} does not fit in int32")
        return ast.Num(x, True) if x >= 0 else ast.Unary("-", ast.Num(-x, True))
    if math.isnan(x) or math.isinf(x):
        raise trace_error(
            f"the constant {x} has no spec meaning; to mask pairs, return "
            "`torch.where(cond, score, -float('inf'))` from a score_mod or use a mask_mod")
    return ast.Num(x, False) if x >= 0 or math.copysign(1, x) > 0 else ast.Unary("-", ast.Num(-x, False))


class Sym:
    """A symbolic value: a spec expression ``node`` of type ``kind`` ("int", "float" or "bool").

    FlexAttention masks in a score_mod by selecting ``-inf``; here that is kind "neginf" (no
    node), and ``torch.where(cond, x, -inf)`` gives ``x`` with ``masked = cond``, which becomes
    part of the mask. Neither may flow into further arithmetic.
    """

    __slots__ = ("kind", "masked", "node", "origin", "tracer")

    def __init__(self, node: ast.Expr | None, kind: str, tracer: Tracer, masked: ast.Expr | None = None):
        self.node = node
        self.kind = kind
        self.tracer = tracer
        self.masked = masked
        if node is not None and tracer.size(node) > ast.MAX_EXPR_NODES:
            raise trace_error(f"this value is an expression of {tracer.size(node)} nodes (the limit is "
                              f"{ast.MAX_EXPR_NODES}), past what a spec may hold; a Python loop that builds it up "
                              f"(`x = x + x` doubles it each time) should compute it in fewer operations "
                              f"(`x * 2 ** n`)")
        frame = _user_frame()  # where the value was made: for a returned value, its `return` line
        self.origin = None if frame is None else (frame.f_code, frame.f_lineno, frame.f_lasti)

    def plain(self) -> Sym:
        if self.kind == "neginf" or self.masked is not None:
            raise trace_error("-inf can only be chosen by torch.where(cond, score, -inf) as the value a score_mod "
                              "returns (attnc turns it into a mask); it cannot flow into further arithmetic")
        return self

    __hash__ = object.__hash__

    # -- operands
    def _lift(self, x) -> Sym:
        if isinstance(x, Sym):
            return x
        if isinstance(x, float) and x == -math.inf:
            return Sym(None, "neginf", self.tracer)
        if isinstance(x, (bool, int, float)):
            kind = "bool" if isinstance(x, bool) else "int" if isinstance(x, int) else "float"
            return Sym(_num(x), kind, self.tracer)
        if isinstance(x, torch.Tensor) and x.dim() == 0:
            if x.dtype.is_floating_point and not bool(torch.isfinite(x)):  # -inf selects a mask, as the number does
                return self._lift(float(x))
            return self.tracer.scalar(x)
        if isinstance(x, torch.Tensor):
            raise trace_error(
                f"a captured tensor of shape {tuple(x.shape)} is used as a value; index it with "
                "the symbolic arguments (e.g. `bias[h]`, `doc[q_idx]`), or pass a Python number")
        if isinstance(x, (PartialIndex, Vec)):
            raise trace_error("a traced vector (a captured tensor indexed in all but its last dimension) is "
                              "combined with a number per pair; reduce it first (`.sum(-1)`, `torch.dot`, "
                              "`.norm(dim=-1)`)")
        raise trace_error(f"cannot use a {type(x).__name__} in a traced expression")

    def _arith(self, op: str, other, reverse: bool = False) -> Sym:
        if isinstance(other, (Vec, PartialIndex)):  # a number and a vector: elementwise, by the vector
            return NotImplemented
        a, b = (self._lift(other), self) if reverse else (self, self._lift(other))
        a, b = a.plain(), b.plain()
        for x in (a, b):
            if x.kind == "bool":
                raise trace_error(f"arithmetic `{op}` on a boolean; use torch.where(cond, 1.0, 0.0) to get a number")
        kind = "float" if op == "/" or "float" in (a.kind, b.kind) else "int"
        return Sym(ast.BinOp(op, a.node, b.node), kind, self.tracer)

    def __add__(self, o): return self._arith("+", o)
    def __radd__(self, o): return self._arith("+", o, True)
    def __sub__(self, o): return self._arith("-", o)
    def __rsub__(self, o): return self._arith("-", o, True)
    def __mul__(self, o): return self._arith("*", o)
    def __rmul__(self, o): return self._arith("*", o, True)
    def __truediv__(self, o): return self._arith("/", o)
    def __rtruediv__(self, o): return self._arith("/", o, True)
    def __floordiv__(self, o): return self._arith("//", o)
    def __rfloordiv__(self, o): return self._arith("//", o, True)
    def __mod__(self, o): return self._arith("%", o)
    def __rmod__(self, o): return self._arith("%", o, True)
    def __pow__(self, o): return self._arith("**", o)
    def __rpow__(self, o): return self._arith("**", o, True)

    def __neg__(self):
        self.plain()
        if self.kind == "bool":
            raise trace_error("unary minus on a boolean; use `~` to negate a condition")
        return Sym(ast.Unary("-", self.node), self.kind, self.tracer)

    def __pos__(self):
        return self

    def __abs__(self):
        return self.tracer.call("abs", self)

    def _compare(self, op: str, other) -> Sym:
        a, b = self.plain(), self._lift(other).plain()
        if (a.kind == "bool") != (b.kind == "bool"):
            raise trace_error(f"`{op}` compares a boolean with a number")
        return Sym(ast.Compare((op,), (a.node, b.node)), "bool", self.tracer)

    def __lt__(self, o): return self._compare("<", o)
    def __le__(self, o): return self._compare("<=", o)
    def __gt__(self, o): return self._compare(">", o)
    def __ge__(self, o): return self._compare(">=", o)
    def __eq__(self, o): return self._compare("==", o)  # type: ignore[override]
    def __ne__(self, o): return self._compare("!=", o)  # type: ignore[override]

    def _bitwise(self, op: str, other, reverse: bool = False) -> Sym:
        """``& | ^`` of two conditions (and, or, !=) or of two integers; ``<< >>`` of integers."""
        a, b = (self._lift(other), self) if reverse else (self, self._lift(other))  # a vector: refused there
        a, b = a.plain(), b.plain()
        if op in ("&", "|", "^") and a.kind == b.kind == "bool":
            if op == "^":
                return a._compare("!=", b)
            return Sym(ast.BoolOp("and" if op == "&" else "or", a.node, b.node), "bool", self.tracer)
        for x in (a, b):
            if x.kind != "int":
                both = " or on two conditions" if op in ("&", "|", "^") else ""
                raise trace_error(f"`{op}` on a {x.kind} value: it works on two integers{both}")
        return Sym(ast.BinOp(op, a.node, b.node), "int", self.tracer)

    def __and__(self, o): return self._bitwise("&", o)
    def __rand__(self, o): return self._bitwise("&", o, True)
    def __or__(self, o): return self._bitwise("|", o)
    def __ror__(self, o): return self._bitwise("|", o, True)
    def __xor__(self, o): return self._bitwise("^", o)
    def __rxor__(self, o): return self._bitwise("^", o, True)
    def __lshift__(self, o): return self._bitwise("<<", o)
    def __rlshift__(self, o): return self._bitwise("<<", o, True)
    def __rshift__(self, o): return self._bitwise(">>", o)
    def __rrshift__(self, o): return self._bitwise(">>", o, True)

    def __invert__(self):
        self.plain()
        if self.kind == "float":
            raise trace_error("`~` of a float: `~` negates a condition or inverts an integer's bits")
        if self.kind == "int":
            return Sym(ast.Unary("~", self.node), "int", self.tracer)
        return Sym(ast.Not(self.node), "bool", self.tracer)

    def __bool__(self):
        raise trace_error(
            "Python control flow on a traced value (`if`, `while`, `and`/`or`/`not`, a chained "
            "comparison, bool()): the function runs once, symbolically; use torch.where(cond, a, b), "
            "`&`, `|` and `~` instead")

    def __index__(self):
        raise trace_error("a traced value cannot be used as a Python integer (indexing a list, range(), int())")

    __int__ = __index__

    def __float__(self):
        raise trace_error("a traced value cannot be converted to a Python float")

    def __iter__(self):
        raise trace_error("a traced value is a single number per (q_idx, kv_idx); it cannot be iterated")

    def __getitem__(self, _):
        raise trace_error("a traced value is a single number; it cannot be indexed")

    def _unsupported(self, *_):
        raise trace_error("`@` and round() have no spec meaning on a traced value (a number per "
                          "(q_idx, kv_idx)); write the arithmetic with + - * / // % ** (and torch.round)")

    __matmul__ = __rmatmul__ = __round__ = _unsupported

    def __repr__(self) -> str:
        from .printer import print_expr

        return f"<traced {self.kind}: {print_expr(self.node)}>"

    # -- tensor-style methods used in score_mods
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "device":  # `b.new_ones((), device=b.device)` (torch's noop_mask): no device of its own
            return None
        method = self._method(name)
        signature = inspect.signature(method)

        def checked(*args, **kwargs):  # a wrong call is a SpecError at the user's line, not a lambda's TypeError
            try:
                signature.bind(*args, **kwargs)
            except TypeError as err:
                raise trace_error(f"`.{name}{signature}` of a traced value: {err}. If the value is a parameter "
                                  f"named like a module (`torch`, `math`, `F`), it shadows that module inside the "
                                  f"function: rename the parameter") from None
            return method(*args, **kwargs)
        return checked

    def _method(self, name: str):
        f = lookup_traced(name, None)
        if f is not None and f.arity == (1, 1) and hasattr(torch.Tensor, name):  # x.tanh(), x.erf(), ...
            return lambda: self.tracer.call(f.name, self)
        if name in ("float", "double", "half", "bfloat16"):
            return lambda: self.tracer.to_float(self)
        if name in ("int", "long"):
            return lambda: self.tracer.to_int(self)
        if name == "to":
            return self._to
        if name == "clamp":
            return lambda min=None, max=None: self.tracer.clamp(self, min, max)
        if name.startswith(("logical_", "bitwise_")) and hasattr(torch, name):  # x.logical_and(y), ...
            return lambda *args, other=None: self.tracer.torch_function(
                getattr(torch, name), (self, *args) + (() if other is None else (other,)), {})
        if name in ("new_ones", "new_zeros"):  # torch's and_masks / or_masks / noop_mask start from one
            fill = int(name == "new_ones")
            return lambda size, *, dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False: \
                self._new(name, size, fill, dtype)
        if name == "new_full":
            return lambda size, fill_value, *, dtype=None, device=None, requires_grad=False, layout=None, \
                pin_memory=False: self._new(name, size, fill_value, dtype)
        if name in ("minimum", "maximum"):
            return lambda other: self.tracer.call("min" if name == "minimum" else "max", self, other)
        if name in ("sum", "mean", "squeeze"):  # of one number: itself, as for a 0-d tensor
            return lambda dim=None, keepdim=False, dtype=None: self
        if name == "where":  # x.where(cond, y) == torch.where(cond, x, y)
            return lambda cond, other: self.tracer.where(cond, self, other)
        raise trace_error(f"`.{name}` is not supported on a traced value")

    def _to(self, *args, dtype=None, device=None, non_blocking=False, copy=False, memory_format=None) -> Sym:
        """``x.to(dtype)``; a device (``.to(result.device)`` in transformers' and_masks) changes nothing."""
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif not (a is None or isinstance(a, (str, torch.device))):
                raise trace_error(f"`.to({a!r})` of a traced value: pass a dtype or a device")
        return self if dtype is None else self.tracer.to_dtype(self, dtype)

    def _new(self, name: str, size, fill, dtype) -> Sym:
        """``x.new_ones(())`` and friends: a constant, when the size is () (one number per pair)."""
        if tuple(size) != ():
            raise trace_error(f"`.{name}({tuple(size)})` makes a tensor of several numbers; a traced value is one "
                              f"number per (q_idx, kv_idx): only size () has a spec meaning")
        kind = self.kind if dtype is None else ("bool" if dtype == torch.bool else
                                                "float" if dtype.is_floating_point else "int")
        if kind not in ("bool", "int", "float"):
            raise trace_error(f"`.{name}` of a {kind} value")
        return self._lift(bool(fill) if kind == "bool" else int(fill) if kind == "int" else float(fill))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tracer = next(a.tracer for a in _flatten((args, kwargs)) if isinstance(a, Sym))
        return tracer.torch_function(func, args, kwargs)


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)
    else:
        yield x


VEC_MAX = 64  # the longest trailing dimension unrolled into a per-pair sum


class PartialIndex:
    """A captured tensor indexed in fewer dimensions than it has (``bias[b]``, ``means[q_idx]``):
    indexing it again continues the index. With only the last dimension left (of at most
    ``VEC_MAX``), it is a short vector: elementwise arithmetic and reductions over that dimension
    (``.sum(-1)``, ``torch.dot``, ``.norm(dim=-1)``) unroll into one expression per pair.
    Anything else says what is missing."""

    def __init__(self, tracer, tensor: torch.Tensor, indices: tuple):
        self.tracer, self.tensor, self.indices = tracer, tensor, indices

    def __getitem__(self, idx):
        return self.tracer.index(self.tensor, idx, self.indices)

    def vec(self) -> Vec:
        rest = self.tensor.dim() - len(self.indices)
        if rest != 1 or self.tensor.shape[-1] > VEC_MAX:
            self._incomplete()
        return Vec(tuple(self.tracer.index(self.tensor, c, self.indices) for c in range(self.tensor.shape[-1])))

    def _incomplete(self, *_, **__):
        rest = self.tensor.dim() - len(self.indices)
        raise trace_error(f"a captured tensor of shape {tuple(self.tensor.shape)} indexed in {len(self.indices)} of "
                          f"its {self.tensor.dim()} dimensions is used as a value; index the other {rest} too "
                          f"(`t[b][h, q_idx]` or `t[b, h, q_idx]`), or, with only the last left (at most {VEC_MAX} "
                          f"long), reduce it (`.sum(-1)`, `torch.dot(a, b)`, `.norm(dim=-1)`): a traced value is "
                          f"one number per pair")

    def __bool__(self):
        self._incomplete()

    def __len__(self):
        return self.tensor.shape[len(self.indices)]

    def __iter__(self):  # `x0, x1 = emb[q_idx]`, `sum(emb[q_idx])`
        return iter([self[c] for c in range(len(self))])

    __hash__ = object.__hash__

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.vec(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        tracer = next(a.tracer for a in _flatten((args, kwargs or {})) if isinstance(a, PartialIndex))
        return tracer.torch_function(func, args, kwargs or {})


def _vec_op(name):
    def op(self, other=None):
        return getattr(self.vec(), name)(other) if other is not None else getattr(self.vec(), name)()
    return op


class Vec:
    """A short vector of traced values (one per element of a captured tensor's last dimension)."""

    def __init__(self, items: tuple):
        self.items = items

    def _zip(self, other, f):
        other = other.vec() if isinstance(other, PartialIndex) else other
        if isinstance(other, Vec):
            if len(other.items) != len(self.items):
                raise trace_error(f"vectors of lengths {len(self.items)} and {len(other.items)} combined")
            return Vec(tuple(f(a, b) for a, b in zip(self.items, other.items)))
        if isinstance(other, torch.Tensor) and other.dim() > 0:
            raise trace_error(f"a captured tensor of shape {tuple(other.shape)} combined with a traced vector; "
                              f"index it as well")
        return Vec(tuple(f(a, other) for a in self.items))

    def __add__(self, o): return self._zip(o, lambda a, b: a + b)
    def __radd__(self, o): return self._zip(o, lambda a, b: b + a)
    def __sub__(self, o): return self._zip(o, lambda a, b: a - b)
    def __rsub__(self, o): return self._zip(o, lambda a, b: b - a)
    def __mul__(self, o): return self._zip(o, lambda a, b: a * b)
    def __rmul__(self, o): return self._zip(o, lambda a, b: b * a)
    def __truediv__(self, o): return self._zip(o, lambda a, b: a / b)
    def __rtruediv__(self, o): return self._zip(o, lambda a, b: b / a)
    def __pow__(self, o): return self._zip(o, lambda a, b: a ** b)
    def __rpow__(self, o): return self._zip(o, lambda a, b: b ** a)
    def __floordiv__(self, o): return self._zip(o, lambda a, b: a // b)
    def __rfloordiv__(self, o): return self._zip(o, lambda a, b: b // a)
    def __mod__(self, o): return self._zip(o, lambda a, b: a % b)
    def __rmod__(self, o): return self._zip(o, lambda a, b: b % a)
    def __matmul__(self, o): return self.dot(o)
    def __rmatmul__(self, o): return self.dot(o)
    def __neg__(self): return Vec(tuple(-a for a in self.items))
    def __len__(self): return len(self.items)
    def __iter__(self): return iter(self.items)
    def __abs__(self): return Vec(tuple(abs(a) for a in self.items))
    def __bool__(self):
        raise trace_error("Python control flow on a traced vector; reduce it first (`.sum(-1)`)")
    __hash__ = object.__hash__

    def _no_bitwise(self, *_):
        raise trace_error("bitwise operators on a traced vector (a captured tensor indexed in all but its last "
                          "dimension): index it in every dimension first")

    def pow(self, o): return self ** o
    def abs(self): return abs(self)
    def square(self): return self * self

    def sum(self, dim=None, keepdim=False):
        if dim not in (None, -1, 0) or keepdim:
            raise trace_error(f"a traced vector has one dimension: `.sum()` or `.sum(-1)`, not `.sum({dim!r})`")
        out = self.items[0]
        for a in self.items[1:]:
            out = out + a
        return out

    def norm(self, p=2, dim=None, keepdim=False):
        if p != 2 or dim not in (None, -1, 0) or keepdim:
            raise trace_error("`.norm()` of a traced vector: the Euclidean norm over its one dimension only")
        total = (self * self).sum()
        # torch's norm has gradient 0 at the zero vector (sqrt's would be inf · 0); the floor keeps
        # the value (≤ 1e-18 off) and gives that gradient, as max(·, c) passes none below c
        tracer = total.tracer
        return tracer.call("sqrt", tracer.call("max", total, 1e-36))

    def dot(self, other):
        return (self * other).sum()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        f = lookup_traced(name, None)
        if f is not None and f.arity == (1, 1):  # v.exp(), v.tanh(), ... elementwise
            return lambda: Vec(tuple(getattr(a, name)() for a in self.items))
        raise trace_error(f"`.{name}` is not supported on a traced vector (elementwise arithmetic, built-in "
                          f"functions, `.sum(-1)`, `.norm(dim=-1)` and `torch.dot` are)")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _vec_function(func, args, kwargs or {})


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__pow__", "__rpow__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__matmul__",
              "__rmatmul__", "__neg__", "__abs__"):
    setattr(PartialIndex, _name, _vec_op(_name))
_BITWISE_DUNDERS = ("__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__lshift__", "__rlshift__",
                    "__rshift__", "__rrshift__", "__invert__")
for _name in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__float__", "__int__", "__index__",
              *_BITWISE_DUNDERS):
    setattr(PartialIndex, _name, PartialIndex._incomplete)
for _name in _BITWISE_DUNDERS:
    setattr(Vec, _name, Vec._no_bitwise)


def _vec_function(func, args, kwargs):
    """torch functions of traced vectors: reductions over the one dimension, elementwise built-ins."""
    name = getattr(func, "__name__", str(func))
    vs = [a.vec() if isinstance(a, PartialIndex) else a for a in args]
    if name in ("dot", "inner", "vdot") and len(vs) == 2:
        a, b = vs
        return (a * b).sum() if isinstance(a, Vec) else (b * a).sum()
    if name == "sum" and isinstance(vs[0], Vec):
        return vs[0].sum(*vs[1:], **kwargs)
    if name in ("norm", "vector_norm", "linalg_vector_norm") and isinstance(vs[0], Vec):
        ord_ = kwargs.pop("ord", kwargs.pop("p", vs[1] if len(vs) > 1 else 2))
        return vs[0].norm(ord_, **kwargs)
    if name == "__getitem__":
        raise trace_error("a traced vector cannot be indexed; index the captured tensor in all its dimensions")
    ops = {"add": "__add__", "sub": "__sub__", "mul": "__mul__", "div": "__truediv__", "true_divide": "__truediv__",
           "pow": "__pow__", "matmul": "__matmul__"}
    if name in ops and len(vs) == 2 and not kwargs:  # torch.mul(score, v): by the vector operand
        a, b = vs
        if isinstance(a, Vec):
            return getattr(a, ops[name])(b)
        return getattr(b, "__r" + ops[name][2:])(a) if name != "matmul" else b.dot(a)
    if name.startswith("__") and name.endswith("__") and len(vs) == 2:  # Tensor operators
        a, b = vs
        op = name.strip("_")
        if isinstance(b, Vec):
            return getattr(b, f"__{op}__")(a) if op.startswith("r") else getattr(b, f"__r{op}__")(a)
    f = lookup_traced(name, kwargs)
    if f is not None and f.arity == (1, 1) and len(vs) == 1 and isinstance(vs[0], Vec):
        return Vec(tuple(vs[0].items[0].tracer.call(f.name, a) for a in vs[0].items))
    raise trace_error(f"`torch.{name}` on a traced vector is not supported (elementwise arithmetic, built-in "
                      f"functions, `.sum(-1)`, `.norm(dim=-1)` and `torch.dot` are)")


# ---------------------------------------------------------------------------- the tracer


@dataclass
class Captured:
    """A tensor the traced functions index: it becomes the tensor parameter ``name``."""

    name: str
    tensor: torch.Tensor
    elem: str
    scalar: bool = False  # a 0-d tensor: passed as a one-element view, read at [0]

    def argument(self, device=None) -> torch.Tensor:
        """What each call passes: the tensor, or a fresh one-element view of a 0-d tensor (so
        gradients reach it), moved to the call's ``device`` (a CPU scalar with CUDA inputs, as
        FlexAttention takes it)."""
        if not self.scalar:
            return self.tensor
        one = self.tensor.reshape(1)
        return one if device is None or one.device == device else one.to(device)

    @property
    def dims(self) -> int:
        return 1 if self.scalar else self.tensor.dim()


@dataclass
class Tracer:
    functions: list = field(default_factory=list)  # the user's functions, for naming captures
    captured: list[Captured] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)

    sizes: dict = field(default_factory=dict)  # id(node) → (node, tree size): see ``size``

    def size(self, node) -> int:
        """The tree size of a traced expression, shared sub-expressions counted at each use (as
        the spec will inline them), in time linear in the distinct nodes: each value's size is
        kept when its Sym is made, so a new node only adds its children's."""
        hit = self.sizes.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        total = 1
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            for kid in (value if isinstance(value, tuple) else (value,)):
                if isinstance(kid, ast.Keyword):
                    kid = kid.value
                if dataclasses.is_dataclass(kid) and not isinstance(kid, type) and not isinstance(kid, Span):
                    total += self.size(kid)
        self.sizes[id(node)] = (node, total)
        return total

    # -- functions
    def call(self, fn: str, *args) -> Sym:
        lifted = [(a if isinstance(a, Sym) else Sym(_num(a), "float" if isinstance(a, float) else "int", self)).plain()
                  for a in args]
        for a in lifted:
            if a.kind == "bool":
                raise trace_error(f"`{fn}` of a boolean; use torch.where(cond, 1.0, 0.0) to get a number")
        typing = FUNCTIONS[fn].typing
        if typing == "int" or typing == "same" and all(a.kind == "int" for a in lifted):
            kind = "int"
        else:
            kind = "float"
        return Sym(ast.Call(fn, tuple(a.node for a in lifted), ()), kind, self)

    def where(self, cond, a, b) -> Sym:
        if isinstance(cond, bool):
            return a if cond else b
        if not isinstance(cond, Sym) or cond.kind != "bool":
            raise trace_error("the condition of torch.where must be a comparison or a combination of them")
        cond = cond.plain()
        a, b = cond._lift(a), cond._lift(b)
        if b.kind == "neginf" or a.kind == "neginf":  # a FlexAttention-style mask
            keep, x = (cond.node, a) if b.kind == "neginf" else (ast.Not(cond.node), b)
            if x.kind == "neginf":
                raise trace_error("torch.where selects -inf on both sides")
            if x.kind == "bool":
                raise trace_error("torch.where mixes a boolean and -inf")
            masked = keep if x.masked is None else ast.BoolOp("and", keep, x.masked)
            return Sym(x.node, "float", self, masked)
        a, b = a.plain(), b.plain()
        if (a.kind == "bool") != (b.kind == "bool"):
            raise trace_error("torch.where mixes a boolean and a number")
        kind = a.kind if a.kind == b.kind else "float"
        return Sym(ast.IfExp(cond.node, a.node, b.node), kind, self)

    def clamp(self, x, lo, hi) -> Sym:
        if lo is not None and hi is not None:
            return self.call("clamp", x, lo, hi)
        if lo is not None:
            return self.call("max", x, lo)
        if hi is not None:
            return self.call("min", x, hi)
        return x

    def to_float(self, x: Sym) -> Sym:
        if x.kind == "float":
            return x
        if x.kind == "bool":
            return self.where(x, 1.0, 0.0)
        return Sym(ast.Call("float", (x.node,), ()), "float", self)

    def to_int(self, x: Sym) -> Sym:
        if x.kind == "int":
            return x
        if x.kind == "bool":
            return self.where(x, 1, 0)
        return Sym(ast.Call("floor", (x.node,), ()), "int", self)

    def to_dtype(self, x: Sym, dtype) -> Sym:
        if dtype == torch.bool:
            if x.kind != "bool":
                return x != 0
            return x
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return self.to_float(x)
        if isinstance(dtype, torch.dtype):
            return self.to_int(x)
        raise trace_error(f".to({dtype!r}) is not supported on a traced value")

    # -- captured tensors
    def index(self, tensor: torch.Tensor, idx, earlier: tuple = ()):
        """``tensor[idx]`` with symbolic indices: a value once every dimension has an index, else a
        ``PartialIndex`` that further indexing completes (``bias[b][h, q_idx]``)."""
        indices = earlier + (idx if isinstance(idx, tuple) else (idx,))
        if any(i is Ellipsis or i is None or isinstance(i, slice) for i in indices):
            raise trace_error("index captured tensors with one value per dimension (no slices, `...` or None)")
        if len(indices) > tensor.dim():
            raise trace_error(
                f"a captured tensor of shape {tuple(tensor.shape)} is indexed with {len(indices)} "
                f"indexes; give exactly one per dimension, e.g. t[h, q_idx]")
        nodes = []
        for axis, i in enumerate(indices):
            if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.dtype.is_floating_point:
                i = self.scalar(i)
            if isinstance(i, int) and not isinstance(i, bool):  # a constant: Python's meaning, checked now
                size = tensor.shape[axis]
                if not -size <= i < size:
                    raise trace_error(f"index {i} is out of range for dimension {axis} of a captured tensor of "
                                      f"shape {tuple(tensor.shape)}")
                i %= size
            s = i if isinstance(i, Sym) else Sym(_num(i), "bool" if isinstance(i, bool) else "int", self) \
                if isinstance(i, (bool, int)) else None
            if s is None or s.plain().kind != "int":
                kind = s.kind if s is not None else type(i).__name__
                raise trace_error(f"a tensor index must be an integer, got a {kind} value")
            nodes.append(s.node)
        if len(indices) < tensor.dim():
            return PartialIndex(self, tensor, indices)
        cap = self.capture(tensor)
        return Sym(ast.Index(cap.name, tuple(nodes)), cap.elem, self)

    def scalar(self, tensor: torch.Tensor) -> Sym:
        """A 0-d captured tensor used as a value: a runtime value (a one-element tensor parameter,
        passed again at every call: no recompilation when it changes, a gradient when it requires one)."""
        cap = self.capture(tensor)
        return Sym(ast.Index(cap.name, (ast.Num(0, True),)), cap.elem, self)

    def capture(self, tensor: torch.Tensor) -> Captured:
        for cap in self.captured:
            if cap.tensor is tensor:
                return cap
        if tensor.dtype == torch.bool:
            elem = "bool"
        elif tensor.dtype.is_floating_point:
            elem = "float"
        elif tensor.dtype.is_complex:
            raise trace_error("complex tensors have no spec meaning")
        else:
            elem = "int"
        name, found = self._name_for(tensor)
        if not found and tensor.requires_grad:
            raise trace_error(f"a tensor of shape {tuple(tensor.shape)} computed inside the function from one that "
                              f"requires grad (`log_t.exp()`) is evaluated once, when the function is traced: its "
                              f"value and gradient path would be stale at later calls; use the captured tensor "
                              f"itself in the traced expression, or compute the value outside the function")
        cap = Captured(name, tensor, elem, tensor.dim() == 0)
        self.captured.append(cap)
        self.taken.add(name)
        return cap

    def _name_for(self, tensor: torch.Tensor) -> tuple[str, bool]:
        """The Python name the user's functions know the tensor by, made unique and legal, and
        whether they hold it (False: the tensor was computed while tracing)."""
        found = None
        for fn in self.functions:
            code = getattr(fn, "__code__", None)
            if code is None:
                continue
            for var, cell in zip(code.co_freevars, fn.__closure__ or ()):
                try:
                    if cell.cell_contents is tensor:
                        found = var
                except ValueError:
                    continue
            for var in code.co_names:
                if fn.__globals__.get(var) is tensor:
                    found = found or var
        base = (found or "buf").lstrip("_") or "buf"
        if base in RESERVED:
            base = f"{base}_t"
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}{k}"
        return name, found is not None

    # -- torch functions on symbolic values
    def torch_function(self, func, args, kwargs):
        name = getattr(func, "__name__", str(func))
        if func is torch.Tensor.__getitem__ and isinstance(args[0], torch.Tensor):
            return self.index(args[0], args[1])
        if any(isinstance(a, (Vec, PartialIndex)) for a in _flatten((args, kwargs))):
            return _vec_function(func, args, kwargs)
        f = lookup_traced(name, kwargs)
        if f is not None and f.arity == (1, 1) and len(args) == 1:
            return self.call(f.name, args[0])
        if name == "where" and len(args) == 3:
            return self.where(*args)
        if name in ("minimum", "maximum", "fmin", "fmax") and len(args) == 2:
            return self.call("min" if name in ("minimum", "fmin") else "max", *args)
        if name in ("min", "max") and len(args) == 2 and not kwargs:
            return self.call(name, *args)
        if name in ("clamp", "clip"):
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            return self.clamp(args[0], lo, hi)
        if name in ("logical_and", "logical_or", "logical_xor") and len(args) == 2:
            x, y = (a if isinstance(a, Sym) else _other_sym(args)._lift(a) for a in args)
            x, y = (s if s.kind == "bool" else s != 0 for s in (x, y))  # logical_*: non-zero is true
            return _binary((x, y), {"and": "&", "or": "|", "xor": "^"}[name[8:]])
        if name in ("logical_not", "bitwise_not") and len(args) == 1:
            return (args[0] == 0) if name == "logical_not" and args[0].kind != "bool" else args[0].__invert__()
        if name in _BITWISE_FNS and len(args) == 2:
            return _binary(args, _BITWISE_FNS[name])
        if name in ("remainder", "fmod") and len(args) == 2:
            return _binary(args, "%")
        if name == "floor_divide" and len(args) == 2:
            return _binary(args, "//")
        if name in ("div", "true_divide", "divide") and len(args) == 2:
            mode = kwargs.get("rounding_mode")
            if mode == "floor":
                return _binary(args, "//")
            if mode is None:
                return _binary(args, "/")
        if name in ("pow", "float_power") and len(args) == 2:
            return _binary(args, "**")
        if name in ("add", "sub", "mul") and len(args) == 2 and not kwargs:
            return _binary(args, {"add": "+", "sub": "-", "mul": "*"}[name])
        if name.startswith("__") and name.endswith("__"):  # Tensor operators with a Sym operand
            op = name.strip("_")
            reverse = op.startswith("r") and op[1:] in _OPS
            op = op[1:] if reverse else op
            if op in _OPS and len(args) == 2:
                a, b = (args[1], args[0]) if reverse else (args[0], args[1])
                return _binary((a, b), _OPS[op])
        raise trace_error(f"`torch.{name}` has no spec meaning in attnc (supported: arithmetic, comparisons, "
                          "& | ^ ~ << >>, torch.where, minimum, maximum, clamp, indexing captured tensors, and "
                          f"the torch forms of {', '.join(sorted(f.name for f in FUNCTIONS.values() if f.traced))}; "
                          "see docs/language.md)")


_OPS = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%", "pow": "**",
        "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
        "and": "&", "or": "|", "xor": "^", "lshift": "<<", "rshift": ">>"}
_BITWISE_FNS = {"bitwise_and": "&", "bitwise_or": "|", "bitwise_xor": "^", "bitwise_left_shift": "<<",
                "bitwise_right_shift": ">>"}


def _other_sym(args) -> Sym:
    return next(a for a in args if isinstance(a, Sym))


def _binary(args, op: str) -> Sym:
    a, b = args
    if isinstance(a, torch.Tensor) and a.dim() == 0 and isinstance(b, Sym):
        a = b._lift(a)
    if isinstance(b, torch.Tensor) and b.dim() == 0 and isinstance(a, Sym):
        b = a._lift(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        t = a if isinstance(a, torch.Tensor) else b
        raise trace_error(
            f"a captured tensor of shape {tuple(t.shape)} is used as a value; index it with "
            "the symbolic arguments (e.g. `bias[h]`, `doc[q_idx]`), or pass a Python number")
    sym = a if isinstance(a, Sym) else b
    lhs = sym._lift(a)
    rhs = b
    if op in ("<", "<=", ">", ">=", "==", "!="):
        return lhs._compare(op, rhs)
    if op in ("&", "|", "^", "<<", ">>"):
        return lhs._bitwise(op, rhs)
    return lhs._arith(op, rhs)


# ---------------------------------------------------------------------------- user functions


@dataclass(frozen=True)
class ExtraParam:
    name: str
    kind: str  # "int" | "float" | "bool"
    default: object  # a Python value, or inspect.Parameter.empty


def fn_name(fn) -> str:
    """A user function's name for messages: a ``functools.partial`` has none of its own."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _standard_count(fn) -> int:
    """How many leading parameters are FlexAttention's own (``score``, ``b``, ``h``, ``q_idx``,
    ``kv_idx`` by position, any names): those without a default whose annotation is not int, float
    or bool — what marks a runtime parameter (``extra_params``)."""
    count = 0
    for p in inspect.signature(fn).parameters.values():
        if (p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty
                or p.annotation in (int, float, bool, "int", "float", "bool")):
            break
        count += 1
    return count


def role_of(fn) -> str:
    """"score" for a score_mod, "mask" for a mask_mod, as FlexAttention calls them — by position,
    whatever the names: ``score_mod(score, b, h, q_idx, kv_idx, ...)``, ``mask_mod(b, h, q_idx,
    kv_idx, ...)``, then runtime parameters (annotated int/float/bool, or with a number default).
    A first parameter named ``score`` makes a score_mod; otherwise the count of leading
    unannotated parameters without a default decides (5 or 4). A SpecError at the def line else."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        raise SpecError(f"{fn_name(fn)!r} has no inspectable signature") from None
    count = _standard_count(fn)
    first = next(iter(inspect.signature(fn).parameters.values()), None)
    # `b`/`batch` first is a mask_mod whose extra parameter lacks its annotation (extra_params says so);
    # a float-annotated first parameter is a score (a mask_mod's first is the batch index)
    if len(params) >= 5 and (params[0] == "score" or first.annotation in (float, "float")) \
            or count == 5 and params[0] not in ("b", "batch"):
        return "score"
    if len(params) >= 4:  # four or more: a mask_mod (its standard arguments may be annotated int)
        return "mask"
    name = fn_name(fn)
    raise SpecError(
        f"`{name}({', '.join(params)})` is neither a score_mod (score, b, h, q_idx, kv_idx, ...) "
        "nor a mask_mod (b, h, q_idx, kv_idx, ...): FlexAttention passes those 5 or 4 by position; "
        "the parameters after them are attnc runtime parameters and need an int/float/bool annotation "
        "or a number default", _def_span(fn))


def extra_params(fn, role: str) -> list[ExtraParam]:
    """The parameters after the standard ones: runtime scalar parameters of the attention."""
    sig = inspect.signature(fn)
    n_std = 5 if role == "score" else 4
    out = []
    for p in list(sig.parameters.values())[n_std:]:
        where = _def_span(fn)
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise SpecError(f"`{fn_name(fn)}`: *args/**kwargs cannot become spec parameters", where)
        if p.kind == p.KEYWORD_ONLY and isinstance(fn, functools.partial) and p.name in fn.keywords:
            continue  # bound by the partial: a constant of the traced function, not a parameter
        if p.kind == p.KEYWORD_ONLY:  # the tracer passes every parameter by position
            raise SpecError(f"`{fn_name(fn)}`: keyword-only parameter `{p.name}`; declare it before the `*` "
                            f"(callers still pass it by name: `attn(q, k, v, {p.name}=...)`)", where)
        kind = None
        ann = p.annotation
        if ann in (int, "int"):
            kind = "int"
        elif ann in (float, "float"):
            kind = "float"
        elif ann in (bool, "bool"):
            kind = "bool"
        elif p.default is not p.empty and isinstance(p.default, (bool, int, float)):
            kind = "bool" if isinstance(p.default, bool) else "int" if isinstance(p.default, int) else "float"
        if kind is None:
            raise SpecError(
                f"`{fn_name(fn)}`: extra parameter `{p.name}` needs an int/float/bool annotation or a "
                "number default (it becomes a runtime parameter of the attention)", where)
        if p.name in RESERVED or p.name.startswith("_"):
            raise SpecError(f"`{fn_name(fn)}`: parameter name `{p.name}` is reserved in attnc specs; rename it", where)
        if not p.name.isascii():
            raise SpecError(f"`{fn_name(fn)}`: parameter name `{p.name}` is not ASCII; spec names are ASCII "
                            f"identifiers (letters, digits, `_`)", where)
        if isinstance(p.default, float) and not abs(p.default) <= FLOAT32_MAX:
            raise SpecError(f"`{fn_name(fn)}`: the default of `{p.name}` is {p.default}; a float parameter's default "
                            f"must be a finite float32 number (|x| <= {FLOAT32_MAX:.7g})", where)
        if isinstance(p.default, int) and not isinstance(p.default, bool) and not -(2**31) <= p.default < 2**31:
            raise SpecError(f"`{fn_name(fn)}`: the default of `{p.name}` is {p.default}, which does not fit in "
                            f"int32", where)
        out.append(ExtraParam(p.name, kind, p.default))
    return out


def trace(fn, role: str, tracer: Tracer, extras: list[ExtraParam]) -> Sym | bool | float | int:
    """Call ``fn`` once on symbolic arguments; returns what it returned."""
    args = {
        "score": Sym(ast.Name("score"), "float", tracer),
        "b": Sym(ast.Name("b"), "int", tracer),
        "h": Sym(ast.Name("h"), "int", tracer),
        "q_idx": Sym(ast.Name("q_idx"), "int", tracer),
        "kv_idx": Sym(ast.Name("kv_idx"), "int", tracer),
    }
    std = SCORE_ARGS if role == "score" else MASK_ARGS
    positional = [args[a] for a in std]
    names = [nm for nm in list(inspect.signature(fn).parameters)[len(std):] if nm in {e.name for e in extras}]
    by_name = {e.name: e for e in extras}
    extra_syms = [Sym(ast.Name(nm), by_name[nm].kind, tracer) for nm in names]
    tracer.functions.append(fn)
    with _no_custom_backward():
        return fn(*positional, *extra_syms)


@contextlib.contextmanager
def _no_custom_backward():
    """While tracing, a ``torch.autograd.Function`` applied to a traced value is refused at the
    user's line: attnc derives the gradient from what the function computes, so a hand-written
    backward (a straight-through estimator, a clipped gradient) would be silently replaced."""
    with _patch_lock:  # installed by the first trace in, restored by the last out (threads overlap)
        global _patch_depth, _original_apply
        if _patch_depth == 0:
            _original_apply = torch.autograd.Function.__dict__["apply"]
            torch.autograd.Function.apply = classmethod(_refusing_apply)
        _patch_depth += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                torch.autograd.Function.apply = _original_apply


_patch_lock = threading.Lock()
_patch_depth = 0
_original_apply = None


def _refusing_apply(cls, *args, **kwargs):
    if any(isinstance(a, (Sym, Vec, PartialIndex)) for a in _flatten((args, kwargs))):
        raise trace_error(f"`{cls.__name__}.apply(...)`: a torch.autograd.Function's own backward cannot be "
                          f"used in attnc, which derives the gradient from the traced arithmetic; write the "
                          f"function's forward computation in the score_mod itself (its exact gradient is then "
                          f"derived)")
    return _original_apply.__func__(cls, *args, **kwargs)


def as_expr(result, role: str, fn, tracer: Tracer) -> tuple[ast.Expr, ast.Expr | None]:
    """The function's result as a spec expression of the right type for its role, and for a
    score_mod the mask its ``torch.where(cond, score, -inf)`` selections mean (or None)."""
    name = fn_name(fn)
    origin = getattr(result, "origin", None)
    where = _span_at(*origin) if origin is not None else _def_span(fn)
    masked = None
    if isinstance(result, Sym):
        if result.kind == "neginf":
            raise SpecError(f"`{name}` returns -inf for every pair", where)
        kind, node, masked = result.kind, result.node, result.masked
    elif isinstance(result, (bool, int, float)):
        kind = "bool" if isinstance(result, bool) else "int" if isinstance(result, int) else "float"
        node = _num(result)
    elif isinstance(result, torch.Tensor) and result.dim() == 0 and result.dtype == torch.bool:
        kind, node = "bool", ast.Bool(bool(result))
    else:
        raise SpecError(f"`{name}` returned a {type(result).__name__}; a {role}_mod returns "
                        f"{'a boolean' if role == 'mask' else 'a number'} built from its arguments", where)
    if role == "mask" and kind != "bool":
        raise SpecError(f"mask_mod `{name}` returned {'an' if kind == 'int' else 'a'} {kind} value; a mask_mod must "
                        "return a boolean (a comparison, or `&`/`|`/`~` of comparisons)", where)
    if role == "score" and kind == "bool":
        raise SpecError(f"score_mod `{name}` returned a boolean; a score_mod returns the new score", where)
    return node, masked
