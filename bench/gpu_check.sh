#!/usr/bin/env bash
# One GPU check for layra (issue 19), <= 8 minutes on one H100, on a bare offline machine:
#
#   bash bench/gpu_check.sh --out results/gpu-check               # one GPU
#   bash bench/gpu_check.sh --cpu-rehearsal --out /tmp/rehearsal  # the same code, tiny, CPU
#
# Installs nothing and downloads nothing: it runs bench/gpu_check.py (its docstring says what
# it measures) with the machine's own python3 (or $PYTHON) and PYTHONPATH=src. A missing
# package or device stops it in one line, before any model is built.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
command -v "$PY" > /dev/null || { echo "gpu_check: no $PY on PATH (set PYTHON)" >&2; exit 2; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" bench/gpu_check.py "$@"
