"""The kernel cache cannot run code nobody generated, and an unusable cache says so (issue 16,
items 10 and 12): planted ``.pyc`` and ``.py`` files, truncated or garbage files, a directory in
a file's place, a foreign owner, group-writable and non-directory caches, concurrent writers."""

from __future__ import annotations

import builtins
import importlib.util
import marshal
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch

import attnc
from attnc.runtime import compiler
from attnc.runtime.cache import CacheDirError, cache_dir

SPEC = "attention planted_probe(w: int = 3):\n    mask = q_idx - kv_idx < w and kv_idx <= q_idx\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(path))
    _fresh()
    return path


def _fresh():
    """Forget the kernels this process holds, so the next call reads the cache directory again."""
    compiler._memory.clear()


def _run_and_compare():
    attn = attnc.compile(SPEC, name="planted_probe")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 16, generator=g) for _ in range(3))
    out = attn(q, k, v)
    assert torch.allclose(out.double(), attn.reference(q, k, v), atol=1e-5, rtol=1e-5)


def _kernel_files(cache: Path) -> list[Path]:
    files = sorted(cache.glob("*.py"))
    assert files, "the call stored no kernel source"
    return files


def _plant_pyc(py: Path, flag: str) -> None:
    """A bytecode file Python's import would take for ``py``'s (its header holds ``py``'s mtime
    and size), whose code sets ``builtins.<flag>``."""
    code = compile(f"import builtins\nbuiltins.{flag} = True\n", str(py), "exec")
    st = py.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little") + \
        (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc = Path(importlib.util.cache_from_source(str(py)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(code))


def test_planted_pyc_never_runs(cache):
    _run_and_compare()
    for py in _kernel_files(cache):
        _plant_pyc(py, "attnc_planted_pyc_ran")
    _fresh()
    _run_and_compare()
    assert not getattr(builtins, "attnc_planted_pyc_ran", False)


@pytest.mark.parametrize("damage", ["planted", "truncated", "garbage"])
def test_planted_or_damaged_sources_never_run_and_are_replaced(cache, damage):
    _run_and_compare()
    files = _kernel_files(cache)
    good = {py: py.read_text() for py in files}
    for py in files:
        bad = {"planted": "import builtins\nbuiltins.attnc_planted_py_ran = True\n" + good[py],  # valid, wrong
               "truncated": good[py][: len(good[py]) // 2],
               "garbage": "\x00\udcff garbage"}[damage]  # not even UTF-8 on the disk
        py.write_bytes(bad.encode("utf-8", "surrogateescape"))
    _fresh()
    _run_and_compare()
    assert not getattr(builtins, "attnc_planted_py_ran", False)
    assert {py: py.read_text() for py in files} == good


def test_a_directory_in_a_kernel_files_place_is_warned_and_skipped(cache):
    _run_and_compare()
    files = _kernel_files(cache)
    for py in files:
        py.unlink()
        py.mkdir()
    _fresh()
    with pytest.warns(RuntimeWarning, match="runs from memory"):
        _run_and_compare()


def test_cache_directory_is_private(cache):
    old = os.umask(0o002)  # a group-writable umask: the cache is 0700 all the same
    try:
        _run_and_compare()
    finally:
        os.umask(old)
    assert cache.stat().st_mode & 0o777 == 0o700
    cache.chmod(0o775)  # an existing cache others can write to is narrowed
    assert cache_dir() == cache and cache.stat().st_mode & 0o777 == 0o700


def test_foreign_owner_is_refused_naming_the_variable(cache, monkeypatch):
    cache.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: cache.stat().st_uid + 1)
    with pytest.raises(CacheDirError, match="ATTNC_CACHE_DIR=.*another user"):
        attnc.compile(SPEC, name="planted_probe")(*(torch.randn(1, 1, 4, 16) for _ in range(3)))


def test_a_file_as_the_cache_is_refused(cache):
    cache.write_text("not a directory")
    with pytest.raises(CacheDirError, match="ATTNC_CACHE_DIR=.*not a directory"):
        cache_dir()


def test_a_shared_sticky_directory_is_refused_not_narrowed(cache):
    """ATTNC_CACHE_DIR=/tmp must not chmod /tmp to 0700 (for everyone); a 1777 directory is refused."""
    cache.mkdir()
    cache.chmod(0o1777)
    with pytest.raises(CacheDirError, match="ATTNC_CACHE_DIR=.*shared directory"):
        cache_dir()
    assert cache.stat().st_mode & 0o7777 == 0o1777


def test_a_dangling_link_as_the_cache_is_named_as_such(cache, tmp_path):
    cache.symlink_to(tmp_path / "gone")
    with pytest.raises(CacheDirError, match="ATTNC_CACHE_DIR=.*symbolic link to .*gone.*does not exist"):
        cache_dir()


def test_unusable_default_falls_back_to_a_private_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNC_CACHE_DIR", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("a file where ~/.cache should be")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr("attnc.runtime.cache._fallback", None)
    with pytest.warns(RuntimeWarning, match="unusable"):
        path = cache_dir()
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700 and home not in path.parents
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache_dir() == path  # one warning per process


def test_concurrent_writers_into_an_empty_cache(cache):
    errors = []

    def worker():
        try:
            _run_and_compare()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not list(cache.glob("*.tmp"))
