#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on the CPU, offline: tests/ (the
# pyproject's testpaths). The vLLM tests (tests_vllm/, a 3.5 GB install) have their own
# command, scripts/test_vllm.sh: with them CI measured 22.5 min of its 30 on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# espeak-ng (NeuTTS's phonemes, the telephony test's caller) was installed by setup.sh.
command -v espeak-ng >/dev/null 2>&1 || { echo "espeak-ng is missing (apt-get install espeak-ng)" >&2; exit 1; }
. .venv/bin/activate
# Tests never touch the network: weights are tiny random models built by the tests.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider "$@"
