#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (continuous batching: --parallel N) from the llama.cpp
# tree that the installed llama-cpp-python's source distribution ships, for
# benchmarks/serve_throughput.py's peers. Same flags as .ci/run's llama-cpp-python build.
#   bash benchmarks/build_llama_server.sh [OUT_DIR]    (default .cache/llama-server)
# About 6 minutes on 2 cores; prints the binary's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-.cache/llama-server}")"
PY=.venv/bin/python
VERSION="$($PY -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
SRC="$OUT/src"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  TMP="$(mktemp -d)"
  .venv/bin/pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$TMP"
  mkdir -p "$SRC"
  tar xzf "$TMP"/llama_cpp_python-*.tar.gz -C "$SRC" --strip-components=3 \
    "llama_cpp_python-$VERSION/vendor/llama.cpp"
  rm -rf "$TMP"
fi
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_OPENSSL=OFF >/dev/null
cmake --build "$OUT/build" --target llama-server -j "$(nproc)" >/dev/null
echo "$OUT/build/bin/llama-server"
