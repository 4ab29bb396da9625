"""Every spec in the bad-spec catalogue is rejected with a helpful, well-placed diagnostic.

For each entry: ``spec_from_text`` raises ``SpecError`` (nothing else), the message contains the
expected fragment, the span starts at the expected line:col, and ``str(err)`` is a compiler-style
diagnostic: ``file:line:col: error: message``, the source line the span points at, and carets
under the offending text.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

import attnc

from .bad_specs import BAD_SPECS, BadSpec

FILENAME = "bad.attn"


def _render_line(text: str, line: int) -> str:
    """The source line a diagnostic should show: the ``line``-th ``\\n``-separated line."""
    lines = text.split("\n")
    shown = lines[line - 1] if 1 <= line <= len(lines) else ""
    return _visible(shown.expandtabs(1))


def _visible(s: str) -> str:
    """``s`` without control and line/paragraph-separator characters, which a diagnostic may
    show raw, escape or drop."""
    return "".join(c for c in s if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))


def _raise(spec: BadSpec, base_dir: Path) -> attnc.SpecError:
    for name, content in spec.files.items():
        (base_dir / name).write_text(content)
    try:
        attnc.spec_from_text(spec.text, FILENAME, base_dir=base_dir)
    except attnc.SpecError as err:
        return err
    # Any other exception propagates: a bad spec must never crash the compiler.
    pytest.fail(f"{spec.id}: the spec was accepted, expected an error containing {spec.fragment!r}")


def test_catalogue_size_and_ids():
    assert len(BAD_SPECS) >= 40
    ids = [s.id for s in BAD_SPECS]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"duplicate ids: {dupes}"
    for s in BAD_SPECS:
        assert s.id and s.id == s.id.strip() and " " not in s.id
        assert s.fragment, f"{s.id}: empty fragment"
        assert s.line >= 1 and s.col >= 1


@pytest.mark.parametrize("spec", BAD_SPECS, ids=[s.id for s in BAD_SPECS])
def test_bad_spec(spec: BadSpec, tmp_path: Path):
    err = _raise(spec, tmp_path)
    assert isinstance(err, attnc.SpecError)
    assert spec.fragment in err.message, f"{spec.id}: {err.message!r} lacks {spec.fragment!r}"
    assert err.span is not None, f"{spec.id}: no source position for {err.message!r}"

    if spec.error_file is None:
        want_name, src_text = FILENAME, spec.text
    else:
        want_name, src_text = str(tmp_path / spec.error_file), spec.files[spec.error_file]
    got = (err.span.line, err.span.col)
    assert err.span.source.name == want_name, f"{spec.id}: error reported in {err.span.source.name}"
    assert got == spec.pos, f"{spec.id}: error at {got[0]}:{got[1]}, expected {spec.line}:{spec.col}\n{err}"

    # The rendered diagnostic: header, the source line the span points at, carets under it.
    rendered = str(err)
    head = f"{want_name}:{spec.line}:{spec.col}: error: "
    assert rendered.startswith(head + err.message), rendered[:300]
    lines = rendered.split("\n")  # not splitlines(): the shown source line may hold \r or \f
    assert len(lines) >= 3, rendered
    assert _visible(lines[1]) == "    " + _render_line(src_text, spec.line), (
        f"{spec.id}: the diagnostic shows the wrong source line:\n{rendered}"
    )
    carets = lines[2]
    assert carets.startswith("    ") and set(carets[4:]) <= {" ", "^"} and "^" in carets, rendered
    assert carets.index("^") == 4 + spec.col - 1, f"{spec.id}: carets do not start under col {spec.col}:\n{rendered}"


def test_missing_file_error_names_the_path(tmp_path: Path):
    """A missing import names the file it looked for, resolved against base_dir."""
    with pytest.raises(attnc.SpecError) as info:
        attnc.spec_from_text('from "sub/nope.attn" import x\n', FILENAME, base_dir=tmp_path)
    assert str(tmp_path / "sub" / "nope.attn") in info.value.message


def test_spec_from_file_reports_its_path(tmp_path: Path):
    """spec_from_file reports errors under the file's own path."""
    path = tmp_path / "typo.attn"
    path.write_text("mask g = q_idx < kv_idz\n")
    with pytest.raises(attnc.SpecError) as info:
        attnc.spec_from_file(path)
    err = info.value
    assert (err.span.line, err.span.col) == (1, 18)
    assert str(err).startswith(f"{path}:1:18: error: unknown name `kv_idz`")


def test_spec_from_file_missing(tmp_path: Path):
    with pytest.raises(attnc.SpecError) as info:
        attnc.spec_from_file(tmp_path / "absent.attn")
    assert "cannot read spec file" in info.value.message


def test_spec_from_file_not_utf8(tmp_path: Path):
    path = tmp_path / "latin1.attn"
    path.write_bytes("# caf\xe9\nmask g = True\n".encode("latin-1"))
    with pytest.raises(attnc.SpecError) as info:
        attnc.spec_from_file(path)
    assert "not UTF-8" in info.value.message


@pytest.mark.parametrize(
    "text",
    [
        "mask a = True\n\x0c\n\x0c\nmask c = True\n",  # form feeds on blank lines
        "# a\n\x0c# b\nmask a = True\n",  # a form feed before a comment
        "mask a:\n    let x = 1\n\x0c    mask = q_idx < x\n",  # a form feed before the indentation
    ],
    ids=["ff-blank-lines", "ff-before-comment", "ff-before-indent"],
)
def test_form_feed_is_whitespace(text):
    """The grammar ignores \\f as whitespace, so a form feed at the start of a line is harmless
    (as in Python). BUG today: these valid specs are rejected."""
    attnc.spec_from_text(text, FILENAME)
