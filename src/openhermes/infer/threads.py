"""How many CPU threads the model's work uses while a server shares the machine with it.

A decode step is many small operations, each split over PyTorch's intra-op (OpenMP) threads; a step waits for
its slowest thread, so when the HTTP side (the event loop, tokenization, the client on the same host) takes a
core from one of them, every operation stalls. vLLM's CPU backend reserves a core for its API server for this
reason (VLLM_CPU_NUM_OF_RESERVED_CPU, default 1). Decode steps here run on the other cores; prefills, large
matrix products that pay for every core, still use all of them
(benchmarks/reserved_cores.py measures both ways). By default one core is reserved where there are at least
RESERVE_FROM_CORES: on 2 cores a reserved core is half the machine, and there it paid only while the client on the
same host was a heavy one (httpx: 1.12-1.17x tokens/s; aiohttp: 1.00x, and time to first token without prefix
reuse 147 against 109 ms).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


RESERVE_FROM_CORES = 4


@dataclass(frozen=True)
class CPUThreads:
    decode: int
    prefill: int

    @classmethod
    def reserving(cls, reserved: int | None, threads: int | None = None) -> CPUThreads:
        """Decode on `threads` (default: PyTorch's own count, at most the available cores) less `reserved` (None: 1
        from RESERVE_FROM_CORES threads up, else 0), at least one; prefill on all `threads`."""
        threads = threads or min(torch.get_num_threads(), available_cores())
        if reserved is None:
            reserved = 1 if threads >= RESERVE_FROM_CORES else 0
        if reserved < 0:
            raise ValueError(f"reserved cores must be 0 or more, not {reserved}")
        return cls(decode=max(1, threads - reserved), prefill=threads)

    def decoding(self) -> None:
        """Set the calling thread (the one that runs the model) to the decode count. OpenMP's and MKL's thread
        counts are per calling thread; PyTorch also keeps the last value for threads it starts later."""
        torch.set_num_threads(self.decode)

    @contextmanager
    def prefilling(self) -> Iterator[None]:
        if self.prefill == self.decode:
            yield
            return
        torch.set_num_threads(self.prefill)
        try:
            yield
        finally:
            torch.set_num_threads(self.decode)
