"""Ahead-of-time compilation of generated kernels for a GPU architecture, with no GPU present.

``aot_compile(cascade, "float16", 128, 128, 90, config)`` generates the kernel source the CUDA
runtime would run, imports it, and hands it to ``triton.compile(ASTSource(fn, signature,
constexprs), target=GPUTarget("cuda", 90, 32))``. The PTX goes through the ``ptxas`` Triton
bundles, and the bundled ``cuobjdump --dump-resource-usage`` reports what the cubin needs per
thread. Nothing here touches a driver, so it runs on a CPU-only machine; it catches code that
only Triton's interpreter accepts and launch configurations that spill registers.

``aot_compile_backward(cascade, "float16", 128, 128, 90)`` does the same for the two backward
kernels (``attnc_bwd_rows``, ``attnc_bwd_kv``; ``codegen/backward.py``), by default with the one
config the runtime launches them with (``codegen.tuning.bwd_gpu_configs``); it returns one
``AotResult`` per kernel. ``library_jobs`` / ``library_backward_jobs`` and ``run_jobs`` sweep the
library on a process pool; ``python -m attnc.runtime.aot [--backward] [variant ...]`` prints one
line per build.

Spills are read from two places, because they do not show up in one: ``LOCAL`` in the cuobjdump
report is local memory the kernel *declares*; registers that ptxas spills land in the *stack
frame* (``STACK``), and ptxas's own ``-v`` log counts them as "bytes spill stores/loads".
``AotResult.spilled`` is true when any of them is non-zero.

The kernel's argument list is read off the generated function, not written down here: Q, K, V,
Out are pointers of the input dtype, Lse a float32 pointer; a tensor parameter ``u_x`` is a
pointer of the type the runtime passes (int → int32, bool → int8, float → float32) followed by
``sizeK_u_x`` / ``strideK_u_x``; scalar parameters are i32 (int, bool) or fp32 (float);
``scale`` is fp32; every other runtime argument is an i32 size or stride; ``tl.constexpr``
parameters take their values from the launch config, the padded head dims, their defaults in
the kernel (the backward's ``GRAD_<param>`` flags: True), or ``constexprs=``. The backward's
DO, DQ, DK, DV are pointers of the input dtype, DL / Stats / Coef and the ``grad_u_<param>``
buffers fp32 pointers, ``gstrideK_u_<param>`` i32. Pointers carry the 16-byte alignment hint the
runtime gives torch tensors; integers are not specialized (the runtime marks them
``do_not_specialize``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..codegen.backward import KV_KERNEL, ROWS_KERNEL, generate_backward
from ..codegen.generate import KERNEL_NAME, Specialization, generate
from ..codegen.tuning import LaunchConfig, bwd_gpu_configs, first_fitting, gpu_configs
from ..ir import nodes as n
from ..ir.names import grad_arg_names, kernel_ident, tensor_arg_names
from ..ir.passes import plan_passes
from .cache import cache_dir, load_module, store

# The runtime's dtype names → Triton signature element types.
_ELEM = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
# How the runtime passes a tensor parameter of each spec element type (see Attention._kernel_args).
_TENSOR_ELEM = {n.INT: "*i32", n.BOOL: "*i8", n.FLOAT: "*fp32"}
_SCALAR = {n.INT: "i32", n.BOOL: "i32", n.FLOAT: "fp32"}

# Largest dynamic shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}

_UNSET = object()
_lock = threading.RLock()
_kernels: dict[str, tuple] = {}


@dataclass(frozen=True)
class AotResult:
    """What one ahead-of-time build of a kernel needs per thread / per block."""

    kernel: str  # cascade name
    capability: int
    dtype: str
    head_dim: int
    head_dim_v: int
    config: LaunchConfig
    registers: int  # REG
    local_bytes: int  # LOCAL: declared local memory
    stack_bytes: int  # STACK: the stack frame, where ptxas puts spilled registers
    spill_stores: int | None  # ptxas -v "bytes spill stores" (None: no ptxas log available)
    spill_loads: int | None
    shared_bytes: int  # dynamic shared memory the launch asks for (Triton's metadata)
    static_shared_bytes: int  # SHARED in the cuobjdump report
    compile_seconds: float  # wall clock
    compile_cpu_seconds: float  # CPU time of this process and its children (ptxas): load-independent
    ptx_bytes: int
    cubin_bytes: int
    signature: dict = field(default_factory=dict, compare=False, repr=False)
    ptxas_log: str = field(default="", compare=False, repr=False)
    function: str = KERNEL_NAME  # the kernel: attnc_fwd, or the backward's attnc_bwd_rows / attnc_bwd_kv
    fast: bool = False  # built for the fast path (ALIGNED, EVEN_D where D is a power of two)
    perf: object = field(default=None, compare=False, repr=False)  # perf.KernelPerf, when asked for

    @property
    def spilled_bytes(self) -> int:
        """Bytes of local memory the kernel uses for anything: declared, stack frame, spills."""
        return max(self.local_bytes, self.stack_bytes, self.spill_stores or 0)

    @property
    def spilled(self) -> bool:
        return self.spilled_bytes > 0 or bool(self.spill_loads)

    @property
    def shared_limit(self) -> int | None:
        return SHARED_LIMIT.get(self.capability)

    @property
    def fits_shared(self) -> bool:
        limit = self.shared_limit
        return limit is None or self.shared_bytes + self.static_shared_bytes <= limit

    def describe(self) -> str:
        c = self.config
        spills = "?" if self.spill_stores is None else f"{self.spill_stores}/{self.spill_loads}"
        name = self.kernel if self.function == KERNEL_NAME else f"{self.kernel}/{self.function}"
        return (f"{name} sm_{self.capability} {self.dtype} D={self.head_dim} Dv={self.head_dim_v} "
                f"BLOCK_M={c.block_m} BLOCK_N={c.block_n} warps={c.num_warps} stages={c.num_stages}: "
                f"REG={self.registers} LOCAL={self.local_bytes} STACK={self.stack_bytes} "
                f"spill st/ld={spills} smem={self.shared_bytes}+{self.static_shared_bytes} "
                f"({self.compile_seconds:.1f} s, {self.compile_cpu_seconds:.1f} s CPU)")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["config"] = asdict(self.config)
        d.pop("ptxas_log")
        d.pop("signature")
        d.pop("perf")
        return d


# ---------------------------------------------------------------------------- toolchain


def _nvidia_tool(name: str) -> str | None:
    """Path of a tool Triton bundles with its NVIDIA backend (or the one TRITON_<NAME>_PATH names)."""
    try:
        from triton import knobs

        path = getattr(knobs.nvidia, name.replace("-", "_")).path
    except Exception:
        path = None
    if not path:
        try:
            import triton.backends.nvidia as nv

            path = str(Path(nv.__file__).parent / "bin" / name)
        except ImportError:
            return None
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def toolchain_problem(capability: int = 80) -> str | None:
    """Why ahead-of-time builds cannot run here (None when they can)."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as err:
        return f"Triton is not importable: {err}"
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as err:
        return f"Triton has no NVIDIA backend: {err}"
    ptxas = "ptxas-blackwell" if capability >= 90 and _nvidia_tool("ptxas-blackwell") else "ptxas"
    for tool in (ptxas, "cuobjdump"):
        if _nvidia_tool(tool) is None:
            return f"Triton's NVIDIA backend has no usable `{tool}` (set TRITON_{tool.upper().replace('-', '_')}_PATH)"
    return None


