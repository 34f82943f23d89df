#!/usr/bin/env bash
# Builds llama.cpp's own server (llama-server) from the source package of the llama-cpp-python version
# installed in .venv, so benchmarks/serve_load.py can compare against it on the same llama.cpp.
# Needs cmake and a C++ compiler; about 10 minutes on 2 cores. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
work=${LLAMA_SERVER_BUILD:-build/llama-server-$version}
mkdir -p "$work"
if [ ! -d "$work/llama_cpp_python-$version" ]; then
  .venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
fi
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON > "$work/cmake.log"
cmake --build "$src/build" --target llama-server -j "$(nproc)" > "$work/build.log"
echo "$(cd "$src/build/bin" && pwd)/llama-server"
