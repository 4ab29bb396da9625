"""Compile cascades to kernels, cache them, validate inputs and launch.

``attnc.compile(path_or_source)`` / ``attnc.load(name)`` return an ``Attention``: call it as
``attn(q, k, v, **params)``. CUDA tensors run the compiled Triton kernel; CPU tensors run the
same source through Triton's interpreter (no environment variable needed).

Kernel sources are cached in memory and on disk (``$ATTNC_CACHE_DIR``, default
``~/.cache/attnc``), written atomically; the key covers the cascade text, the codegen version,
the Triton version and the specialization (dtype class, interpreter or not). Sizes, batch and
runtime scalar parameters are kernel arguments that Triton does not specialize on, so changing
them never recompiles; ``compile_count()`` counts kernel builds so tests can check that.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
import triton

from ..codegen.generate import CODEGEN_VERSION, KernelSource, Specialization, generate
from ..dsl.errors import SpecError
from ..ir import nodes as n
from ..ir.printer import cascade_text, expr_text
from .frontend import library_spec, spec_from_file, spec_from_text

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_lock = threading.RLock()
_memory: dict[str, object] = {}
_builds = 0


def compile_count() -> int:
    """How many kernels this process has built (a cache hit does not count)."""
    return _builds


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNC_CACHE_DIR") or Path.home() / ".cache" / "attnc")


def cache_key(c: n.Cascade, spec: Specialization) -> str:
    h = hashlib.sha256()
    for part in (cascade_text(c), CODEGEN_VERSION, triton.__version__, spec.dtype, str(spec.interpret)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_STDLIB_CACHE: dict = {}


@contextlib.contextmanager
def _interpreted_stdlib():
    """Run Triton's standard library (tl.sum, tl.zeros, tl.sigmoid, ...) under the interpreter.

    Those are ``@triton.jit`` functions, which become interpretable only when TRITON_INTERPRET
    is set before Triton is imported. attnc needs no environment variable, so during an
    interpreted launch it swaps them for interpreted twins, and restores them afterwards.
    """
    import inspect

    import triton.language as tl
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    try:  # imported lazily by the interpreter's argument handling; it must see the real stdlib
        import triton.experimental.gluon  # noqa: F401
    except ImportError:  # older Triton: no gluon
        pass
    saved = []
    for owner in (tl, tl.tensor, tl.core, standard):
        for name, member in inspect.getmembers(owner):
            if isinstance(member, JITFunction):
                twin = _STDLIB_CACHE.setdefault(id(member), InterpretedFunction(member.fn))
                saved.append((owner, name, member))
                setattr(owner, name, twin)
    try:
        yield
    finally:
        for owner, name, member in reversed(saved):
            setattr(owner, name, member)


def _load_module(path: Path, key: str):
    name = f"attnc_kernel_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # triton reads the source back through inspect
    spec.loader.exec_module(module)
    return module


class _Kernel:
    def __init__(self, source: KernelSource, path: Path, module, interpret: bool):
        self.source = source
        self.path = path
        self.interpret = interpret
        fn = getattr(module, source.kernel_name)
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            self.fn = InterpretedFunction(fn)
        else:
            for helper in module.HELPERS:  # helpers must be jitted before the kernel is
                setattr(module, helper, triton.jit(getattr(module, helper)))
            sizes = ["n_q", "n_kv", "n_heads", "n_kv_heads", "head_dim", "head_dim_v"]
            scalar_args = [a for a in fn.__code__.co_varnames[: fn.__code__.co_argcount]
                           if a.startswith("u_") or a.startswith("stride") or a in sizes]
            self.fn = triton.jit(fn, do_not_specialize=scalar_args)


def kernel_for(c: n.Cascade, spec: Specialization) -> _Kernel:
    """The kernel of ``c`` for ``spec``, from memory, disk, or freshly generated."""
    global _builds
    key = cache_key(c, spec)
    with _lock:
        if key in _memory:
            return _memory[key]
        source = generate(c, spec)
        path = cache_dir() / f"{key}.py"
        if not path.exists() or path.read_text(encoding="utf-8") != source.text:
            _write_atomic(path, source.text)
        module = _load_module(path, key)
        kernel = _Kernel(source, path, module, spec.interpret)
        _memory[key] = kernel
        _builds += 1
        return kernel


# ---------------------------------------------------------------------------- the callable


def _check_tensors(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"`{name}` must have 4 dimensions [B, H, N, D], got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"`{name}` must be float32, float16 or bfloat16, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nkv, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q has {B}, k has {Bk}, v has {v.shape[0]}")
    if Dk != D:
        raise ValueError(f"`k` must have head dim {D} like q, got shape {tuple(k.shape)}")
    if tuple(v.shape[1:3]) != (Hkv, Nkv):
        raise ValueError(f"`v` must have shape [{B}, {Hkv}, {Nkv}, Dv] like k, got {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if not (1 <= D <= 256 and 1 <= v.shape[3] <= 256):
        raise ValueError(f"head dims must be 1..256, got D={D}, Dv={v.shape[3]}")
    return B, Hq, Hkv, Nq, Nkv, D, v.shape[3]


class Attention:
    """A compiled attention variant: ``attn(q, k, v, *, scale=None, return_lse=False, **params)``."""

    # Tests set this: outputs are filled with NaN before the kernel runs, so an element the
    # kernel fails to write cannot pass for a correct one.
    POISON = False

    def __init__(self, cascade: n.Cascade, origin: str):
        self.cascade = cascade
        self.origin = origin

    def __repr__(self) -> str:
        params = ", ".join(p.name for p in self.cascade.params)
        return f"<attnc.Attention {self.cascade.name}({params}) from {self.origin}>"

    @property
    def name(self) -> str:
        return self.cascade.name

    def kernel_path(self, dtype: torch.dtype = torch.float16, device: str = "cpu") -> Path:
        """The cached ``.py`` file of the generated kernel for this dtype/device."""
        return kernel_for(self.cascade, Specialization(_DTYPES[dtype], device == "cpu")).path

    def _params(self, params: dict, sizes: dict, device) -> tuple[list, list]:
        from .reference import _eval_size_expr

        c = self.cascade
        known = {p.name for p in c.params}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"{c.name} got unknown parameter(s) {', '.join(unknown)}; it takes: {', '.join(sorted(known)) or 'none'}")
        scalars, tensors, values = [], [], {}
        for p in c.params:
            if p.kind == "tensor":
                continue
            if p.name in params:
                value = params[p.name]
            elif p.default is not None:
                value = _eval_size_expr(p.default, sizes, {})
            else:
                raise TypeError(f"{c.name} needs parameter `{p.name}` ({p.kind})")
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise TypeError(f"parameter `{p.name}` is a scalar {p.kind}, got a tensor of shape {tuple(value.shape)}")
                value = value.item()
            if p.kind == n.BOOL:
                if not isinstance(value, bool):
                    raise TypeError(f"parameter `{p.name}` is a bool, got {type(value).__name__}")
                value = int(value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"parameter `{p.name}` is {p.kind}, got {type(value).__name__}")
            elif p.kind == n.INT:
                if isinstance(value, float) and not value.is_integer():
                    raise TypeError(f"parameter `{p.name}` is an int, got {value!r}")
                value = int(value)
                if not -(2**31) <= value < 2**31:
                    raise ValueError(f"parameter `{p.name}` = {value} does not fit in int32")
            else:
                value = float(value)
            values[p.name] = value
            scalars.append(value)
        for p in c.params:
            if p.kind != "tensor":
                continue
            if p.name not in params:
                raise TypeError(f"{c.name} needs tensor parameter `{p.name}`")
            t = params[p.name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"parameter `{p.name}` is a tensor, got {type(t).__name__}")
            want = tuple(int(_eval_size_expr(d, sizes, values)) for d in p.dims)
            if tuple(t.shape) != want:
                shown = ", ".join(expr_text(d) for d in p.dims)
                raise ValueError(f"parameter `{p.name}` must have shape [{shown}] = {want}, got {tuple(t.shape)}")
            if p.elem == n.INT and (t.dtype.is_floating_point or t.dtype == torch.bool):
                raise TypeError(f"parameter `{p.name}` holds ints, got dtype {t.dtype}")
            if p.elem == n.FLOAT and not t.dtype.is_floating_point:
                raise TypeError(f"parameter `{p.name}` holds floats, got dtype {t.dtype}")
            if p.elem == n.BOOL and t.dtype != torch.bool:
                raise TypeError(f"parameter `{p.name}` holds bools, got dtype {t.dtype}")
            if t.device != device:
                raise ValueError(f"parameter `{p.name}` is on {t.device}, but q is on {device}")
            if p.elem == n.BOOL:
                t = t.to(torch.int8)
            if t.dtype == torch.int64:
                t = t.to(torch.int32)
            if any(s == 0 for s in t.shape):
                raise ValueError(f"parameter `{p.name}` is empty (shape {tuple(t.shape)})")
            tensors += [t, *t.shape, *t.stride()]
        return tensors, scalars

    def __call__(self, q, k, v, *, scale: float | None = None, return_lse: bool = False, **params):
        B, Hq, Hkv, Nq, Nkv, D, Dv = _check_tensors(q, k, v)
        if scale is None:
            scale = 1.0 / math.sqrt(D)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"`scale` must be a number, got {type(scale).__name__}")
        sizes = {"n_q": Nq, "n_kv": Nkv, "head_dim": D, "n_heads": Hq, "n_kv_heads": Hkv, "scale": float(scale),
                 "B": B, "H": Hq, "H_KV": Hkv, "N_Q": Nq, "N_KV": Nkv, "D": D, "D_V": Dv}
        tensors, scalars = self._params(params, sizes, q.device)
        if return_lse and not self.cascade.has_lse:
            raise ValueError(f"{self.cascade.name} defines no lse[i]; call it with return_lse=False")
        interpret = q.device.type == "cpu"
        kernel = kernel_for(self.cascade, Specialization(_DTYPES[q.dtype], interpret))
        alloc = torch.full if self.POISON else (lambda shape, _v, **kw: torch.empty(shape, **kw))
        out = alloc((B, Hq, Nq, Dv), float("nan"), dtype=q.dtype, device=q.device)
        lse = alloc((B, Hq, Nq), float("nan"), dtype=torch.float32, device=q.device)
        if Nq == 0 or B == 0 or Hq == 0:
            return (out, lse) if return_lse else out
        block = 16 if interpret else 64
        grid = (triton.cdiv(Nq, block), B * Hq)
        quiet = np.errstate(all="ignore") if interpret else contextlib.nullcontext()  # masked-off lanes
        with _lock, quiet, (_interpreted_stdlib() if interpret else contextlib.nullcontext()):
            self._launch(kernel, grid, block, q, k, v, out, lse, tensors, scalars, Nq, Nkv, Hq, Hkv, D, Dv, scale)
        return (out, lse) if return_lse else out

    @staticmethod
    def _launch(kernel, grid, block, q, k, v, out, lse, tensors, scalars, Nq, Nkv, Hq, Hkv, D, Dv, scale):
        kernel.fn[grid](
            q, k, v, out, lse, *tensors, *scalars,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
            Nq, Nkv, Hq, Hkv, D, Dv, float(scale),
            BLOCK_M=block, BLOCK_N=block,
            BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(Dv)),
        )


def compile(path_or_source: str | os.PathLike, name: str | None = None) -> Attention:  # noqa: A001
    """Compile a spec file (a path) or spec text (anything with a newline) to an ``Attention``."""
    if isinstance(path_or_source, os.PathLike) or (isinstance(path_or_source, str) and "\n" not in path_or_source):
        spec = spec_from_file(path_or_source)
        origin = str(path_or_source)
    elif isinstance(path_or_source, str):
        spec = spec_from_text(path_or_source)
        origin = "<string>"
    else:
        raise TypeError(f"compile() takes a path or spec text, got {type(path_or_source).__name__}")
    try:
        return Attention(spec.cascade(name), origin)
    except KeyError as err:
        raise SpecError(str(err.args[0])) from None


def load(name: str) -> Attention:
    """The library variant ``name`` (see ``attnc list``)."""
    spec = library_spec(name)
    return Attention(spec.cascade(name), f"library/{name}.attn")
