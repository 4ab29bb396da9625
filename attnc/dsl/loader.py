"""Loading spec files and resolving the names they define and import.

A ``Scope`` is one parsed module plus the names it can see: its own definitions, what it
imports from other files or from the library, and — when nothing else matches — the library
itself, so ``norm = softmax`` works without an import. Library files are plain spec files in a
directory given to the ``Loader`` (the public API passes ``attnc/library``); each defines the
name of its file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import ast
from .errors import Source, Span, SpecError, suggest
from .parser import parse

MAX_SPEC_BYTES = 1 << 20  # a spec file (or an imported one) larger than 1 MiB is refused unread


def _read_spec_file(path: Path, span: Span | None) -> bytes:
    """The bytes of a regular file of at most ``MAX_SPEC_BYTES``: never a device, pipe or
    terminal (``/dev/zero`` would be read forever, ``/dev/stdin`` would block)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise SpecError(f"cannot read spec file {str(path)!r}: {err.strerror or type(err).__name__}", span) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(f"{str(path)!r} is not a regular file; a spec must be a file of text", span)
        if st.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"spec file {str(path)!r} is {st.st_size} bytes; the limit is {MAX_SPEC_BYTES}", span)
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES:  # the size may change while reading: never past the limit
            chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"spec file {str(path)!r} is over {MAX_SPEC_BYTES} bytes", span)
        return b"".join(chunks)
    except OSError as err:
        raise SpecError(f"cannot read spec file {str(path)!r}: {err.strerror or type(err).__name__}", span) from None
    finally:
        os.close(fd)


@dataclass
class Scope:
    module: ast.Module
    loader: "Loader"
    base_dir: Path | None
    defs: dict[str, ast.Def] = field(default_factory=dict)
    imported: dict[str, tuple[ast.Def, "Scope"]] = field(default_factory=dict)
    is_library: bool = False

    @property
    def name(self) -> str:
        return self.module.path

    def lookup(self, name: str) -> tuple[ast.Def, "Scope"] | None:
        if name in self.defs:
            return self.defs[name], self
        if name in self.imported:
            return self.imported[name]
        return self.loader.library_def(name)

    def visible_names(self) -> set[str]:
        return set(self.defs) | set(self.imported) | set(self.loader.library_names())


class Loader:
    """Parses spec files once each and resolves imports between them."""

    def __init__(self, library_dir: Path | str | None = None):
        self.library_dir = Path(library_dir) if library_dir is not None else None
        self._files: dict[Path, Scope] = {}
        self._loading: list[Path] = []
        self._library: dict[str, Scope] = {}
        # Results later layers derive from definitions (the lowering memoizes inlined calls
        # here), so they live exactly as long as the parsed files they came from.
        self.memo: dict = {}

    # ---- library
    def library_names(self) -> list[str]:
        if self.library_dir is None or not self.library_dir.is_dir():
            return []
        return sorted(p.stem for p in self.library_dir.glob("*.attn"))

    def library_scope(self, name: str) -> Scope | None:
        if name in self._library:
            return self._library[name]
        if self.library_dir is None or not name.isidentifier():
            return None
        path = self.library_dir / f"{name}.attn"
        if not path.is_file():
            return None
        scope = self.load_path(path, is_library=True)
        self._library[name] = scope
        return scope

    def library_def(self, name: str) -> tuple[ast.Def, Scope] | None:
        scope = self.library_scope(name)
        if scope is not None:
            return (scope.defs[name], scope) if name in scope.defs else None
        # a helper defined beside a variant (natten1d.attn's `neighborhood`): the library file
        # that defines it, skipping files still being loaded (one of them is asking)
        if self.library_dir is None or not name.isidentifier():
            return None
        for other in self.library_names():
            if (self.library_dir / f"{other}.attn").resolve() in self._loading:
                continue
            found = self.library_scope(other)
            if found is not None and name in found.defs:
                return found.defs[name], found
        return None

    # ---- files and text
    def load_path(self, path: Path | str, *, is_library: bool = False, span: Span | None = None) -> Scope:
        path = Path(path)
        try:
            key = path.resolve()
        except (OSError, RuntimeError, ValueError) as err:  # ValueError: a NUL byte in the path
            raise SpecError(f"cannot open spec file {str(path)!r}: {err}", span) from None
        if key in self._files:
            return self._files[key]
        if key in self._loading:
            chain = " → ".join(p.name for p in self._loading[self._loading.index(key):] + [key])
            raise SpecError(f"import cycle: {chain}", span)
        raw = _read_spec_file(path, span)
        try:
            text = raw.decode("utf-8-sig")  # a leading byte-order mark is not part of the spec
        except UnicodeDecodeError as err:
            raise SpecError(f"spec file {str(path)!r} is not UTF-8 text (byte {err.start})", span) from None
        self._loading.append(key)
        try:
            scope = self.load_text(text, str(path), base_dir=path.parent, is_library=is_library,
                                   claimed=path.suffix == ".attn" and key.suffix == ".attn")  # a link's target too
        finally:
            self._loading.pop()
        self._files[key] = scope
        return scope

    def load_text(self, text: str, name: str = "<string>", base_dir: Path | None = None, *, is_library: bool = False,
                  claimed: bool = True) -> Scope:
        """``claimed``: the text says it is a spec (text given as such, a ``*.attn`` file). A file
        that is not may be anything (``attnc check /etc/passwd``): if it does not parse, the
        error says where, never what it holds."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_SPEC_BYTES:  # bounded work for text as for files
            raise SpecError(f"spec text {name!r} is {size} bytes; the limit is {MAX_SPEC_BYTES}", None)
        text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the spec, in text as in files
        try:
            module = parse(text, name)
        except SpecError as err:
            if claimed or err.span is None:
                raise
            raise SpecError(f"{name!r} is not a spec: it does not parse at line {err.span.line}, column "
                            f"{err.span.col} (spec files are named *.attn; the file's text is not shown)",
                            dataclasses.replace(err.span, source=Source(name, "", quote=False))) from None
        scope = Scope(module, self, base_dir, is_library=is_library)
        first_seen: dict[str, tuple[Span | None, str]] = {}
        for item in module.items:  # in source order, so a clash is reported at its second use
            if isinstance(item, ast.Def):
                _check_fresh(item.name, item.name_span, first_seen, "defined")
                scope.defs[item.name] = item
            else:
                for nm in item.names:
                    _check_fresh(nm.id, nm.span, first_seen, "imported")
                    scope.imported[nm.id] = self._resolve_import(scope, item, nm)
        return scope

    def _resolve_import(self, scope: Scope, imp: ast.Import, nm: ast.Name) -> tuple[ast.Def, Scope]:
        if imp.source is None:
            found = self.library_def(nm.id)
            if found is None:
                raise SpecError(
                    f"the library has no definition `{nm.id}`{suggest(nm.id, self.library_names())}", nm.span
                )
            return found
        path = Path(imp.source)
        if not path.is_absolute():
            path = (scope.base_dir or Path.cwd()) / path
        target = self.load_path(path, span=imp.source_span or imp.span)
        if nm.id not in target.defs:
            raise SpecError(
                f"{imp.source!r} defines no `{nm.id}`{suggest(nm.id, target.defs)}", nm.span
            )
        return target.defs[nm.id], target


def _check_fresh(name: str, span: Span | None, seen: dict[str, tuple[Span | None, str]], how: str) -> None:
    if name in seen:
        first, first_how = seen[name]
        where = f" on line {first.line}" if first is not None else ""
        raise SpecError(f"`{name}` is already {first_how}{where}", span)
    seen[name] = (span, how)
