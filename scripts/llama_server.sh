#!/usr/bin/env bash
# Build llama.cpp's native `llama-server` once, into .venv/llama.cpp, for the tests that run a
# real llama.cpp server (tests/test_llama_server.py). Safe to run again: it exits at once when
# the binary is there and works.
#
# The source is the llama.cpp that the llama-cpp-python sdist vendors (a pinned, known-good
# version, fetched through PyPI like every other dependency). Only the server is built, as one
# static binary (no libllama/libggml .so next to it). Kept besides the binary, from the same
# tree: convert_hf_to_gguf.py with what it imports (conversion/, gguf-py/), and the Llama-3
# vocabulary models/ggml-vocab-llama-bpe.gguf, from which the tests rebuild a real Llama-3
# tokenizer (pipecat_localtts.testing.llama3_tokenizer).
#   LLAMA_CPP_PYTHON_VERSION   the sdist to take llama.cpp from (default 0.3.36)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.venv/llama.cpp
if "$DEST/bin/llama-server" --version >/dev/null 2>&1; then
  exit 0
fi
echo "Building llama.cpp's llama-server once into $DEST (about 7 min on 2 cores)..."
if [ ! -x .venv/bin/python ]; then
  echo "no .venv: run scripts/setup.sh first" >&2
  exit 1
fi

if ! command -v cmake >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 \
    || ! { command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; }; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake g++ make >/dev/null
fi

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m pip download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==$VERSION" -d "$WORK"
SDIST=$(ls "$WORK"/llama_cpp_python-*.tar.gz)
tar -xzf "$SDIST" -C "$WORK"
SRC=$(ls -d "$WORK"/llama_cpp_python-*/vendor/llama.cpp)

# LLAMA_USE_PREBUILT_UI=OFF matters: its default downloads a web UI at build time.
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF \
  >"$WORK/cmake.log" 2>&1 || { tail -n 40 "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" --target llama-server -j2 >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log" >&2; exit 1; }

# Install into a fresh directory, then swap it in, so a failed run leaves nothing half-made.
NEW="$DEST.new"
rm -rf "$NEW"
mkdir -p "$NEW/bin" "$NEW/models"
cp "$WORK/build/bin/llama-server" "$NEW/bin/"
cp "$SRC/convert_hf_to_gguf.py" "$NEW/"
cp -r "$SRC/conversion" "$SRC/gguf-py" "$NEW/"
cp "$SRC/models/ggml-vocab-llama-bpe.gguf" "$NEW/models/"
cp "$SRC/LICENSE" "$NEW/LICENSE"
find "$NEW" -name __pycache__ -type d -prune -exec rm -rf {} +
"$NEW/bin/llama-server" --version >/dev/null 2>&1
rm -rf "$DEST"
mv "$NEW" "$DEST"
echo "llama-server: $("$DEST/bin/llama-server" --version 2>&1 | head -n 1) in $DEST/bin"
