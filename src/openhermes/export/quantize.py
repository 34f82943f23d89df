"""K-quants and the other llama.cpp types, made by llama.cpp's own quantizer (`llama_model_quantize`, through
llama-cpp-python's bindings: the code that makes the Q4_K_M files people download), from our f16 GGUF.

Rows whose length is not a multiple of 256 cannot hold K-quant blocks: llama.cpp quantizes those tensors
with its fallback type (q5_0, q5_1, q8_0, ...) and says so, as its `llama-quantize` does. An importance
matrix (`--imatrix`) cannot be made here: llama.cpp computes it in its llama-imatrix tool, and the library
call takes it only as a C++ map the Python bindings cannot build."""

from __future__ import annotations

import os
from pathlib import Path

from openhermes.export.gguf_types import LLAMA_TYPES, NEEDS_IMATRIX, NUMPY_TYPES, QuantizeError, canonical

__all__ = ["LLAMA_TYPES", "NEEDS_IMATRIX", "NUMPY_TYPES", "QuantizeError", "canonical", "quantize_gguf"]


def quantize_gguf(source: Path, out: Path, qtype: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer: `source` (our f16 GGUF) -> `out` in `qtype`. Keeps every metadata key."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if rc != 0:
        raise QuantizeError(f"llama.cpp could not quantize {source} to {qtype} (return code {rc})")
