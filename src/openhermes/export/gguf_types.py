"""The GGUF quantization types openhermes knows, and their names: f16/q8_0/q4_0 are written by our numpy writer
(export/gguf.py), the others by llama.cpp's quantizer (export/quantize.py). Its own module, so neither of the two
imports the other to learn the names."""

from __future__ import annotations

NUMPY_TYPES = ("f16", "q8_0", "q4_0")  # written with gguf's numpy quantizers
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
