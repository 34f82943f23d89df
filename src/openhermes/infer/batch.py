"""A running batch: sequences decode together over one KV cache; they may join and leave between steps.

Our own decode loop, because transformers' generate() and its continuous-batching manager apply
one generation config to every row, and requests here each have their own samplers and stop
strings, join while others run, and can be cancelled.

Layout (the Slab): per layer one buffer of (row capacity, heads, column capacity, head dim). Rows
[0, n) are the running sequences; columns [start, end) hold their tokens aligned on the right (a
shorter row's left part is padding, masked), and a decode step writes every row's new token in
column `end`. Joining, leaving and decoding write into the buffers in place; a buffer is remade
(one copy) only when it has no room left. (transformers' DynamicCache grows by torch.cat, which
copies the whole cache at every step, most of a step at 8 rows of 1.5k tokens, see
benchmarks/decode_costs.py; merging a row by re-padding copied every row's cache again.) A new
sequence is prefilled alone (no padding, so exactly its unbatched computation) and then written
into a free row.
With a PrefixCache, the prefill starts from the stored KV of the longest known prefix and computes
only the rest; prompts after their prefill, and finished sequences, are stored for later requests.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sequence import Sequence

HEADROOM = 256  # at least this many spare columns on each side when a buffer is (re)made (and half the width)
SPARE_ROWS = 4


class Slab:
    """The batch's KV buffers and attention mask; see the module's docstring."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None  # (row capacity, column capacity), 1 = real token
        self.rows = 0
        self.start = self.end = 0

    @property
    def width(self) -> int:
        return self.end - self.start

    def _remake(self, row_cap: int, left: int, right: int) -> None:
        """New zeroed buffers (masked columns must hold finite numbers) with `left`/`right` spare columns
        around the current ones; the running rows are copied over."""
        width = self.width
        cols = left + width + right
        keys, values, mask = self.keys, self.values, self.mask
        self.keys = [k.new_zeros((row_cap, k.shape[1], cols, k.shape[3])) for k in keys]
        self.values = [v.new_zeros((row_cap, v.shape[1], cols, v.shape[3])) for v in values]
        new_mask = mask.new_zeros((row_cap, cols))
        if self.rows:
            for old, new in zip(keys + values, self.keys + self.values, strict=True):
                new[:self.rows, :, left:left + width] = old[:self.rows, :, self.start:self.end]
            new_mask[:self.rows, left:left + width] = mask[:self.rows, self.start:self.end]
        self.mask = new_mask
        self.start, self.end = left, left + width

    def add_row(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Write one sequence's KV ((1, heads, n, dim) per layer) into a free row, right-aligned; returns the row."""
        n = kv[0][0].shape[2]
        if not self.keys:  # the first row: buffers shaped after it
            self.keys = [k.new_zeros((SPARE_ROWS, k.shape[1], 0, k.shape[3])) for k, _ in kv]
            self.values = [v.new_zeros((SPARE_ROWS, v.shape[1], 0, v.shape[3])) for _, v in kv]
            self.mask = torch.zeros((SPARE_ROWS, 0), dtype=torch.long, device=kv[0][0].device)
        grow_left = max(0, n - self.width)
        row_cap = self.keys[0].shape[0]
        if self.rows == row_cap or grow_left > self.start:
            # Chats come back longer each turn: room on the left for the next joins, not only this one.
            self._remake(max(row_cap, self.rows + SPARE_ROWS), grow_left + max(HEADROOM, self.width // 2),
                         max(HEADROOM, self.keys[0].shape[2] - self.end))
        if grow_left:  # the running rows' new left columns are padding
            self.mask[:self.rows, self.start - grow_left:self.start] = 0
            self.start -= grow_left
        row = self.rows
        for kbuf, vbuf, (k, v) in zip(self.keys, self.values, kv, strict=True):
            kbuf[row, :, self.end - n:self.end] = k[0]
            vbuf[row, :, self.end - n:self.end] = v[0]
        self.mask[row, self.start:self.end] = 0
        self.mask[row, self.end - n:self.end] = 1
        self.rows += 1
        return row

    def open_column(self) -> None:
        """Room for one more token in every row (the next decode step writes column `end`)."""
        if self.end == self.keys[0].shape[2]:
            self._remake(self.keys[0].shape[0], max(HEADROOM, self.width // 2), max(HEADROOM, self.width // 2))
        self.mask[:self.rows, self.end] = 1

    def row_kv(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One row's real tokens, (1, heads, n, dim) per layer (views)."""
        n = int(self.mask[row, self.start:self.end].sum())
        return [(k[row:row + 1, :, self.end - n:self.end], v[row:row + 1, :, self.end - n:self.end])
                for k, v in zip(self.keys, self.values, strict=True)]

    def keep(self, live: list[int]) -> list[int]:
        """Keep these rows: rows past the new count move into the free places (one row copy each).
        Returns the old row index now at each place 0..len(live)-1."""
        m = len(live)
        order = list(range(self.rows))
        holes = [i for i in range(m) if i not in live]
        movers = [i for i in live if i >= m]
        for hole, mover in zip(holes, movers, strict=True):
            for buf in self.keys + self.values:
                buf[hole, :, self.start:self.end] = buf[mover, :, self.start:self.end]
            self.mask[hole, self.start:self.end] = self.mask[mover, self.start:self.end]
            order[hole] = mover
        self.rows = m
        if m:  # columns that are padding in every remaining row are dropped
            real = self.mask[:m, self.start:self.end].any(0)
            self.start += int(real.int().argmax()) if bool(real.any()) else self.width
        else:  # empty: the buffers stay for the next rows, with the spare room on the right kept
            self.start = self.end = max(0, self.keys[0].shape[2] - HEADROOM)
        return order[:m]

    @property
    def padded(self) -> bool:
        return bool((self.mask[:self.rows, self.start:self.end] == 0).any())


class SlabLayer(DynamicLayer):
    """One layer of the Slab as transformers' models see a cache layer: `update` writes the step's keys and
    values at column `end` of every row and returns the rows' [start, end + n) views."""

    def __init__(self, slab: Slab, index: int) -> None:
        super().__init__()
        self.slab, self.index = slab, index
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        s, n = self.slab, key_states.shape[-2]
        k, v = s.keys[self.index], s.values[self.index]
        k[:s.rows, :, s.end:s.end + n] = key_states
        v[:s.rows, :, s.end:s.end + n] = value_states
        return k[:s.rows, :, s.start:s.end + n], v[:s.rows, :, s.start:s.end + n]

    def get_seq_length(self) -> int:
        return self.slab.width


class Batch:
    def __init__(self, model, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.prefix_cache = prefix_cache
        self.device = next(model.parameters()).device
        self.rows: list[Sequence] = []
        self.slab: Slab | None = None
        self.cache: Cache | None = None
        self.positions: torch.Tensor | None = None  # (B,) position id of each row's next token
        self.padded = False  # whether any row has left padding (else no mask is needed: faster)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Prefill a new sequence, sample its first token, and write it into the batch."""
        if seq.cancelled.is_set():
            seq.finish_cancelled()
            return
        ids = torch.tensor([seq.ids], device=self.device)
        cache = DynamicCache()
        hit = self.prefix_cache.lookup(seq.ids) if self.prefix_cache is not None else None
        start = 0
        if hit is not None:
            start, layers = hit
            seq.cached_tokens = start
            for i, (k, v) in enumerate(layers):
                cache.update(k, v, i)
        # Positions follow from the cache's length: the suffix is computed as if the prefix had just been.
        out = self.model(input_ids=ids[:, start:], past_key_values=cache, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if self.prefix_cache is not None:
            self.prefix_cache.store(seq.ids, kv)
        seq.advance(out.logits[0, -1])
        if seq.done:
            return
        if self.slab is None:  # the first sequence of this batch: buffers shaped after its cache
            self.slab = Slab()
            self.cache = Cache(layers=[SlabLayer(self.slab, i) for i in range(len(kv))])
            self.positions = torch.empty(0, dtype=torch.long, device=self.device)
        self.slab.add_row(kv)
        self.padded = self.slab.padded
        self.positions = torch.cat([self.positions, torch.tensor([ids.shape[1]], device=self.device)])
        self.rows.append(seq)

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every row; finished and cancelled rows leave the batch."""
        if not self.rows:
            return
        for seq in self.rows:
            if seq.cancelled.is_set() and not seq.done:
                seq.finish_cancelled()
        live = [i for i, s in enumerate(self.rows) if not s.done]
        if len(live) < len(self.rows):
            self._keep(live)
            if not self.rows:
                return
        slab = self.slab
        last = torch.tensor([[s.ids[-1]] for s in self.rows], device=self.device)
        slab.open_column()
        mask = slab.mask[:slab.rows, slab.start:slab.end + 1] if self.padded else None
        out = self.model(input_ids=last, attention_mask=mask, position_ids=self.positions[:, None],
                         past_key_values=self.cache, use_cache=True)
        slab.end += 1
        self.positions = self.positions + 1
        logits = out.logits[:, -1]
        bans = [s.greedy_bans for s in self.rows]
        argmax = None
        if any(b is not None for b in bans):
            picks = logits
            if any(bans):  # rows under min_tokens: their stop tokens cannot be chosen
                picks = logits.clone()
                for i, b in enumerate(bans):
                    if b:
                        picks[i, b] = float("-inf")
            argmax = picks.argmax(-1).tolist()
        for i, seq in enumerate(self.rows):
            if bans[i] is not None:
                seq.push(argmax[i])
            else:
                seq.advance(logits[i])
        live = [i for i, s in enumerate(self.rows) if not s.done]
        if len(live) < len(self.rows):
            self._keep(live)

    def _keep(self, live: list[int]) -> None:
        """Drop finished rows (storing each one's KV, prompt + reply: the client's next turn starts with both).
        A reply that ended by itself is stored even if its request was cancelled since: a server cancels every
        request once its response is sent, which can happen before this runs."""
        if self.prefix_cache is not None:
            for i, seq in enumerate(self.rows):
                if i not in live and seq.finish_reason != "cancelled":
                    kv = self.slab.row_kv(i)
                    self.prefix_cache.store(seq.ids[:kv[0][0].shape[2]], kv)
        order = self.slab.keep(live)  # with no rows left the buffers stay: the next request writes into them
        self.rows = [self.rows[i] for i in order]
        self.positions = self.positions[torch.tensor(order, dtype=torch.long, device=self.device)]
        self.padded = self.slab.padded