def parse_resource_usage(text: str, function: str | None = None) -> dict[str, int]:
    """``cuobjdump --dump-resource-usage`` output → {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}.

    With ``function``, the line of that function; otherwise the first function in the report.
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*Function\s+(\S+?):\s*$", line)
        if not m or (function is not None and m.group(1) != function):
            continue
        usage = " ".join(lines[i + 1: i + 3])
        found = {k: int(v) for k, v in re.findall(r"\b([A-Z]+(?:\[\d+\])?):(\d+)", usage)}
        if "REG" in found:
            return found
    raise ValueError(f"no resource usage for {function or 'any function'} in cuobjdump output:\n{text}")


def parse_ptxas_log(text: str) -> dict[str, int]:
    """ptxas ``-v`` output → stack frame, spill stores/loads and registers (where present)."""
    out: dict[str, int] = {}
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        out["stack_frame"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    m = re.search(r"Used (\d+) registers", text)
    if m:
        out["registers"] = int(m.group(1))
    return out


def resource_usage(cubin: bytes, function: str | None = None) -> dict[str, int]:
    cuobjdump = _nvidia_tool("cuobjdump")
    if cuobjdump is None:
        raise RuntimeError(toolchain_problem() or "cuobjdump not found")
    fd, path = tempfile.mkstemp(suffix=".cubin", prefix="attnc_aot_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cubin)
        proc = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_resource_usage(proc.stdout, function)


# ---------------------------------------------------------------------------- kernel and signature


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    name = _ALIASES.get(name, name)
    if name not in _ELEM:
        raise ValueError(f"dtype must be one of {', '.join(_ELEM)}, got {dtype!r}")
    return name


def _import_source(text: str, names: tuple[str, ...]) -> tuple[dict, Path]:
    """Store ``text`` as ``$ATTNC_CACHE_DIR/aot/<hash>.py``, run it as its own module (from the
    text, as ``runtime/cache.py`` loads every kernel), jit its helpers and then the functions
    ``names``: ({name: jitted function}, path). Memoized on the text."""
    import triton

    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    with _lock:
        hit = _kernels.get(key)
        if hit is not None and all(name in hit[0] for name in names):
            return hit
        path = cache_dir() / "aot" / f"{key}.py"
        store(path, text)
        module = load_module(text, path, f"attnc_aot_{key}")
        for helper in getattr(module, "HELPERS", ()):  # helpers must be jitted before the kernel is
            setattr(module, helper, triton.jit(getattr(module, helper)))
        _kernels[key] = ({fn: triton.jit(getattr(module, fn)) for fn in names}, path)
        return _kernels[key]


def load_kernel(cascade: n.Cascade, dtype: str, source_transform=None):
    """The jitted Triton function of ``cascade``'s compiled (non-interpreter) kernel, and its source.

    The source is written to ``$ATTNC_CACHE_DIR/aot/<hash>.py`` (Triton reads kernels back
    through ``inspect``) and imported under its own module name; helpers are jitted first.
    ``source_transform`` (text → text) edits the generated source first: a way to measure what a
    codegen change would do to registers before making it.
    """
    import dataclasses

    source = generate(cascade, Specialization(_dtype_name(dtype), interpret=False))
    if source_transform is not None:
        source = dataclasses.replace(source, text=source_transform(source.text))
    fns, path = _import_source(source.text, (source.kernel_name,))
    return fns[source.kernel_name], source, path


BACKWARD_KERNELS = (ROWS_KERNEL, KV_KERNEL)


def load_backward_kernels(cascade: n.Cascade, dtype: str, source_transform=None):
    """``cascade``'s two compiled backward kernels (``codegen/backward.py``): ({name: jitted
    function} for ``attnc_bwd_rows`` and ``attnc_bwd_kv``, the ``BackwardSource``, the path of the
    module), as ``load_kernel`` does for the forward."""
    import dataclasses

    source = generate_backward(cascade, Specialization(_dtype_name(dtype), interpret=False))
    if source_transform is not None:
        source = dataclasses.replace(source, text=source_transform(source.text))
    fns, path = _import_source(source.text, BACKWARD_KERNELS)
    return fns, source, path


def signature_for(fn, cascade: n.Cascade, dtype: str, extra_types: dict[str, str] | None = None) -> dict[str, str]:
    """Triton signature ({arg name: type}) of a generated kernel, constexprs marked ``constexpr``."""
    elem = _ELEM[_dtype_name(dtype)]
    known: dict[str, str] = {"Q": f"*{elem}", "K": f"*{elem}", "V": f"*{elem}", "Out": f"*{elem}",
                             "Lse": "*fp32", "Stats": "*fp32", "DL": "*fp32", "Coef": "*fp32", "scale": "fp32",
                             "TileList": "*i32", "TileCls": "*i8", "QTiles": "*i32", "ExactKV": "*i32", "Redo": "*i8", "VNorm": "*fp32",
                             "CuQ": "*i32", "CuK": "*i32", "Pages": "*i32", "Part": "*fp32", "PartAcc": "*fp32", "DK32": "*fp32", "DV32": "*fp32"}
    for p in cascade.params:
        ident = kernel_ident(p.name)
        if p.kind == "tensor":
            pointer, *sizes = tensor_arg_names(p.name, len(p.dims))
            grad, *gstrides = grad_arg_names(p.name, len(p.dims))
            known[pointer] = _TENSOR_ELEM[p.elem]
            known.update({x: "i32" for x in sizes + gstrides})
            known[grad] = "*fp32"
        else:
            known[ident] = _SCALAR[p.kind]
    known.update(extra_types or {})
    sig = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in known:
            sig[name] = known[name]
        elif name[:1].isupper():  # the template names its tensors Q, K, V, Out, Lse: a pointer
            sig[name] = f"*{elem}"
        else:  # sizes, strides, counts
            sig[name] = "i32"
    return sig


def _constexpr_values(fn, config: LaunchConfig, head_dim: int, head_dim_v: int,
                      overrides: dict | None) -> dict[str, object]:
    import inspect

    import triton

    values = {"BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
              "BLOCK_DV": max(16, triton.next_power_of_2(head_dim_v)), **config.kwargs()}
    values.update(overrides or {})
    defaults = inspect.signature(fn.fn).parameters
    out = {}
    for param in fn.params:
        if not param.is_constexpr:
            continue
        if param.name in values:
            out[param.name] = values[param.name]
        elif defaults[param.name].default is not inspect.Parameter.empty:
            out[param.name] = defaults[param.name].default
        else:
            raise ValueError(f"the kernel takes constexpr `{param.name}` that aot_compile has no value for; "
                             f"pass constexprs={{'{param.name}': ...}}")
    return out


@contextlib.contextmanager
def _fresh_compile():
    """A real build every time (the ptxas log only exists for one), into a throwaway Triton cache
    (the artifacts, about 1 MB a build, are not wanted afterwards), collecting the ptxas ``-v``
    log that Triton prints when asked to."""
    from triton import knobs

    with tempfile.TemporaryDirectory(prefix="attnc_aot_triton_") as tmp:
        saved = []
        for owner, attr, value in ((knobs.compilation, "always_compile", True),
                                   (knobs.nvidia, "dump_ptxas_log", True), (knobs.cache, "dir", tmp)):
            if hasattr(owner, attr):  # knobs keep explicit settings in the instance __dict__
                saved.append((owner, attr, owner.__dict__.get(attr, _UNSET)))
                setattr(owner, attr, value)
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                yield buf
        finally:
            for owner, attr, value in reversed(saved):
                if value is _UNSET:
                    owner.__dict__.pop(attr, None)
                else:
                    setattr(owner, attr, value)


def _cpu_seconds() -> float:
    try:
        import resource
    except ImportError:  # not POSIX: this process only
        return time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def path_constexprs(fast: bool, head_dim: int, head_dim_v: int) -> dict[str, bool]:
    """The fast-path flags the runtime passes for inputs of these head dims (``fast``: contiguous,
    aligned inputs, as ``runtime/compiler.py: fast_path`` checks), else the general path's."""
    import triton

    even = head_dim == max(16, triton.next_power_of_2(head_dim)) and head_dim_v == max(16, triton.next_power_of_2(head_dim_v))
    return {"ALIGNED": fast, "EVEN_D": fast and even}


