"""attnc: a compiler for attention variants.

Write a mask, a score function and a normalization in a short spec file; attnc lowers it to an
Einsum cascade, proves how many passes over the keys it needs, and (from issue 3 on) emits a
fused Triton kernel. Pipeline: ``dsl → ir → codegen → runtime``; the variants live in
``attnc/library`` as spec files.
"""

from .dsl.errors import SpecError

# Everything else loads on first use (PEP 562), so `python -m attnc --help` does not import torch.
_LAZY = {
    "parse": "dsl.parser", "plan_passes": "ir.passes", "Attention": "runtime.compiler",
    "compile": "runtime.compiler", "compile_count": "runtime.compiler", "load": "runtime.compiler",
    "SpecFile": "runtime.frontend", "library_cascade": "runtime.frontend", "library_spec": "runtime.frontend",
    "spec_from_file": "runtime.frontend", "spec_from_text": "runtime.frontend", "jit": "runtime.jit",
    "reference": "runtime.reference", "flex_attention": "runtime.flex", "merge": "runtime.merge",
}

__all__ = [
    "SpecError", "SpecFile", "parse", "spec_from_file", "spec_from_text", "library_spec", "library_cascade",
    "plan_passes", "reference", "Attention", "compile", "load", "compile_count", "jit", "flex_attention",
    "merge",
]


_SUBPACKAGES = ("dsl", "ir", "codegen", "runtime", "library", "testing", "distributed")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # `import attnc; attnc.runtime.compiler` as before the imports were lazy
        if name == "runtime":  # its modules were loaded by `import attnc` before
            importlib.import_module(".runtime.compiler", __name__)
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'attnc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"
