"""The server's CPU threads: decode steps leave cores to the HTTP side, prefills use them all (infer/threads.py)."""

import threading

import pytest
import torch

from openhermes.infer.sampling import PRESETS
from openhermes.infer.scheduler import Scheduler
from openhermes.infer.sequence import GenerationRequest
from openhermes.infer.threads import CPUThreads


def test_reserving_leaves_cores_while_decoding_and_none_while_prefilling():
    assert CPUThreads.reserving(1, threads=2) == CPUThreads(decode=1, prefill=2)
    assert CPUThreads.reserving(1, threads=16) == CPUThreads(decode=15, prefill=16)
    assert CPUThreads.reserving(0, threads=4) == CPUThreads(decode=4, prefill=4)
    assert CPUThreads.reserving(3, threads=2) == CPUThreads(decode=1, prefill=2)  # never below one
    # The default: a core for the HTTP side only where it is not half the machine.
    assert CPUThreads.reserving(None, threads=2) == CPUThreads(decode=2, prefill=2)
    assert CPUThreads.reserving(None, threads=4) == CPUThreads(decode=3, prefill=4)
    with pytest.raises(ValueError, match="reserved cores"):
        CPUThreads.reserving(-1, threads=2)


def test_the_scheduler_decodes_on_the_decode_threads_and_prefills_on_all(engine, forwards):
    before = torch.get_num_threads()
    steps: list[int] = []  # decode steps end with on_step
    done = threading.Semaphore(0)
    sched = Scheduler(engine, threads=CPUThreads(decode=1, prefill=3), on_step=lambda rows: steps.append(
        torch.get_num_threads()))
    try:
        for text in ("hello there", "tell me a story about the sea"):
            sched.submit(GenerationRequest(engine.chat_prompt([{"role": "user", "content": text}]),
                                           PRESETS["greedy"], 6, min_tokens=6),
                         lambda delta: None, lambda result: done.release(), print)
        for _ in range(2):
            assert done.acquire(timeout=60)
    finally:
        sched.stop()
    prefills = [threads for _, tokens, threads in forwards if tokens > 1]
    assert prefills and set(prefills) == {3}
    assert steps and set(steps) == {1}
    assert torch.get_num_threads() == before  # the caller's thread is untouched
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [before]  # and threads started later get the count from before the scheduler
