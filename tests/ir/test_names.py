"""Spec text is data: no eval/exec anywhere on the way, and identifiers are validated."""

import builtins

import pytest

import attnc
from attnc.ir.names import kernel_ident
from attnc.ir.passes import _plan_cached
from tests.conftest import example_files, library_files


def test_front_half_never_evals(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("eval/exec called")

    def run_all():
        for path in library_files() + example_files():
            for c in attnc.spec_from_file(path).cascades.values():
                attnc.plan_passes(c)

    run_all()  # first, unpatched: Python's import machinery (sympy imports lazily) uses exec
    _plan_cached.cache_clear()
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    run_all()
    hostile = (
        "attention import_(os: int = 1, exec: float = 2.0, eval: bool = True):\n"
        "    let lambda_ = os\n"
        "    score = score * exec\n"
        "    mask = kv_idx < lambda_\n"
    )
    spec = attnc.spec_from_text(hostile)
    assert [p.name for p in spec.cascade().params] == ["os", "exec", "eval"]
    with pytest.raises(attnc.SpecError, match="reserved for the compiler"):
        attnc.spec_from_text("mask __import__ = True\n")


def test_strings_are_only_import_paths():
    with pytest.raises(attnc.SpecError):
        attnc.spec_from_text('mask m = "__import__(\'os\').system(\'true\')"\n')


@pytest.mark.parametrize("name", ["os", "__import__", "tl", "lambda", "class", "_x", "q_tile"])
def test_kernel_identifiers_are_prefixed(name):
    ident = kernel_ident(name)
    assert ident.isidentifier() and ident.startswith("u_") and ident != name


@pytest.mark.parametrize("bad", ["a b", "x;import os", "1x", "", "é", "a\nb"])
def test_kernel_identifiers_reject_non_identifiers(bad):
    with pytest.raises(ValueError):
        kernel_ident(bad)
