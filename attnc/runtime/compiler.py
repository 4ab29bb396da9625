"""Compile cascades to kernels, cache them, validate inputs and launch.

``attnc.compile(path_or_source)`` / ``attnc.load(name)`` return an ``Attention``: call it as
``attn(q, k, v, **params)``. CUDA tensors run the compiled Triton kernel; CPU tensors run the
same source through Triton's interpreter (no environment variable needed).

Kernel sources are cached in memory and on disk (``$ATTNC_CACHE_DIR``, default
``~/.cache/attnc``, checked and written as ``runtime/cache.py`` says; kernels run from the text
in memory, never from the disk); the key covers the cascade text, the codegen version,
the Triton version and the specialization (dtype class, interpreter or not). Sizes, batch and
runtime scalar parameters are kernel arguments that Triton does not specialize on, so changing
them never recompiles; ``compile_count()`` counts kernel builds so tests can check that.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import triton
import triton.language as tl

from ..codegen.backward import KV_KERNEL, ROWS_KERNEL, BackwardSource, generate_backward
from ..codegen.generate import CODEGEN_VERSION, KernelSource, Specialization, generate, unspecialized
from ..codegen.tuning import INTERPRETER_CONFIG, LaunchConfig, bwd_gpu_configs, first_fitting, gpu_configs
from ..dsl.errors import SpecError
from ..ir import nodes as n
from ..ir.backward import BackwardError, derive_backward
from ..ir.evaluate import eval_size_expr
from ..ir.layout import loose, permute, sized_by_length
from ..ir.offsets import GROUP, KV_OFFSET, N_NEW, Q_OFFSET, SEQ_LEN, packed_heads, with_offsets
from ..ir.passes import plan_passes
from ..ir.printer import cascade_text, expr_text
from .cache import cache_dir, load_module, store
from .decode import CacheView
from .frontend import library_spec, spec_from_file, spec_from_text
from .layout import GridPlan, gather, grid_dims, scatter
from .sparsity import TileCache, classify
from .validate import (FLOAT32_MAX, SYMBOLIC, bind_params, check_float32, check_inputs, check_int32, require_dense,
                       sizes_of)

SPEC_OPENERS = ("attention", "mask", "score", "norm", "from", "#")  # how spec text (not a path) starts
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _positions(what: str, value, batch: int, device) -> torch.Tensor:
    """An offset or length argument (an int, or an int tensor [B] or []) as int32 [B] on ``device``."""
    if value is None:
        value = 0
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"`{what}` must be an int or an integer tensor, got a {value.dtype} tensor")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(f"`{what}` must be an int or a tensor [B] = [{batch}], got shape {tuple(value.shape)}")
        out = value.to(device=device, dtype=torch.int64).expand(batch)
    elif hasattr(value, "__index__") and not isinstance(value, (bool, np.bool_)):
        value = operator.index(value)  # an int, or a numpy integer
        if not 0 <= value <= 2**31 - 1:
            raise ValueError(f"`{what}` must be in 0..2**31 - 1, got {value}")
        out = torch.full((batch,), value, dtype=torch.int64, device=device)
    else:
        raise TypeError(f"`{what}` must be an int or an integer tensor [B], got {type(value).__name__}")
    if batch and (bool((out < 0).any()) or bool((out > 2**31 - 1).any())):
        raise ValueError(f"`{what}` must be in 0..2**31 - 1, got {out.tolist()}")
    return out.to(torch.int32).contiguous()
_lock = threading.RLock()
_memory: dict[str, object] = {}
_builds = 0


def compile_count() -> int:
    """How many kernels this process has built (a cache hit does not count)."""
    return _builds


def cache_key(c: n.Cascade, spec: Specialization, kind: str = "fwd") -> str:
    h = hashlib.sha256()
    for part in (cascade_text(c), CODEGEN_VERSION, triton.__version__, spec.dtype, str(spec.interpret), kind):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


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


def _kernel_fns(module, names, interpret: bool) -> dict:
    """The kernels ``names`` of a generated module: interpreted, or jitted with sizes, strides and
    runtime parameters unspecialized (the module's helpers are jitted first)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return {name: InterpretedFunction(getattr(module, name)) for name in names}
    for helper in module.HELPERS:  # helpers must be jitted before the kernels are
        setattr(module, helper, triton.jit(getattr(module, helper)))
    fns = {}
    for name in names:
        fn = getattr(module, name)
        argnames = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        fns[name] = triton.jit(fn, do_not_specialize=unspecialized(argnames))
    return fns


def _cached(key: str, make_source, build):
    """From memory, else ``build(source, path, module)`` on the source ``make_source()`` gives:
    stored in the disk cache for the user to read, and run from the text itself."""
    global _builds
    with _lock:
        if key in _memory:
            return _memory[key]
        source = make_source()
        # the file name carries the text's hash too: two processes that generate different text
        # under one key (an attnc checkout being edited) never import each other's kernel
        name = f"{key}_{hashlib.sha256(source.text.encode()).hexdigest()[:12]}"
        path = cache_dir() / f"{name}.py"
        store(path, source.text)  # for the user to read; the kernel runs from the text in memory
        _memory[key] = build(source, path, load_module(source.text, path, f"attnc_kernel_{name}"))
        _builds += 1
        return _memory[key]


_interpreter_config = INTERPRETER_CONFIG


@contextlib.contextmanager
def interpreter_tiles(block_m: int, block_n: int):
    """Interpreted (CPU) kernels launch with ``block_m × block_n`` tiles inside this block instead
    of ``INTERPRETER_CONFIG``'s: tile-visit counts at GPU tile sizes (``attnc.testing.tiles``),
    or tiles smaller than a GPU's 16 in tests.
    Not thread-safe; the kernels themselves are unchanged (tile sizes are launch constexprs)."""
    global _interpreter_config
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(size, int) or size < 1 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two, got {size!r}")
    saved = _interpreter_config
    _interpreter_config = LaunchConfig(block_m, block_n, 1, 1)
    try:
        yield
    finally:
        _interpreter_config = saved


class _Kernel:
    def __init__(self, source: KernelSource, path: Path, module, interpret: bool):
        self.source = source
        self.path = path
        self.interpret = interpret
        self.fn = _kernel_fns(module, (source.kernel_name,), interpret)[source.kernel_name]
        self._tuned: dict[tuple, object] = {}
        self.chosen: dict[tuple, LaunchConfig] = {}  # the untimed config that fits, per launcher key

    def launcher(self, config_key: tuple):
        """The kernel to launch for (capability, BLOCK_D, BLOCK_DV, aligned) and its configs:
        interpreted (one config), autotuned over ``gpu_configs`` (None: the tuner picks, skipping
        configs that do not fit the device), or untimed (``ATTNC_AUTOTUNE=0``, runtime tile
        classes): the candidates in order, of which the caller launches the first that fits."""
        if self.interpret:
            return self.fn, [_interpreter_config]
        if config_key not in self._tuned:
            capability, block_d, block_dv, aligned = config_key
            configs = gpu_configs(capability, self.dtype, block_d, block_dv, self.num_passes, aligned)
            # A runtime tile classification is made for one tile size: one config, untimed.
            fixed = self.source.runtime_tiles or os.environ.get("ATTNC_AUTOTUNE", "1") == "0"
            if fixed or len(configs) == 1:
                self._tuned[config_key] = (self.fn, configs)
            else:
                fn = triton.autotune(
                    [triton.Config(c.kwargs(), num_warps=c.num_warps, num_stages=c.num_stages) for c in configs],
                    key=["head_dim", "head_dim_v"],
                )(self.fn)
                self._tuned[config_key] = (fn, None)
        return self._tuned[config_key]


def fast_path(tensors, head_dim: int, head_dim_v: int) -> dict[str, bool]:
    """The fast-path flags a launch passes (the kernels' ``ALIGNED`` / ``EVEN_D`` constexprs,
    ``codegen/generate.py: specialize_lines``): ``ALIGNED`` when every tensor has unit stride on
    its last (head) dim, its other strides, its start and both head dims are multiples of 16
    bytes; ``EVEN_D`` when the head dims are the padded block sizes (no column masks)."""
    per16 = 16 // tensors[0].element_size()
    aligned = head_dim % per16 == 0 and head_dim_v % per16 == 0 and all(
        (t.stride(-1) == 1 or t.shape[-1] == 1) and t.data_ptr() % 16 == 0
        and all(st % per16 == 0 for st in t.stride()[:-1]) for t in tensors)
    return {"ALIGNED": aligned, "EVEN_D": head_dim == _block(head_dim) and head_dim_v == _block(head_dim_v)}


def _block(d: int) -> int:
    """The padded (power of two, at least 16) block of a head dim."""
    return max(16, triton.next_power_of_2(d))


def kernel_for(c: n.Cascade, spec: Specialization) -> _Kernel:
    """The kernel of ``c`` for ``spec``, from memory, disk, or freshly generated."""
    def build(source, path, module):
        kernel = _Kernel(source, path, module, spec.interpret)
        kernel.dtype, kernel.num_passes = spec.dtype, plan_passes(c).num_passes
        return kernel

    return _cached(cache_key(c, spec), lambda: generate(c, spec), build)


class _BackwardKernels:
    """The two backward kernels of one cascade and specialization (``codegen/backward.py``)."""

    def __init__(self, source: BackwardSource, path: Path, module, interpret: bool, dtype: str):
        self.source = source
        self.path = path
        self.interpret = interpret
        self.dtype = dtype
        self.fns = _kernel_fns(module, (ROWS_KERNEL, KV_KERNEL), interpret)
        self.chosen: dict[tuple, LaunchConfig] = {}  # the config that fits, per (capability, blocks, aligned)

    def configs(self, capability: int, block_d: int, block_dv: int, aligned: bool = True) -> list[LaunchConfig]:
        """The candidates, in order: the caller launches the first at which both kernels fit."""
        if self.interpret:
            return [_interpreter_config]
        return bwd_gpu_configs(capability, self.dtype, block_d, block_dv, aligned)


def _fitting_config(chosen: dict, key: tuple, candidates: list[LaunchConfig], compiled, device, what: str):
    """The first of ``candidates`` whose kernels (``compiled(config)``: Triton's compiled kernels,
    built without a launch) fit ``device``'s shared memory, remembered under ``key``. One candidate,
    or the interpreter: that one, unchecked. Triton refuses a launch past the limit ("out of
    resource: shared memory") only after earlier kernels of the same call may have run; checking
    first leaves nothing half-written."""
    if key in chosen:
        return chosen[key]
    if len(candidates) == 1 or device.type != "cuda":
        return candidates[0]
    from triton.compiler.compiler import max_shared_mem

    limit = max_shared_mem(device.index if device.index is not None else torch.cuda.current_device())
    needs = {}

    def fits(config):
        needs[config] = max(k.metadata.shared for k in compiled(config))
        return needs[config] <= limit

    config = first_fitting(candidates, fits)
    if config is None:
        tried = ", ".join(f"{c.block_m}x{c.block_n} ({needs[c]} bytes)" for c in candidates)
        # before any launch: nothing written. The head dim is the argument that sizes the tiles.
        raise ValueError(f"{what}: no launch config fits this GPU's {limit} bytes of shared memory "
                         f"(tried {tried}); a smaller head dim (q, k, v's last dimension) needs less")
    chosen[key] = config
    return config


def backward_kernels_for(c: n.Cascade, spec: Specialization) -> _BackwardKernels:
    """The backward kernels of ``c`` for ``spec``, from memory, disk, or freshly generated."""
    return _cached(cache_key(c, spec, "bwd"), lambda: generate_backward(c, spec),
                   lambda source, path, module: _BackwardKernels(source, path, module, spec.interpret, spec.dtype))


# ---------------------------------------------------------------------------- the callable


def _capability(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


@dataclass(frozen=True)
class Packed:
    """Packed variable-length sequences (FlashAttention's varlen layout): sequence b holds query
    rows ``cu_q[b]:cu_q[b+1]`` and key rows ``cu_k[b]:cu_k[b+1]`` of token-major tensors
    ``[total, H, D]``. Kernels see them as ``[num_seqs, H, total, D]`` views with batch stride 0
    (``view``) and move to their sequence's rows themselves (``VARLEN``): no padding, no copy,
    and a tile never straddles two sequences."""

    cu_q: torch.Tensor  # int32 [num_seqs + 1], on the inputs' device
    cu_k: torch.Tensor
    lens_q: tuple[int, ...]
    lens_k: tuple[int, ...]

    @property
    def num_seqs(self) -> int:
        return len(self.lens_q)

    @property
    def max_q(self) -> int:
        return max(self.lens_q, default=0)

    @property
    def max_k(self) -> int:
        return max(self.lens_k, default=0)

    @property
    def pointers(self) -> tuple:
        return self.cu_q, self.cu_k

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """``[total, H, *rest]`` → ``[num_seqs, H, total, *rest]`` (a view, batch stride 0)."""
        return t.transpose(0, 1).unsqueeze(0).expand(self.num_seqs, *t.transpose(0, 1).shape)

    @staticmethod
    def unview(t: torch.Tensor) -> torch.Tensor:
        return t[0].transpose(0, 1)

    def rows(self, shape: tuple, dtype) -> torch.Tensor:
        """A new token-major buffer for a ``[B, H, N, *rest]`` kernel output, as its view."""
        _, heads, total, *rest = shape
        return self.view(torch.empty((total, heads, *rest), dtype=dtype, device=self.cu_q.device))

    def sizes(self, dense: dict) -> dict:
        """The sizes a mask sees: per-sequence lengths (tensors over the sequences)."""
        lq = torch.tensor(self.lens_q, dtype=torch.int64).view(-1, 1, 1, 1)
        lk = torch.tensor(self.lens_k, dtype=torch.int64).view(-1, 1, 1, 1)
        return {**dense, "B": self.num_seqs, "n_q": lq, "n_kv": lk, "N_Q": self.max_q, "N_KV": self.max_k}


def _cu_seqlens(name: str, cu, total: int, device) -> tuple[torch.Tensor, tuple[int, ...]]:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"`{name}` must be a 1-D int32/int64 tensor of cumulative lengths, got "
                        f"{type(cu).__name__ if not isinstance(cu, torch.Tensor) else f'{cu.dtype} {tuple(cu.shape)}'}")
    require_dense(f"`{name}`", cu)
    values = [int(x) for x in cu.tolist()]
    if not values or values[0] != 0:
        raise ValueError(f"`{name}` must start at 0, got {values[:1]}")
    lens = tuple(b - a for a, b in zip(values, values[1:], strict=False))
    if any(x < 0 for x in lens):
        raise ValueError(f"`{name}` must not decrease, got {values}")
    if values[-1] != total:
        raise ValueError(f"`{name}` must end at the number of rows ({total}), got {values[-1]}")
    return cu.to(device=device, dtype=torch.int32).contiguous(), lens  # the kernels read it at unit stride


class _VarlenFn(torch.autograd.Function):
    """Packed sequences through the forward and backward kernels (``Attention.varlen``)."""

    @staticmethod
    def forward(ctx, attn, packed, scale, scalars, q, k, v, *tensors):
        out, lse, stats = attn.launch_forward(packed.view(q), packed.view(k), packed.view(v), list(tensors),
                                              scalars, scale, save_stats=True, packed=packed)
        ctx.attn, ctx.packed, ctx.scale, ctx.scalars = attn, packed, scale, scalars
        ctx.save_for_backward(q, k, v, out, stats, *tensors)
        return Packed.unview(out), lse[0].transpose(0, 1)

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, stats, *tensors = ctx.saved_tensors
        p = ctx.packed
        dout = torch.zeros_like(Packed.unview(out)) if dout is None else dout
        dlse = torch.zeros(q.shape[0], q.shape[1], dtype=torch.float32, device=q.device) if dlse is None else dlse
        grad_mask = list(ctx.needs_input_grad[7:])
        dq, dk, dv, grads = ctx.attn.launch_backward(
            p.view(dout.contiguous()), p.view(dlse.float().contiguous()), p.view(q), p.view(k), p.view(v), out, stats,
            tensors, ctx.scalars, ctx.scale, grad_mask, packed=p)
        return (None, None, None, None, Packed.unview(dq), Packed.unview(dk), Packed.unview(dv), *grads)


class Attention:
    """A compiled attention variant: ``attn(q, k, v, *, scale=None, return_lse=False, **params)``."""

    # Tests set this: outputs are filled with NaN before the kernel runs, so an element the
    # kernel fails to write cannot pass for a correct one.
    POISON = False

    def __init__(self, cascade: n.Cascade, origin: str):
        from .autograd import register

        self.cascade = cascade
        self.origin = origin
        # the custom ops' handle on this cascade, made here: torch.compile must not trace it
        self.op_key = register(self)
        self.tile_cache = TileCache()  # runtime tile classifications (masks ir/bounds.py cannot bound)
        # a grid's tokens run permuted into grid tiles, through this cascade (ir/layout.py)
        self.permuted = Attention(permute(cascade), origin) if cascade.grid is not None else None
        self.grid_plans: OrderedDict = OrderedDict()  # GridPlan.for_call's choices for this variant
        self._offsets: Attention | None = None  # this variant over absolute positions (ir/offsets.py)
        self._packed: Attention | None = None  # an offsets variant with GQA groups packed into rows (decode)

    def __repr__(self) -> str:
        params = ", ".join(p.name for p in self.cascade.params)
        return f"<attnc.Attention {self.cascade.name}({params}) from {self.origin}>"

    @property
    def name(self) -> str:
        return self.cascade.name

    def reference(self, q, k, v, /, *, scale: float | None = None, return_lse: bool = False, q_offset=None,
                  kv_offset=None, seq_len=None, **params):
        """The float64 reference result for the same call (``runtime/reference.py``)."""
        from .reference import reference

        if any(x is not None for x in (q_offset, kv_offset, seq_len)):
            inner, params = self._at_offsets(q, k, v, scale, q_offset, kv_offset, seq_len, params)
            return reference(inner.cascade, q, k, v, scale=scale, return_lse=return_lse, **params)
        return reference(self.cascade, q, k, v, scale=scale, return_lse=return_lse, **params)

    def _at_offsets(self, q, k, v, scale, q_offset, kv_offset, seq_len, params: dict):
        """The variant over absolute positions and its arguments for a call whose queries sit at
        ``q_offset + i`` and keys at ``kv_offset + j`` of a self-attention over ``seq_len`` tokens
        (each an int or an int tensor [B]; ``seq_len`` defaults to where the call's last query or
        key sits, + 1; keys and queries at or past it are masked off: a padded cache). Parameters
        are bound as for that full call: shapes and defaults see ``n_q = n_kv = seq_len``."""
        if self._offsets is None:  # a grid variant is refused here, before its parameters are read
            self._offsets = Attention(with_offsets(self.cascade), self.origin)
        check_inputs(q, k, v)
        B, Nq, Nkv = q.shape[0], q.shape[2], k.shape[2]
        q_off = _positions("q_offset", q_offset, B, q.device)
        kv_off = _positions("kv_offset", kv_offset, B, q.device)
        ends = torch.maximum(q_off.long() + Nq, kv_off.long() + Nkv)  # int64: past int32 is refused below
        length = ends if seq_len is None else _positions("seq_len", seq_len, B, q.device).long()
        longest = int(length.max()) if B else 0
        if longest > 2**31 - 1:
            raise ValueError(f"positions must fit int32: the sequence reaches {longest}")
        sizes = {**sizes_of(q, k, v, scale), "n_q": longest, "n_kv": longest, "N_Q": longest, "N_KV": longest}
        if B and bool((length != longest).any()):
            per_row = [p.name for p in self.cascade.params if p.name not in params and p.default is not None and
                       any(isinstance(x, n.Var) and x.name in ("n_q", "n_kv") for x in n.walk(p.default))]
            if per_row:
                raise ValueError(f"parameter `{per_row[0]}` defaults to an expression of n_q/n_kv, which differ per "
                                 f"row here (seq_len {length.tolist()}); pass it")
        bound = bind_params(loose(self.cascade), params, sizes, q.device)
        for p in self.cascade.params:  # a buffer for the sequence (or a cache's capacity) at least seq_len long
            for axis, dim in enumerate(p.dims if p.kind == "tensor" else ()):
                want = eval_size_expr(dim, sizes, bound) if sized_by_length(dim) else 0
                if bound[p.name].shape[axis] < want:
                    raise ValueError(f"parameter `{p.name}` must cover the sequence: dimension {axis} "
                                     f"({expr_text(dim)}) needs at least {want} for seq_len {longest}, got "
                                     f"{bound[p.name].shape[axis]}")
        check_int32(self.cascade, B, sizes, bound)  # positions < seq_len: the full call's expressions
        return self._offsets, {**bound, Q_OFFSET: q_off, KV_OFFSET: kv_off, SEQ_LEN: length.to(torch.int32)}

    def kernel_path(self, dtype: torch.dtype = torch.float16, device: str = "cpu") -> Path:
        """The cached ``.py`` file of the generated kernel for this dtype/device."""
        if dtype not in _DTYPES:
            raise TypeError(f"`dtype` must be one of {', '.join(str(d) for d in _DTYPES)}, got {dtype}")
        if self.permuted is not None:  # the kernel a grid variant runs is its permuted cascade's
            return self.permuted.kernel_path(dtype, device)
        return kernel_for(self.cascade, Specialization(_DTYPES[dtype], device == "cpu")).path

    def _kernel_args(self, bound: dict) -> tuple[list, list]:
        """Bound parameters as kernel arguments: tensors (bool as int8; wide ints as given, narrowed
        to int32 by the launch, which can read their values; float tensors as given, so gradients
        reach them) and scalars (float parameters as float32)."""
        tensors, scalars = [], []
        for p in self.cascade.params:
            value = bound[p.name]
            if p.kind != "tensor":
                if isinstance(value, SYMBOLIC):
                    scalars.append(value)  # traced by torch.compile: converted inside the op
                else:
                    scalars.append(int(value) if p.kind in (n.BOOL, n.INT) else float(value))
                continue
            if value.dtype == torch.bool:
                value = value.to(torch.int8)
            tensors.append(value)
        return tensors, scalars

    def _prepare(self, q, k, v, scale, return_lse: bool, params: dict, lengths: dict | None = None):
        """Checks shared by dense and packed calls, then the sizes and the kernel arguments of the
        parameters (``lengths`` overrides the sizes a packed call binds parameters with)."""
        check_inputs(q, k, v, dtypes=tuple(_DTYPES))
        if not isinstance(return_lse, bool):  # `return_lse="no"` would be taken as true
            raise TypeError(f"`return_lse` is True or False, got {type(return_lse).__name__} {return_lse!r}")
        D, Dv = q.shape[3], v.shape[3]
        if not (1 <= D <= 256 and 1 <= Dv <= 256):
            raise ValueError(f"head dims must be 1..256, got D={D}, Dv={Dv}")
        sizes = {**sizes_of(q, k, v, scale), **(lengths or {})}
        bound = bind_params(self.cascade, params, sizes, q.device)
        tensors, scalars = self._kernel_args(bound)
        if return_lse and not self.cascade.has_lse:
            raise ValueError(f"{self.cascade.name} defines no lse[i]; call it with return_lse=False")
        return sizes, tensors, scalars

    def _needs_grad(self, q, k, v, tensors: list) -> bool:
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *tensors))
        if grad and not torch.compiler.is_compiling():  # a variant without a derivable backward fails here
            plan = derive_backward(self.cascade)
            names = [p.name for p in self.cascade.params if p.kind == "tensor"]
            for name, t in zip(names, tensors):
                if name in plan.map_tensors and t.requires_grad:
                    raise BackwardError(
                        f"`{name}` requires grad, but it is read inside a feature map, and attnc derives no "
                        f"gradient for a tensor there yet; pass `{name}.detach()` (q, k, v and the other "
                        f"parameters still get theirs)", self.cascade.stage("qk").span or self.cascade.span)
        return grad

    def __call__(self, q, k, v, /, *, scale: float | None = None, return_lse: bool = False, q_offset=None,
                 kv_offset=None, seq_len=None, **params):
        if any(x is not None for x in (q_offset, kv_offset, seq_len)):  # rows of a longer sequence
            inner, params = self._at_offsets(q, k, v, scale, q_offset, kv_offset, seq_len, params)
            return inner(q, k, v, scale=scale, return_lse=return_lse, **params)
        sizes, tensors, scalars = self._prepare(q, k, v, scale, return_lse, params)
        if self.permuted is not None:
            if torch.compiler.is_compiling():  # the host-side grid planning as one opaque op
                from .autograd import grid_op

                out, lse = grid_op(self, q, k, v, bind_params(self.cascade, params, sizes, q.device), sizes["scale"])
                return (out, lse) if return_lse else out
            return self._grid_call(q, k, v, sizes, return_lse, params)
        scale = sizes["scale"]
        grad = self._needs_grad(q, k, v, tensors)
        compiling = torch.compiler.is_compiling()
        if grad or compiling:
            from .autograd import attention_op  # differentiable, and opaque to torch.compile

            out, lse = attention_op(self, q, k, v, tensors, scalars, float(scale))
        else:
            out, lse, _ = self.launch_forward(q, k, v, tensors, scalars, float(scale), save_stats=False)
        return (out, lse) if return_lse else out

    def decode(self, q, k_cache, v_cache, cache_seqlens, /, *, k=None, v=None, block_table=None,
               kv_layout: str = "NHD", num_splits: int | None = None, scale: float | None = None,
               return_lse: bool = False, **params):
        """Attention of a few new query tokens per row to a KV cache (``runtime/decode.py``).

        ``q`` [B, Hq, n_new, D]; the cache is contiguous, ``[B, Hkv, capacity, D]``, or paged:
        ``block_table`` [B, max_pages] (int) lists each row's pages of ``k_cache``/``v_cache``,
        laid out ``[num_pages, page_size, Hkv, D]`` (``kv_layout="NHD"``) or ``[num_pages, Hkv,
        page_size, D]`` (``"HND"``). ``cache_seqlens`` (int or int tensor [B]) counts the keys in
        the cache; ``k``/``v`` [B, Hkv, n_new, D], when given, are written there first (in place)
        and attended too. The queries are the last ``n_new`` tokens of each row's sequence, so the
        result equals those rows of the full call; parameters bind as for that call. Forward only:
        for gradients call ``attn(q, k, v, q_offset=...)``.

        ``num_splits`` splits each row's keys over that many programs, whose partial states merge
        by the variant's proven rescale factors (split-KV; one-pass variants); None chooses from the
        batch, the heads and the lengths (on a GPU; 1 on the CPU)."""
        from .decode import CacheView, append, cache_views, check_pages, choose_splits, lengths, shape_only

        params = self._with_captured(params, q)

        if not isinstance(q, torch.Tensor):
            raise TypeError(f"`q` must be a tensor [B, Hq, n_new, D], got {type(q).__name__}")
        if q.dim() != 4:
            raise ValueError(f"`q` must be a tensor [B, Hq, n_new, D], got shape {tuple(q.shape)}")
        kk, vv, k_shape, v_shape, table, page_size = cache_views(q, k_cache, v_cache, block_table, kv_layout)
        appending = k is not None or v is not None
        if appending:
            if k is None or v is None:
                raise ValueError("pass both k= and v= (the new tokens' keys and values), or neither")
            want_k, want_v = (q.shape[0], k_shape[1], q.shape[2], k_shape[3]), (q.shape[0], k_shape[1], q.shape[2], v_shape[3])
            for name, t, want in (("k", k, want_k), ("v", v, want_v)):
                what = f"`{name}` holds the new tokens' {'keys' if name == 'k' else 'values'}: a {q.dtype} tensor " \
                       f"{list(want)} on {q.device}, got"
                if not isinstance(t, torch.Tensor) or t.dtype != q.dtype or t.device != q.device:
                    raise TypeError(f"{what} {f'{t.dtype} on {t.device}' if isinstance(t, torch.Tensor) else type(t).__name__}")
                if tuple(t.shape) != want:
                    raise ValueError(f"{what} shape {tuple(t.shape)}")
            for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
                if any(st == 0 and size > 1 for st, size in zip(t.stride(), t.shape)):
                    raise ValueError(f"`{name}` is a broadcast view (a stride of 0): appending would write one slot "
                                     f"for many; pass a cache buffer of its own")
        total = lengths(q, cache_seqlens, q.shape[2], appending, k_shape[2], _positions)
        if table is not None:
            check_pages(table, total, page_size, kk.shape[0])
        logical_k, logical_v = shape_only(q, k_shape), shape_only(q, v_shape)
        # every argument is checked before the cache is written: a refused call changes nothing
        inner, bound = self._at_offsets(q, logical_k, logical_v, scale, total - q.shape[2], None, total, params)
        sizes, tensors, scalars = inner._prepare(q, logical_k, logical_v, scale, return_lse, bound)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache, *tensors,
                                                                     *((k, v) if appending else ()))):
            raise ValueError("attn.decode computes no gradients; for training call attn(q, k, v, q_offset=..., "
                             "seq_len=...), which has a backward, or decode under torch.no_grad()")
        B, Hq, n_new, D = q.shape
        group = Hq // k_shape[1]
        runner = inner
        if group > 1:  # GQA: a group's heads are one tile's rows, reading their keys once (ir/offsets.py)
            if inner._packed is None:
                inner._packed = Attention(packed_heads(inner.cascade), self.origin)
            runner, q = inner._packed, q.reshape(B, k_shape[1], group * n_new, D)
            bound = {**bound, GROUP: group, N_NEW: max(n_new, 1)}
            _, tensors, scalars = runner._prepare(q, shape_only(q, k_shape), shape_only(q, v_shape), scale,
                                                  return_lse, bound)
        splits = choose_splits(runner, q, B * k_shape[1], total, num_splits)
        longest = int(total.max()) if B else 0
        tensors, scalars = runner._launch_args(q, logical_k, logical_v, tensors, scalars, float(sizes["scale"]), longest)
        if appending:  # the last write: nothing after it refuses the call
            append(k_cache, v_cache, table, page_size, kv_layout, k, v, total - n_new)
        cache = CacheView(total.to(torch.int32).contiguous(), k_shape[2], longest, table, page_size, splits)
        out, lse, _ = runner.launch_forward(q, kk, vv, tensors, scalars, float(sizes["scale"]), save_stats=False,
                                            cache=cache)
        out, lse = out.reshape(B, Hq, n_new, v_shape[3]), lse.reshape(B, Hq, n_new)
        return (out, lse) if return_lse else out

    def _with_captured(self, params: dict, q) -> dict:
        """``params`` and what the variant binds itself (an @attnc.jit variant's captured tensors)."""
        return params

    def _grid_call(self, q, k, v, sizes: dict, return_lse: bool, params: dict):
        """A grid variant: scatter the tokens into grid tiles, run the permuted cascade with every
        parameter bound for the caller's sizes (defaults over n_kv must not see the padding),
        gather the outputs back into the caller's order."""
        bound = bind_params(self.cascade, params, sizes, q.device)
        grid_dims(self.cascade, sizes, bound)  # refuse a call that does not fit the grid first
        # the permuted kernel's expressions are per axis; the variant's own, as the reference
        # computes them, must fit int32 too (a dilation of 2**31 - 1 passed the permuted check)
        check_int32(self.cascade, q.shape[0], sizes, bound)
        if sizes["n_q"] == 0:  # nothing to permute
            out = q.new_zeros((*q.shape[:3], v.shape[3]))
            lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
            return (out, lse) if return_lse else out
        plan = self.grid_plan(q, k, v, *self.permuted._forward_blocks(q, v), _sizes=sizes, _bound=bound)
        res = self.permuted(scatter(q, plan.q), scatter(k, plan.k), scatter(v, plan.k), scale=float(sizes["scale"]),
                            return_lse=return_lse, **bound, **plan.hidden(q.device))
        if return_lse:
            return gather(res[0], plan.q), gather(res[1], plan.q)
        return gather(res, plan.q)

    def grid_backward(self, dout, dlse, q, k, v, scale: float, params: dict, wanted: set):
        """dq, dk, dv and {name: gradient} of the float tensor parameters in ``wanted`` for a grid
        variant's call, without autograd (``attnc::grid_backward`` runs below it): the call's plan,
        the permuted forward saving its statistics, the permuted backward, gradients gathered back
        into the caller's token order (the adjoint of ``scatter``)."""
        sizes = sizes_of(q, k, v, scale)
        bound = bind_params(self.cascade, params, sizes, q.device)
        check_int32(self.cascade, q.shape[0], sizes, bound)
        plan = self.grid_plan(q, k, v, *self.permuted._forward_blocks(q, v), _sizes=sizes, _bound=bound)
        qp, kp, vp = scatter(q, plan.q), scatter(k, plan.k), scatter(v, plan.k)
        perm = self.permuted
        psizes, ptensors, pscalars = perm._prepare(qp, kp, vp, sizes["scale"], False,
                                                   {**bound, **plan.hidden(q.device)})
        out, _lse, stats = perm.launch_forward(qp, kp, vp, ptensors, pscalars, psizes["scale"], save_stats=True)
        specs = [x for x in perm.cascade.params if x.kind == "tensor"]
        mask = [x.name in wanted for x in specs]
        dq, dk, dv, grads = perm.launch_backward(scatter(dout, plan.q), scatter(dlse, plan.q), qp, kp, vp, out, stats,
                                                 ptensors, pscalars, psizes["scale"], mask)
        named = {x.name: g for x, g in zip(specs, grads, strict=True) if g is not None}
        return gather(dq, plan.q), gather(dk, plan.k), gather(dv, plan.k), named

    def grid_plan(self, q, k, v, block_m: int, block_n: int, /, *, scale: float | None = None, _sizes=None,
                  _bound=None, **params) -> GridPlan:
        """The token permutation a grid variant's call runs with ``block_m × block_n`` kernel
        tiles (``runtime/layout.py``): of the tile shapes, the one whose kernel visits the fewest
        tiles, by the runtime classification of this call's mask."""
        sizes = _sizes if _sizes is not None else sizes_of(q, k, v, scale)
        bound = _bound if _bound is not None else bind_params(self.cascade, params, sizes, q.device)
        cpu = torch.device("cpu")

        def visits(plan: GridPlan) -> int:
            padded = {"n_q": plan.q.padded, "n_kv": plan.k.padded, "N_Q": plan.q.padded, "N_KV": plan.k.padded}
            tiles = classify(self.permuted.cascade, {**bound, **plan.hidden(cpu)}, {**sizes, **padded},
                             block_m, block_n)
            return int((tiles.classes != 0).sum())

        scalars_key = tuple(sorted((p.name, bound[p.name]) for p in self.cascade.params if p.kind != "tensor"))
        return GridPlan.for_call(self.cascade, sizes, bound, block_m, block_n, visits, self.grid_plans, scalars_key)

    def _forward_blocks(self, q, v) -> tuple[int, int]:
        """The forward kernel's tile sizes for these inputs (a grid's tiles are made to match)."""
        if q.device.type == "cpu":
            return _interpreter_config.block_m, _interpreter_config.block_n
        kernel = kernel_for(self.cascade, Specialization(_DTYPES[q.dtype], False))
        D, Dv = q.shape[3], v.shape[3]
        # the permuted tokens are fresh contiguous tensors: aligned when the head dims are
        aligned = D % (16 // q.element_size()) == 0 and Dv % (16 // q.element_size()) == 0
        _, config = kernel.launcher((_capability(q.device), _block(D), _block(Dv), aligned))
        return (config.block_m, config.block_n) if config is not None else (64, 64)

    def _tile_classes(self, q, k, v, scale: float, tensors: list, scalars: list, block_m: int, block_n: int,
                      packed: Packed | None = None, n_kv: int | None = None):
        """The runtime tile classification of this call's mask (cached while its inputs stay);
        ``n_kv`` overrides the keys' count (a paged cache's capacity)."""
        specs = self.cascade.params
        values = dict(zip([p.name for p in specs if p.kind == "tensor"], tensors, strict=True))
        values.update(zip([p.name for p in specs if p.kind != "tensor"], scalars, strict=True))
        sizes = packed.sizes(sizes_of(q, k, v, scale)) if packed else sizes_of(q, k, v, scale)
        if n_kv is not None and not packed:
            sizes = {**sizes, "n_kv": n_kv, "N_KV": n_kv}
        return self.tile_cache.get(self.cascade, values, sizes, block_m, block_n, q.device)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, /, *, scale: float | None = None,
               return_lse: bool = False, **params):
        """Packed variable-length sequences, FlashAttention's varlen layout: ``q [total_q, Hq, D]``,
        ``k [total_k, Hkv, D]``, ``v [total_k, Hkv, Dv]``; sequence b is query rows
        ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` against key rows ``cu_seqlens_k[b]:cu_seqlens_k[b+1]``.
        Returns ``out [total_q, Hq, Dv]`` (and ``lse [total_q, Hq]``), equal to running each
        sequence alone: the mask and score see sequence-local ``q_idx``/``kv_idx``, ``n_q``/``n_kv``
        are the sequence's lengths and ``b`` is the sequence's index (tensor parameters over ``B``
        have one row per sequence; ``N_Q``/``N_KV`` dims are the longest lengths). Differentiable
        like a dense call (not through torch.compile: it is not a custom op)."""
        if self.permuted is not None:
            raise ValueError(f"{self.name} lays its tokens out as a grid, which packed variable-length "
                             f"sequences do not have; call it on a dense [B, H, N, D] batch")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 3:
                raise ValueError(f"`{name}` must be a 3-D tensor [total, H, D] (packed sequences), got shape "
                                 f"{tuple(t.shape)}")
        if q.shape[2] != k.shape[2] or k.shape[:2] != v.shape[:2]:
            raise ValueError(f"packed shapes do not match: q {tuple(q.shape)} [total_q, Hq, D], k {tuple(k.shape)} "
                             f"[total_k, Hkv, D], v {tuple(v.shape)} [total_k, Hkv, Dv]")
        cu_q, lens_q = _cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
        cu_k, lens_k = _cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
        if len(lens_q) != len(lens_k):
            raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe as many sequences, got "
                             f"{len(lens_q)} and {len(lens_k)}")
        for p in self.cascade.params:  # a default over n_q/n_kv would differ per sequence
            if p.name not in params and p.default is not None and any(
                    isinstance(x, n.Var) and x.name in ("n_q", "n_kv") for x in n.walk(p.default)):
                raise ValueError(f"varlen: parameter `{p.name}` defaults to an expression of the sequence "
                                 f"lengths, which differ per sequence; pass {p.name}= explicitly")
        packed = Packed(cu_q, cu_k, lens_q, lens_k)
        q4, k4, v4 = packed.view(q), packed.view(k), packed.view(v)
        lengths = {"n_q": packed.max_q, "n_kv": packed.max_k, "N_Q": packed.max_q, "N_KV": packed.max_k}
        sizes, tensors, scalars = self._prepare(q4, k4, v4, scale, return_lse, params, lengths)
        scale = float(sizes["scale"])
        values = dict(zip([p.name for p in self.cascade.params if p.kind != "tensor"], scalars, strict=True))
        check_int32(self.cascade, len(lens_q), sizes, values)
        if self._needs_grad(q, k, v, tensors):
            out, lse = _VarlenFn.apply(self, packed, scale, scalars, q, k, v, *tensors)
        else:
            out4, lse4, _ = self.launch_forward(q4, k4, v4, tensors, scalars, scale, save_stats=False, packed=packed)
            out, lse = Packed.unview(out4), lse4[0].transpose(0, 1)
        return (out, lse) if return_lse else out

    def scalars_from(self, packed: torch.Tensor) -> list:
        """The scalar parameters the custom ops carry as one float64 tensor (``autograd.py``),
        back as Python numbers of their kinds."""
        kinds = [p.kind for p in self.cascade.params if p.kind != "tensor"]
        values = packed.tolist()
        return [bool(x) if kind == n.BOOL else int(x) if kind == n.INT else x
                for kind, x in zip(kinds, values, strict=True)]

    def _kernel_scalars(self, scalars: list) -> list:
        """Scalar parameters as the kernels take them: ints as ints, floats rounded to float32."""
        kinds = [p.kind for p in self.cascade.params if p.kind != "tensor"]
        return [int(x) if kind in (n.BOOL, n.INT) else _fp32_scalar(x) for kind, x in zip(kinds, scalars, strict=True)]

    def _int32_tensors(self, tensors: list) -> list:
        """Integer tensor parameters as kernels read them, int32: a wider one (int64) is converted
        after checking its values fit, rather than wrapped silently (document ids 2**32 and 0 would
        otherwise be one document); a float64 one is checked to fit float32. One reduction and one
        host sync per such tensor; int8-int32 and 16/32-bit float tensors skip both."""
        specs = [p for p in self.cascade.params if p.kind == "tensor"]
        out = []
        for p, t in zip(specs, tensors, strict=True):
            if t.dtype == torch.float64 and t.numel():  # read as float32 by the kernels, like the scalars
                big = t.abs().masked_fill(~torch.isfinite(t), 0).max()
                if float(big) > FLOAT32_MAX:
                    raise ValueError(f"parameter `{p.name}` holds {float(big):g}, beyond float32's range (±3.4e38), "
                                     f"which kernels read it in; pass values within it (±inf passes as given)")
            if p.elem == n.INT and t.dtype not in _NARROW_INTS and t.numel():
                lo, hi = (int(x) for x in torch.aminmax(t))
                if lo < -2**31 or hi >= 2**31:
                    raise ValueError(f"parameter `{p.name}` holds {lo if lo < -2**31 else hi}, beyond int32: "
                                     f"kernels read integer tensors as int32; pass values in "
                                     f"[-2147483648, 2147483647] (e.g. renumber the ids)")
                t = t.to(torch.int32)
            out.append(t)
        return out

    def _alloc(self, shape, dtype, device):
        # POISON: NaN-filled, so an element a kernel fails to write cannot pass for a correct one
        if self.POISON:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.empty(shape, dtype=dtype, device=device)

    def _launch_args(self, q, k, v, tensors: list, scalars: list, scale: float, n_kv: int) -> tuple[list, list]:
        """The checks that need concrete values (they run at launch, where torch.compile does not
        trace), then the kernel's tensor and scalar arguments; ``n_kv``: the keys a row reaches."""
        values = dict(zip([p.name for p in self.cascade.params if p.kind != "tensor"], scalars, strict=True))
        check_int32(self.cascade, q.shape[0], {**sizes_of(q, k, v, scale), "n_kv": n_kv, "N_KV": n_kv}, values)
        for p in self.cascade.params:  # traced calls skipped these in validation: numbers now
            if p.kind == n.FLOAT:
                check_float32(f"parameter `{p.name}`", values[p.name])
        return self._int32_tensors(tensors), self._kernel_scalars(scalars)

    def launch_forward(self, q, k, v, tensors: list, scalars: list, scale: float, save_stats: bool,
                       packed: Packed | None = None, cache: CacheView | None = None):
        """Run the forward kernel: ``out``, ``lse`` and, with ``save_stats``, the per-row
        statistics the backward reads (``[B, Hq, Nq, reductions + 1]`` fp32), else None.
        With ``packed``, q/k/v are ``Packed.view``s of token-major tensors and so are the outputs.
        With ``cache`` (``attn.decode``), row b reads ``cache.lens[b]`` keys, from pages when paged."""
        B, Hq, Nq, D = q.shape
        Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
        if cache is not None:
            Nkv = cache.capacity
        rows = packed.rows if packed else lambda shape, dtype: self._alloc(shape, dtype, q.device)
        # a cache's rows reach their own lengths, not its capacity
        tensors, scalars = self._launch_args(q, k, v, tensors, scalars, scale,
                                             cache.longest if cache is not None else Nkv)
        interpret = q.device.type == "cpu"
        kernel = kernel_for(self.cascade, Specialization(_DTYPES[q.dtype], interpret))
        out = rows((B, Hq, Nq, Dv), q.dtype)
        lse = rows((B, Hq, Nq), torch.float32)
        # rows the plain launch marks for the EXACT one (huge logits: codegen/forward.py.jinja), laid
        # out as lse (same strides); the plain launch writes every row, so no fill is needed
        redo = ((packed.rows((B, Hq, Nq), torch.int8) if packed else torch.empty((B, Hq, Nq), dtype=torch.int8,
                                                                                    device=q.device))
                if kernel.source.exact else lse)
        n_stats = sum(isinstance(st.expr, n.Reduce) for st in self.cascade.stages) + 1
        stats = rows((B, Hq, Nq, n_stats), torch.float32) if save_stats else None
        if packed:  # the kernel sees each sequence's own lengths; the grid covers the longest
            Nq, Nkv = packed.max_q, packed.max_k
        if Nq == 0 or B == 0 or Hq == 0:
            return out, lse, stats
        block_d, block_dv = _block(D), _block(Dv)
        capability = 0 if interpret else _capability(q.device)
        flags = fast_path((q, k, v, out), D, Dv)
        key = (capability, block_d, block_dv, flags["ALIGNED"])
        fn, configs = kernel.launcher(key)
        targs = [x for t in tensors for x in (t, *t.shape, *t.stride())]
        st = stats if save_stats else lse
        st_strides = stats.stride() if save_stats else (0, 0, 0, 0)
        cu = packed.pointers if packed else (lse, cache.lens if cache is not None else lse)  # read under VARLEN/KV_LENS
        paged = cache is not None and cache.pages is not None
        pages = (cache.pages, cache.pages.stride(0), k.shape[0]) if paged else (cu[1], 0, 1)  # read under PAGE_SIZE > 0
        paging = dict(KV_LENS=cache is not None, PAGE_SIZE=cache.page_size if paged else 0)
        splits = cache.splits if cache is not None and kernel.source.split else 1
        if splits > 1:  # split-KV: each split's partial state per row, merged by the MERGE launch
            width, vectors = kernel.source.split
            part = torch.empty(B * Hq * splits * Nq * width, dtype=torch.float32, device=q.device)
            part_acc = torch.empty(max(B * Hq * splits * Nq * vectors * block_dv, 1), dtype=torch.float32,
                                   device=q.device)
            parts = (part, part_acc, splits, -(-Nkv // splits))
        else:
            parts = (lse, lse, 1, 0)  # read under SPLIT/MERGE only
        tile_args = {}

        def run(config, exact, warmup=False, mode=None):
            ways = (splits,) if mode == "split" else ()  # split-KV: the splits are the grid's third axis
            if config is None:  # autotuned: the tuner picks the tile sizes
                grid, meta = (lambda m: (triton.cdiv(Nq, m["BLOCK_M"]), B * Hq, *ways)), {}
            else:
                grid = (triton.cdiv(Nq, config.block_m), B * Hq, *ways)
                meta = {**config.kwargs(), **({} if interpret else
                                              {"num_warps": config.num_warps, "num_stages": config.num_stages})}
            if config not in tile_args:
                tile_args[config] = ()
                if kernel.source.runtime_tiles:
                    tiles = self._tile_classes(q, k, v, scale, tensors, scalars, config.block_m, config.block_n, packed,
                                               n_kv=Nkv)
                    tile_args[config] = _tile_args(tiles.lists, B, Hq)
            args = (q, k, v, out, lse, *targs, *_launch_scalars(scalars, interpret),
                    *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), *cu, *pages, *parts,
                    Nq, Nkv, Hq, Hkv, D, Dv, *_launch_scalars([float(scale)], interpret), st, *st_strides, redo,
                    *tile_args[config])
            kw = dict(BLOCK_D=block_d, BLOCK_DV=block_dv, SAVE_STATS=save_stats, VARLEN=packed is not None, **flags,
                      **meta, EXACT=exact, **paging, **({"SPLIT": mode == "split", "MERGE": mode == "merge"}
                                                        if kernel.source.split else {}))
            return fn.warmup(*args, grid=grid, **kw) if warmup else fn[grid](*args, **kw)

        # the plain launch (split-KV: its splits, then their merge), then the exact one for the rows
        # the plain one marked
        launches = [(False, "split"), (False, "merge")] if splits > 1 else [(False, None)]
        launches += [(True, None)] if kernel.source.exact else []
        quiet = np.errstate(all="ignore") if interpret else contextlib.nullcontext()  # masked-off lanes
        with _lock, quiet, (_interpreted_stdlib() if interpret else contextlib.nullcontext()):
            # keyed by every constexpr of the build (SAVE_STATS, VARLEN, EVEN_D change what fits)
            fit_key = (*key, save_stats, packed is not None, *sorted(flags.items()), *sorted(paging.items()),
                       splits > 1)
            config = configs and _fitting_config(kernel.chosen, fit_key, configs,
                                                 lambda c: [run(c, e, True, mode) for e, mode in launches], q.device,
                                                 f"the forward kernel of `{self.cascade.name}`")
            for exact, mode in launches:
                run(config, exact, mode=mode)
        return out, lse, stats

    def launch_backward(self, dout, dlse, q, k, v, out, stats, tensors: list, scalars: list, scale: float,
                        grad_mask: list[bool], packed: Packed | None = None):
        """Run the backward kernels: ``dq, dk, dv`` and, per tensor parameter, its gradient
        (in its dtype) where ``grad_mask`` asks for it, else None. ``packed`` as for the forward."""
        B, Hq, Nq, D = q.shape
        Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
        rows = packed.rows if packed else lambda shape, dtype: self._alloc(shape, dtype, q.device)
        scalars = self._kernel_scalars(scalars)
        tensors = self._int32_tensors(tensors)
        interpret = q.device.type == "cpu"
        kernels = backward_kernels_for(self.cascade, Specialization(_DTYPES[q.dtype], interpret))
        src = kernels.source
        dq = rows(tuple(q.shape), q.dtype)
        dk = rows(tuple(k.shape), k.dtype)
        dv = rows(tuple(v.shape), v.dtype)
        specs = [p for p in self.cascade.params if p.kind == "tensor"]
        wanted = {p.name: bool(m) and p.elem == n.FLOAT for p, m in zip(specs, grad_mask, strict=True)}
        grads = {p.name: torch.zeros(tuple(t.shape), dtype=torch.float32, device=q.device)
                 for p, t in zip(specs, tensors, strict=True) if any(g.name == p.name for g in src.grad_params) and wanted[p.name]}
        def result():  # a wanted gradient the plan proves 0 (no read depends on it) is zeros
            return dq, dk, dv, [grads[p.name].to(t.dtype) if p.name in grads else
                                torch.zeros(t.shape, dtype=t.dtype, device=t.device) if wanted[p.name] else None
                                for p, t in zip(specs, tensors, strict=True)]

        if min(B, Hq, Nq, Nkv) == 0:
            for t in (dq, dk, dv):
                t.zero_()
            return result()
        coef = rows((B, Hq, Nq, max(1, src.num_coefs)), torch.float32)
        if packed:  # the kernels see each sequence's own lengths; the grids cover the longest
            Nq, Nkv = packed.max_q, packed.max_k
        block_d, block_dv = _block(D), _block(Dv)
        flags = fast_path((q, k, v, out, dout, dq, dk, dv), D, Dv)
        capability = 0 if interpret else _capability(q.device)
        configs = kernels.configs(capability, block_d, block_dv, flags["ALIGNED"])
        vnorm = ()
        if src.needs_vnorm:  # max_j ‖v_j‖ per (batch, kv head): bounds dO·v for the dS scale
            norms = (torch.linalg.vector_norm(v, dim=-1, dtype=torch.float32).amax(dim=-1) if v.shape[2]
                     else v.new_zeros(v.shape[:2], dtype=torch.float32))
            vnorm = (norms, *norms.stride())
        dummy = torch.zeros(1, dtype=torch.float32, device=q.device)
        gargs = []
        for p in src.grad_params:
            g = grads.get(p.name)
            gargs += [g if g is not None else dummy, *(g.stride() if g is not None else (0,) * len(p.dims))]
            flags[f"GRAD_u_{p.name}"] = g is not None
        targs = [x for t in tensors for x in (t, *t.shape, *t.stride())]
        sizes = (*(packed.pointers if packed else (dq, dq)), Nq, Nkv, Hq, Hkv, D, Dv,
                 *_launch_scalars([float(scale)], interpret))
        flags["VARLEN"] = packed is not None
        # the EXACT builds take the query tiles (and kv heads) the forward ran with exact exponents;
        # without huge logits their programs only exit (codegen/backward.py.jinja)
        modes = (False, True) if src.exact else (False,)
        exact_kv = torch.zeros((B, Hkv), dtype=torch.int32, device=q.device) if src.exact else dummy
        scan = ()  # partial sums: the rows kernel adds dK and dV into fp32 buffers (codegen/backward.py)
        if src.scan_mode:
            def zeros(shape):  # packed: a token-major buffer seen as [B, H, N, D] (overlapping: write its base)
                if not packed:
                    return torch.zeros(shape, dtype=torch.float32, device=q.device)
                return packed.view(torch.zeros((shape[2], shape[1], *shape[3:]), dtype=torch.float32, device=q.device))
            scan = (zeros(tuple(k.shape)), zeros(tuple(v.shape)))
        kernel_names = (ROWS_KERNEL,) if scan else (ROWS_KERNEL, KV_KERNEL)
        per_config = {}

        def run(config, name, exact, warmup=False):
            """Launch (or, ``warmup``, only compile) one backward kernel with ``config``'s tiles."""
            if config not in per_config:
                # each query tile's key range, written by the rows kernel, scanned by the dK/dV kernel
                # (and, for fp16 score gradients scaled into range, the tile's smallest scale exponent)
                qtiles = torch.empty((B, Hq, triton.cdiv(Nq, config.block_m), src.qtile_cols), dtype=torch.int32,
                                     device=q.device)
                tile_args = ((), ())
                if src.runtime_tiles:
                    tiles = self._tile_classes(q, k, v, scale, tensors, scalars, config.block_m, config.block_n, packed,
                                               n_kv=Nkv)
                    tile_args = (_tile_args(tiles.lists, B, Hq), _tile_args(tiles.classes, B, Hq))
                per_config[config] = qtiles, tile_args
            qtiles, (rows_tiles, kv_tiles) = per_config[config]
            launch = {**config.kwargs(), "BLOCK_D": block_d, "BLOCK_DV": block_dv,
                      **({} if interpret else {"num_warps": config.num_warps, "num_stages": config.num_stages})}
            if name == ROWS_KERNEL:
                grid = (triton.cdiv(Nq, config.block_m), B * Hq)
                args = (q, k, v, out, dout, dlse, stats, coef, dq, *scan, *targs, *gargs,
                        *_launch_scalars(scalars, interpret), *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                        *dout.stride(), *dlse.stride(), *stats.stride(), *coef.stride(), *dq.stride(),
                        *(x for t in scan for x in t.stride()), qtiles, *qtiles.stride()[:3], exact_kv, *vnorm,
                        *rows_tiles, *sizes)
            else:
                grid = (triton.cdiv(Nkv, config.block_n), B * Hkv)
                args = (q, k, v, dout, stats, coef, dk, dv, *targs, *gargs, *_launch_scalars(scalars, interpret),
                        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *stats.stride(), *coef.stride(),
                        *dk.stride(), *dv.stride(), qtiles, *qtiles.stride()[:3], exact_kv, *kv_tiles, *sizes)
            fn = kernels.fns[name]
            kw = {**launch, **flags, "EXACT": exact}
            return fn.warmup(*args, grid=grid, **kw) if warmup else fn[grid](*args, **kw)

        quiet = np.errstate(all="ignore") if interpret else contextlib.nullcontext()
        with _lock, quiet, (_interpreted_stdlib() if interpret else contextlib.nullcontext()):
            # both kernels must fit before either runs: the rows kernel adds into gradients (and,
            # with partial sums, into dK/dV), so a retry after a refused dK/dV launch would add twice.
            # Keyed by every constexpr of the build (GRAD_u_*, VARLEN, EVEN_D change what fits).
            config = _fitting_config(kernels.chosen, (capability, block_d, block_dv, *sorted(flags.items())), configs,
                                     lambda c: [run(c, k, e, warmup=True) for k in kernel_names for e in modes],
                                     q.device, f"the backward kernels of `{self.cascade.name}`")
            for exact in modes:
                run(config, ROWS_KERNEL, exact)
            if scan:
                for out, acc in zip((dk, dv), scan):
                    (Packed.unview(out) if packed else out).copy_(Packed.unview(acc) if packed else acc)
                return result()
            for exact in modes:
                run(config, KV_KERNEL, exact)
        return result()


def _tile_args(t: torch.Tensor, batch: int, heads: int) -> tuple:
    """A classification tensor [Bc, Hc, query tiles, ...] and its (b, h, query tile) strides,
    0 over the batch/heads it does not depend on."""
    t = t.expand(batch, heads, *t.shape[2:])
    return (t, *t.stride()[:3])


_FP32_TINY = float(np.finfo(np.float32).tiny)


_NARROW_INTS = (torch.int8, torch.uint8, torch.int16, torch.int32)


def _launch_scalars(scalars: list, interpret: bool) -> list:
    """Scalars as a launch passes them. Under the interpreter a float becomes a float32 scalar
    tensor, as it is inside a compiled kernel: the interpreter would otherwise keep a Python float,
    computing scalar-only arithmetic in float64 and raising on `1.0 / cap` with `cap = 0` where
    the GPU gives inf."""
    if not interpret:
        return scalars
    from triton.runtime.interpreter import TensorHandle
    return [tl.tensor(TensorHandle(np.array([x], dtype=np.float32), tl.float32), tl.float32)
            if isinstance(x, float) else x for x in scalars]


def _fp32_scalar(x: float) -> float:
    """A float parameter as the kernel computes with it: rounded to float32, with values below
    float32's smallest normal flushed to 0. (Triton's interpreter mishandles subnormal scalars in
    bf16 kernels: `tanh(1e-50) * 0.0` zeroed a whole output; found by the spec generator.)"""
    with np.errstate(over="ignore"):  # beyond float32: inf, as the kernel would compute it
        x = float(np.float32(x))
    return 0.0 if abs(x) < _FP32_TINY else x


def compile(path_or_source: str | os.PathLike, name: str | None = None) -> Attention:
    """Compile a spec file (a path) or spec text to an ``Attention``. A ``str`` is spec text when it
    has a line break, is blank, or begins with a definition or import (``attention a: ...``,
    ``mask m = ...``); otherwise it is a path."""
    if isinstance(path_or_source, os.PathLike) or (isinstance(path_or_source, str)
                                                  and not _looks_like_spec_text(path_or_source)):
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


def _looks_like_spec_text(text: str) -> bool:
    words = text.split(maxsplit=1)
    return "\n" in text or not words or (words[0] in SPEC_OPENERS and len(words) > 1)


def load(name: str) -> Attention:
    """The library variant ``name`` (see ``attnc list``)."""
    spec = library_spec(name)
    return Attention(spec.cascade(name), f"library/{name}.attn")
