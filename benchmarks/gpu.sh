#!/bin/sh
# The first thing to run on a GPU: correctness of the compiled kernels, then timings against
# FlexAttention and SDPA, written into docs/performance.md with the device's name. One command,
# about 8 minutes on an H100/H200 (each phase stops starting new cases when its budget is spent
# and lists what it skipped), the short tables last. Installs nothing from the network.
#
#   sh benchmarks/gpu.sh              # on a machine with CUDA, from the repository root
#   sh benchmarks/gpu.sh --dry-run    # the same plumbing on the CPU at tiny sizes (CI runs this)
#
# Phases (budgets in seconds, override with the environment variables named):
#   1. benchmarks/gpu_check.py      every library variant, forward and backward, fp16/bf16, D 64/128,
#                                   fast and general paths, N up to 8192, against the float64
#                                   reference, outputs poisoned first (CHECK_BUDGET, 180)
#   2. benchmarks/bench_forward.py  attnc vs torch.compile(flex_attention) (and its FLASH backend
#                                   where installed) and SDPA, forward (FWD_BUDGET, 110)
#   3. benchmarks/bench_backward.py the same for forward + backward (BWD_BUDGET, 110)
#   4. benchmarks/bench_decode.py   one decoding step over contiguous and paged caches, GB/s against
#                                   the device's copy bandwidth, vs flex and flash_attn (DECODE_BUDGET, 60)
#   5. benchmarks/bench_context_parallel.py  on a machine with ≥ 2 GPUs only: context-parallel ring vs
#                                   all-gather over NCCL, forward and backward, 32k–128k tokens (CP_BUDGET, 120)
# Variants timed: causal, full, sliding_window, document, alibi, softcap, and the attnc-only
# sigmoid, natten2d, clipped_softmax; N 4k, 16k, 1k; D 128, 64; bf16 then fp16 (the order in
# which a budget cuts).
#
# Python packages: attnc runs from this checkout (PYTHONPATH); torch, triton, jinja2, sympy and
# hypothesis come with a CUDA machine's Python. Missing pure-Python wheels (lark, on the lent
# H200) travel in `.whl/` at the repository root, made on a machine with network access:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl lark==1.2.2
# and are installed from there into a temporary directory (nothing else is touched).
# Outputs: docs/performance.md (sections gpu, train) and, when $OUT is set, copies of the logs
# and of docs/performance.md there.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY=1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOGDIR=${OUT:-$(mktemp -d)}

if ! "$PY" -c "import lark" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        site=$(mktemp -d)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:$site"
    else
        echo "gpu.sh: lark is missing and there is no .whl/ directory of wheels (see the header of this script)" >&2
        exit 2
    fi
fi

VARIANTS=causal,full,sliding_window,document,alibi,softcap,sigmoid,natten2d,clipped_softmax
if [ -n "$DRY" ]; then
    # the plumbing of every phase on the CPU (Triton's interpreter), writing to a scratch copy
    scratch=$(mktemp -d)
    cp docs/performance.md "$scratch/performance.md"
    "$PY" benchmarks/gpu_check.py --dry-run --variants causal,document,natten2d,softcap --budget 300 \
        | tee "$LOGDIR/gpu_check.md" | tail -n 12
    "$PY" benchmarks/bench_forward.py --_dry-run-cpu 64 --variants causal,document --seqlens 32 --dims 16 \
        --dtypes float16 --no-latency --out "$scratch/performance.md" --budget 60
    "$PY" benchmarks/bench_backward.py --dry-run-cpu 64 --variants causal --seqlens 32 --dims 16 --dtypes float16 \
        --out "$scratch/performance.md" --budget 60 | tail -n 4
    "$PY" benchmarks/bench_decode.py --dry-run-cpu --out "$scratch/performance.md" --budget 60 2>&1 | tail -n 2
    "$PY" benchmarks/bench_context_parallel.py --dry-run-cpu --budget 60 > "$LOGDIR/bench_context_parallel.md" 2>&1
    tail -n 2 "$LOGDIR/bench_context_parallel.md"
    echo "gpu.sh --dry-run: all phases ran (scratch report: $scratch/performance.md)"
    exit 0
fi

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (try --dry-run)')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
"$PY" benchmarks/gpu_check.py --budget "${CHECK_BUDGET:-180}" > "$LOGDIR/gpu_check.md" 2>&1 || status=$?
export ATTNC_AUTOTUNE="${ATTNC_AUTOTUNE:-1}"
"$PY" benchmarks/bench_forward.py --variants "$VARIANTS" --seqlens 4096,16384,1024 --dims 128,64 \
    --dtypes bfloat16,float16 --no-latency --budget "${FWD_BUDGET:-110}" --warmup 10 --rep 40 \
    > "$LOGDIR/bench_forward.log" 2>&1 || status=$?
"$PY" benchmarks/bench_backward.py --variants "$VARIANTS" --seqlens 4096,16384,1024 --dims 128,64 \
    --dtypes bfloat16,float16 --budget "${BWD_BUDGET:-110}" --warmup 10 --rep 40 \
    > "$LOGDIR/bench_backward.md" 2>&1 || status=$?
"$PY" benchmarks/bench_decode.py --budget "${DECODE_BUDGET:-60}" --warmup 10 --rep 40 \
    > "$LOGDIR/bench_decode.log" 2>&1 || status=$?
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    "$PY" benchmarks/bench_context_parallel.py --budget "${CP_BUDGET:-120}" \
        > "$LOGDIR/bench_context_parallel.log" 2>&1 || status=$?
else
    echo "== context parallelism: skipped (1 GPU; bench_context_parallel.py needs 2 or more)"
fi
[ -n "${OUT:-}" ] && cp docs/performance.md "$OUT/performance.md"
echo "== forward (docs/performance.md, section gpu)"
sed -n '/<!-- bench:gpu:begin -->/,/<!-- bench:gpu:end -->/p' docs/performance.md | grep '^|' | head -n 40
echo "== forward + backward (section train)"
sed -n '/<!-- bench:train:begin -->/,/<!-- bench:train:end -->/p' docs/performance.md | grep '^|' | head -n 40
echo "== decode (section decode)"
sed -n '/<!-- bench:decode:begin -->/,/<!-- bench:decode:end -->/p' docs/performance.md | grep '^|' | head -n 40
echo "== context parallelism (section cp)"
sed -n '/<!-- bench:cp:begin -->/,/<!-- bench:cp:end -->/p' docs/performance.md | grep '^|' | head -n 20
echo "== correctness (gpu_check.py; full log: $LOGDIR/gpu_check.md)"
grep -E '^## |fail|error|skipped' "$LOGDIR/gpu_check.md" | head -n 30
exit $status
