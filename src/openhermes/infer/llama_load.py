"""Loading a GGUF file with llama-cpp-python, the way every openhermes path does.

On a CPU with AMX (Intel Xeon Sapphire Rapids and newer), llama.cpp moves quantized weights into its AMX "extra
buffer" layout, and there its matmuls crashed the process (a segmentation fault at the first decode of any quantized
type, q4_0, q8_0 and Q4_K_M alike, on a 2-core Intel Xeon with AMX under KVM; f16 ran). Those CPUs load models with
the extra buffer types off (llama.cpp's `use_extra_bufts`, which `llama-server --no-repack` also turns off); other
CPUs keep them. OPENHERMES_LLAMA_EXTRA_BUFTS=1 or 0 forces the choice."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import cache
from pathlib import Path


@cache
def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


def use_extra_buffers() -> bool:
    forced = os.environ.get("OPENHERMES_LLAMA_EXTRA_BUFTS")
    return forced == "1" if forced in ("0", "1") else not cpu_has_amx()


@contextmanager
def _model_params(use_extra_bufts: bool):
    # llama-cpp-python's Llama takes no argument for use_extra_bufts: its default model parameters are swapped for
    # the load (the model reads them once, in Llama.__init__).
    import llama_cpp
    import llama_cpp.llama as llama_module

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = use_extra_bufts
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = default


def load_llama(path: str | Path, **kwargs):
    """llama_cpp.Llama(path, **kwargs), with the extra buffer types off where they crash (module docstring)."""
    from llama_cpp import Llama

    with _model_params(use_extra_buffers()):
        return Llama(model_path=str(path), **kwargs)
