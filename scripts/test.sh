#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on the CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Tests never touch the network: weights are tiny random models built by the tests.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider "$@"
