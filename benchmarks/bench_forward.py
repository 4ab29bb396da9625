"""Forward-kernel benchmarks for the attnc library; writes ``docs/performance.md``.

    python3 benchmarks/bench_forward.py [--out docs/performance.md] [--variants causal,softcap]
                                        [--seqlens 1024,4096] [--dims 64,128] [--dtypes float16,bfloat16]
                                        [--budget SECONDS] [--no-latency] [--cpu]

With CUDA: every library variant is timed with ``triton.testing.do_bench`` (median) against
``torch.compile(flex_attention)`` (where a ``score_mod``/``mask_mod`` expresses the variant) and
``scaled_dot_product_attention`` (full and causal softmax), for N = 1k–16k, D = 64 and 128,
fp16 and bf16. Shapes follow the FlashAttention benchmarks: B·N = 16k tokens, H·D = 2048.

FLOP convention: a forward pass does two matmuls per kept query–key pair, so
FLOPs = 4 · B · H · D · (kept (q, kv) pairs). Unmasked attention keeps N² pairs
(4·B·H·N²·D), causal about half of them, a 256-key window about 256·N. The kept pairs are
counted exactly from the mask on the benchmark's own inputs. TFLOP/s use the median time;
"ratio" is attnc TFLOP/s over the baseline's (> 1: attnc is faster).

On any machine: compile latency (spec text → cascade → kernel source, cold and cached) per
variant (``--no-latency`` skips it). The ahead-of-time figures — registers, spills, and the
static performance model's cost of each kernel's main loop — come from
``python -m attnc.runtime.aot --perf --markdown docs/performance.md``.
``--budget SECONDS`` stops starting GPU cases after that long and lists the ones it skipped
(``benchmarks/gpu.sh`` runs this script so).

Each mode rewrites only its own section of the output file (between ``<!-- bench:... -->``
markers), so a CPU run keeps the GPU numbers of an earlier run and vice versa.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing attnc
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "docs" / "performance.md"
TOKENS = 16384  # B * N
MODEL_DIM = 2048  # H * D

# Library parameters used by the benchmark (window-like sizes as in production models).
WINDOW, CHUNK, PREFIX, SINKS, DILATION, NAT_WIDTH, NAT_KERNEL = 256, 256, 256, 4, 2, 64, 7


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- environment


def cpu_name() -> str:
    name = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        name = m.group(1).strip() if m else ""
    except OSError:
        pass
    if not name and Path("/proc/cpuinfo").exists():
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        name = m.group(1).strip() if m else ""
    return f"{name or platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(device: str, command: str) -> list[str]:
    import torch
    import triton

    import attnc

    load = f"; load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return [
        f"- device: {device}{load}",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- versions: attnc {attnc.__version__} (git {git_revision()}), torch {torch.__version__}, "
        f"triton {triton.__version__}, Python {platform.python_version()}",
        f"- command: `{command}`",
    ]


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


INTRO = """# Performance

