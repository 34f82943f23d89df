"""KV caches of recent prompts and replies, so a request that repeats a known prefix prefills only the rest.

Chat clients resend the whole conversation every turn (SillyTavern sends the full history for each reply):
without this, every turn prefills thousands of tokens again. vLLM (automatic prefix caching) and llama.cpp
(`cache_prompt`) reuse the shared prefix; this is the same idea for our PyTorch engine, ours because its
decode loop is ours (batch.py). Entries are whole sequences (a prompt after its prefill, a prompt plus its
reply when it finishes); a lookup takes the entry sharing the longest prefix with the new prompt. Bounded by
a memory budget, least recently used out first."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

MIN_REUSE = 16  # shorter shared prefixes are not worth a lookup's copy


def shared_prefix(a, b) -> int:
    """How many leading tokens two id sequences (lists or arrays) have in common."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    def __init__(self, budget_mb: float = 1024, max_entries: int = 256):
        self.budget = int(budget_mb * 2**20)
        self.max_entries = max_entries
        # Keyed by the ids' int64 bytes: bytes keep their hash (an OrderedDict hashes each key again as it iterates,
        # which for tuples of a thousand ids cost a millisecond a store), and a byte prefix is an id prefix.
        self.entries: OrderedDict[bytes, tuple[np.ndarray, list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.reused_tokens = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(layers) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """(n, per-layer (keys, values) of the first n tokens) for the longest stored prefix of `ids`,
        leaving at least one token to compute (its logits are the next token's); None if none is useful."""
        if not self.entries or len(ids) <= MIN_REUSE:
            return None
        want = np.asarray(ids, dtype=np.int64)
        head = want[:MIN_REUSE].tobytes()  # an entry not starting so cannot share enough: skipped at bytes' speed
        with self._lock:
            best, best_key = 0, None
            for key, (stored, _) in self.entries.items():
                if not key.startswith(head):
                    continue
                n = shared_prefix(stored, want[:-1])
                if n > best:
                    best, best_key = n, key
            if best < MIN_REUSE:
                return None
            self.entries.move_to_end(best_key)
            layers = self.entries[best_key][1]
            self.hits += 1
            self.reused_tokens += best
            return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def store(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]], owned: bool = False) -> None:
        """Keep the KV of `ids` (one row: (1, heads, len(ids), dim) per layer); copied, so later changes
        to the batch's cache never reach it, unless `owned`: tensors of their own that nothing else writes."""
        if len(ids) <= MIN_REUSE or self.budget <= 0:
            return
        array = np.asarray(ids, dtype=np.int64)
        key = array.tobytes()
        with self._lock:
            if key in self.entries:  # known already (a prompt stored before): no copy
                self.entries.move_to_end(key)
                return
        if not owned:
            layers = [(k.detach().clone(), v.detach().clone()) for k, v in layers]
        size = self._size(layers)
        if size > self.budget:
            return
        with self._lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return
            # An entry that is a prefix of this one is now redundant: this one answers every lookup it did.
            for old in [k for k in self.entries if len(k) < len(key) and key.startswith(k)]:
                self.bytes -= self._size(self.entries.pop(old)[1])
            self.entries[key] = (array, layers)
            self.bytes += size
            while self.bytes > self.budget or len(self.entries) > self.max_entries:
                _, (_, gone) = self.entries.popitem(last=False)
                self.bytes -= self._size(gone)
