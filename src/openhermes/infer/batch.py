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
sequence is prefilled, then written into a free row: alone (no padding, so exactly its unbatched
computation), or together with others that joined at the same time where that pays (Batch._groups).
With a PrefixCache, the prefill starts from the stored KV of the longest known prefix and computes
only the rest; prompts after their prefill, and sequences that leave (finished or stopped), are stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from openhermes.infer.fast_decode import FastDecode
from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sequence import Sequence

HEADROOM = 256  # at least this many spare columns on each side when a buffer is (re)made (and half the width)
SPARE_ROWS = 4
# Padded tokens of one grouped prefill, as vLLM's max_num_batched_tokens bounds a step; longer prompts go alone.
PREFILL_TOKENS = 2048


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


class Costs:
    """What a forward costs here, measured as the batch runs (running averages): a decode step, which is about one
    forward's fixed cost, and a prefill's time per token beyond that. Until both are known, prefills are grouped."""

    def __init__(self) -> None:
        self.step: float | None = None
        self.per_token: float | None = None

    def stepped(self, seconds: float) -> None:
        self.step = seconds if self.step is None else 0.9 * self.step + 0.1 * seconds

    def prefilled(self, tokens: int, seconds: float) -> None:
        if self.step is not None and tokens >= 16:
            rate = max(0.0, seconds - self.step) / tokens
            self.per_token = rate if self.per_token is None else 0.8 * self.per_token + 0.2 * rate

    def cheap(self, tokens: int) -> bool:
        """Whether computing `tokens` alone costs less than a forward's fixed cost (grouping it then pays)."""
        return self.step is None or self.per_token is None or tokens * self.per_token <= self.step


@dataclass
class _Prefill:
    """A sequence to prefill: `start` tokens' KV (`layers`) come from the prefix cache, the rest is computed."""
    seq: Sequence
    start: int
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None

    @property
    def todo(self) -> int:
        return len(self.seq.ids) - self.start


