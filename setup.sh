#!/bin/sh
# Set up attnc for development on this machine: reuse an installed torch; otherwise install
# torch 2.13.0 — the CPU build where there is no NVIDIA GPU — then attnc with its test extra.
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: reusing torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch==2.13.0"
else
    # A local CPU wheel (PIP_FIND_LINKS) satisfies this pin; otherwise use PyTorch's CPU index,
    # so a machine without a GPU never downloads the CUDA build.
    "$PY" -m pip install "torch==2.13.0" || \
        "$PY" -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi

# The installed torch satisfies attnc's `torch>=2.11`, so pip leaves it alone.
"$PY" -m pip install --quiet -e ".[test]"
