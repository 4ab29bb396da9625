"""A standalone kernel file (``attnc compile``): the forward kernel and a launcher that imports
only torch and triton. Parameter defaults and tensor shapes are IR size expressions; they are
printed here as plain Python over the launcher's ``sizes`` and ``params`` dictionaries, with the
spec language's total ``//``, ``%`` and ``/`` (see ``ir/evaluate.py``, which they mirror).
"""

from __future__ import annotations

from ..dsl.functions import FUNCTIONS
from ..ir import nodes as n
from ..ir.evaluate import eval_size_expr
from ..ir.passes import plan_passes
from .generate import CODEGEN_VERSION, Specialization, _env, generate, unspecialized
from .tuning import INTERPRETER_CONFIG, gpu_configs

_PY_OPS = {"+", "-", "*", "<", "<=", ">", ">=", "==", "!=", "and", "or", "&", "|", "^"}


def py_expr(e: n.Expr) -> str:
    """A size expression as Python source over ``sizes`` and ``params``."""
    if isinstance(e, n.Const):
        if isinstance(e.value, float) and (e.value != e.value or e.value in (float("inf"), float("-inf"))):
            return f'float("{e.value}")'
        return repr(e.value)
    if isinstance(e, n.Var):
        return f'sizes["{e.name}"]'
    if isinstance(e, n.Param):
        return f'params["{e.name}"]'
    if isinstance(e, n.Unary):
        return f"(not {py_expr(e.operand)})" if e.op == "not" else f"(-{py_expr(e.operand)})"
    if isinstance(e, n.Select):
        return f"({py_expr(e.then)} if {py_expr(e.cond)} else {py_expr(e.other)})"
    if isinstance(e, n.Binary):
        a, b = py_expr(e.left), py_expr(e.right)
        special = {"//": "_fdiv_py", "%": "_fmod_py", "/": "_div_py"}
        if e.op in special:
            return f"{special[e.op]}({a}, {b})"
        if e.op == "**":
            return f'_F["pow"]({a}, {b})'
        if e.op in ("<<", ">>"):
            return f"({a} {e.op} min(max({b}, 0), {n.SHIFT_MAX}))"
        if e.op in _PY_OPS:
            return f"({a} {e.op} {b})"
    if isinstance(e, n.Call):
        return f'_F["{e.fn}"]({", ".join(py_expr(x) for x in e.args)})'
    raise TypeError(f"not a size expression: {e!r}")


def _demo_value(p: n.ParamSpec, sizes: dict, scalars: dict) -> str:
    if p.kind == n.INT:
        return "4"
    if p.kind == n.FLOAT:
        return "1.0"
    if p.kind == n.BOOL:
        return "True"
    shape = tuple(sizes["N_KV"] if d == n.ANY_DIM else int(eval_size_expr(d, sizes, scalars)) for d in p.dims)
    if p.elem == n.INT:
        return f"torch.zeros({shape}, dtype=torch.int32, device=device)"
    if p.elem == n.BOOL:
        return f"torch.ones({shape}, dtype=torch.bool, device=device)"
    return f"torch.randn({shape}, device=device)"


def standalone_source(c: n.Cascade, dtype: str, module_hint: str = "attention_kernel") -> str:
    """The text of a standalone ``.py`` file for ``c`` on ``dtype`` inputs (compiled flavour)."""
    source = generate(c, Specialization(dtype, interpret=False))
    # The interpreter's bf16 tl.dot is wrong, so CPU runs need the upcasting flavour of the kernel
    # (the same source for the other dtypes); only its kernel function is added, renamed.
    cpu = generate(c, Specialization(dtype, interpret=True))
    cpu_kernel = ""
    if cpu.text != source.text:
        body = cpu.text.split(f"def {cpu.kernel_name}(", 1)[1]
        cpu_kernel = f"def {cpu.kernel_name}_interpreted(" + body
    plan = plan_passes(c)
    configs = {}
    for hopper in (False, True):
        for wide in (16, 32, 64, 128, 256):
            for aligned in (False, True):
                configs[(hopper, wide, aligned)] = [(c.block_m, c.block_n, c.num_warps, c.num_stages)
                                                    for c in gpu_configs(90 if hopper else 80, dtype, wide, wide,
                                                                         plan.num_passes, aligned)]
    scalars, tensors = [], []
    for p in c.params:
        if p.kind == "tensor":
            shown = ", ".join("_" if d == n.ANY_DIM else _dim_text(d) for d in p.dims)
            tensors.append({
                "name": p.name,
                "dims": ["None" if d == n.ANY_DIM else py_expr(d) for d in p.dims],
                "shape_text": f"[{shown}] {p.elem}",
                "convert": {n.INT: ".to(torch.int32)", n.BOOL: ".to(torch.int8)", n.FLOAT: ""}[p.elem],
            })
        else:
            default = py_expr(p.default) if p.default is not None else (
                f'_missing("{p.name}")')
            scalars.append({"name": p.name, "default": default,
                            "cast": {n.INT: "int", n.FLOAT: "float", n.BOOL: "int"}[p.kind]})
    demo_sizes = {"n_q": 33, "n_kv": 33, "head_dim": 64, "n_heads": 2, "n_kv_heads": 2, "scale": 0.125,
                  "B": 1, "H": 2, "H_KV": 2, "N_Q": 33, "N_KV": 33, "D": 64, "D_V": 64}
    demo_scalars = {p.name: 4 for p in c.params if p.kind != "tensor"}
    demo = "{" + ", ".join(f'"{p.name}": {_demo_value(p, demo_sizes, demo_scalars)}'
                           for p in c.params if p.default is None) + "}"
    sig = ", ".join(f"{p.name}" for p in c.params)
    dns = unspecialized(_kernel_argnames(source.text, source.kernel_name))
    text = _env().get_template("standalone.jinja").render(
        version=CODEGEN_VERSION,
        cascade_name=c.name,
        signature=sig,
        module_hint=module_hint,
        call_hint="".join(f", {p.name}=..." for p in c.params if p.default is None),
        has_lse=c.has_lse,
        dtype=dtype,
        kernel_text=source.text,
        cpu_kernel_text=cpu_kernel,
        kernel_name=source.kernel_name,
        do_not_specialize=repr(dns),
        configs=repr(configs),
        interpreter_tile=INTERPRETER_CONFIG.block_m,
        params=c.params,
        scalars=scalars,
        functions=list(FUNCTIONS.values()),
        tensors=tensors,
        demo_args=demo,
        parameter_names=repr(tuple(p.name for p in c.params)),
        runtime_tiles=source.runtime_tiles,
        exact=source.exact,
    )
    return text


def _dim_text(d: n.Expr) -> str:
    from ..ir.printer import expr_text

    return expr_text(d)


def _kernel_argnames(text: str, kernel_name: str) -> list[str]:
    head = text.split(f"def {kernel_name}(", 1)[1].split("):", 1)[0]
    names = []
    for part in head.replace("\n", " ").split(","):
        name = part.split(":")[0].strip()
        if name:
            names.append(name)
    return names
