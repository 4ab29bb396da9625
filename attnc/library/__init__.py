"""The standard variants, written in the spec language: one ``.attn`` file per variant.

Each file defines the name of its file and opens with a comment giving the formula and its
source. Nothing here is Python: the compiler treats these exactly like a user's spec files.
"""

from pathlib import Path

LIBRARY_DIR = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.attn"))
