"""Continuous batching for concurrent callers: one worker thread owns the model and a running Batch;
requests join it between decode steps and leave when done or cancelled.

A bounded waiting queue: `submit` raises QueueFull when it is full, so a server can answer 503
instead of piling up work.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
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
        self.thread = threading.Thread(target=self._run, name="openhermes-scheduler", daemon=True)
        self.thread.start()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.batch)

    def submit(self, request: GenerationRequest, on_delta: Callable[[str], None],
               on_done: Callable[[GenerationResult], None], on_error: Callable[[str], None]) -> Sequence:
        """Queue a request; callbacks run on the worker thread. Raises ContextWindowError, ValueError, QueueFull."""
        seq = self.engine.sequence(request, on_delta=on_delta, on_done=on_done, on_error=on_error)
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are already waiting")
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
                while not self.stopped and not self.waiting and not len(self.batch):
                    self.cond.wait()
                if self.stopped:
                    return
                joining = [self.waiting.popleft()
                           for _ in range(min(len(self.waiting), self.max_batch_size - len(self.batch)))]
            try:
                if joining:
                    with self.threads.prefilling() if self.threads is not None else contextlib.nullcontext():
                        self.batch.add_many(joining)
                rows = len(self.batch)
                self.batch.step()
                if self.on_step is not None and rows:
                    self.on_step(rows)
            except Exception as e:  # a model failure must not kill the worker: fail its requests instead
                log.exception("generation failed")
                for seq in [*joining, *self.batch.rows]:
                    if not seq.done:
                        seq.fail(f"generation failed: {type(e).__name__}: {e}")
                self.batch = self.engine.new_batch()
                time.sleep(0.01)
