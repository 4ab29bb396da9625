"""The ``attnc`` command line.

    attnc list                 the library, one line of math per variant
    attnc explain SPEC [NAME]  the parsed definition, its Einsum cascade and its pass plan
    attnc compile SPEC [NAME] [-o FILE] [--dtype D]
                               a standalone Triton kernel file with a launcher (torch + triton only)
    attnc check SPEC [NAME] [--dtype D] [shape options] [--param name=value]
                               run the kernel on random inputs against the float64 reference
    attnc check SPEC [NAME] --examples N [--property NAME ...]
                               property-test on N drawn problems (attnc.testing), shrunk failures
    attnc show SPEC [NAME] [--nq N] [--nkv N] [--block-m M] [--block-n N] [--param name=value]
               [-o FILE] [--no-visits]
                               draw the mask and its tile classes (empty / partial / full) and the
                               tiles the kernel visits as a PNG (needs Pillow: attnc[show])
    attnc demo                 compile, run and check a library variant; show the generated kernel

SPEC is a path to a spec file or the name of a library variant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..dsl.errors import SpecError
from ..library import LIBRARY_DIR, names

# The compiler's modules are imported by the commands that use them: `attnc --help` stays fast.


def formula_line(path: Path) -> str:
    """A library file's one line of math: the first ``#   `` line of its header comment that
    states an equation (natten1d's first indented lines describe its window in prose)."""
    lines = [line[4:].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#   ")]
    return next((line for line in lines if " = " in line), lines[0] if lines else "")


LIST_WIDTH = 100


def cmd_list(out, only_names: bool = False) -> int:
    """Each variant: its name first, its kind and parameters, then its line of math indented
    below, both wrapped to ``LIST_WIDTH`` columns; ``--names``: the names alone, one per line."""
    import textwrap

    from ..dsl.printer import print_params
    from .frontend import library_spec

    if only_names:
        print("\n".join(names()), file=out)
        return 0
    for name in names():
        d = library_spec(name).definition(name)
        head = f"{name} — {d.kind}{print_params(d.params)}"
        print(textwrap.fill(head, LIST_WIDTH, subsequent_indent="        ", break_on_hyphens=False), file=out)
        math = formula_line(LIBRARY_DIR / f"{name}.attn")
        if math:
            print(textwrap.fill(math, LIST_WIDTH, initial_indent="    ", subsequent_indent="      ",
                                break_on_hyphens=False), file=out)
    return 0


def _open(spec: str):
    """The ``SpecFile`` of a path or a library name."""
    from .frontend import library_spec, spec_from_file

    path = Path(spec)
    if path.is_file():
        return spec_from_file(path)
    if spec in names():
        return library_spec(spec)
    if path.suffix == ".attn" or "/" in spec:
        return spec_from_file(path)  # reports the unreadable file as a SpecError
    return library_spec(spec)  # reports an unknown variant, with a suggestion


def cmd_explain(spec: str, name: str | None, out) -> int:
    from ..dsl.printer import print_def
    from ..ir.backward import BackwardError, backward_text, derive_backward
    from ..ir.passes import plan_passes, plan_text
    from ..ir.printer import cascade_text

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
        print("backward:", file=out)
        try:
            text = backward_text(cascade, derive_backward(cascade))
        except BackwardError as err:
            text = f"not derivable: {err.message}"
        print("  " + text.replace("\n", "\n  "), file=out)
        print(file=out)
    return 0


def _definitions(sf, name: str | None) -> list[str]:
    if name:
        return [name]
    attentions = [d.name for d in sf.module.defs if d.kind == "attention"]
    return attentions or sf.names


def _output_path(given: str | None, default: str) -> Path:
    """The file ``-o`` names (or ``default``), checked before any work: it is replaced by a rename,
    so it must be a regular file or absent (never a device, a directory or a link's target), in a
    directory that exists (none is created silently)."""
    if given is not None and not given.strip():
        raise ValueError("-o: an empty path; name the file to write")
    path = Path(given or default)
    if (path.exists() or path.is_symlink()) and not (path.is_file() and not path.is_symlink()):
        raise ValueError(f"-o {path}: exists and is not a regular file; choose another path")
    if not path.parent.is_dir():
        raise ValueError(f"-o {path}: directory {path.parent} does not exist; create it first")
    return path


def cmd_compile(spec: str, name: str | None, out_path: str | None, dtype: str, out) -> int:
    from ..codegen.standalone import standalone_source

    sf = _open(spec)
    target = name or sf.cascade().name
    cascade = sf.cascade(target)
    path = _output_path(out_path, f"{target}_kernel.py")
    text = standalone_source(cascade, dtype, module_hint=path.stem)
    from .cache import user_file_mode, write_atomic

    try:
        write_atomic(path, text, mode=user_file_mode(), parents=False)
    except OSError as err:  # e.g. /proc/self/x.py: the temporary file beside it cannot be made
        raise ValueError(f"-o {path}: cannot write it ({err.strerror or err})") from None
    print(f"wrote {path} ({cascade.name}, {dtype}, {len(text.splitlines())} lines; needs torch and triton only)",
          file=out)
    return 0


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    raise ValueError(f"--param value {text!r} is not a number or a bool")


def _parse_params(items: list[str] | None) -> dict:
    """``--param name=value`` options as a dict of scalars."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--param takes name=value, got {item!r}")
        key, value = (x.strip() for x in item.split("=", 1))
        if not key.isidentifier():
            raise ValueError(f"--param takes name=value with a parameter name before `=`, got {item!r}")
        if key in params:
            raise ValueError(f"--param {key} is given twice ({params[key]!r} and {value}); give it once")
        params[key] = _parse_value(value)
    return params


def _shown(text: str, limit: int = 40) -> str:
    """An argument as an error message quotes it: a 10,000-digit one is cut."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def _positive(text: str) -> int:
    """argparse type: an integer ≥ 1 (sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


MAX_EXAMPLES = 10_000  # drawn problems take about a second each on the CPU


def _examples(text: str) -> int:
    """argparse type: a number of drawn problems, 1..MAX_EXAMPLES."""
    value = _positive(text)
    if value > MAX_EXAMPLES:
        raise argparse.ArgumentTypeError(f"at most {MAX_EXAMPLES} (about a second each), got {_shown(str(value))}")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed torch.manual_seed takes, [-2**63, 2**64 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer") from None
    if not -2**63 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [-2**63, 2**64 - 1] (a 64-bit seed), got {_shown(str(value))}")
    return value


def _device(text: str) -> str:
    """argparse type: a torch device this machine has."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda: this machine has no CUDA device (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: attnc runs on cpu and cuda")
    return text


def cmd_check(args, out) -> int:
    from .check import DTYPES, Shape, check
    from .compiler import Attention

    sf = _open(args.spec)
    params = _parse_params(args.param)
    shape = Shape(args.batch, args.heads, args.kv_heads or args.heads, args.nq or 37, args.nkv or args.nq or 37,
                  args.head_dim, args.head_dim_v)
    dtypes = list(DTYPES.values()) if args.dtype == "all" else [DTYPES[args.dtype]]
    requested = list(dict.fromkeys(args.property or ["reference"]))
    if args.property:
        if not args.examples:
            raise ValueError("--property needs --examples N (properties are tested on drawn problems)")
        from ..testing import PROPERTIES

        unknown = [x for x in requested if x not in (*PROPERTIES, "all")]
        if unknown:
            raise ValueError(f"--property: unknown property {unknown[0]!r}; choose from {', '.join(PROPERTIES)}, all")
    failed = 0
    if args.examples:  # the kit draws shapes and dtypes itself and runs on the CPU interpreter
        print(f"checking {sf.path}: {args.examples} drawn problems (shapes, dtypes, parameters without a default; "
              f"--param fixes one), seed {args.seed}, device cpu", file=out)
    else:
        print(f"checking {sf.path}: B={shape.batch} Hq={shape.heads} Hkv={shape.kv_heads} Nq={shape.n_q} "
              f"Nkv={shape.n_kv} D={shape.head_dim} Dv={shape.head_dim_v or shape.head_dim}, seed {args.seed}, "
              f"device {args.device}", file=out)
    for target in _definitions(sf, args.name):
        attn = Attention(sf.cascade(target), sf.path)
        if args.examples:  # property-test with attnc.testing: drawn shapes and parameters, shrunk failures
            from .. import testing

            names = testing.PROPERTIES if "all" in requested else requested
            run = []
            for prop in names:  # a property the definition does not promise is skipped, with the reason
                reason = testing.why_not_applicable(attn, prop)
                if reason is None:
                    run.append(prop)
                else:
                    print(f"{target:24s} {prop}: SKIP ({reason})", file=out)
            if not run:
                continue
            shown = "" if run == ["reference"] else f"  [{', '.join(run)}]"
            try:
                testing.check(attn, examples=args.examples, seed=args.seed, properties=run, dtypes=tuple(dtypes),
                              params=params or None)
                print(f"{target:24s} {args.examples} drawn problems  PASS{shown}", file=out)
            except AssertionError as err:
                print(f"{target:24s} FAIL\n{err}", file=out)
                failed += 1
            continue
        fitted, chosen = shape, params
        if attn.cascade.grid is not None and args.nkv in (None, args.nq):
            fitted, chosen = _fit_grid(attn, shape, params, explicit=args.nq is not None, out=out)
        if attn.cascade.params:
            try:
                picked = {p: x for p, x in chosen.items() if p not in params}
                print(f"{target}: {_said_params(attn, fitted, params, picked)}", file=out)
            except (TypeError, ValueError):  # a bad --param: the check itself reports it
                pass
        for dtype in dtypes:
            result = check(attn, dtype, fitted, args.seed, chosen, args.device)
            print(result.line(), file=out)
            failed += not result.passed
    print("PASS" if not failed else f"FAIL ({failed} failed)", file=out)
    return 1 if failed else 0


def _fit_grid(attn, shape, params: dict, *, explicit: bool, out):
    """A grid variant's check shape: its tokens must form the whole grid (``runtime/layout.py``),
    so the length (unless ``--nq`` was given: then only it) and the grid's int parameters without
    a value are chosen to make it whole, nearest the default length first — and, among the first
    few that fit, one whose mask keeps some pairs but not all (a window as wide as the grid would
    check full attention). Said in the output; when nothing fits, the shape stays and the check
    reports the grid's own error."""
    import dataclasses

    import torch

    from .check import random_params
    from .layout import fit_grid, grid_params
    from .reference import reference_keep

    c = attn.cascade
    free = [p for p in grid_params(c) if p not in params and c.param(p).default is None]
    lengths = [shape.n_q] if explicit else sorted(range(max(1, shape.n_q - 16), shape.n_q + 17),
                                                  key=lambda x: (abs(x - shape.n_q), x))
    options = fit_grid(c, lengths, params, free)
    if not options:
        return shape, params

    def masks_some(count: int, values: dict) -> bool:
        x = torch.zeros(1, 1, count, 1)
        bound = random_params(attn, x, x, x, {**params, **values}, torch.Generator().manual_seed(0))
        keep = reference_keep(c, x, x, x, **bound)
        return bool(keep.any()) and not bool(keep.all())
    count, values = next((o for o in options[:32] if not c.has_mask or masks_some(*o)), options[0])
    if count == shape.n_q and not values:
        return shape, params
    said = ", ".join([f"Nq = Nkv = {count}", *(f"{k} = {v}" for k, v in values.items())])
    print(f"{c.name}: a grid variant, whose sizes must multiply to the token count: {said}", file=out)
    return dataclasses.replace(shape, n_q=count, n_kv=count), {**params, **values}


def _said_params(attn, shape, given: dict, chosen: dict) -> str:
    """The parameter values a check runs with: given, chosen for a grid, defaults (evaluated for
    the shape), drawn (scalars by check's rule, tensors by their shapes)."""
    import torch

    from ..ir.evaluate import eval_size_expr
    from .check import random_params
    from .validate import sizes_of

    q = torch.zeros(shape.batch, shape.heads, shape.n_q, 1)
    k = torch.zeros(shape.batch, shape.kv_heads, shape.n_kv, 1)
    bound = random_params(attn, q, k, k, {**given, **chosen}, torch.Generator().manual_seed(0))
    shown, scalars = [], dict(bound)
    for p in attn.cascade.params:
        if p.name in bound:
            x = bound[p.name]
            how = "given" if p.name in given else "chosen" if p.name in chosen else "drawn"
        elif p.default is not None:
            x = scalars[p.name] = eval_size_expr(p.default, sizes_of(q, k, k, None), scalars)
            how = "default"
        else:  # an @attnc.jit variant's captured tensor: bound by the variant itself
            continue
        shown.append(f"{p.name} = {x:.6g} ({how})" if isinstance(x, float) else
                     f"{p.name} = {x} ({how})" if not isinstance(x, torch.Tensor) else
                     f"{p.name}: drawn {p.elem} tensor {list(x.shape)}")
    return ", ".join(shown)


def cmd_show(args, out) -> int:
    from . import show
    from .compiler import Attention

    # Every mistake on the command line is caught here, before the interpreter runs, and named
    # by its option; a spec file's own errors keep their located SpecError (exit 1).
    for flag, value in (("--nq", args.nq), ("--nkv", args.nkv)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--block-m", args.block_m), ("--block-n", args.block_n)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{flag} must be a power of two, got {value}")
    if args.pixels is not None and not 1 <= args.pixels <= 64:
        raise ValueError(f"--pixels must be in 1..64, got {args.pixels}")
    n_q, n_kv = args.nq, args.nkv or args.nq
    if n_q * n_kv > show.MAX_PAIRS:
        raise ValueError(f"--nq {n_q} × --nkv {n_kv} pairs: the picture evaluates every pair; draw at most "
                         f"{show.MAX_PAIRS:,} (e.g. --nq 8192)")
    params = _parse_params(args.param)
    try:
        show.require_pillow()
    except show.PillowMissing as err:
        raise ValueError(str(err)) from None
    try:
        sf = _open(args.spec)
    except SpecError as err:
        if err.span is not None:
            raise
        raise ValueError(f"SPEC {args.spec!r}: {err.message}") from None
    try:
        cascade = sf.cascade(args.name)
    except KeyError as err:
        raise ValueError(f"NAME: {err.args[0]}") from None
    attn = Attention(cascade, sf.path)
    try:
        show.mask_params(attn, n_q, n_kv, params, draw_missing=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--param: {err}") from None
    output = _output_path(args.output, f"{attn.name}.png")
    try:
        result = show.render_mask(attn, n_q, n_kv, args.block_m, args.block_n, output,
                                  pixels=args.pixels, visits=not args.no_visits, draw_missing=True, **params)
    except OSError as err:  # the only file it touches is the picture
        raise ValueError(f"-o {output}: cannot write it ({err.strerror or err})") from None
    missed = result.missed or 0
    print(result.summary() + (" — needed tiles skipped: a kernel bug" if missed else ""), file=out)
    return 1 if missed else 0


def cmd_demo(out) -> int:
    import torch

    from ..ir.passes import plan_passes, plan_text
    from .check import Shape, check
    from .compiler import load

    name, params = "sliding_window", {"window": 24}
    attn = load(name)
    plan = plan_passes(attn.cascade)
    print(f"attnc demo — library variant `{name}`: {formula_line(LIBRARY_DIR / f'{name}.attn')}", file=out)
    print("plan: " + plan_text(attn.cascade, plan).splitlines()[0], file=out)
    shape = Shape(batch=2, heads=4, kv_heads=2, n_q=100, n_kv=100, head_dim=64)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    how = "compiled Triton kernel" if device == "cuda" else "Triton's interpreter, the same kernel source"
    print(f"running on {device} ({how}): B=2, Hq=4, Hkv=2 (GQA), N=100, D=64, window=24", file=out)
    worst = 0
    for dtype in (torch.float16, torch.float32):
        result = check(attn, dtype, shape, seed=0, params=params, device=device)
        print("  " + result.line(), file=out)
        worst += not result.passed
    print(f"generated kernel: {attn.kernel_path(torch.float16, device)}", file=out)
    print(f"a standalone copy: attnc compile {name} -o {name}_kernel.py", file=out)
    print(f"see also: attnc explain {name}; attnc check {name}; attnc list", file=out)
    return 1 if worst else 0


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is an exception ``main`` reports in one line (not usage text
    and a SystemExit); ``--help`` still prints and exits."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("exit_on_error", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="attnc", description="a compiler for attention variants")
    sub = parser.add_subparsers(dest="command", required=True)
    li = sub.add_parser("list", help="list the library variants with their math")
    li.add_argument("--names", action="store_true", help="the names alone, one per line (for scripts)")
    ex = sub.add_parser("explain", help="show a spec's definition, cascade and pass plan")
    ex.add_argument("spec", help="a spec file, or the name of a library variant")
    ex.add_argument("name", nargs="?", help="one definition of the file (default: all)")
    co = sub.add_parser("compile", help="write a standalone Triton kernel file with a launcher")
    co.add_argument("spec", help="a spec file, or the name of a library variant")
    co.add_argument("name", nargs="?", help="the definition to compile (default: the file's attention)")
    co.add_argument("-o", "--output", help="output file (default: NAME_kernel.py)")
    co.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ch = sub.add_parser("check", help="run a kernel on random inputs against the float64 reference")
    ch.add_argument("spec", help="a spec file, or the name of a library variant")
    ch.add_argument("name", nargs="?", help="one definition (default: the attentions, else every definition)")
    ch.add_argument("--dtype", default="all", choices=["all", "float32", "float16", "bfloat16"])
    ch.add_argument("--batch", type=_positive, default=2)
    ch.add_argument("--heads", type=_positive, default=4)
    ch.add_argument("--kv-heads", type=_positive, default=2)
    ch.add_argument("--nq", type=_positive, default=None,
                    help="default: 37 (for a grid variant, the nearest length its grid divides)")
    ch.add_argument("--nkv", type=_positive, default=None, help="default: --nq")
    ch.add_argument("--head-dim", type=_positive, default=32)
    ch.add_argument("--head-dim-v", type=_positive, default=None, help="default: --head-dim")
    ch.add_argument("--seed", type=_seed, default=0)
    ch.add_argument("--examples", type=_examples, default=None,
                    help="property-test on N drawn problems (attnc.testing) instead of one fixed shape")
    ch.add_argument("--property", action="append", metavar="NAME",  # checked in cmd_check: attnc.testing needs hypothesis
                    help="with --examples: a property to test (repeatable): reference (default), batch_split, "
                         "head_permutation, masked_keys, empty_rows, gradients, decode, or all (those that apply); see attnc.testing")
    ch.add_argument("--device", type=_device, default="cpu")
    ch.add_argument("--param", action="append", metavar="NAME=VALUE", help="a scalar parameter (repeatable)")
    sh = sub.add_parser("show", help="draw a mask, its tile classes and the kernel's tile visits as a PNG")
    sh.add_argument("spec", help="a spec file, or the name of a library variant")
    sh.add_argument("name", nargs="?", help="the definition to draw (default: the file's attention)")
    sh.add_argument("--nq", type=_positive, default=256)
    sh.add_argument("--nkv", type=_positive, default=None, help="default: --nq")
    sh.add_argument("--block-m", type=_positive, default=64, help="query tile size, a power of two")
    sh.add_argument("--block-n", type=_positive, default=64, help="key tile size, a power of two")
    sh.add_argument("--param", action="append", metavar="NAME=VALUE",
                    help="a scalar parameter (repeatable); others take their defaults or are drawn like attnc check")
    sh.add_argument("-o", "--output", help="output PNG (default: NAME.png)")
    sh.add_argument("--pixels", type=_positive, default=None, help="pixels per pair (default: fit in ~1024 px)")
    sh.add_argument("--no-visits", action="store_true",
                    help="do not run the kernel under the interpreter to count the tiles it visits (faster)")
    sub.add_parser("demo", help="compile, run and check a library variant")
    try:
        args = parser.parse_args(argv)
    except (_UsageError, argparse.ArgumentError) as err:  # a bad option: one line, like every other error
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            return cmd_list(sys.stdout, args.names)
        if args.command == "compile":
            return cmd_compile(args.spec, args.name, args.output, args.dtype, sys.stdout)
        if args.command == "check":
            return cmd_check(args, sys.stdout)
        if args.command == "show":
            return cmd_show(args, sys.stdout)
        if args.command == "demo":
            return cmd_demo(sys.stdout)
        return cmd_explain(args.spec, args.name, sys.stdout)
    except SpecError as err:
        print(str(err), file=sys.stderr)
        return 1
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `attnc list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
