#!/usr/bin/env bash
# --engine vllm on a CUDA GPU, the figures of docs/benchmarks.md#vllm (vLLM installed: pip install -e '.[vllm]').
#   bash benchmarks/vllm_gpu.sh check TINY_MODEL        # tests/infer/test_vllm_engine.py, then serve_load on it
#   bash benchmarks/vllm_gpu.sh mistral TOKENIZER       # a Mistral-7B-shaped model: ours vs ours on vLLM vs vllm serve
# Each line's output goes to ${OUT:-.}/<phase>.txt as well.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
export PYTHONUNBUFFERED=1
case "$1" in
  check)
    OPENHERMES_VLLM_MODEL="$2" timeout 240 python3 -m pytest tests/infer/test_vllm_engine.py -q -p no:cacheprovider -rs -s \
      2>&1 | tee "$out/pytest.txt"
    timeout 200 python3 benchmarks/serve_load.py --model "$2" --engine vllm --clients 32 --requests 64 \
      --requests-alone 8 --tokens 64 --check-greedy 16 2>&1 | tee "$out/tiny.txt" ;;
  mistral)
    timeout 560 python3 benchmarks/serve_load.py --engine vllm --vllm-serve --mistral-7b "$2" --clients 32 \
      --requests 64 --requests-alone 4 --tokens 64 --check-greedy 8 2>&1 | tee "$out/mistral-7b.txt" ;;
  *) echo "usage: $0 check TINY_MODEL | mistral TOKENIZER" >&2; exit 2 ;;
esac
