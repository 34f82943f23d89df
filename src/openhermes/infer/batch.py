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
sequence is prefilled straight into a free row: alone (no padding, so exactly its unbatched
computation), or together with others that joined at the same time where that pays (Batch._groups).
With a PrefixCache, the prefill starts from the stored KV of the longest known prefix (copied into the
row once) and computes only the rest; prompts not mostly found there are stored after their prefill, and
sequences that leave (finished or stopped) are stored with their replies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
# transformers' own switch for SDPA on grouped key/value heads (enable_gqa) even with a mask; see Batch._forward.
GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def _grouped_sdpa(on: bool) -> Iterator[None]:
    if not on or GQA_SWITCH in os.environ:  # a user's own setting stands
        yield
        return
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        os.environ.pop(GQA_SWITCH, None)


class Slab:
    """The batch's KV buffers and attention mask; see the module's docstring. Columns [start, end) of rows
    [0, rows) hold finite numbers; the rest of a buffer may hold anything."""

    unwritten: float | None = None  # tests set NaN: what a new buffer holds where nothing was written

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
        """New buffers with `left`/`right` spare columns around the current ones; the running rows are copied over.
        Nothing else is written: what attention reads of the rest is zeroed when it comes into use (zero)."""
        width, rows = self.width, self.rows
        cols = left + width + right
        keys, values, mask = self.keys, self.values, self.mask
        self.keys = [k.new_empty((row_cap, k.shape[1], cols, k.shape[3])) for k in keys]
        self.values = [v.new_empty((row_cap, v.shape[1], cols, v.shape[3])) for v in values]
        for old, new in zip(keys + values, self.keys + self.values, strict=True):
            if self.unwritten is not None:
                new.fill_(self.unwritten)
            new[:rows, :, left:left + width] = old[:rows, :, self.start:self.end]
        new_mask = mask.new_zeros((row_cap, cols))
        new_mask[:rows, left:left + width] = mask[:rows, self.start:self.end]
        self.mask = new_mask
        self.start, self.end = left, left + width

    def zero(self, rows: slice, left: int, right: int) -> None:
        """Zero columns [left, right) of these rows: masked columns that attention reads must hold finite numbers
        (a score of NaN stays NaN however it is masked), and buffers are made empty, not zeroed, because zeroing
        a whole new buffer was most of a next turn's prefill whenever the buffer grew."""
        if right > left:
            for buf in self.keys + self.values:
                buf[rows, :, left:right] = 0

    def add_row(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Write one sequence's KV ((1, heads, n, dim) per layer) into a free row, right-aligned; returns the row."""
        n = kv[0][0].shape[2]
        if not self.keys:  # the first row: buffers shaped after it
            self.shape_after(kv)
        row = self.reserve(1, n)
        for kbuf, vbuf, (k, v) in zip(self.keys, self.values, kv, strict=True):
            kbuf[row, :, self.end - n:self.end] = k[0]
            vbuf[row, :, self.end - n:self.end] = v[0]
        self.mask[row, self.end - n:self.end] = 1
        return row

    def shape_after(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Empty buffers (no columns yet) for keys and values shaped as these ((1, heads, n, dim) per layer)."""
        self.keys = [k.new_zeros((SPARE_ROWS, k.shape[1], 0, k.shape[3])) for k, _ in kv]
        self.values = [v.new_zeros((SPARE_ROWS, v.shape[1], 0, v.shape[3])) for _, v in kv]
        self.mask = torch.zeros((SPARE_ROWS, 0), dtype=torch.long, device=kv[0][0].device)

    def reserve(self, count: int, length: int) -> int:
        """`count` new rows with room for `length` tokens each, right-aligned at `end`, all masked until written;
        the caller writes all `length` columns (what it does not, it zeroes). Returns the first new row."""
        grow_left = max(0, length - self.width)
        row_cap = self.keys[0].shape[0]
        if self.rows + count > row_cap or grow_left > self.start:
            # Chats come back longer each turn: room on the left for the next joins, not only these.
            self._remake(max(row_cap, self.rows + count - 1 + SPARE_ROWS),
                         grow_left + max(HEADROOM, self.width // 2, length // 2),
                         max(HEADROOM, self.keys[0].shape[2] - self.end))
        if grow_left:  # the running rows' new left columns are padding
            self.mask[:self.rows, self.start - grow_left:self.start] = 0
            self.zero(slice(0, self.rows), self.start - grow_left, self.start)
            self.start -= grow_left
        first = self.rows
        self.mask[first:first + count, self.start:self.end] = 0
        self.zero(slice(first, first + count), self.start, self.end - length)
        self.rows += count
        return first

    def open_column(self) -> None:
        """Room for one more token in every row (the next decode step writes column `end`)."""
        if self.end == self.keys[0].shape[2]:
            self._remake(self.keys[0].shape[0], max(HEADROOM, self.width // 2), max(HEADROOM, self.width // 2))
        self.mask[:self.rows, self.end] = 1

    def row_kv(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One row's real tokens, (1, heads, n, dim) per layer: views, or copies where the row has masked holes
        (tokens taken back: keep_first)."""
        real = self.mask[row, self.start:self.end]
        n = int(real.sum())
        if bool(real[self.width - n:].all()):
            return [(k[row:row + 1, :, self.end - n:self.end], v[row:row + 1, :, self.end - n:self.end])
                    for k, v in zip(self.keys, self.values, strict=True)]
        cols = real.nonzero()[:, 0] + self.start
        return [(k[row:row + 1, :, cols], v[row:row + 1, :, cols]) for k, v in zip(self.keys, self.values, strict=True)]

    def keep_first(self, row: int, count: int) -> None:
        """Mask out a row's real tokens after its first `count` (taken back): a masked column is never read again, so
        the row's KV is what it was before them, and its later tokens are written at `end` as usual."""
        cols = self.mask[row, self.start:self.end].nonzero()[:, 0]
        self.mask[row, self.start + cols[count:]] = 0

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
        self.fast = FastDecode.for_model(model)  # a leaner forward where it computes the same, else None
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
        heads = getattr(config, "num_attention_heads", None)
        self.grouped_sdpa = (self.device.type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa"
                             and heads is not None and getattr(config, "num_key_value_heads", heads) < heads)

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
            if self.slab is None and not self._make_slab():  # buffers shaped after the first prefill's KV
                self._prefill_first(group.pop(0))
            if group:
                self._prefill_in_place(group)

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

    def _make_slab(self) -> bool:
        """Empty buffers shaped after the model's config (keys and values of kv heads x head dim per layer), where
        the config says so plainly; False where it does not."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
        dim = getattr(config, "head_dim", None) or (config.hidden_size // config.num_attention_heads
                                                   if getattr(config, "hidden_size", None) and heads else None)
        layers = getattr(config, "num_hidden_layers", None)
        if not (isinstance(heads, int) and isinstance(dim, int) and isinstance(layers, int)):
            return False
        empty = torch.zeros((1, heads, 0, dim), dtype=self.dtype, device=self.device)
        self._new_slab([(empty, empty)] * layers)
        return True

    def _new_slab(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.slab = Slab()
        self.slab.shape_after(kv)
        self.cache = Cache(layers=[SlabLayer(self.slab, i) for i in range(len(kv))])
        self.positions = torch.empty(0, dtype=torch.long, device=self.device)

    def _prefill_first(self, item: _Prefill) -> None:
        """The batch's first prompt, alone through a DynamicCache; the batch's buffers are made after its KV."""
        started = time.perf_counter()
        cache = DynamicCache()
        for i, (k, v) in enumerate(item.layers or ()):
            cache.update(k, v, i)
        # Positions follow from the cache's length: the suffix is computed as if the prefix had just been.
        ids = torch.tensor([item.seq.ids[item.start:]], device=self.device)
        logits = self._forward(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        self.costs.prefilled(item.todo, time.perf_counter() - started)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if self.prefix_cache is not None:  # the prefill's KV tensors are its own
            self.prefix_cache.store(item.seq.ids, kv, owned=True)
        item.seq.advance(logits)
        if not item.seq.done:
            self._join(item.seq, kv)
            self._take_back()

    def _prefill_in_place(self, group: list[_Prefill]) -> None:
        """Prefill into free rows of the batch's own buffers: each reused prefix is copied there once and the forward
        writes the new tokens' keys and values after it (no buffers of its own to copy into the batch afterwards).
        One prompt alone is exactly its unbatched computation. Several share the forward: the new tokens
        right-aligned in `width` columns after the prefixes, a 4D mask (causal, real columns only) and explicit
        positions make each row's result its own computation's."""
        started = time.perf_counter()
        width = max(w.todo for w in group)
        # A row with fewer new tokens than the widest computes its last few cached ones again (the same keys and
        # values), so each row stays one run of tokens; only a row with nothing cached left is padded.
        for w in group:
            w.start -= min(w.start, width - w.todo)
        prefix, rows, slab, dev = max(w.start for w in group), len(group), self.slab, self.device
        first = slab.reserve(rows, prefix + width)
        end = slab.end
        for r, w in enumerate(group):
            slab.zero(slice(first + r, first + r + 1), end - width - prefix, end - width - w.start)
            if w.start:
                for i, (k, v) in enumerate(w.layers):
                    slab.keys[i][first + r, :, end - width - w.start:end - width] = k[0, :, :w.start]
                    slab.values[i][first + r, :, end - width - w.start:end - width] = v[0, :, :w.start]
        view = Slab()  # the new rows, as a cache whose update writes columns [end - width, end)
        view.keys = [k[first:first + rows] for k in slab.keys]
        view.values = [v[first:first + rows] for v in slab.values]
        view.rows, view.start, view.end = rows, end - width - prefix, end - width
        fast = self.fast is not None and self._own_mask_fits(prefix + width)
        cache = None if fast else Cache(layers=[SlabLayer(view, i) for i in range(len(view.keys))])
        if rows == 1 and not fast:  # transformers builds the mask (and positions) of one row after its cache
            ids = torch.tensor([group[0].seq.ids[group[0].start:]], device=dev)
            logits = self._forward(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        else:
            ids = torch.zeros((rows, width), dtype=torch.long, device=dev)
            positions = torch.zeros((rows, width), dtype=torch.long, device=dev)
            real = torch.zeros((rows, prefix + width), dtype=torch.bool, device=dev)
            for r, w in enumerate(group):
                ids[r, width - w.todo:] = torch.tensor(w.seq.ids[w.start:], device=dev)
                positions[r, width - w.todo:] = torch.arange(w.start, len(w.seq.ids), device=dev)
                real[r, prefix + width - len(w.seq.ids):] = True
            if fast and rows == 1 and not prefix:  # a whole prompt alone: the fast forward attends causally, no mask
                mask = None
            else:
                cols = torch.arange(prefix + width, device=dev)
                query = prefix + torch.arange(width, device=dev)
                # A padding query also sees itself: with nothing real before it, a row of the mask would be all masked.
                allowed = (cols <= query[:, None]) & real[:, None, :] | (cols == query[:, None])
                mask = self._additive(allowed[:, None])
            if fast:
                logits = self.fast.forward(ids, positions, mask, view)
            else:
                logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions,
                                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        for r, w in enumerate(group):
            slab.mask[first + r, end - len(w.seq.ids):end] = 1
        self.rows.extend(w.seq for w in group)
        # Each row's next position: its first token (sampled below) is fed there by the next step.
        self.positions = torch.cat([self.positions, torch.tensor([len(w.seq.ids) for w in group], device=dev)])
        self.padded = slab.padded
        self.costs.prefilled(sum(w.todo for w in group), time.perf_counter() - started)
        for r, w in enumerate(group):
            # A prompt mostly found in the cache is not stored again (a copy of it all): the entry it came from
            # answers for that part, and the prompt with its reply is stored when the row leaves.
            if self.prefix_cache is not None and w.seq.cached_tokens < len(w.seq.ids) // 2:
                self.prefix_cache.store(w.seq.ids, slab.row_kv(first + r))
            w.seq.advance(logits[r])
        live = [i for i, s in enumerate(self.rows) if not s.done]
        if len(live) < len(self.rows):
            self._keep(live)
        self._take_back()

    def _join(self, seq: Sequence, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a prefilled sequence's KV into a free row of the running batch."""
        if self.slab is None:  # the first sequence of this batch: buffers shaped after its cache
            self._new_slab(kv)
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
            logits = self._forward(input_ids=last, attention_mask=mask, position_ids=self.positions[:, None],
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
        self._take_back()

    def _take_back(self) -> None:
        """Rows whose replies were taken back (banned strings: Sequence.kv_stale) keep the KV of the tokens they
        still have but their last, which the next step feeds again at its own position."""
        for i, seq in enumerate(self.rows):
            if seq.kv_stale:
                seq.kv_stale = False
                self.slab.keep_first(i, len(seq.ids) - 1)
                self.positions[i] = len(seq.ids) - 1
                self.padded = True

    def _forward(self, **inputs):
        """The model's forward. On a CPU with grouped key/value heads, SDPA takes the groups as they are: with a mask
        (ours always has one) transformers otherwise copies every layer's keys and values once per query head in the
        group (`benchmarks/chat_workload.py --in-process` with TRANSFORMERS_SDPA_FORCE_GQA=0 against 1: a next turn's
        time to first token 35-37 against 30-31 ms). On CUDA a masked grouped call would leave the fast kernels, so
        it stays off there."""
        with _grouped_sdpa(self.grouped_sdpa):
            return self.model(**inputs)

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
