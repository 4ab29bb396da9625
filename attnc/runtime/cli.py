"""The ``attnc`` command line.

    attnc list                 the library, one line of math per variant
    attnc explain SPEC [NAME]  the parsed definition, its Einsum cascade and its pass plan

SPEC is a path to a spec file or the name of a library variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..dsl.errors import SpecError
from ..dsl.printer import print_def, print_params
from ..ir.passes import plan_passes, plan_text
from ..ir.printer import cascade_text
from ..library import LIBRARY_DIR, names
from .frontend import SpecFile, library_spec, spec_from_file


def formula_line(path: Path) -> str:
    """The first ``#   `` line of a library file's header comment: its one line of math."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#   "):
            return line[4:].strip()
    return ""


def cmd_list(out) -> int:
    rows = []
    for name in names():
        spec = library_spec(name)
        d = spec.definition(name)
        rows.append((f"{d.kind} {name}{print_params(d.params)}", formula_line(LIBRARY_DIR / f"{name}.attn")))
    width = max(len(r[0]) for r in rows)
    for head, math in rows:
        print(f"{head.ljust(width)}   {math}", file=out)
    return 0


def _open(spec: str) -> SpecFile:
    path = Path(spec)
    if path.is_file():
        return spec_from_file(path)
    if spec in names():
        return library_spec(spec)
    if path.suffix == ".attn" or "/" in spec:
        return spec_from_file(path)  # reports the unreadable file as a SpecError
    return library_spec(spec)  # reports an unknown variant, with a suggestion


def cmd_explain(spec: str, name: str | None, out) -> int:
    sf = _open(spec)
    targets = [name] if name else sf.names
    for target in targets:
        cascade = sf.cascade(target)
        d = sf.definition(target)
        plan = plan_passes(cascade)
        print(f"== {target} ({d.kind}, {sf.path})", file=out)
        print("definition:", file=out)
        print("  " + print_def(d).rstrip("\n").replace("\n", "\n  "), file=out)
        print("cascade:", file=out)
        print("  " + cascade_text(cascade).rstrip("\n").replace("\n", "\n  "), file=out)
        print("plan:", file=out)
        print("  " + plan_text(cascade, plan).replace("\n", "\n  "), file=out)
        print(file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnc", description="a compiler for attention variants")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the library variants with their math")
    ex = sub.add_parser("explain", help="show a spec's definition, cascade and pass plan")
    ex.add_argument("spec", help="a spec file, or the name of a library variant")
    ex.add_argument("name", nargs="?", help="one definition of the file (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(sys.stdout)
        return cmd_explain(args.spec, args.name, sys.stdout)
    except SpecError as err:
        print(str(err), file=sys.stderr)
        return 1
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
