"""K-quants and the other llama.cpp types, made by llama.cpp's own quantizer (`llama_model_quantize`, through
llama-cpp-python's bindings: the code that makes the Q4_K_M files people download), from our f16 GGUF.

Rows whose length is not a multiple of 256 cannot hold K-quant blocks: llama.cpp quantizes those tensors
with its fallback type (q5_0, q5_1, q8_0, ...) and says so, as its `llama-quantize` does. An importance
matrix (`--imatrix`) cannot be made here: llama.cpp computes it in its llama-imatrix tool, and the library
call takes it only as a C++ map the Python bindings cannot build."""

from __future__ import annotations

import os
from pathlib import Path

from openhermes.export.gguf import TYPES as NUMPY_TYPES  # our numpy writer's; the rest go to llama.cpp

LLAMA_TYPES = ("Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
               "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS")
# Types whose tensors need an importance matrix in llama.cpp (refused without one).
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_XS")


class QuantizeError(ValueError):
    pass


def canonical(qtype: str) -> str:
    """Our name for a type, case-insensitively: f16/q8_0/q4_0 for the numpy writer, Q4_K_M etc. for llama.cpp."""
    low = qtype.lower()
    if low in NUMPY_TYPES:
        return low
    up = qtype.upper()
    if up in LLAMA_TYPES:
        return up
    if up in NEEDS_IMATRIX:
        raise QuantizeError(f"--type {qtype}: llama.cpp needs an importance matrix for it, which cannot be "
                            f"computed here; use IQ4_XS or a K-quant")
    raise QuantizeError(f"--type {qtype!r}: choose one of {', '.join(NUMPY_TYPES + LLAMA_TYPES)}")


def quantize_gguf(source: Path, out: Path, qtype: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer: `source` (our f16 GGUF) -> `out` in `qtype`. Keeps every metadata key."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if rc != 0:
        raise QuantizeError(f"llama.cpp could not quantize {source} to {qtype} (return code {rc})")
