"""Events from the generation thread to the event loop, with one wake-up for many events.

Each decode step produces a delta for every running request; waking the event loop once per delta
(`call_soon_threadsafe` writes to its self-pipe every time) costs CPU that the model's own threads need on a
small machine. Here the first event after a flush schedules one wake-up and the rest of the step's events
ride along with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, object]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, queue: asyncio.Queue, item: object) -> None:
        """Thread-safe: `item` reaches `queue` on the loop's thread, in order."""
        with self._lock:
            self._items.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Deltas:
    """One choice's text deltas, sent in groups: the first at once (time to first token), then one group per
    `interval` deltas (the server's --stream-interval), and what is left when the choice ends (`flush`)."""

    def __init__(self, interval: int, send: Callable[[str], None]):
        self.interval, self.send = interval, send
        self.held: list[str] = []
        self.sent_first = False

    def add(self, text: str) -> None:
        self.held.append(text)
        if not self.sent_first or len(self.held) >= self.interval:
            self.sent_first = True
            self.flush()

    def flush(self) -> None:
        if self.held:
            self.send("".join(self.held))
            self.held.clear()
