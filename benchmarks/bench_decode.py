"""Decode benchmarks (``attn.decode``); writes sections of ``docs/performance.md``.

    python3 benchmarks/bench_decode.py --cpu           # pages read / pages needed, any machine
    python3 benchmarks/bench_decode.py [--budget S]    # timings on CUDA
    python3 benchmarks/bench_decode.py --dry-run-cpu   # the CUDA code path at tiny sizes (interpreter)

``--cpu`` runs the decode kernel under Triton's interpreter with key tiles of one page and
counts the pages it reads (``attnc.testing.tiles.count_pages``: keys are tagged with their
positions) against the pages holding a key the mask keeps — section ``decode-pages``.

On CUDA: one decoding step (1 new token per sequence, GQA 32:4 heads, D = 128, bf16) for batch
1–64 and caches of 1k–128k tokens, paged (pages of 16 and 128) and contiguous, timed with
``triton.testing.do_bench`` (median) against ``torch.compile(flex_attention)`` over the
contiguous cache and, where installed, ``flash_attn_with_kvcache``. A step must read every
kept key and value once: bytes = Σ_rows Hkv · L · (D + Dv) · 2, the floor the split-KV loop is
judged by. The table gives GB/s achieved and their fraction of the device's copy bandwidth
(measured here with a device-to-device copy) — section ``decode``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_forward import DEFAULT_OUT, cpu_name, fmt_ms, header, log, write_section  # noqa: E402

PAGE_CASES = (  # (variant, params, cache length, page size, new tokens, query heads per kv head)
    ("sliding_window", {"window": 256}, 4096, 16, 1, 1),
    ("sliding_window", {"window": 256}, 4096, 16, 4, 8),
    ("sliding_window", {"window": 1000}, 4096, 64, 1, 8),
    ("sink_window", {"sinks": 4, "window": 256}, 4096, 16, 1, 8),
    ("chunked", {"chunk": 512}, 4000, 16, 1, 1),
    ("causal", {}, 1024, 16, 1, 8),
)


def bench_pages(args) -> list[str]:
    import attnc
    from attnc.testing.tiles import count_pages

    rows = ["| variant | cache | page | new tokens | q heads / kv head | pages read | pages needed | missed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, params, length, page, n_new, group in PAGE_CASES:
        c = count_pages(attnc.load(name), length, page, n_new=n_new, group=group, **params)
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        rows.append(f"| {name}({shown}) | {length} | {page} | {n_new} | {group} | {c.visited:.0f} | "
                    f"{c.needed_count} | {c.missed} |")
        log(rows[-1])
    intro = [f"- device: {cpu_name()} (Triton's interpreter; a count, not a timing)",
             "- command: `python3 benchmarks/bench_decode.py --cpu`", "",
             "The pages one `attn.decode` call reads (key tiles of one page; every key tagged with its "
             "position, so a page is named by its data) against the pages that hold a key the mask keeps for "
             "the new rows, counted per (query tile, page): 4 new tokens × 8 heads are two tiles of 16 packed rows. With key tiles larger than a page (a GPU's 64 or 128 keys over pages of 16), "
             "a window's boundary tiles also read the pages beside it: up to BLOCK_N / page − 1 more at "
             "each end.", ""]
    return intro + rows


def device_bandwidth(torch) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    from triton.testing import do_bench

    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=5, rep=50, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def bench_cuda(args) -> list[str]:
    import torch

    import attnc
    from attnc.runtime.decode import append

    dry = args.dry_run_cpu
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        def bench(fn):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)
        bandwidth, flex, dtype = float("nan"), None, torch.float32
        Hq, Hkv, D = 4, 1, 16
        batches, lengths, pages = (1, 2), (64,), (16,)
    else:
        from torch.nn.attention.flex_attention import flex_attention
        from triton.testing import do_bench

        def bench(fn):
            return do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")
        bandwidth = device_bandwidth(torch)
        flex, dtype = torch.compile(flex_attention, dynamic=False), torch.bfloat16
        Hq, Hkv, D = 32, 4, 128
        batches, lengths, pages = (1, 8, 64), (1024, 8192, 32768, 131072), (16, 128)
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        flash_attn_with_kvcache = None
    attn = attnc.load("causal")
    start = time.perf_counter()
    rows = ["| batch | cache | layout | attnc ms | GB/s | of copy bw | flex ms | flash_attn ms |",
            "|---:|---:|---|---:|---:|---:|---:|---:|"]
    skipped = []
    for L in lengths:
        for B in batches:
            if B * L * Hkv * D * 2 * 2 * 2 > (8 << 30):  # K and V (and their paged copy) over 16 GiB
                skipped.append(f"B={B} L={L} (memory)")
                continue
            if time.perf_counter() - start > args.budget:
                skipped.append(f"B={B} L={L} (budget)")
                continue
            g = torch.Generator(device=device).manual_seed(0)
            q = torch.randn(B, Hq, 1, D, generator=g, device=device, dtype=dtype)
            k = torch.randn(B, Hkv, L, D, generator=g, device=device, dtype=dtype)
            v = torch.randn(B, Hkv, L, D, generator=g, device=device, dtype=dtype)
            lens = torch.full((B,), L, dtype=torch.int32, device=device)
            data = B * Hkv * L * 2 * D * q.element_size()
            flex_ms = flash_ms = float("nan")
            with torch.no_grad():
                if flex is not None:
                    flex_ms = bench(lambda: flex(q, k, v, enable_gqa=True))
                if flash_attn_with_kvcache is not None and not dry:
                    kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
                    flash_ms = bench(lambda: flash_attn_with_kvcache(q.transpose(1, 2), kt, vt, cache_seqlens=lens,
                                                                     causal=True))
                for layout in ("contiguous", *(f"paged {p}" for p in pages)):
                    if layout == "contiguous":
                        call = (lambda: attn.decode(q, k, v, lens))  # noqa: E731
                    else:
                        page = int(layout.split()[1])
                        per = -(-L // page)
                        table = torch.randperm(B * per, device=device).view(B, per).to(torch.int32)
                        kp = torch.empty(B * per, page, Hkv, D, device=device, dtype=dtype)
                        vp = torch.empty_like(kp)
                        append(kp, vp, table, page, "NHD", k, v, torch.zeros_like(lens))  # fill the pages
                        call = (lambda kp=kp, vp=vp, table=table: attn.decode(q, kp, vp, lens, block_table=table))
                    ms = bench(call)
                    rate = data / (ms * 1e-3)
                    rows.append(f"| {B} | {L} | {layout} | {fmt_ms(ms * 1e-3)} | {rate / 1e9:.0f} | "
                                f"{rate / bandwidth:.0%} | {fmt_ms(flex_ms * 1e-3)} | {fmt_ms(flash_ms * 1e-3)} |")
                    log(rows[-1])
    name = "CPU (dry run: interpreter, tiny sizes)" if dry else torch.cuda.get_device_name()
    intro = header(name, "python3 benchmarks/bench_decode.py") + [
        f"- one decoding step: 1 new token, {Hq} query heads over {Hkv} kv heads, D = {D}, {dtype}; causal; "
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (device-to-device copy)",
        "- bytes a step must read: B · Hkv · L · 2D · 2 (every key and value once); flex: "
        "`torch.compile(flex_attention)` on the contiguous cache; flash_attn: `flash_attn_with_kvcache` where installed",
        ""]
    return intro + rows + ([f"", f"Skipped: {', '.join(skipped)}"] if skipped else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cpu", action="store_true", help="pages read / pages needed (interpreter)")
    ap.add_argument("--dry-run-cpu", action="store_true", help="the CUDA path at tiny sizes on the CPU")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds after which no new case starts")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rep", type=int, default=40)
    args = ap.parse_args(argv)
    if args.cpu:
        write_section(args.out, "decode-pages", "Decode: pages read / pages needed", bench_pages(args))
        return 0
    if not args.dry_run_cpu:
        import torch

        if not torch.cuda.is_available():
            print("bench_decode.py: no CUDA device (use --cpu or --dry-run-cpu)", file=sys.stderr)
            return 2
    write_section(args.out, "decode", "GPU decode throughput", bench_cuda(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
