"""`cpu_kernels: avx2` (the embedded default's): an fp32 CPU run gives the same weights whatever the CPU's best
instruction set is, since PyTorch's AVX-512 kernels round differently from its AVX2 ones."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from openhermes.train import cpu_kernels

CAPABILITY = torch.backends.cpu.get_cpu_capability()  # PyTorch's own choice for this CPU (nothing pins it here)
pytestmark = pytest.mark.skipif(CAPABILITY not in ("AVX2", "AVX512"), reason="an x86-64 CPU with AVX2")
HAS_AVX512 = CAPABILITY == "AVX512"
PINNED_VARIABLES = cpu_kernels.LEVELS["avx2"]


def _train(recipe: Path, out: Path, *sets: str, restrict: bool = False) -> dict:
    """`openhermes train` in a process of its own (PyTorch fixes its kernels per process); the final weights."""
    from safetensors.torch import load_file

    # CPU training (the pin's case) also on a machine with a GPU: hidden, or the run would train on it
    env = {k: v for k, v in os.environ.items() if k not in PINNED_VARIABLES} | {"CUDA_VISIBLE_DEVICES": ""}
    if restrict:  # the AVX2 level set before the process starts, all three variables: on an Intel Xeon (AMX) MKL's
        env |= PINNED_VARIABLES  # own GEMM path (MKL_CBWR unset) gave other weights than the pin's
    args = [sys.executable, "-m", "openhermes.cli", "train", str(recipe), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out / "model" / "model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_pinned_run_equals_an_avx2_only_run(small_recipe, tmp_path):
    recipe = small_recipe(max_steps=4, bf16=False, cpu_kernels="avx2")
    pinned = _train(recipe, tmp_path / "pinned")
    avx2_only = _train(recipe, tmp_path / "avx2-only", "cpu_kernels=native", restrict=True)
    assert _same(pinned, avx2_only), "the pinned run's weights differ from the AVX2-only run's"
    if HAS_AVX512:  # here the pin is what makes them equal: this CPU's own kernels give other weights
        unpinned = _train(recipe, tmp_path / "unpinned", "cpu_kernels=native")
        assert not _same(pinned, unpinned), "AVX-512 kernels gave the AVX2 weights: the comparison shows nothing"


def test_bf16_opt_in_and_native_leave_the_kernels_alone():
    assert not cpu_kernels.applies("avx2", True) and not cpu_kernels.applies("avx2", "pure")
    assert not cpu_kernels.applies("native", False) and not cpu_kernels.applies(None, "auto")


@pytest.mark.skipif(not HAS_AVX512, reason="on an AVX2-only CPU the kernels are AVX2 already")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the pin is for CPU training; this process sees a CUDA GPU")
def test_too_late_to_pin_is_reported(monkeypatch):
    torch.ones(2).sum()  # this process has dispatched kernels: PyTorch's choice is fixed
    for name in PINNED_VARIABLES:  # setenv first, so that what pin() sets is undone afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu_kernels.pin("avx2", False) is False
    assert any("cpu_kernels: avx2" in str(w.message) for w in caught)
