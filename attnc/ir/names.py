"""Identifiers that leave the IR for generated code.

Spec names (parameters, stages) are user text. Code generation never pastes them as they are:
``kernel_ident`` checks the name is a plain identifier and prefixes it, so no spec name can be
a Python keyword, shadow a builtin such as ``__import__`` or ``tl``, or collide with the names
the templates use themselves (which never start with a letter and ``_``).

What the generated code derives from such a name (a running value before the tile, a tensor's
sizes and strides, ...) is ``derived_ident``'s: the role goes first, so a derived name never has a
kernel identifier's one-letter prefix and no spec name can spell one (``s_m_old`` is stage
``m_old``; the max of stage ``m`` before the tile is ``old_s_m``).
"""

from __future__ import annotations

import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ROLE = re.compile(r"[a-z]{2,}[0-9]*\Z")

# The keywords a compiled attention's calls take themselves (``attn(q, k, v, *, scale=None,
# return_lse=False, q_offset=None, kv_offset=None, seq_len=None, **params)``, ``.reference``,
# ``.varlen``, ``.grid_plan``): a spec parameter of
# one of these names could never be passed, so the language refuses it at its declaration.
CALL_ARGUMENTS = frozenset({"q", "k", "v", "scale", "return_lse", "cu_seqlens_q", "cu_seqlens_k",
                            "block_m", "block_n", "q_offset", "kv_offset", "seq_len"})


def kernel_ident(name: str, kind: str = "u") -> str:
    """The generated-code name for spec name ``name`` (``kind`` distinguishes params/stages)."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ValueError(f"not a spec identifier: {name!r}")
    if not re.fullmatch(r"[a-z]", kind):
        raise ValueError(f"bad identifier kind {kind!r}")
    return f"{kind}_{name}"


def derived_ident(ident: str, role: str) -> str:
    """The generated-code name of what ``role`` (``old``, ``safe``, ``size0``, ``stride0``,
    ``gstride0``, ``grad``) derives from kernel identifier ``ident``."""
    if not re.fullmatch(r"[a-z]_[A-Za-z0-9_]+", ident) or not _ROLE.match(role):
        raise ValueError(f"bad derived identifier {role!r} of {ident!r}")
    return f"{role}_{ident}"


def tensor_arg_names(name: str, ndim: int) -> list[str]:
    """A tensor parameter's kernel arguments: the pointer, then its sizes, then its strides."""
    ident = kernel_ident(name)
    return [ident, *(derived_ident(ident, f"size{k}") for k in range(ndim)),
            *(derived_ident(ident, f"stride{k}") for k in range(ndim))]


def grad_arg_names(name: str, ndim: int) -> list[str]:
    """The backward's arguments for a tensor parameter's gradient: the buffer, then its strides."""
    ident = kernel_ident(name)
    return [derived_ident(ident, "grad"), *(derived_ident(ident, f"gstride{k}") for k in range(ndim))]
