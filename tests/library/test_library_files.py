"""Every library file: one variant named like the file (plus, at most, shared helpers listed in
HELPERS), a formula line and a cited source."""

import re

import pytest

import attnc
from tests.conftest import library_files

REQUIRED = {
    "softmax", "sigmoid", "relu", "none", "full", "causal", "sliding_window", "chunked", "prefix_lm",
    "document", "sink_window", "dilated_window", "alibi", "softcap", "relative_bias", "sigmoid_attention",
    "softmax_sink", "natten2d",
}
# definitions shared by several library files, each in the file of its first user
HELPERS = {"natten1d": {"neighborhood"},  # one axis of NATTEN's window, for natten1d/2d/3d
           "linear_attention": {"linear_norm"},  # linear attention's normalization, usable on its own
           "gpsa": {"gated_positional"},  # GPSA's two-softmax norm
           "differential": {"difference_of_softmax"},  # differential attention's two maps
           "stick_breaking": {"stick_breaking_weights"}}  # its weights from any score (also with a bias)


def test_the_first_set_is_complete():
    assert REQUIRED <= {p.stem for p in library_files()}


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.stem)
def test_library_file_shape(path):
    text = path.read_text()
    spec = attnc.spec_from_file(path)
    assert path.stem in spec.names, "the file defines the variant it is named after"
    assert set(spec.names) - {path.stem} == HELPERS.get(path.stem, set()), "one variant per file (helpers listed)"
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(line.startswith("#   ") for line in header), "a `#   ` line with the formula"
    assert re.search(r"\b(19|20)\d\d\b", " ".join(header)), "the source (with its year) in the comment"
