"""Continuous batching for concurrent callers: one worker thread owns the model and a running Batch;
requests join it between decode steps and leave when done or cancelled.

A bounded waiting queue: `submit` raises QueueFull when it is full, so a server can answer 503
instead of piling up work.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

import torch

from openhermes.infer.engine import BaseEngine
from openhermes.infer.sequence import GenerationRequest, GenerationResult, Sequence
from openhermes.infer.threads import CPUThreads

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    pass


class Scheduler:
    def __init__(self, engine: BaseEngine, max_batch_size: int = 16, max_queue: int = 64,
                 on_step: Callable[[int], None] | None = None, threads: CPUThreads | None = None):
        self.engine = engine
        self.threads = threads  # the worker's CPU threads for decode steps and for prefills (None: as they are)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.on_step = on_step  # called with the number of rows after each decode step (metrics)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.batch = engine.new_batch()
        self.cond = threading.Condition()
        self.stopped = False
        # places taken in the batch as of the last scheduling decision: its rows plus those being prefilled into
        # it. Kept apart from len(self.batch), which grows row by row during a prefill: the two summed would count
        # those rows twice and refuse requests that have a place
        self.seated = 0
        self.progress_at = time.monotonic()  # the last step, or when work arrived at an idle scheduler
        self.thread = threading.Thread(target=self._run, name="openhermes-scheduler", daemon=True)
        self.thread.start()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.batch)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.stopped

    @property
    def idle(self) -> bool:
        return not self.waiting and not len(self.batch)

    def stalled_for(self) -> float:
        """Seconds the scheduler has had work without making a step (0 when it has none)."""
        if self.idle:
            return 0.0
        return time.monotonic() - self.progress_at

    def submit(self, request: GenerationRequest, on_delta: Callable[[str], None],
               on_done: Callable[[GenerationResult], None], on_error: Callable[[str], None]) -> Sequence:
        """Queue a request; callbacks run on the worker thread. Raises ContextWindowError, ValueError, QueueFull."""
        seq = self.engine.sequence(request, on_delta=on_delta, on_done=on_done, on_error=on_error)
        with self.cond:
            # max_queue counts requests waiting for a place in the batch: those that will join it at the next
            # step (free places) are not waiting, however fast they arrived
            free = max(0, self.max_batch_size - self.seated)
            if len(self.waiting) >= self.max_queue + free:
                raise QueueFull(f"the server is busy: {len(self.waiting) - free} requests are already waiting "
                                f"for the {self.max_batch_size} places in the batch")
            if self.idle:
                self.progress_at = time.monotonic()
            self.waiting.append(seq)
            self.cond.notify()
        return seq

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        restore = torch.get_num_threads()
        if self.threads is not None:
            self.threads.decoding()
        try:
            self._loop()
        finally:  # PyTorch keeps the last count for threads it starts later
            if self.threads is not None:
                torch.set_num_threads(restore)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and self.idle:
                    self.cond.wait()
                if self.stopped:
                    return
                joining = [self.waiting.popleft()
                           for _ in range(min(len(self.waiting), self.max_batch_size - len(self.batch)))]
                self.seated = len(self.batch) + len(joining)
            try:
                if joining:
                    with self.threads.prefilling() if self.threads is not None else contextlib.nullcontext():
                        self.batch.add_many(joining)
                rows = len(self.batch)
                self.batch.step()
                with self.cond:  # the rows that finished in this step free their places
                    self.seated = len(self.batch)
                self.progress_at = time.monotonic()
                if self.on_step is not None and rows:
                    self.on_step(rows)
            except Exception as e:  # a model failure must not kill the worker: fail its requests instead
                log.exception("generation failed")
                for seq in [*joining, *self.batch.rows]:
                    if not seq.done:
                        seq.fail(f"generation failed: {type(e).__name__}: {e}")
                self.batch = self.engine.new_batch()
                with self.cond:
                    self.seated = 0
                time.sleep(0.01)


class Watchdog:
    """Logs the scheduler thread's stack when it has had work and made no step for `stall_seconds`, once per
    stall: the evidence of where it hangs (a /health 503 says that it does)."""

    def __init__(self, scheduler: Scheduler, stall_seconds: float):
        self.scheduler, self.stall_seconds = scheduler, stall_seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="openhermes-watchdog", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        reported = False
        while not self.done.wait(min(5.0, self.stall_seconds / 4)):
            stalled = self.scheduler.stalled_for()
            if stalled < self.stall_seconds:
                reported = False
            elif not reported:
                reported = True
                frame = sys._current_frames().get(self.scheduler.thread.ident)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "(the thread has ended)\n"
                log.error("the scheduler has made no step for %.0f s with %d active and %d waiting; its stack:\n%s",
                          stalled, self.scheduler.active, self.scheduler.queued, stack)
