import os
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "attnc" / "library"
EXAMPLES = ROOT / "examples"

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def library_files():
    return sorted(LIBRARY.glob("*.attn"))


def example_files():
    return sorted(EXAMPLES.glob("*.attn"))


@pytest.fixture
def root():
    return ROOT