See the top of this file in the repository for what each section holds and how it is made.
"""


def write_section(out: Path, key: str, title: str, lines: list[str]) -> None:
    """Replace (or append) the ``key`` section of ``out``."""
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    block = "\n".join([begin, f"## {title}", "", *lines, end])
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if not text.strip():
        text = INTRO
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- variants on CUDA


def variant_inputs(name: str, B: int, H: int, N: int, device) -> dict:
    """The library parameters the benchmark passes to attnc for variant ``name``."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    if name == "sliding_window":
        return {"window": WINDOW}
    if name == "chunked":
        return {"chunk": CHUNK}
    if name == "prefix_lm":
        return {"prefix": PREFIX}
    if name == "sink_window":
        return {"sinks": SINKS, "window": WINDOW}
    if name == "dilated_window":
        return {"window": WINDOW // DILATION, "dilation": DILATION}
    if name == "natten2d":
        return {"width": NAT_WIDTH, "kernel_h": NAT_KERNEL, "kernel_w": NAT_KERNEL}
    if name == "natten1d":
        return {"kernel": 4 * NAT_KERNEL + 1, "dilation": DILATION}
    if name == "natten3d":  # 16 × 16 frames
        return {"height": 16, "width": 16, "kernel_d": 3, "kernel_h": NAT_KERNEL, "kernel_w": NAT_KERNEL}
    if name == "document":  # documents of random length, about N/4 each
        cuts = torch.sort(torch.randint(1, N, (B, 3), generator=g), dim=1).values
        doc = (torch.arange(N)[None, :, None] >= cuts[:, None, :]).sum(-1).to(torch.int32)
        return {"doc": doc.to(device)}
    if name == "relative_bias":
        return {"table": (0.1 * torch.randn(H, 2 * N - 1, generator=g)).to(device)}
    if name == "softmax_sink":
        return {"sink": torch.randn(H, generator=g).to(device)}
    return {}


def flex_block_mask(name: str, mask_mod, B: int, N: int, device):
    """FlexAttention's BlockMask for ``mask_mod`` (None without one): per batch only for the
    document mask, whose ids differ per batch row."""
    from torch.nn.attention.flex_attention import create_block_mask

    if mask_mod is None:
        return None
    return create_block_mask(mask_mod, B if name == "document" else None, None, N, N, device=device)


def flex_mods(name: str, params: dict, H: int, N: int):
    """(score_mod, mask_mod) expressing ``name`` for flex_attention (Nq == Nkv), or None."""
    import torch

    def causal(b, h, q, kv):
        return kv <= q

    if name in ("softmax", "full"):
        return None, None
    if name == "causal":
        return None, causal
    if name == "sliding_window":
        w = params["window"]
        return None, lambda b, h, q, kv: (kv <= q) & (q - kv < w)
    if name == "chunked":
        c = params["chunk"]
        return None, lambda b, h, q, kv: (q // c) == (kv // c)
    if name == "prefix_lm":
        p = params["prefix"]
        return None, lambda b, h, q, kv: (kv < p) | (kv <= q)
    if name == "sink_window":
        s, w = params["sinks"], params["window"]
        return None, lambda b, h, q, kv: (kv <= q) & ((kv < s) | (q - kv < w))
    if name == "dilated_window":
        w, dl = params["window"], params["dilation"]

        def dilated(b, h, q, kv):
            d = q - kv
            return (torch.abs(d) <= w * dl) & (d % dl == 0)
        return None, dilated
    if name == "natten2d":
        width = params["width"]
        kh, kw = params.get("kernel_h", 7), params.get("kernel_w", 7)
        dh, dw = params.get("dilation_h", 1), params.get("dilation_w", 1)
        if params.get("causal_h") or params.get("causal_w"):
            raise NotImplementedError("the flex baseline of natten2d covers non-causal axes only")
        height = N // width

        def natten(b, h, q, kv):
            qr, qc, kr, kc = q // width, q % width, kv // width, kv % width
            rows_g = (height - qr % dh + dh - 1) // dh
            cols_g = (width - qc % dw + dw - 1) // dw
            r0 = torch.minimum(torch.clamp(qr // dh - kh // 2, min=0), rows_g - kh)
            c0 = torch.minimum(torch.clamp(qc // dw - kw // 2, min=0), cols_g - kw)
            same = (kr % dh == qr % dh) & (kc % dw == qc % dw)
            return (same & (r0 <= kr // dh) & (kr // dh < r0 + kh)
                    & (c0 <= kc // dw) & (kc // dw < c0 + kw))
        return None, natten
    if name in ("natten1d", "natten3d"):
        if any(params.get(f"causal{x}") for x in ("", "_d", "_h", "_w")):
            raise NotImplementedError(f"the flex baseline of {name} covers non-causal axes only")
        if name == "natten1d":
            axes = [(1, N, params.get("kernel", 7), params.get("dilation", 1))]
        else:
            hh, ww = params["height"], params["width"]
            axes = [(hh * ww, N // (hh * ww), params.get("kernel_d", 3), params.get("dilation_d", 1)),
                    (ww, hh, params.get("kernel_h", 3), params.get("dilation_h", 1)),
                    (1, ww, params.get("kernel_w", 3), params.get("dilation_w", 1))]

        def natten_nd(b, h, q, kv):
            ok = None
            for stride, length, kk, dd in axes:
                x, y = q // stride % length, kv // stride % length
                size = (length - x % dd + dd - 1) // dd
                start = torch.minimum(torch.clamp(x // dd - kk // 2, min=0), size - kk)
                axis = (y % dd == x % dd) & (start <= y // dd) & (y // dd < start + kk)
                ok = axis if ok is None else ok & axis
            return ok
        return None, natten_nd
    if name == "document":
        doc = params["doc"]
        return None, lambda b, h, q, kv: doc[b, q] == doc[b, kv]
    if name == "alibi":
        def alibi(score, b, h, q, kv):
            return score + torch.exp2(-8.0 * (h + 1) / H) * (kv - q)
        return alibi, None
    if name == "relative_bias":
        table = params["table"]
        return (lambda score, b, h, q, kv: score + table[h, kv - q + N - 1]), None
    if name == "softcap":
        def softcap(score, b, h, q, kv):
            return 50.0 * torch.tanh(score / 50.0)
        return softcap, None
    return "inexpressible"  # sigmoid, relu, none, clipped softmax, softmax with a sink / off by one


def kept_pairs(mask_mod, B: int, N: int, device) -> int:
    """How many (q, kv) pairs a mask keeps, summed over the batch (heads do not change it here)."""
    import torch

    if mask_mod is None:
        return B * N * N
    total = 0
    kv = torch.arange(N, device=device)[None, :]
    rows = max(1, (1 << 26) // N)
    for b in range(B):
        bt = torch.tensor(b, device=device)
        for start in range(0, N, rows):
            q = torch.arange(start, min(N, start + rows), device=device)[:, None]
            total += int(mask_mod(bt, torch.tensor(0, device=device), q, kv).sum())
    return total


def cases(args, device, tokens: int, model_dim: int, tensors: int, tag: str):
    """The benchmark's cases in table order: (dtype name, D, N, B, H, variant, its Attention,
    ``tensors`` random [B, H, N, D] tensors on ``device``), with B·N = tokens and H·D = model_dim."""
    import torch

    import attnc

    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    for dname in args.dtypes:
        for D in args.dims:
            H = max(1, model_dim // D)
            for name in args.variants:
                attn = attnc.load(name)
                for N in args.seqlens:
                    B = max(1, tokens // N)
                    log(f"[{tag}] {name} {dname} D={D} N={N} B={B} H={H}")
                    g = torch.Generator(device="cpu").manual_seed(N + D)
                    yield dname, D, N, B, H, name, attn, tuple(
                        torch.randn(B, H, N, D, generator=g).to(device=device, dtype=dtypes[dname])
                        for _ in range(tensors))


def timing(args, repeats: int = 3):
    """(device, flex_attention, tokens, model dim, bench(fn) → ms) for a run: on CUDA compiled flex
    and ``do_bench``'s median; with ``--dry-run-cpu`` (this code path without a GPU) eager flex,
    the interpreter and the wall clock's median of ``repeats`` calls."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    if args.dry_run_cpu:
        def bench(fn):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)
        return torch.device("cpu"), flex_attention, args.dry_run_cpu, 64, bench
    from triton.testing import do_bench

    bench = lambda fn: do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")  # noqa: E731
    return torch.device("cuda"), torch.compile(flex_attention, dynamic=False), TOKENS, MODEL_DIM, bench


def flash_backend(flex, device):
    """Whether flex_attention takes ``kernel_options={"BACKEND": "FLASH"}`` here (torch's
    FlashAttention-4 backend: newer torch with flash-attn-4 installed, Hopper or Blackwell), and
    why not. Tried once on a small problem."""
    import torch

    if device.type != "cuda":
        return False, "no CUDA device"
    try:
        q = torch.randn(1, 2, 256, 64, device=device, dtype=torch.bfloat16)
        flex(q, q, q, kernel_options={"BACKEND": "FLASH"})
        torch.cuda.synchronize()
        return True, ""
    except Exception as err:  # noqa: BLE001 - the reason is reported in the table's notes
        return False, f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


class Budget:
    """Stops a benchmark from starting cases after ``seconds`` (0: no limit); skipped cases are
    listed in the output, never left out silently."""

    def __init__(self, seconds: float):
        self.seconds, self.t0, self.skipped = seconds, time.perf_counter(), []

    def over(self, label: str) -> bool:
        if self.seconds and time.perf_counter() - self.t0 > self.seconds:
            self.skipped.append(label)
            return True
        return False

    def note(self) -> list[str]:
        if not self.skipped:
            return []
        return ["", f"Not run ({len(self.skipped)} cases: the `--budget` of {self.seconds:.0f} s was spent): "
                + ", ".join(self.skipped) + "."]


def bench_cuda(args) -> list[str]:
    import torch

    for knob in ("cache_size_limit", "recompile_limit"):  # one flex compile per variant and shape
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 4096))
    device, flex, tokens, model_dim, bench = timing(args)
    flash, flash_why = flash_backend(flex, device)
    budget = Budget(args.budget)
    rows, ratios = [], {}
    for dname, D, N, B, H, name, attn, (q, k, v) in cases(args, device, tokens, model_dim, 3, "gpu"):
        if budget.over(f"{name} {dname} D={D} N={N}"):
            continue
        params = variant_inputs(name, B, H, N, device)
        mods = flex_mods(name, params, H, N)
        # (every library variant with a mask has a softmax norm, so flex expresses its mask)
        mask_mod = None if mods == "inexpressible" else mods[1]
        flops = 4 * H * D * kept_pairs(mask_mod, B, N, device)
        row = {"variant": name, "dtype": dname, "D": D, "N": N, "B": B, "H": H}
        try:
            out = attn(q, k, v, **params)  # the first CUDA call autotunes
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = bench(lambda: attn(q, k, v, **params)) * 1e-3
            row["attnc_s"], row["attnc_tf"] = t, flops / t / 1e12
        except Exception as err:  # noqa: BLE001 - a failing variant is a row, not a crash
            out = None
            row["attnc_err"] = f"{type(err).__name__}: {err}"[:120]
            log(f"  attnc failed: {row['attnc_err']}")
        if mods != "inexpressible":
            score_mod, mm = mods
            try:
                block_mask = flex_block_mask(name, mm, B, N, device)
                ref = flex(q, k, v, score_mod=score_mod, block_mask=block_mask)
                t = bench(lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask)) * 1e-3
                row["flex_tf"] = flops / t / 1e12
                if out is not None:
                    row["max_err"] = float((out.float() - ref.float()).abs().max())
                if flash:
                    opts = {"BACKEND": "FLASH"}
                    t = bench(lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask, kernel_options=opts)) * 1e-3
                    row["flash_tf"] = flops / t / 1e12
            except Exception as err:  # noqa: BLE001
                log(f"  flex failed: {type(err).__name__}: {err}")
        if name in ("softmax", "full", "causal"):
            causal = name == "causal"
            sdpa = torch.nn.functional.scaled_dot_product_attention
            t = bench(lambda: sdpa(q, k, v, is_causal=causal)) * 1e-3
            row["sdpa_tf"] = flops / t / 1e12
        rows.append(row)
        q = k = v = out = None  # free before the next shape is allocated
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def cell(x, spec="{:.3g}"):
        return "—" if x is None else spec.format(x)

    lines = [
        f"B·N = {tokens} tokens, H·D = {model_dim}; parameters: window={WINDOW}, chunk={CHUNK}, prefix={PREFIX}, "
        f"sinks={SINKS}, dilated window={WINDOW // DILATION}×{DILATION}, natten2d width={NAT_WIDTH} "
        f"kernel={NAT_KERNEL}, document: 4 random-length documents per sequence. FLOPs = 4·B·H·D·(kept pairs); "
        "ratio = attnc TFLOP/s ÷ baseline TFLOP/s (> 1: attnc faster). `—`: the baseline cannot express the "
        "variant (flex_attention only has softmax normalization; SDPA is used for full and causal softmax). "
        "Times are of the Python call as a user makes it, so they include each library's launch overhead "
        "(input checks, parameter binding, dynamo guards), which matters at N = 1k.",
        "",
        "Flex FLASH backend (`kernel_options={\"BACKEND\": \"FLASH\"}`): "
        + ("timed in its column." if flash else f"not available here ({flash_why or 'not tried'})."),
        "",
        "| variant | dtype | D | N | attnc ms | attnc TFLOP/s | flex TFLOP/s | flex FLASH TFLOP/s | SDPA TFLOP/s "
        "| ratio vs flex | ratio vs SDPA | max abs diff vs flex |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r.get("attnc_tf")
        rf = a / r["flex_tf"] if a and r.get("flex_tf") else None
        rs = a / r["sdpa_tf"] if a and r.get("sdpa_tf") else None
        if rf:
            ratios.setdefault((r["variant"], "flex"), []).append(rf)
        if rs:
            ratios.setdefault((r["variant"], "sdpa"), []).append(rs)
        ms = fmt_ms(r["attnc_s"]) if "attnc_s" in r else f"failed: {r.get('attnc_err', '')}"
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['D']} | {r['N']} | {ms} | {cell(a)} | "
                     f"{cell(r.get('flex_tf'))} | {cell(r.get('flash_tf'))} | {cell(r.get('sdpa_tf'))} | "
                     f"{cell(rf, '{:.2f}')} | {cell(rs, '{:.2f}')} | {cell(r.get('max_err'), '{:.1e}')} |")
    lines += ["", "Geometric mean of the ratio per variant over every dtype, D and N:", "",
              "| variant | vs flex | vs SDPA |", "|---|---:|---:|"]
    for name in args.variants:
        f = ratios.get((name, "flex"))
        s = ratios.get((name, "sdpa"))
        gm = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None  # noqa: E731
        lines.append(f"| {name} | {cell(gm(f), '{:.2f}')} | {cell(gm(s), '{:.2f}')} |")
    lines += budget.note()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return lines


# ---------------------------------------------------------------------------- compile latency (any machine)


def _clear_attnc_caches() -> None:
    """Every in-process cache attnc keeps: functools caches (grammar, pass plans) and kernels."""
    for mod_name, mod in list(sys.modules.items()):
        if not (mod_name == "attnc" or mod_name.startswith("attnc.")) or mod is None:
            continue
        for value in list(vars(mod).values()):
            if callable(value) and hasattr(value, "cache_clear") and getattr(value, "__module__", "") == mod_name:
                value.cache_clear()
    from attnc.runtime import compiler

    memory = getattr(compiler, "_memory", None)
    if isinstance(memory, dict):
        memory.clear()


def latency_worker(variants: list[str], repeats: int) -> dict:
    """Run in a fresh process with an empty ATTNC_CACHE_DIR: per variant, cold and cached times."""
    import shutil

    t0 = time.perf_counter()
    import attnc
    from attnc.codegen.generate import Specialization, generate
    from attnc.ir.passes import plan_passes
    from attnc.runtime.frontend import library_spec

    import_s = time.perf_counter() - t0
    import torch

    cache = Path(os.environ["ATTNC_CACHE_DIR"])
    spec = Specialization("float16", interpret=False)
    results = {"import_s": import_s, "variants": {}}
    first = True
    for name in variants:
        cold, load, kern, parse, plan, gen, cached, hit = [], [], [], [], [], [], [], []
        for _ in range(repeats):
            # cold: every cache cleared, empty disk cache — spec text to imported kernel module
            _clear_attnc_caches()
            shutil.rmtree(cache, ignore_errors=True)
            t = time.perf_counter()
            attn = attnc.load(name)
            t1 = time.perf_counter()
            attn.kernel_path(torch.float16, device="cuda")
            cold.append(time.perf_counter() - t)
            load.append(t1 - t)
            kern.append(time.perf_counter() - t1)
            if first:
                results["first_in_process_s"] = cold[-1]
                first = False
            # the same, stage by stage (caches cleared again)
            _clear_attnc_caches()
            t = time.perf_counter()
            cascade = library_spec(name).cascade(name)
            t1 = time.perf_counter()
            p = plan_passes(cascade)
            t2 = time.perf_counter()
            generate(cascade, spec, p)
            t3 = time.perf_counter()
            parse.append(t1 - t)
            plan.append(t2 - t1)
            gen.append(t3 - t2)
            # cached: a second load of the spec (grammar, plan and kernel caches warm)
            attnc.load(name).kernel_path(torch.float16, device="cuda")
            t = time.perf_counter()
            attn = attnc.load(name)
            attn.kernel_path(torch.float16, device="cuda")
            cached.append(time.perf_counter() - t)
            t = time.perf_counter()
            attn.kernel_path(torch.float16, device="cuda")
            hit.append(time.perf_counter() - t)
        med = statistics.median
        results["variants"][name] = {"cold": med(cold), "load": med(load), "kernel": med(kern), "parse": med(parse),
                                     "plan": med(plan), "generate": med(gen), "cached": med(cached), "hit": med(hit)}
    return results


def bench_latency(args) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="attnc_bench_") as tmp:
        env = dict(os.environ, ATTNC_CACHE_DIR=str(Path(tmp) / "cache"))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_latency-worker", ",".join(args.variants),
               "--_repeats", str(args.latency_repeats)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"latency worker failed:\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    us = lambda s: f"{s * 1e6:.0f}"  # noqa: E731
    lines = [
        f"Spec text → cascade → pass plan → Triton source → imported kernel module (fp16, compiled-kernel "
        f"specialization; Triton's own PTX/cubin build is not included, see the ahead-of-time table for it). "
        f"Median of {args.latency_repeats} runs per variant, one fresh process "
        f"(`import attnc`, torch included: {ms(res['import_s'])} ms; the first kernel in the process: "
        f"{ms(res['first_in_process_s'])} ms).",
        "",
        "- **cold**: attnc's in-process caches cleared (grammar, pass plans, kernels) and an empty "
        "`ATTNC_CACHE_DIR`: `attnc.load(name).kernel_path(torch.float16, 'cuda')`; split into `load` "
        "(parse, resolve and lower every definition of the spec file) and `kernel` (pass plan, source, "
        "disk cache write, import, `triton.jit`).",
        "- cascade / plan / generate: the cold path stage by stage (caches cleared): "
        "`library_spec(name).cascade(name)`, `plan_passes`, `codegen.generate`.",
        "- **cached**: the same call again — the spec is read and lowered again, the kernel comes from "
        "the in-memory cache.",
        "- **hit**: `kernel_path` on an existing `Attention` (kernel cache lookup only).",
        "",
        "| variant | cold ms | load ms | kernel ms | cascade ms | plan ms | generate ms | cached ms | hit µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["variants"].items():
        lines.append(f"| {name} | {ms(r['cold'])} | {ms(r['load'])} | {ms(r['kernel'])} | {ms(r['parse'])} | "
                     f"{ms(r['plan'])} | {ms(r['generate'])} | {ms(r['cached'])} | {us(r['hit'])} |")
    colds = [r["cold"] for r in res["variants"].values()]
    lines += ["", f"Cold median over the library: {ms(statistics.median(colds))} ms, max {ms(max(colds))} ms "
              f"(whole measurement: {wall:.0f} s)."]
    return lines


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file to write (default: docs/performance.md)")
    ap.add_argument("--variants", help="comma-separated library variants (default: all)")
    ap.add_argument("--seqlens", default="1024,2048,4096,8192,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--cpu", action="store_true", help="the no-CUDA report even when CUDA is available")
    ap.add_argument("--latency-repeats", type=int, default=5)
    ap.add_argument("--no-latency", action="store_true", help="skip the compile-latency section")
    ap.add_argument("--budget", type=float, default=0, help="GPU timing: start no case after this many seconds")
    ap.add_argument("--json", help="also write raw results as JSON to this path")
    ap.add_argument("--_latency-worker", dest="latency_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_repeats", dest="repeats", type=int, default=5, help=argparse.SUPPRESS)
    # B*N tokens for a CPU rehearsal of the CUDA path (tiny shapes; numbers are meaningless)
    ap.add_argument("--_dry-run-cpu", dest="dry_run_cpu", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.latency_worker:
        print(json.dumps(latency_worker(args.latency_worker.split(","), args.repeats)))
        return 0

    import torch

    import attnc

    args.variants = args.variants.split(",") if args.variants else attnc.library.names()
    args.seqlens = [int(x) for x in args.seqlens.split(",")]
    args.dims = [int(x) for x in args.dims.split(",")]
    args.dtypes = args.dtypes.split(",")
    out = Path(args.out)
    command = " ".join(["python3 benchmarks/bench_forward.py", *(shlex.quote(a) for a in (argv or sys.argv[1:]))])
    cuda = torch.cuda.is_available() and not args.cpu

    if args.dry_run_cpu:
        lines = bench_cuda(args)
        write_section(out, "gpu", "GPU forward throughput", header(f"CPU rehearsal on {cpu_name()}", command)
                      + [""] + lines)
        return 0
    if cuda:
        device = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host {cpu_name()}"
        lines = bench_cuda(args)
        write_section(out, "gpu", "GPU forward throughput", header(device, command) + [""] + lines)
        log(f"wrote GPU section of {out}")
    device = f"{cpu_name()}" + ("" if cuda else ", no CUDA device")
    if not args.no_latency:
        log("[latency] compile latency per variant")
        write_section(out, "latency", "Compile latency", header(device, command) + [""] + bench_latency(args))
        log(f"wrote compile-latency section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
