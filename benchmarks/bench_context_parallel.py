"""Context-parallel benchmarks (``attnc.distributed``); writes sections of ``docs/performance.md``.

    python3 benchmarks/bench_context_parallel.py --cpu          # the ring's bytes and skipped shards, any machine
    python3 benchmarks/bench_context_parallel.py [--budget S]   # ring vs all-gather timings on ≥ 2 CUDA GPUs
    python3 benchmarks/bench_context_parallel.py --dry-run-cpu  # the GPU code path on 2 gloo ranks, tiny sizes

``--cpu`` — section ``cp-bytes``. For each variant, layout and world size, the ring's plan
(``attnc.distributed.schedule``, what every rank computes before any transfer) at N = 128k
tokens, B = 1, 8 kv heads, D = 128, bf16: the K/V bytes each rank sends forward against the
ring's minimum without skipping ((W − 1) shards per rank), and the shards each rank computes a
part over (of W). Then the plan is checked on real gloo ranks at a small size: every rank's
``attnc.distributed.stats()`` must report the bytes the plan says (the table's last column).

On CUDA (one process per GPU, NCCL): forward and forward + backward of ``exchange="ring"`` and
``"gather"`` for causal (zig-zag) and sliding-window (contiguous) attention, 32k–128k tokens,
timed with CUDA events (median of ``--rep`` after ``--warmup``), with each rank's peak memory —
section ``cp``. The group is all visible GPUs (at most 8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_forward import DEFAULT_OUT, cpu_name, header, log, write_section  # noqa: E402

# (variant, parameters as a function of N): masks whose shards a ring can skip, and two that skip none
CASES = (
    ("causal", lambda n: {}),
    ("sliding_window", lambda n: {"window": n // 16}),
    ("document", lambda n: {"doc": _docs(n, 6)}),
    ("chunked", lambda n: {"chunk": n // 4}),
    ("softmax", lambda n: {}),
    ("sigmoid", lambda n: {}),
)


def _docs(n: int, count: int):
    import torch

    return (torch.arange(n) * count // n).view(1, n)


def _sizes(n: int, world: int, layout: str) -> list[int]:
    from attnc.distributed import pieces

    return [sum(length for _, length in runs) for runs in pieces(n, world, layout)]


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}" if b >= 2**24 else f"{b / 2**20:.3g}"


def cpu_table(n_total: int, worlds=(2, 4, 8)) -> list[str]:
    import attnc
    from attnc.distributed import schedule

    rows = ["| variant | layout | W | max MiB sent / rank | ring minimum MiB / rank | total vs ring | shards computed / rank (of W) |",
            "|---|---|---|---|---|---|---|"]
    for name, params in CASES:
        attn = attnc.load(name)
        for layout in ("contiguous", "zigzag"):
            for world in worlds:
                plan = schedule(attn, _sizes(n_total, world, layout), layout, batch=1, heads=32, kv_heads=8,
                                head_dim=128, element_size=2, **params(n_total))
                sent = [plan.sent_bytes(r) for r in range(world)]
                ring = [plan.ring_bytes(r) for r in range(world)]
                done = [plan.computed(r) for r in range(world)]
                rows.append(f"| {name} | {layout} | {world} | {_mib(max(sent))} | {_mib(max(ring))} | "
                            f"{sum(sent) / sum(ring):.0%} | {min(done)}–{max(done)} |")
    return rows


# ---------------------------------------------------------------------------- real ranks


def _rank(rank, world, init, out_dir, args):
    import torch
    import torch.distributed as dist

    import attnc
    import attnc.distributed as ad

    cuda = args["cuda"]
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = getattr(torch, args["dtype"])
    results = []
    deadline = time.monotonic() + args["budget"]
    try:
        for name, layout, n_total in args["cases"]:
            if time.monotonic() > deadline:
                results.append({"skipped": [name, layout, n_total]})
                continue
            attn = attnc.load(name)
            params = dict(CASES)[name](n_total)
            params = {p: (x.to(device) if hasattr(x, "to") else x) for p, x in params.items()}
            B, Hq, Hkv, D = args["shape"]
            g = torch.Generator().manual_seed(0)
            q, k, v = (ad.shard(torch.randn(B, h, n_total, D, generator=g), rank, world, layout).to(device, dtype)
                       for h in (Hq, Hkv, Hkv))
            for exchange in ("ring", "gather"):
                row = {"variant": name, "layout": layout, "n": n_total, "exchange": exchange}
                for mode in ("fwd", "fwd+bwd"):
                    times = []
                    for it in range(args["warmup"] + args["rep"]):
                        ql, kl, vl = (t.detach().requires_grad_(mode != "fwd") for t in (q, k, v))
                        if cuda:
                            torch.cuda.synchronize()
                            torch.cuda.reset_peak_memory_stats()
                        dist.barrier()
                        start = time.perf_counter()
                        out = ad.attention(attn, ql, kl, vl, layout=layout, exchange=exchange, **params)
                        if mode != "fwd":
                            out.float().square().sum().backward()
                        if cuda:
                            torch.cuda.synchronize()
                        if it >= args["warmup"]:
                            times.append(time.perf_counter() - start)
                    row[mode] = statistics.median(times) * 1e3
                    row[f"{mode} peak MiB"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
                stats = ad.stats()
                row["sent"] = stats.get("sent_bytes")
                plan = ad.schedule(attn, _sizes(n_total, world, layout), layout, batch=B, heads=Hq, kv_heads=Hkv,
                                   head_dim=D, element_size=q.element_size(), **params)
                row["planned"] = plan.sent_bytes(rank) if exchange == "ring" else None
                results.append(row)
    except Exception as exc:  # reported by the parent
        results.append({"error": f"rank {rank}: {exc!r}"})
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def run_ranks(world: int, args: dict, timeout: float) -> list[list[dict]]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_rank, args=(world, f"{tmp}/init", tmp, args), nprocs=world, join=False,
                                 start_method="spawn")
        end = time.monotonic() + timeout
        while not ctx.join(timeout=5):
            if time.monotonic() > end:
                for p in ctx.processes:
                    p.kill()
                raise SystemExit(f"bench_context_parallel: {world} ranks did not finish in {timeout:.0f} s")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def timing_table(results: list[list[dict]]) -> tuple[list[str], list[str]]:
    """Rows of the slowest rank per case, and what was skipped or failed."""
    errors = [row["error"] for rows in results for row in rows if "error" in row]
    skipped = {tuple(row["skipped"]) for rows in results for row in rows if "skipped" in row}
    lines = ["| variant | layout | N | exchange | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) | K/V MiB sent (max rank) | = plan |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(results[0]):
        if "variant" not in row:
            continue
        same = [rows[i] for rows in results]
        peaks = [r["fwd+bwd peak MiB"] for r in same if r["fwd+bwd peak MiB"] is not None]
        sent = [r["sent"] for r in same]
        planned_ok = all(r["planned"] is None or r["sent"] == r["planned"] for r in same)
        lines.append(f"| {row['variant']} | {row['layout']} | {row['n']} | {row['exchange']} | "
                     f"{max(r['fwd'] for r in same):.2f} | {max(r['fwd+bwd'] for r in same):.2f} | "
                     f"{f'{max(peaks):.0f}' if peaks else '—'} | {'—' if sent[0] is None else _mib(max(sent))} | "
                     f"{'yes' if planned_ok else 'NO'} |")
    notes = [f"- error: {e}" for e in errors] + [f"- skipped (budget): {' '.join(map(str, s))}" for s in sorted(skipped)]
    return lines, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the ring's plan (bytes, skipped shards) and its check on gloo")
    ap.add_argument("--dry-run-cpu", action="store_true", help="the CUDA path on 2 gloo ranks at tiny sizes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds; cases not started in time are listed")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rep", type=int, default=10)
    args = ap.parse_args()
    import torch

    if args.cpu or args.dry_run_cpu:
        n_total = 4096 if args.dry_run_cpu else 131072
        lines = header(cpu_name(), "python3 benchmarks/bench_context_parallel.py --cpu") + [""]
        lines += [f"The ring's plan at N = {n_total} tokens (B 1, 32 query and 8 kv heads, D 128, bf16): K/V bytes each "
                  "rank sends forward (backward sends as many again, plus the fp32 dK/dV of the shards that "
                  "travel), against a ring that skips nothing, and the shards each rank computes a part over.", ""]
        lines += cpu_table(n_total, worlds=(2, 4) if args.dry_run_cpu else (2, 4, 8))
        t0 = time.monotonic()
        check = [(name, layout, 256) for name in ("causal", "sliding_window", "document") for layout in ("contiguous", "zigzag")]
        if args.dry_run_cpu:
            check = [("causal", "contiguous", 64), ("causal", "zigzag", 64)]
        results = run_ranks(2 if args.dry_run_cpu else 4, {"cuda": False, "dtype": "float32", "cases": check,
                                                             "shape": (1, 2, 1, 16), "warmup": 0, "rep": 1,
                                                             "budget": args.budget}, timeout=args.budget + 240)
        table, notes = timing_table(results)
        ok = all("yes" in line for line in table[2:]) and not notes
        lines += ["", f"Checked on {len(results)} gloo ranks ({check[0][2]} tokens, fp32, Triton's interpreter: the times say "
                  f"nothing of a GPU; {time.monotonic() - t0:.0f} s): every rank's `stats()['sent_bytes']` "
                  f"{'equals' if ok else 'DIFFERS FROM'} the plan.", "", *table, *notes]
        if args.dry_run_cpu:
            print("\n".join(lines))
            if not ok:
                raise SystemExit("bench_context_parallel: the bytes sent differ from the plan")
            return
        write_section(args.out, "cp-bytes", "Context parallelism: the ring's bytes and skipped shards (CPU)", lines)
        log(f"wrote section cp-bytes of {args.out}")
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        raise SystemExit(f"bench_context_parallel: timings need at least 2 CUDA GPUs, this machine has {gpus} "
                         "(--cpu gives the ring's plan on any machine)")
    world = min(gpus, 8)
    cases = [("causal", "zigzag", n) for n in (32768, 131072)] + [("sliding_window", "contiguous", n) for n in (32768, 131072)]
    results = run_ranks(world, {"cuda": True, "dtype": "bfloat16", "cases": cases, "shape": (1, 32, 8, 128),
                                "warmup": args.warmup, "rep": args.rep, "budget": args.budget}, timeout=args.budget + 600)
    table, notes = timing_table(results)
    name = torch.cuda.get_device_name(0)
    lines = header(f"{world} × {name}", f"python3 benchmarks/bench_context_parallel.py --budget {args.budget:.0f}")
    lines += ["", f"B 1, 32 query and 8 kv heads, D 128, bf16, NCCL over {world} GPUs; the slowest rank's median.", "",
              *table, *notes]
    write_section(args.out, "cp", f"Context parallelism: ring vs all-gather ({world} × {name})", lines)
    print("\n".join(table + notes))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
