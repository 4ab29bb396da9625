#!/bin/sh
# Set up attnc for development on this machine, then install attnc with its test extra.
#  * An installed torch (>= 2.11) is reused as it is.
#  * Otherwise torch 2.13.0 is installed — on a machine without an NVIDIA GPU always the CPU
#    build: from a local wheel when pip's find-links has one, else from PyPI's CPU index.
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if "$PY" -c "import torch" >/dev/null 2>&1; then
    version=$("$PY" -c 'import torch; print(torch.__version__)')
    if ! "$PY" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 11))'; then
        echo "setup: torch $version is installed, attnc needs >= 2.11; upgrade it yourself (pip would pick a CUDA build)" >&2
        exit 1
    fi
    echo "setup: reusing torch $version"
elif command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch==2.13.0"
else
    wheel=""
    for dir in $(echo "${PIP_FIND_LINKS:-}" | tr ' ' '\n'); do
        for f in "$dir"/torch-2.13.0*cpu*.whl; do [ -f "$f" ] && wheel="$f"; done
    done
    if [ -n "$wheel" ]; then
        "$PY" -m pip install "$wheel"
    else
        "$PY" -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
fi

# The installed torch satisfies attnc's `torch>=2.11`, so pip leaves it alone.
"$PY" -m pip install --quiet -e ".[test]"
