"""Pin PyTorch's CPU kernels to one instruction-set level, so that fp32 training on a CPU with more (AVX-512) computes
what it computes restricted to that level: repeatable runs on one kind of CPU. It does not make every CPU compute
the same bits: on an Intel Xeon with AMX the embedded default's figures differed from an AMD EPYC's, pinned or not.

fp32 alone does not make a CPU run reproducible across machines: PyTorch picks its vectorised kernels (softmax,
norms, attention, the optimizer's element-wise steps) for the best instruction set the CPU has, and the AVX-512
kernels round differently from the AVX2 ones. On the embedded default that moved held-out exact match by 10
points between the same AMD EPYC restricted to AVX2 and unrestricted (benchmarks/embedded_default.py). With the
level pinned, both runs are bit-identical (and, between AMD EPYCs, equal to one that only has AVX2).

PyTorch reads these variables once, when it first dispatches a kernel, so `pin` must run before any tensor work
in the process: a later call can only report that it came too late.
"""

from __future__ import annotations

import os
import platform
import warnings

# What each level sets: ATen's kernels, oneDNN's and MKL's (MKL's conditional numerical reproducibility mode
# keeps its GEMMs to the same code path on Intel and AMD CPUs).
LEVELS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}}


def applies(level: str | None, bf16: bool | str) -> bool:
    """Whether `cpu_kernels: level` pins anything here: an fp32 run (bf16 true/pure is the opt-in that uses the
    CPU's own bf16 instructions), on an x86-64 CPU, with no CUDA GPU (a GPU run trains on the GPU)."""
    if level in (None, "native") or bf16 is True or bf16 == "pure":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import torch

    return not torch.cuda.is_available()


def pin(level: str | None, bf16: bool | str = False) -> bool:
    """Set the level's variables (a variable the user set is kept) and check that PyTorch took the level.
    Returns whether the kernels are pinned."""
    if not applies(level, bf16):
        return False
    for name, value in LEVELS[level].items():
        os.environ.setdefault(name, value)
    import torch

    got = torch.backends.cpu.get_cpu_capability().lower()
    wanted = os.environ["ATEN_CPU_CAPABILITY"].lower()
    if got != wanted:  # a CPU without the level, or kernels already dispatched in this process
        warnings.warn(f"cpu_kernels: {level}: PyTorch runs its {got} kernels here, not {wanted}; the figures may "
                      "differ from other CPUs'", stacklevel=2)
        return False
    return True