class Batch:
    def __init__(self, model, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.prefix_cache = prefix_cache
        self.fast = FastDecode.for_model(model)  # a leaner decode step where it computes the same, else None
        self.device = next(model.parameters()).device
        self.rows: list[Sequence] = []
        self.slab: Slab | None = None
        self.cache: Cache | None = None
        self.positions: torch.Tensor | None = None  # (B,) position id of each row's next token
        self.padded = False  # whether any row has left padding (else no mask is needed: faster)
        self.costs = Costs()
        # The masks' dtype: what the model computes in (a quantized model's own dtype can differ).
        self.dtype = model.get_input_embeddings().weight.dtype
        # Our own 4D masks reach the attention as given only with sdpa/eager, and they know no sliding window.
        config = model.config
        self.takes_4d_mask = getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "eager")
        self.window = getattr(config, "sliding_window", None)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Prefill a new sequence, sample its first token, and write it into the batch."""
        self.add_many([seq])

    @torch.inference_mode()
    def add_many(self, seqs: list[Sequence]) -> None:
        """Prefill new sequences, sample each one's first token, and write them into the batch. Prompts left with
        short parts to compute (a chat's next turn after prefix reuse) are prefilled together where one forward's
        fixed cost is most of their work (see _groups)."""
        work = []
        for seq in seqs:
            if seq.cancelled.is_set():
                seq.finish_cancelled()
                continue
            hit = self.prefix_cache.lookup(seq.ids) if self.prefix_cache is not None else None
            start, layers = hit if hit is not None else (0, None)
            seq.cached_tokens = start
            work.append(_Prefill(seq, start, layers))
        for group in self._groups(work):
            started = time.perf_counter()
            kvs, logits = self._prefill(group) if len(group) > 1 else self._prefill_alone(group[0])
            self.costs.prefilled(sum(w.todo for w in group), time.perf_counter() - started)
            for item, kv, row_logits in zip(group, kvs, logits, strict=True):
                if self.prefix_cache is not None:  # the prefill's KV tensors are its own
                    self.prefix_cache.store(item.seq.ids, kv, owned=True)
                item.seq.advance(row_logits)
                if not item.seq.done:
                    self._join(item.seq, kv)

    def _groups(self, work: list[_Prefill]) -> list[list[_Prefill]]:
        """Which prefills share a forward. Everyone in a group gets a first token only when the whole group is done,
        so grouping pays only where a prompt's own compute is below one forward's fixed cost (measured as the batch
        runs: Costs); those go together, shortest first, with similar lengths and at most PREFILL_TOKENS padded
        tokens a group; the rest go alone, shortest first. One at a time where a shared mask cannot be given."""
        if not self.takes_4d_mask:
            return [[w] for w in work]
        groups: list[list[_Prefill]] = []
        for item in sorted(work, key=lambda w: w.todo):
            group = groups[-1] if groups else None
            if (group is None or not self.costs.cheap(item.todo)  # sorted: then the shorter ones are cheap too
                    or (len(group) + 1) * item.todo > PREFILL_TOKENS or item.todo > 2 * group[0].todo + 64
                    or not self._own_mask_fits(len(item.seq.ids))):
                groups.append([item])
            else:
                group.append(item)
        return groups

    def _prefill_alone(self, item: _Prefill) -> tuple[list, torch.Tensor]:
        """One prompt, no padding: exactly its unbatched computation."""
        cache = DynamicCache()
        for i, (k, v) in enumerate(item.layers or ()):
            cache.update(k, v, i)
        # Positions follow from the cache's length: the suffix is computed as if the prefix had just been.
        ids = torch.tensor([item.seq.ids[item.start:]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return [[(layer.keys, layer.values) for layer in cache.layers]], out.logits[:, -1]

    def _prefill(self, group: list[_Prefill]) -> tuple[list, torch.Tensor]:
        """Several prompts in one forward. Each row: its reused prefix right-aligned in the first `prefix` columns,
        then the tokens to compute right-aligned in the next `width`; a 4D mask (causal, real columns only) and
        explicit positions make each row's result its own computation's. The rows' KV come back compact."""
        prefix, width, rows, dev = max(w.start for w in group), max(w.todo for w in group), len(group), self.device
        ids = torch.zeros((rows, width), dtype=torch.long, device=dev)
        positions = torch.zeros((rows, width), dtype=torch.long, device=dev)
        real = torch.zeros((rows, prefix + width), dtype=torch.bool, device=dev)
        for r, w in enumerate(group):
            ids[r, width - w.todo:] = torch.tensor(w.seq.ids[w.start:], device=dev)
            positions[r, width - w.todo:] = torch.arange(w.start, len(w.seq.ids), device=dev)
            real[r, prefix - w.start:prefix] = True
            real[r, prefix + width - w.todo:] = True
        if prefix:  # the prefixes go into buffers the forward then writes its columns into (no growing by cat)
            slab = Slab()
            template = next(w.layers for w in group if w.layers)
            for bufs, j in ((slab.keys, 0), (slab.values, 1)):
                for i, layer in enumerate(template):
                    t = layer[j]
                    buf = t.new_empty((rows, t.shape[1], prefix + width, t.shape[3]))
                    for r, w in enumerate(group):
                        buf[r, :, :prefix - w.start] = 0  # padding must hold finite numbers
                        if w.start:
                            buf[r, :, prefix - w.start:prefix] = w.layers[i][j][0]
                    bufs.append(buf)
            slab.rows, slab.start, slab.end = rows, 0, prefix
            cache = Cache(layers=[SlabLayer(slab, i) for i in range(len(template))])
        else:
            cache = DynamicCache()
        cols = torch.arange(prefix + width, device=dev)
        query = prefix + torch.arange(width, device=dev)
        # A padding query also sees itself: with nothing real before it, a row of the mask would be all masked.
        allowed = (cols <= query[:, None]) & real[:, None, :] | (cols == query[:, None])
        out = self.model(input_ids=ids, attention_mask=self._additive(allowed[:, None]), position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        full = list(zip(slab.keys, slab.values, strict=True)) if prefix else [(la.keys, la.values) for la in cache.layers]
        kvs = []
        for r, w in enumerate(group):
            left, right = prefix - w.start, prefix + width - w.todo
            if left == right:  # one run of columns: a copy of it
                kvs.append([(k[r:r + 1, :, left:].clone(), v[r:r + 1, :, left:].clone()) for k, v in full])
            else:
                kvs.append([tuple(torch.cat([t[r:r + 1, :, left:prefix], t[r:r + 1, :, right:]], 2) for t in (k, v))
                            for k, v in full])
        return kvs, out.logits[:, -1]

    def _join(self, seq: Sequence, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a prefilled sequence's KV into a free row of the running batch."""
        if self.slab is None:  # the first sequence of this batch: buffers shaped after its cache
            self.slab = Slab()
            self.cache = Cache(layers=[SlabLayer(self.slab, i) for i in range(len(kv))])
            self.positions = torch.empty(0, dtype=torch.long, device=self.device)
        self.slab.add_row(kv)
        self.padded = self.slab.padded
        self.positions = torch.cat([self.positions, torch.tensor([len(seq.ids) - 1], device=self.device)])
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
        # Past a sliding window (or with another attention) transformers builds the mask, and the model's forward
        # decodes: the fast step knows no window.
        own_mask = self._own_mask_fits(slab.width + 1)
        mask = self._step_mask(own_mask) if self.padded else None
        started = time.perf_counter()
        if self.fast is not None and own_mask:
            logits = self.fast(last[:, 0], self.positions, mask, slab)
        else:
            logits = self.model(input_ids=last, attention_mask=mask, position_ids=self.positions[:, None],
                                past_key_values=self.cache, use_cache=True).logits[:, -1]
        slab.end += 1
        self.positions = self.positions + 1
        self.costs.stepped(time.perf_counter() - started)
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

    def _step_mask(self, own: bool) -> torch.Tensor:
        """The step's mask over the rows' columns. Given to the model as its final 4D additive form where the model
        takes that (`own`: transformers then skips building it, and SDPA is faster with it than with a boolean one)."""
        slab = self.slab
        real = slab.mask[:slab.rows, slab.start:slab.end + 1]
        return self._additive((real != 0)[:, None, None, :]) if own else real

    def _own_mask_fits(self, columns: int) -> bool:
        """Whether the model can be given our own 4D mask over `columns` tokens (else transformers builds it)."""
        return self.takes_4d_mask and not (self.window and columns > self.window)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """A boolean 4D mask (True = attend) in the additive form attention adds to its scores."""
        return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(self.dtype).min)

    def _keep(self, live: list[int]) -> None:
        """Drop finished rows, storing each one's KV (prompt + reply: the client's next turn starts with both).
        Cancelled ones too: a server cancels every request once its response is sent, which can come before this
        runs, and a reply stopped by its user (SillyTavern's stop button) is often continued or resent."""
        if self.prefix_cache is not None:
            for i, seq in enumerate(self.rows):
                if i not in live:
                    kv = self.slab.row_kv(i)
                    self.prefix_cache.store(seq.ids[:kv[0][0].shape[2]], kv)
        order = self.slab.keep(live)  # with no rows left the buffers stay: the next request writes into them
        self.rows = [self.rows[i] for i in order]
        self.positions = self.positions[torch.tensor(order, dtype=torch.long, device=self.device)]
        self.padded = self.slab.padded
