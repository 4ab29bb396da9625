"""What a clean install gets (issue 18 item 1): every third-party module attnc imports is a declared
dependency (an optional extra's only where that extra is documented: lazily, or in the testing
kit), and the wheel `pip` builds carries the grammar, the library's spec files and the kernel
templates, from which an installed attnc, imported away from the repository, parses and lowers
a library variant."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# where an optional extra's module may be imported at module level: the subpackage that needs it
EXTRA_HOMES = {"test": ("attnc/testing/",), "transformers": ("attnc/integrations/",)}


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(path: Path):
    """(top-level module, lazily imported) for each absolute import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], id(node) in lazy


def test_every_third_party_import_is_declared():
    core = {_dist(r) for r in PROJECT["dependencies"]}
    extras = {extra: {_dist(r) for r in reqs} for extra, reqs in PROJECT["optional-dependencies"].items()}
    owners = importlib.metadata.packages_distributions()
    problems = []
    for path in sorted((ROOT / "attnc").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for module, lazy in _imports(path):
            if module in sys.stdlib_module_names or module in ("attnc", "__future__"):
                continue
            dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
            if dists & core:
                continue
            homes = [e for e, reqs in extras.items() if dists & reqs]
            if not homes:
                problems.append(f"{rel}: imports `{module}`, which no dependency or extra declares")
            elif not lazy and not any(rel.startswith(EXTRA_HOMES.get(e, ())) for e in homes):
                problems.append(f"{rel}: imports `{module}` (extra {homes[0]!r}) at module level; import it "
                                f"where it is used, so attnc imports without the extra")
    assert not problems, "\n".join(problems)


def test_the_wheel_carries_its_data_and_works_installed(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "attnc", source / "attnc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("attnc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p.relative_to(ROOT).as_posix() for pattern in ("attnc/dsl/*.lark", "attnc/library/*.attn",
                                                             "attnc/codegen/*.jinja")
              for p in ROOT.glob(pattern)]
    assert wanted and not [w for w in wanted if w not in names], sorted(set(wanted) - names)
    # installed into a directory of its own, imported from elsewhere: the files come from the wheel
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import attnc, sys; assert attnc.__file__.startswith(sys.argv[1]), attnc.__file__; "
            "c = attnc.library_cascade('sliding_window'); print(c.name, len(attnc.library.names()))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    import attnc

    assert run.stdout.split() == ["sliding_window", str(len(attnc.library.names()))]
