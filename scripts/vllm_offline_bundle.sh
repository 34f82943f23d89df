#!/usr/bin/env bash
# vLLM for a GPU machine with no package index (an air-gapped box that has Python 3.12, CUDA 13 PyTorch 2.11,
# transformers, numpy, triton and the other common packages): one vllm-site.tar.xz to unpack there and put on
# PYTHONPATH. vLLM 0.26.0 (it pins torch 2.11.0) without the kernels a dense bf16 model on Hopper does not load
# (FlashAttention 2, MoE, FlashMLA, DeepGEMM, the Rust frontend), plus the packages such an image usually lacks.
#   bash scripts/vllm_offline_bundle.sh [OUT_DIR]      # here, with an index: writes OUT_DIR/vllm-site.tar.xz
#   there: mkdir -p /tmp/site && xz -dc vllm-site.tar.xz | tar xf - -C /tmp/site && export PYTHONPATH=/tmp/site
set -euo pipefail
out=$(realpath "${1:-.}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=()
for p in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  platforms+=(--platform "${p}_x86_64")
done
# Found by importing vllm's engine, its OpenAI server and openhermes's serve path with only such an image's packages.
packages=(vllm==0.26.0 cachetools blake3 fastapi==0.135.0 starlette pydantic pydantic-core annotated-types
  typing-inspection openai jiter distro sniffio httpx2 httpcore2 truststore prometheus-fastapi-instrumentator
  llguidance==1.7.3 lark==1.2.2 partial-json-parser jsonschema referencing rpds-py jsonschema-specifications pyzmq
  msgspec python-json-logger pybase64 cbor2 ijson setproctitle openai-harmony uvicorn python-multipart depyf==0.20.0
  astor dill compressed-tensors==0.17.0 loguru mistral-common pydantic-extra-types pycountry watchfiles httptools
  websockets outlines-core==0.2.14 diskcache model-hosting-container-standards anthropic==0.71.0 docstring-parser
  jmespath xgrammar==0.2.1 apache-tvm-ffi==0.1.10 datasketch)
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --target "$work/site" "${packages[@]}"
cd "$work/site"
rm -rf vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/vllm-rs vllm/_flashmla_C.abi3.so \
  vllm/_flashmla_extension_C.abi3.so vllm/_qutlass_C.abi3.so vllm/third_party/deep_gemm vllm/third_party/fmha_sm100
tar cf - . | xz -T0 -6 > "$out/vllm-site.tar.xz"
echo "wrote $out/vllm-site.tar.xz ($(du -h "$out/vllm-site.tar.xz" | cut -f1))"