def _build(fn, function: str, cascade: n.Cascade, dtype: str, head_dim: int, head_dim_v: int, capability: int,
           config: LaunchConfig, constexprs: dict | None, extra_types: dict[str, str] | None,
           compile_options: dict | None = None, fast: bool = False, source_text: str | None = None,
           perf: bool = False) -> AotResult:
    """Compile one jitted kernel ``fn`` (named ``function`` in the cubin) and read its resources;
    with ``perf``, the static performance model's figures of its SASS too (``runtime/perf.py``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = signature_for(fn, cascade, dtype, extra_types)
    consts = _constexpr_values(fn, config, head_dim, head_dim_v,
                               {**path_constexprs(fast, head_dim, head_dim_v), **(constexprs or {})})
    index = {name: i for i, name in enumerate(fn.arg_names)}
    attrs = {(index[a],): [["tt.divisibility", 16]] for a, t in sig.items() if t.startswith("*")}
    src = ASTSource(fn, sig, {(index[k],): v for k, v in consts.items()}, attrs)
    target = GPUTarget("cuda", capability, 32)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, **(compile_options or {})}
    with _lock, _fresh_compile() as log, warnings.catch_warnings():
        # Triton 3.9 warns once that its FP-fusion default will change; the runtime gets the same default.
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION is unset")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        compiled = triton.compile(src, target=target, options=options)
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    usage = resource_usage(compiled.asm["cubin"], function)
    ptxas = parse_ptxas_log(log.getvalue())
    ptx = compiled.asm["ptx"]
    model = None
    if perf:
        from .perf import analyze

        model = analyze(compiled.asm["cubin"], source_text, function, capability, config.num_warps)
    return AotResult(
        kernel=cascade.name, capability=capability, dtype=dtype, head_dim=head_dim, head_dim_v=head_dim_v,
        config=config, registers=usage["REG"], local_bytes=usage.get("LOCAL", 0),
        stack_bytes=usage.get("STACK", 0), spill_stores=ptxas.get("spill_stores"),
        spill_loads=ptxas.get("spill_loads"), shared_bytes=int(getattr(compiled.metadata, "shared", 0) or 0),
        static_shared_bytes=usage.get("SHARED", 0), compile_seconds=seconds, compile_cpu_seconds=cpu,
        ptx_bytes=len(ptx.encode() if isinstance(ptx, str) else ptx), cubin_bytes=len(compiled.asm["cubin"]),
        signature=sig, ptxas_log=log.getvalue(), function=function, fast=fast, perf=model,
    )


def aot_compile(cascade: n.Cascade, dtype: str, head_dim: int, head_dim_v: int, capability: int,
                config: LaunchConfig, *, constexprs: dict | None = None,
                extra_types: dict[str, str] | None = None, source_transform=None,
                compile_options: dict | None = None, fast: bool = True, perf: bool = False) -> AotResult:
    """Compile ``cascade``'s CUDA kernel for ``sm_<capability>`` and report its resource usage.

    ``fast`` builds the fast path the runtime takes for contiguous, aligned inputs (``ALIGNED``,
    and ``EVEN_D`` when the head dims are powers of two), else the general path; ``perf`` adds the
    static performance model's figures (``AotResult.perf``).

    ``constexprs`` / ``extra_types`` supply values / signature types for kernel arguments this
    module does not know (see the module docstring); ``source_transform`` is passed to
    ``load_kernel``; ``compile_options`` adds Triton compile options the runtime does not pass
    (``{"maxnreg": 255}``), to measure what they would do.
    """
    problem = toolchain_problem(capability)
    if problem:
        raise RuntimeError(problem)
    dtype = _dtype_name(dtype)
    fn, source, _ = load_kernel(cascade, dtype, source_transform)
    return _build(fn, source.kernel_name, cascade, dtype, head_dim, head_dim_v, capability, config,
                  constexprs, extra_types, compile_options, fast, source.text, perf)


def backward_configs(capability: int, dtype: str, head_dim: int, head_dim_v: int, fast: bool = True) -> list[LaunchConfig]:
    """The backward kernels' candidate configs, in the runtime's order (``codegen.tuning.bwd_gpu_configs``)."""
    import triton

    return bwd_gpu_configs(capability, _dtype_name(dtype), max(16, triton.next_power_of_2(head_dim)),
                           max(16, triton.next_power_of_2(head_dim_v)), aligned=fast)


def backward_config(capability: int, dtype: str, head_dim: int, head_dim_v: int, fast: bool = True) -> LaunchConfig:
    """The first backward candidate: the config the runtime launches whenever both kernels fit at it
    (``runtime_choices`` finds the one it takes for a given variant)."""
    return backward_configs(capability, dtype, head_dim, head_dim_v, fast)[0]


def runtime_choices(variants, capability: int, dtype: str, head_dim: int, *, backward: bool, fast: bool = True,
                    workers: int | None = None) -> dict[str, tuple[LaunchConfig | None, dict]]:
    """What the runtime would launch on an sm_<capability> GPU without autotuning, per library
    variant: the first candidate config at which its kernels fit the shared memory
    (``codegen.tuning.first_fitting``, the rule the runtime applies to the compiled kernels),
    found by building candidates in order, each round one pool over the variants still undecided.
    {variant: (config or None, {job: result} of every build made for it)}."""
    from ..ir.layout import kernel_cascade
    from .frontend import library_cascade

    dtype = _dtype_name(dtype)

    def candidates(name):
        if backward:
            return backward_configs(capability, dtype, head_dim, head_dim, fast)
        return configs_for(kernel_cascade(library_cascade(name)), capability, dtype, head_dim, head_dim, fast)

    def jobs_for(name, config):
        return [AotJob(name, capability, dtype, head_dim, head_dim, config, fn, fast)
                for fn in (BACKWARD_KERNELS if backward else (KERNEL_NAME,))]

    built: dict[AotJob, object] = {}
    chosen: dict[str, LaunchConfig | None] = {}
    todo = list(variants)
    while todo:
        wanted = []
        for name in todo:
            unbuilt = []

            def fits(config):
                jobs = jobs_for(name, config)
                if any(j not in built for j in jobs):
                    unbuilt.extend(jobs)
                    raise LookupError  # not built yet: next round
                return all(isinstance(built[j], AotResult) and built[j].fits_shared for j in jobs)

            try:
                chosen[name] = first_fitting(candidates(name), fits)
            except LookupError:
                wanted += unbuilt
        built.update(run_jobs(wanted, workers) if wanted else {})
        todo = [name for name in todo if name not in chosen]
    return {name: (chosen[name], {j: r for j, r in built.items() if j.variant == name}) for name in variants}


def aot_compile_backward(cascade: n.Cascade, dtype: str, head_dim: int, head_dim_v: int, capability: int,
                         config: LaunchConfig | None = None, *, kernels: tuple[str, ...] = BACKWARD_KERNELS,
                         constexprs: dict | None = None, extra_types: dict[str, str] | None = None,
                         source_transform=None, compile_options: dict | None = None, fast: bool = True,
                         perf: bool = False) -> dict[str, AotResult]:
    """Compile ``cascade``'s backward kernels for ``sm_<capability>``: {kernel name: AotResult}
    for ``attnc_bwd_rows`` and ``attnc_bwd_kv`` (or those ``kernels`` names).

    ``config`` defaults to the first the runtime tries (``bwd_gpu_configs``). The
    ``GRAD_<param>`` constexprs keep their default (True: every gradient computed, the most
    registers); ``constexprs`` overrides them or any other. DO, DQ, DK, DV are pointers of the
    input dtype, DL / Stats / Coef and the ``grad_u_<param>`` buffers fp32, ``gstrideK_u_<param>`` i32.
    ``source_transform``, ``compile_options``, ``fast`` and ``perf`` as for ``aot_compile``.
    """
    problem = toolchain_problem(capability)
    if problem:
        raise RuntimeError(problem)
    dtype = _dtype_name(dtype)
    unknown = set(kernels) - set(BACKWARD_KERNELS)
    if unknown:
        raise ValueError(f"backward kernels are {', '.join(BACKWARD_KERNELS)}, got {', '.join(sorted(unknown))}")
    config = config or backward_config(capability, dtype, head_dim, head_dim_v, fast)
    fns, source, _ = load_backward_kernels(cascade, dtype, source_transform)
    return {name: _build(fns[name], name, cascade, dtype, head_dim, head_dim_v, capability, config,
                         constexprs, extra_types, compile_options, fast, source.text, perf) for name in kernels}


# ---------------------------------------------------------------------------- sweeps


def configs_for(cascade: n.Cascade, capability: int, dtype: str, head_dim: int, head_dim_v: int,
                fast: bool = True) -> list[LaunchConfig]:
    """The launch configs the runtime may pick for this kernel (``codegen.tuning.gpu_configs``)."""
    import triton

    return gpu_configs(capability, _dtype_name(dtype), max(16, triton.next_power_of_2(head_dim)),
                       max(16, triton.next_power_of_2(head_dim_v)), plan_passes(cascade).num_passes, aligned=fast)


@dataclass(frozen=True)
class AotJob:
    """One build of a library variant (picklable, for process pools): its forward kernel, or one
    of its two backward kernels (``function``)."""

    variant: str
    capability: int
    dtype: str
    head_dim: int
    head_dim_v: int
    config: LaunchConfig
    function: str = KERNEL_NAME
    fast: bool = True  # the fast path (contiguous, aligned inputs) or the general one
    perf: bool = False  # also run the static performance model
    decode_page: int = 0  # > 0: attn.decode's build (GQA-packed offsets cascade, per-row lengths) over pages of this size
    split: bool = False  # with decode_page: the split-KV build

    @property
    def backward(self) -> bool:
        return self.function != KERNEL_NAME

    @property
    def label(self) -> str:
        c = self.config
        kind = f"-{self.function.removeprefix('attnc_')}" if self.backward else ""
        path = "" if self.fast else "-general"
        if self.decode_page:
            path += f"-decode-page{self.decode_page}" + ("-split" if self.split else "")
        return (f"{self.variant}{kind}-sm{self.capability}-{self.dtype}-D{self.head_dim}{path}-"
                f"{c.block_m}x{c.block_n}w{c.num_warps}s{c.num_stages}")


def library_jobs(variants, capabilities=(80, 90), dtypes=("float16", "float32"), head_dims=(64, 128),
                 all_configs: bool = True, fast: bool = True, perf: bool = False) -> list[AotJob]:
    """Every (variant, arch, dtype, D = Dv, config) build; ``all_configs=False``: the first config only;
    ``fast``: the fast path's kernels and configs, else the general path's."""
    from ..ir.layout import kernel_cascade
    from .frontend import library_cascade

    jobs = []
    for name in variants:
        cascade = kernel_cascade(library_cascade(name))
        for cap in capabilities:
            for dtype in dtypes:
                for d in head_dims:
                    configs = configs_for(cascade, cap, dtype, d, d, fast)
                    for config in configs if all_configs else configs[:1]:
                        jobs.append(AotJob(name, cap, _dtype_name(dtype), d, d, config, fast=fast, perf=perf))
    return jobs


def library_backward_jobs(variants, capabilities=(80, 90), dtypes=("float16", "bfloat16", "float32"),
                          head_dims=(64, 128), kernels: tuple[str, ...] = BACKWARD_KERNELS, fast: bool = True,
                          perf: bool = False) -> list[AotJob]:
    """Every (variant, arch, dtype, D = Dv, backward kernel) build, with the one config the runtime
    tries first for the backward (``bwd_gpu_configs``). One job per kernel, so a pool spreads them."""
    jobs = []
    for name in variants:
        for cap in capabilities:
            for dtype in dtypes:
                for d in head_dims:
                    config = backward_config(cap, dtype, d, d, fast)
                    jobs += [AotJob(name, cap, _dtype_name(dtype), d, d, config, fn, fast, perf) for fn in kernels]
    return jobs


def run_job(job: AotJob) -> AotResult | str:
    """Build one job; a failure comes back as its message (so a pool never loses the others)."""
    from ..ir.layout import kernel_cascade
    from .frontend import library_cascade

    try:
        cascade = kernel_cascade(library_cascade(job.variant))
        if job.decode_page:
            from ..ir.offsets import packed_heads, with_offsets

            return aot_compile(packed_heads(with_offsets(cascade)), job.dtype, job.head_dim, job.head_dim_v,
                               job.capability, job.config, fast=job.fast, perf=job.perf,
                               constexprs={"KV_LENS": True, "PAGE_SIZE": job.decode_page, "SPLIT": job.split})
        if job.backward:
            return aot_compile_backward(cascade, job.dtype, job.head_dim, job.head_dim_v, job.capability,
                                        job.config, kernels=(job.function,), fast=job.fast,
                                        perf=job.perf)[job.function]
        return aot_compile(cascade, job.dtype, job.head_dim, job.head_dim_v, job.capability, job.config,
                           fast=job.fast, perf=job.perf)
    except Exception as err:  # noqa: BLE001 - reported to the caller with the job
        return f"{type(err).__name__}: {err}"


def run_jobs(jobs: list[AotJob], workers: int | None = None) -> dict[AotJob, AotResult | str]:
    """Build ``jobs`` on a pool of ``workers`` processes (default: one per CPU; 1: in this process)."""
    workers = workers or int(os.environ.get("ATTNC_AOT_WORKERS", 0)) or os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return {job: run_job(job) for job in jobs}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold MLIR contexts and threads that a fork would copy half-way.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(run_job, jobs, chunksize=1))
    return dict(zip(jobs, results))


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m attnc.runtime.aot [--backward] [variant ...]``: build library kernels for
    sm_80/sm_90 on this machine (no GPU needed) and print one line per build; the exit status is
    1 when any build fails or spills."""
    import argparse
    import importlib

    # run as `python -m`, this file is __main__: the pool must pickle jobs and results by the
    # module's own name, so work through that module
    aot = importlib.import_module(__spec__.name if __spec__ else "attnc.runtime.aot")

    ap = argparse.ArgumentParser(prog="python -m attnc.runtime.aot", description=main.__doc__)
    ap.add_argument("variants", nargs="*", help="library variants (default: all)")
    ap.add_argument("--backward", action="store_true",
                    help="the backward kernels (attnc_bwd_rows, attnc_bwd_kv) with bwd_gpu_configs' first, not the forward")
    ap.add_argument("--caps", default="80,90")
    ap.add_argument("--dtypes", default=None,
                    help="default: float16,float32 (forward), float16,bfloat16,float32 (backward)")
    ap.add_argument("--dims", default="64,128", help="head dims (D = Dv)")
    ap.add_argument("--all-configs", action="store_true", help="forward: every gpu_configs candidate, not the first")
    ap.add_argument("--workers", type=int, default=0, help="processes (default: ATTNC_AOT_WORKERS or one per CPU)")
    ap.add_argument("--perf", action="store_true",
                    help="the static performance model (runtime/perf.py): forward and backward fast-path kernels, "
                         "fp16/bf16, each main loop's cost and the issue-15 targets; exit status 1 on a miss")
    ap.add_argument("--general", action="store_true", help="with --perf: the general path (unaligned inputs) instead")
    ap.add_argument("--markdown", metavar="FILE", help="with --perf: write the tables into FILE between "
                                                       "<!-- perf:begin --> and <!-- perf:end -->")
    args = ap.parse_args(argv)
    problem = toolchain_problem(80) or toolchain_problem(90)
    if problem:
        print(f"ahead-of-time builds are not available here: {problem}", file=sys.stderr)
        return 2
    import attnc

    variants = args.variants or attnc.library.names()
    caps = tuple(int(c) for c in args.caps.split(","))
    dims = tuple(int(d) for d in args.dims.split(","))
    if args.perf:
        return _perf_main(aot, args, variants, caps, dims)
    if args.backward:
        dtypes = tuple((args.dtypes or "float16,bfloat16,float32").split(","))
        jobs = aot.library_backward_jobs(variants, caps, dtypes, dims)
    else:
        dtypes = tuple((args.dtypes or "float16,float32").split(","))
        jobs = aot.library_jobs(variants, caps, dtypes, dims, all_configs=args.all_configs)
    t0 = time.perf_counter()
    results = aot.run_jobs(jobs, args.workers or None)
    bad = 0
    for job, r in results.items():
        if isinstance(r, aot.AotResult):
            bad += r.spilled or not r.fits_shared
            print(("SPILL " if r.spilled else "") + ("NO-FIT " if not r.fits_shared else "") + r.describe())
        else:
            bad += 1
            print(f"FAILED {job.label}: {r}")
    print(f"{len(jobs)} builds, {bad} failed or spilled, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 1 if bad else 0


def _perf_main(aot, args, variants, caps, dims) -> int:
    """``--perf``: build with the model, print a line per build, optionally write the tables."""
    from . import perf

    dtypes = tuple((args.dtypes or "float16,bfloat16").split(","))
    fast = not args.general
    jobs = [] if args.backward else aot.library_jobs(variants, caps, dtypes, dims, all_configs=False, fast=fast,
                                                    perf=True)
    jobs += aot.library_backward_jobs(variants, caps, dtypes, dims, fast=fast, perf=True)
    t0 = time.perf_counter()
    results = aot.run_jobs(jobs, args.workers or None)
    misses = 0
    for job, r in results.items():
        line = perf.describe(job, r)
        misses += line.startswith(("MISS", "FAILED"))
        print(line)
    seconds = time.perf_counter() - t0
    print(f"{len(jobs)} builds, {misses} failed or missed a target, {seconds:.0f} s", file=sys.stderr)
    if args.markdown:
        _write_section(Path(args.markdown), "perf", _perf_header(len(jobs), seconds, fast) + perf.markdown(results))
    return 1 if misses else 0


def _perf_header(count: int, seconds: float, fast: bool) -> str:
    import platform

    import triton

    return (f"- command: `python -m attnc.runtime.aot --perf{'' if fast else ' --general'} --markdown docs/performance.md`"
            f" ({count} builds, {seconds:.0f} s on {os.cpu_count()} CPUs)\n"
            f"- versions: triton {triton.__version__}, Python {platform.python_version()}; no GPU: ptxas/nvdisasm "
            f"bundled with Triton\n\n")


def _write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} section to write")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
