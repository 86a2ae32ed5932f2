#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with torch and this
# package (with its test tools), llama.cpp's llama-server for the tests that run one
# (scripts/llama_server.sh, built once), and Debian's espeak-ng (NeuTTS's phonemes; the
# telephony test's synthetic caller) when apt can install it. Safe to run again: it only
# installs what is missing.
#   TORCH_SPEC   torch requirement to install first (default torch==2.13.0; on a CUDA machine
#                the PyPI wheel of that version includes CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install --quiet -e ".[dev]"
bash scripts/llama_server.sh
if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng >/dev/null; }; then
    echo "note: could not install espeak-ng with apt; NeuTTS phoneme checkpoints need it" >&2
  fi
fi
