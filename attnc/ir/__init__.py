"""The Einsum-cascade IR: nodes, lowering from the DSL, simplification, verification, passes."""

from .nodes import Cascade, ParamSpec, Stage
from .printer import cascade_text, expr_text
from .verify import IRError, verify

__all__ = ["Cascade", "ParamSpec", "Stage", "cascade_text", "expr_text", "verify", "IRError"]
