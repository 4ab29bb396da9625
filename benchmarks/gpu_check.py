"""GPU correctness check of the compiled kernels: the first thing ``benchmarks/gpu.sh`` runs.

    python3 benchmarks/gpu_check.py [--workers 8] [--budget 200] [--variants causal,softcap] [--dry-run]

Every library variant, forward (out and lse) and backward (dq, dk, dv and float tensor-parameter
gradients) against the float64 reference run on the same GPU, outputs poisoned with NaN first,
through the testing kit's properties (``attnc.testing``: ``reference`` and ``gradients``, with
the dtype bounds documented there):

* the fast path: fp16 at D = 64 and bf16 at D = 128, N = 1000 (ragged against every tile size;
  grid variants on their own grids of 1024 tokens), GQA (4 query heads on 2 kv heads);
* the general path: fp16 at D = 80 in the ``bshd`` layout (aligned, head dim padded to 128) and
  bf16 at D = 64 in the ``padded`` layout (strides no multiple of 16 bytes);
* long sequences: full, causal, sliding_window and document at N = 8192, fp16 D = 128 and bf16
  D = 64.

Cases run on ``--workers`` processes (a CUDA context each, all on one GPU) so that Triton's
compiles overlap; ``ATTNC_AUTOTUNE=0`` (the first launch config, no tuning compiles). Cases not
started within ``--budget`` seconds are reported as skipped, never as passed. The last lines are a
table; the exit status is 1 when a case failed. ``--dry-run`` runs the same code on the CPU
(Triton's interpreter) at tiny sizes: a check of the script, not of the GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing attnc
    sys.path.insert(0, str(ROOT))

LONG = ("full", "causal", "sliding_window", "document")
# Scalar parameters per variant (the others keep their defaults); grid variants need N = their grid.
PARAMS = {
    "sliding_window": {"window": 256}, "chunked": {"chunk": 256}, "prefix_lm": {"prefix": 256},
    "sink_window": {"sinks": 4, "window": 256}, "dilated_window": {"window": 64, "dilation": 2},
    "natten1d": {"kernel": 29, "dilation": 2},
    "natten2d": {"width": 32, "kernel_h": 7, "kernel_w": 7},
    "natten3d": {"height": 8, "width": 8, "kernel_d": 3, "kernel_h": 5, "kernel_w": 5},
}
DRY_PARAMS = {
    "sliding_window": {"window": 5}, "chunked": {"chunk": 4}, "prefix_lm": {"prefix": 3},
    "sink_window": {"sinks": 2, "window": 4}, "dilated_window": {"window": 3, "dilation": 2},
    "natten1d": {"kernel": 5, "dilation": 2},
    "natten2d": {"width": 6, "kernel_h": 3, "kernel_w": 3},
    "natten3d": {"height": 2, "width": 3, "kernel_d": 1, "kernel_h": 1, "kernel_w": 3},
}


@dataclass(frozen=True)
class Case:
    variant: str
    dtype: str
    D: int
    N: int
    layout: str
    kind: str  # "fast" | "general" | "long"

    @property
    def label(self) -> str:
        return f"{self.variant} {self.dtype} D={self.D} N={self.N} {self.layout}"


def cases(variants, dry: bool) -> list[Case]:
    grid = lambda name, n: (36 if name == "natten2d" else 18 if name == "natten3d" else n) if dry else (  # noqa: E731
        1024 if name.startswith("natten") else n)
    out = []
    for name in variants:
        for dtype, D in (("float16", 64), ("bfloat16", 128)):
            out.append(Case(name, dtype, 16 if dry else D, grid(name, 37 if dry else 1000), "contiguous", "fast"))
        out.append(Case(name, "float16", 24 if dry else 80, grid(name, 21 if dry else 777), "bshd", "general"))
        out.append(Case(name, "bfloat16", 16 if dry else 64, grid(name, 19 if dry else 500), "padded", "general"))
    for name in (x for x in LONG if x in variants):
        for dtype, D in (("float16", 128), ("bfloat16", 64)):
            out.append(Case(name, dtype, 16 if dry else D, 70 if dry else 8192, "contiguous", "long"))
    return out


def run_case(case: Case, device: str, dry: bool) -> tuple[str, float, str]:
    """(status, seconds, message) of one case: "pass", "fail" or "error"."""
    import torch

    import attnc
    import attnc.testing as at
    from attnc.testing.kit import _tensor_specs

    t0 = time.perf_counter()
    attn = attnc.load(case.variant)
    attnc.Attention.POISON = True  # outputs start as NaN: an element no kernel wrote cannot pass
    dtype = getattr(torch, case.dtype)
    B, Hq, Hkv = (1, 2, 1) if dry else (1, 4, 2) if case.kind != "long" else (1, 2, 2)
    scalars = dict((DRY_PARAMS if dry else PARAMS).get(case.variant, {}))
    problem = at.Problem(B, Hq, Hkv, case.N, case.N, case.D, case.D, dtype, seed=zlib.crc32(case.label.encode()),
                         scalars=scalars, tensor_specs=_tensor_specs(attn, B, Hq, Hkv, case.N, case.N, case.D, case.D,
                                                                     scalars),
                         device=device, layout=case.layout)
    try:
        at.assert_matches_reference(attn, problem)
        if at.why_not_applicable(attn, "gradients") is None:
            at.assert_gradients(attn, problem)
        status, message = "pass", ""
    except AssertionError as err:
        status, message = "fail", str(err)
    except Exception as err:  # noqa: BLE001 - a crash is a result of the check, reported as such
        status, message = "error", "".join(traceback.format_exception_only(type(err), err)).strip()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return status, time.perf_counter() - t0, message


def worker(args: tuple) -> list[tuple]:
    """Run ``cases`` (one worker's share) in this process until ``deadline`` (wall clock)."""
    share, device, dry, deadline = args
    os.environ.setdefault("ATTNC_AUTOTUNE", "0")
    out = []
    for case in share:
        if time.time() > deadline:
            out.append((case, "skipped", 0.0, "the time budget ran out before this case started"))
            continue
        out.append((case, *run_case(case, device, dry)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", help="comma-separated library variants (default: all)")
    ap.add_argument("--workers", type=int, default=0, help="processes (default: 8 on CUDA, 1 in a dry run)")
    ap.add_argument("--budget", type=float, default=210.0, help="seconds after which no new case starts")
    ap.add_argument("--dry-run", action="store_true", help="the CPU (interpreter) at tiny sizes: checks the script")
    args = ap.parse_args(argv)
    import torch

    import attnc

    variants = args.variants.split(",") if args.variants else attnc.library.names()
    unknown = sorted(set(variants) - set(attnc.library.names()))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; see `python3 -m attnc list`")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: needs CUDA (or --dry-run to check the script on the CPU)", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    todo = cases(variants, args.dry_run)
    workers = args.workers or (1 if args.dry_run else 8)
    deadline = time.time() + args.budget
    shares = [todo[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    if workers == 1:
        results = worker((todo, device, args.dry_run, deadline))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = [r for part in pool.map(worker, [(s, device, args.dry_run, deadline) for s in shares])
                       for r in part]
    wall = time.perf_counter() - t0
    name = "CPU dry run (Triton's interpreter)" if args.dry_run else torch.cuda.get_device_name()
    for case, status, seconds, message in results:
        if status in ("fail", "error"):
            print(f"\n{status.upper()} {case.label} ({case.kind} path)\n{message}\n")
    counts = {s: sum(r[1] == s for r in results) for s in ("pass", "fail", "error", "skipped")}
    print(f"\n## GPU correctness on {name}: {len(results)} cases in {wall:.0f} s — "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print("| case | path | status | s |\n|---|---|---|---:|")
    for case, status, seconds, _ in sorted(results, key=lambda r: (r[1] == "pass", r[0].variant)):
        print(f"| {case.label} | {case.kind} | {status} | {seconds:.1f} |")
    return 1 if counts["fail"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
