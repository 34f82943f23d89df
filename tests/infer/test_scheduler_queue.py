"""The scheduler's bounded queue (infer/scheduler.py): `max_queue` counts only the requests that wait for a place in
the batch, also while a prefill of several requests is landing in it row by row."""

import threading

import pytest

from openhermes.infer.batch import Batch
from openhermes.infer.sampling import PRESETS
from openhermes.infer.scheduler import QueueFull, Scheduler
from openhermes.infer.sequence import GenerationRequest


def test_free_places_are_not_counted_twice_while_a_prefill_lands(engine, monkeypatch):
    """Batch 4, queue 2. A decodes; B and C join together, prefilled one after the other (very different lengths).
    While C's prefill runs, A and B are in the batch and C has the third place: one place is free, so three more
    requests are accepted (one for the free place, two waiting) and the fourth is refused."""
    # (entered, release) for the two pauses: A's prefill, and C's after A and B have landed
    first, window = (threading.Event(), threading.Event()), (threading.Event(), threading.Event())
    prefill = Batch._prefill_in_place

    def pausing_prefill(self, group):
        if not first[0].is_set():
            pause = first
        elif len(self.rows) >= 2 and not window[0].is_set():
            pause = window
        else:
            pause = None
        if pause is not None:
            pause[0].set()
            pause[1].wait(30)
        return prefill(self, group)

    monkeypatch.setattr(Batch, "_prefill_in_place", pausing_prefill)

    def request(text: str) -> GenerationRequest:
        return GenerationRequest(engine.chat_prompt([{"role": "user", "content": text}]), PRESETS["greedy"], 400,
                                 min_tokens=400)

    sched = Scheduler(engine, max_batch_size=4, max_queue=2)
    seqs = []

    def submit(text: str):
        seqs.append(sched.submit(request(text), lambda delta: None, lambda result: None, print))

    try:
        submit("a")
        assert first[0].wait(30)  # A has the first place; B and C wait, then join the batch together
        submit("b")
        submit("tell me a long story about the sea and the ships, " * 8)  # C: its own prefill, after B's
        first[1].set()
        assert window[0].wait(60), "B and C did not land one after the other"
        for text in ("d", "e", "f"):
            submit(text)
        with pytest.raises(QueueFull):
            submit("g")
    finally:
        first[1].set()
        window[1].set()
        for seq in seqs:
            seq.cancel()
        sched.stop()
