"""Identifiers that leave the IR for generated code.

Spec names (parameters, stages) are user text. Code generation never pastes them as they are:
``kernel_ident`` checks the name is a plain identifier and prefixes it, so no spec name can be
a Python keyword, shadow a builtin such as ``__import__`` or ``tl``, or collide with the names
the templates use themselves (which never start with ``u_``).
"""

from __future__ import annotations

import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def kernel_ident(name: str, kind: str = "u") -> str:
    """The generated-code name for spec name ``name`` (``kind`` distinguishes params/stages)."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ValueError(f"not a spec identifier: {name!r}")
    if not re.fullmatch(r"[a-z]", kind):
        raise ValueError(f"bad identifier kind {kind!r}")
    return f"{kind}_{name}"
