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


@pytest.fixture
def poison(monkeypatch, tmp_path):
    """Kernel outputs start as NaN (an element a kernel fails to write cannot pass for a correct
    one) and kernels are built into a fresh cache. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("poison")``."""
    import attnc

    monkeypatch.setattr(attnc.Attention, "POISON", True)
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "cache"))
