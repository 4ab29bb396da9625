"""The on-disk kernel cache, and loading generated kernel text without trusting the disk.

Generated sources are written to ``$ATTNC_CACHE_DIR`` (default ``~/.cache/attnc``) so a user can
read the kernel a spec became; they are never *executed from* there. ``load_module`` compiles
the text attnc has just generated, from memory, and registers it with ``linecache`` under the
file's name (Triton reads kernel source back through ``inspect``) — so neither a planted
``.py`` nor a planted ``__pycache__/*.pyc`` whose header matches the file can run.

The directory itself must be this user's and writable by no one else: created ``0700``; one of
ours that group or others can write is narrowed to ``0700``; one owned by another user, or that
is not a usable directory, is refused with ``CacheDirError`` naming ``ATTNC_CACHE_DIR`` — or,
when that variable is unset and the default is unusable, replaced for this process by a private
temporary directory (with a warning).
"""

from __future__ import annotations

import linecache
import os
import stat
import sys
import tempfile
import threading
import types
import warnings
from pathlib import Path

_lock = threading.Lock()
_fallback: Path | None = None


class CacheDirError(ValueError):
    """``ATTNC_CACHE_DIR`` names a directory attnc cannot (or must not) keep kernels in."""


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be the cache (after creating it 0700 if missing), or None."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        if path.is_symlink() and not path.exists():
            return f"it is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return "it exists and is not a directory"
    except OSError as e:
        return f"it cannot be created ({e.strerror or e})"
    except ValueError:  # e.g. an embedded NUL
        return "it is not a valid path"
    try:
        st = path.stat()
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022 and st.st_mode & stat.S_ISVTX:  # a shared directory such as /tmp: never narrowed
        return (f"it is a shared directory (mode {stat.S_IMODE(st.st_mode):o}) that others write to; use a "
                f"directory of its own inside it")
    if st.st_mode & 0o022:
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            return f"group or others can write to it and it cannot be narrowed ({e.strerror or e})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def cache_dir() -> Path:
    """The kernel cache directory, checked (see the module docstring)."""
    global _fallback
    explicit = os.environ.get("ATTNC_CACHE_DIR")
    path = Path(explicit) if explicit else Path.home() / ".cache" / "attnc"
    with _lock:
        problem = _problem(path)
        if problem is None:
            return path
        if explicit:
            raise CacheDirError(f"ATTNC_CACHE_DIR={explicit!r} cannot hold attnc's kernel cache: {problem}; "
                                f"point it at a directory of yours that only you can write, or unset it")
        if _fallback is None or not _fallback.is_dir():
            _fallback = Path(tempfile.mkdtemp(prefix="attnc-cache-"))  # 0700, this process's
            warnings.warn(f"attnc: the default kernel cache {path} is unusable ({problem}); using {_fallback} "
                          f"for this process (set ATTNC_CACHE_DIR to choose another)", RuntimeWarning, stacklevel=3)
        return _fallback


def write_atomic(path: Path, data: str | bytes, *, mode: int | None = None, parents: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename (readers
    never see a part of it); the file gets ``mode`` (default: mkstemp's 0600), the parents are
    created only when ``parents``."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def user_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def store(path: Path, text: str) -> None:
    """Keep ``text`` at ``path`` for the user to read, unless it is already there; a file that is
    unreadable, garbage or in the way is replaced, and a cache that cannot be written is skipped
    (the kernel never runs from the file)."""
    try:
        if path.is_file() and not path.is_symlink() and path.read_bytes() == text.encode():
            return
    except OSError:
        pass
    try:
        if path.is_symlink():
            path.unlink()
        write_atomic(path, text)  # onto a directory: an OSError, warned
    except OSError as e:
        warnings.warn(f"attnc: could not write {path} ({e.strerror or e}); the kernel runs from memory",
                      RuntimeWarning, stacklevel=3)


def load_module(text: str, path: Path, name: str) -> types.ModuleType:
    """Run generated kernel ``text`` as module ``name`` whose file is ``path`` — compiled from the
    text itself, not imported from the disk (see the module docstring)."""
    filename = str(path)
    code = compile(text, filename, "exec", dont_inherit=True)
    module = types.ModuleType(name)
    module.__file__ = filename
    # inspect.getsource (Triton's JIT) finds the lines here; mtime None: checkcache keeps them
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    sys.modules[name] = module
    exec(code, module.__dict__)  # noqa: S102 (attnc's own generated code, from the IR, not spec text)
    return module
