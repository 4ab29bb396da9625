"""Every library file: one definition named like the file, a formula line and a cited source."""

import re

import pytest

import attnc
from tests.conftest import library_files

REQUIRED = {
    "softmax", "sigmoid", "relu", "none", "full", "causal", "sliding_window", "chunked", "prefix_lm",
    "document", "sink_window", "dilated_window", "alibi", "softcap", "relative_bias", "sigmoid_attention",
    "softmax_sink", "natten2d",
}


def test_the_first_set_is_complete():
    assert REQUIRED <= {p.stem for p in library_files()}


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.stem)
def test_library_file_shape(path):
    text = path.read_text()
    spec = attnc.spec_from_file(path)
    assert spec.names == [path.stem], "one definition per file, named like the file"
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(line.startswith("#   ") for line in header), "a `#   ` line with the formula"
    assert re.search(r"\b(19|20)\d\d\b", " ".join(header)), "the source (with its year) in the comment"
