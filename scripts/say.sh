#!/usr/bin/env bash
# Set up (scripts/setup.sh) and speak: bash scripts/say.sh "TEXT" OUT.wav [CLI options...]
#   e.g. bash scripts/say.sh "Hello there." hello.wav --model tiny
#        bash scripts/say.sh "Hello there." hello.wav --model /models/orpheus-3b-0.1-ft --voice leah
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/say.sh \"TEXT\" OUT.wav [--model ID_OR_DIR|tiny] [--voice NAME] [--device cpu|cuda]" >&2
  exit 2
fi
text=$1 out=$2
shift 2
bash scripts/setup.sh
exec .venv/bin/pipecat-localtts say "$text" --out "$out" "$@"
