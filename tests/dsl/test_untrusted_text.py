"""Spec text from an untrusted source (docs/security.md; issue 16, items 7 and 11): files are read
only when they are regular and small, a file that is not a spec is never quoted, and expressions
too deep for the later passes are refused with a SpecError instead of a RecursionError."""

from __future__ import annotations

import os
import threading

import pytest

import attnc
from attnc.dsl.errors import SpecError
from attnc.dsl.loader import MAX_SPEC_BYTES
from attnc.ir.lower import MAX_STAGE_DEPTH
from attnc.testing import check


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/dev/stdin", "/"])
def test_devices_and_directories_are_not_read(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(SpecError, match="not a regular file"):
        attnc.compile(path)


def test_import_from_a_device_is_not_read(tmp_path):
    spec = tmp_path / "a.attn"
    spec.write_text('from "/dev/zero" import w\n\nattention a:\n    mask = w\n')
    with pytest.raises(SpecError, match="not a regular file") as err:
        attnc.compile(spec)
    assert err.value.span is not None and err.value.span.line == 1


def test_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "pipe.attn"
    os.mkfifo(fifo)
    result = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(SpecError, attnc.compile, fifo)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and result and "not a regular file" in str(result[0].value)


def test_oversized_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.attn"
    with open(big, "wb") as f:
        f.truncate(MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match="limit"):
        attnc.compile(big)


def test_a_file_that_is_not_a_spec_is_not_quoted(tmp_path):
    secret = "root:x:0:0:hunter2-secret:/root:/bin/bash"
    path = tmp_path / "passwd"
    path.write_text(secret + "\n")
    with pytest.raises(SpecError) as err:
        attnc.compile(path)
    text = str(err.value)
    assert "root" not in text.replace(str(tmp_path), "") and "hunter2" not in text
    assert f"{path}:1:1" in text and "not a spec" in text


def test_a_spec_file_with_a_typo_is_still_quoted(tmp_path):
    path = tmp_path / "typo.attn"
    path.write_text("attention a:\n    mask = kv_idx <= q_idx +\n")
    with pytest.raises(SpecError) as err:
        attnc.compile(path)
    assert "mask = kv_idx <= q_idx +" in str(err.value)


def _chain(step: str, n: int, start: str, last: str) -> str:
    lets = "".join(f"    let a{i} = {step.format(p=f'a{i - 1}')}\n" for i in range(1, n))
    return f"attention a:\n    let a0 = {start}\n{lets}    {last.format(x=f'a{n - 1}')}\n"


@pytest.mark.parametrize(("step", "start", "last"), [
    ("{p} * 0.5 + 1.0", "score", "score = {x}"),
    ("max({p}, 1) - 1", "q_idx", "mask = kv_idx <= {x}"),
    ("tanh({p})", "score", "score = {x}"),
])
def test_long_chains_of_lets_compile_or_are_refused_cleanly(step, start, last):
    """Chains of lets at any length: a SpecError naming the limit past it; within it, the
    kernels run (forward and backward) and agree with the reference."""
    for n in (20, 59, 120, 400):
        src = _chain(step, n, start, last)
        try:
            attn = attnc.compile(src, name="a")
        except SpecError as err:
            assert f"the limit is {MAX_STAGE_DEPTH}" in str(err) and "split it with `let`" not in str(err)
            continue
        check(attn, examples=1, seed=0, properties=("reference", "gradients"))
