"""Forward + backward benchmarks for the attnc library; writes a section of ``docs/performance.md``.

    python3 benchmarks/bench_backward.py [--out docs/performance.md] [--variants causal,softcap]
                                         [--seqlens 1024,4096] [--dims 64,128] [--dtypes float16,bfloat16]
                                         [--dry-run-cpu TOKENS]

With CUDA: each variant's training step — ``out = attn(q, k, v, **params)`` then
``out.backward(dO)``, gradients for q, k, v (and the variant's float tensor parameter) — timed
with ``triton.testing.do_bench`` (median) against the same step through
``torch.compile(flex_attention)`` where a ``score_mod``/``mask_mod`` expresses the variant, and
SDPA for full and causal softmax. Shapes and parameters as in ``bench_forward.py`` (B·N = 16k
tokens, H·D = 2048).

FLOP convention (FlashAttention's): the backward does 2.5× the forward's matmul work, so a
step is 3.5 · 4 · B · H · D · (kept pairs) FLOPs.

``--dry-run-cpu TOKENS`` runs the same code on the CPU (Triton's interpreter, eager flex, wall
clock) at a tiny size: a check of this script, not a measurement, and it writes nothing unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import (  # noqa: E402 - the forward benchmark's shapes, parameters and helpers
    DEFAULT_OUT, Budget, cases, flash_backend, flex_block_mask, flex_mods, fmt_ms, header, kept_pairs, log, timing,
    variant_inputs, write_section,
)

DEFAULT_VARIANTS = ("softmax", "causal", "sliding_window", "document", "alibi", "softcap", "relative_bias",
                    "softmax_sink", "sigmoid_attention", "clipped_softmax")


def bench_train(args) -> list[str]:
    import torch

    device, flex, tokens, model_dim, bench = timing(args, repeats=2)
    flash, flash_why = flash_backend(flex, device)
    budget = Budget(args.budget)
    rows = []
    for dname, D, N, B, H, name, attn, (q, k, v, do) in cases(args, device, tokens, model_dim, 4, "train"):
        if budget.over(f"{name} {dname} D={D} N={N}"):
            continue
        for t in (q, k, v):
            t.requires_grad_(True)
        params = variant_inputs(name, B, H, N, device)
        for key, value in params.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value.requires_grad_(True)
        mods = flex_mods(name, params, H, N)
        mask_mod = None if mods == "inexpressible" else mods[1]
        flops = 3.5 * 4 * H * D * kept_pairs(mask_mod, B, N, device)
        row = {"variant": name, "dtype": dname, "D": D, "N": N}

        def step_attnc():
            attn(q, k, v, **params).backward(do)

        try:
            step_attnc()  # the first call builds (and on CUDA autotunes) the kernels
            t = bench(step_attnc) * 1e-3
            row["attnc_s"], row["attnc_tf"] = t, flops / t / 1e12
        except Exception as err:  # noqa: BLE001 - a failing variant is a row, not a crash
            row["attnc_err"] = f"{type(err).__name__}: {err}"[:120]
            log(f"  attnc failed: {row['attnc_err']}")
        if mods != "inexpressible":
            score_mod, mm = mods
            try:
                block_mask = flex_block_mask(name, mm, B, N, device)

                def step_flex():
                    flex(q, k, v, score_mod=score_mod, block_mask=block_mask).backward(do)

                step_flex()
                t = bench(step_flex) * 1e-3
                row["flex_tf"] = flops / t / 1e12
                if flash:
                    opts = {"BACKEND": "FLASH"}
                    t = bench(lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask,
                                           kernel_options=opts).backward(do)) * 1e-3
                    row["flash_tf"] = flops / t / 1e12
            except Exception as err:  # noqa: BLE001
                log(f"  flex failed: {type(err).__name__}: {err}")
        if name in ("softmax", "full", "causal"):
            sdpa = torch.nn.functional.scaled_dot_product_attention
            causal = name == "causal"
            t = bench(lambda: sdpa(q, k, v, is_causal=causal).backward(do)) * 1e-3
            row["sdpa_tf"] = flops / t / 1e12
        rows.append(row)
        q = k = v = do = None
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def cell(x, spec="{:.3g}"):
        return "—" if x is None else spec.format(x)

    lines = [
        f"Forward + backward (one training step of the attention op). B·N = {tokens} tokens, H·D = {model_dim}; "
        "parameters as in the forward table. FLOPs = 3.5 · 4·B·H·D·(kept pairs) (the backward counted as "
        "2.5 forwards, FlashAttention's convention); ratio = attnc TFLOP/s ÷ baseline (> 1: attnc faster). "
        "`—`: the baseline cannot express the variant. Flex FLASH backend: "
        + ("timed in its column." if flash else f"not available here ({flash_why or 'not tried'})."),
        "",
        "| variant | dtype | D | N | attnc ms | attnc TFLOP/s | flex TFLOP/s | flex FLASH TFLOP/s | SDPA TFLOP/s "
        "| ratio vs flex |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: dict[str, list[float]] = {}
    for r in rows:
        a = r.get("attnc_tf")
        rf = a / r["flex_tf"] if a and r.get("flex_tf") else None
        if rf:
            ratios.setdefault(r["variant"], []).append(rf)
        ms = fmt_ms(r["attnc_s"]) if "attnc_s" in r else f"failed: {r.get('attnc_err', '')}"
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['D']} | {r['N']} | {ms} | {cell(a)} | "
                     f"{cell(r.get('flex_tf'))} | {cell(r.get('flash_tf'))} | {cell(r.get('sdpa_tf'))} | "
                     f"{cell(rf, '{:.2f}')} |")
    lines += ["", "| variant | geometric mean ratio vs flex |", "|---|---:|"]
    for name in args.variants:
        xs = ratios.get(name)
        gm = math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None
        lines.append(f"| {name} | {cell(gm, '{:.2f}')} |")
    return lines + budget.note()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help=f"the markdown file to update (default with CUDA: {DEFAULT_OUT})")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--seqlens", default="1024,4096,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--dry-run-cpu", type=int, default=0, metavar="TOKENS")
    ap.add_argument("--budget", type=float, default=0, help="start no case after this many seconds (0: no limit)")
    args = ap.parse_args(argv)
    args.variants = [x for x in args.variants.split(",") if x]
    args.seqlens = [int(x) for x in args.seqlens.split(",")]
    args.dims = [int(x) for x in args.dims.split(",")]
    args.dtypes = [x for x in args.dtypes.split(",") if x]
    import torch

    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("bench_backward: needs CUDA (or --dry-run-cpu TOKENS to check the script on the CPU)", file=sys.stderr)
        return 2
    lines = bench_train(args)
    device = "CPU dry run (interpreter; not a measurement)" if args.dry_run_cpu else torch.cuda.get_device_name()
    command = "python3 benchmarks/bench_backward.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    body = header(device, command.strip()) + [""] + lines
    out = args.out or (None if args.dry_run_cpu else str(DEFAULT_OUT))
    if out:
        write_section(Path(out), "train", "GPU forward + backward throughput", body)
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
