"""attnc: a compiler for attention variants.

Write a mask, a score function and a normalization in a short spec file; attnc lowers it to an
Einsum cascade, proves how many passes over the keys it needs, and (from issue 3 on) emits a
fused Triton kernel. Pipeline: ``dsl → ir → codegen → runtime``; the variants live in
``attnc/library`` as spec files.
"""

from .dsl.errors import SpecError
from .dsl.parser import parse
from .ir.passes import plan_passes
from .runtime.compiler import Attention, compile, compile_count, load
from .runtime.frontend import (
    SpecFile,
    library_cascade,
    library_spec,
    spec_from_file,
    spec_from_text,
)
from .runtime.jit import jit
from .runtime.reference import reference

__all__ = [
    "SpecError", "SpecFile", "parse", "spec_from_file", "spec_from_text", "library_spec", "library_cascade",
    "plan_passes", "reference", "Attention", "compile", "load", "compile_count", "jit",
]
__version__ = "0.1.0"
