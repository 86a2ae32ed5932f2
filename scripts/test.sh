#!/usr/bin/env bash
# Set up (scripts/setup.sh, and vLLM's own venv with scripts/vllm_env.sh) and run the whole
# test suite on the CPU, offline: tests/ and tests_vllm/ (the pyproject's testpaths).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/vllm_env.sh
# The telephony test speaks to the bot with real synthesised speech (Debian's espeak-ng).
if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi
. .venv/bin/activate
# Tests never touch the network: weights are tiny random models built by the tests.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider "$@"
