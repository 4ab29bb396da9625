"""Spec files in, checked cascades out: the front half behind one small API.

``spec_from_file``, ``spec_from_text`` and ``library_spec`` parse a spec, resolve its imports
(and the library), and lower *every* definition in it, so an error anywhere in the file is
reported even if nothing uses that definition. Everything that goes wrong with the user's
text is a ``SpecError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..dsl import ast
from ..dsl.errors import SpecError
from ..dsl.loader import Loader, Scope
from ..ir.lower import check_def_names, lower_def
from ..ir.nodes import Cascade
from ..library import LIBRARY_DIR


@dataclass(frozen=True)
class SpecFile:
    """A parsed, checked spec file: its definitions and the cascade each one stands for."""

    path: str
    module: ast.Module
    cascades: dict[str, Cascade]

    @property
    def names(self) -> list[str]:
        return list(self.cascades)

    def definition(self, name: str) -> ast.Def:
        for d in self.module.defs:
            if d.name == name:
                return d
        raise KeyError(name)

    def cascade(self, name: str | None = None) -> Cascade:
        """The cascade named ``name``; without a name, the file's only (or last) attention,
        else the definition named like the file, else its only definition."""
        if name is not None:
            if name not in self.cascades:
                from ..dsl.errors import suggest

                raise KeyError(f"{self.path} defines no `{name}`{suggest(name, self.cascades)}; it defines {', '.join(self.cascades) or 'nothing'}")
            return self.cascades[name]
        attentions = [d.name for d in self.module.defs if d.kind == "attention"]
        if attentions:
            return self.cascades[attentions[-1]]
        stem = Path(self.path).stem
        if stem in self.cascades:
            return self.cascades[stem]
        if len(self.cascades) == 1:
            return next(iter(self.cascades.values()))
        if not self.cascades:
            raise KeyError(f"{self.path} has no definition; write one, e.g. `attention NAME:` with a "
                           f"`mask =` or `score =` line (docs/language.md)")
        raise KeyError(f"{self.path} defines several definitions ({', '.join(self.cascades)}); name one")


def _loader() -> Loader:
    return Loader(LIBRARY_DIR)


def _lower_all(scope: Scope) -> SpecFile:
    check_def_names(scope.module)
    cascades = {}
    for d in scope.module.defs:
        try:
            cascades[d.name] = lower_def(d, scope)
        except RecursionError:
            raise SpecError(
                f"`{d.name}` expands into an expression too deep to compile; use simpler definitions",
                d.name_span,
            ) from None
    return SpecFile(scope.name, scope.module, cascades)


def _guard(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except RecursionError:
        raise SpecError("this spec nests definitions too deeply to compile") from None


def spec_from_text(text: str, filename: str = "<string>", base_dir: str | Path | None = None) -> SpecFile:
    """Parse and check spec text. Relative imports resolve against ``base_dir`` (default: cwd)."""
    if not isinstance(text, str):
        raise TypeError(f"spec text must be a str, got {type(text).__name__}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _guard(lambda: _lower_all(_loader().load_text(text, filename, base_dir=base)))


def spec_from_file(path: str | Path) -> SpecFile:
    """Parse and check the spec file at ``path``."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    return _guard(lambda: _lower_all(_loader().load_path(path)))


def library_spec(name: str) -> SpecFile:
    """The library file ``name.attn``; unknown names raise ``SpecError`` with a suggestion."""
    from ..dsl.errors import suggest
    from ..library import names

    if not isinstance(name, str) or name not in names():
        raise SpecError(f"the library has no variant {name!r}{suggest(str(name), names())}")
    return spec_from_file(LIBRARY_DIR / f"{name}.attn")


def library_cascade(name: str) -> Cascade:
    return library_spec(name).cascade(name)
