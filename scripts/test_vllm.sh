#!/usr/bin/env bash
# The vLLM tests (not in scripts/test.sh: a 3.5 GB install, and CI's time): set up the main venv and .venv-vllm
# (scripts/vllm_env.sh, once per machine), then run tests_vllm/ offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/vllm_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider tests_vllm "$@"
