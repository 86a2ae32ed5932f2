#!/usr/bin/env bash
# Only the vLLM tests (scripts/test.sh runs them too): set up the main venv and .venv-vllm
# (scripts/vllm_env.sh, once per machine), then run tests_vllm/ offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/vllm_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider tests_vllm "$@"
