"""A running batch: sequences decode together over one KV cache; they may join and leave between steps.

Our own decode loop, because transformers' generate() and its continuous-batching manager apply
one generation config to every row, and requests here each have their own samplers and stop
strings, join while others run, and can be cancelled.

Layout: every row of the cache is [left padding][its real tokens], aligned on the right, with a
2-D attention mask marking the padding and per-row position ids. A new sequence is prefilled
alone (no padding, so exactly its unbatched computation) and then merged in by left-padding.
With a PrefixCache, the prefill starts from the stored KV of the longest known prefix and computes
only the rest; prompts after their prefill, and finished sequences, are stored for later requests.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sequence import Sequence

HEADROOM = 256  # tokens of spare room a layer's buffer gets each time it is (re)made


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of buffers with spare room along the sequence: a decode step
    writes its token in place. DynamicLayer's torch.cat copies the whole cache at every step, which was 58% of
    a step's time at 8 rows of 1.5k tokens. When the batch replaces `keys`/`values` (a row joins or leaves),
    the next update copies them into a new buffer once."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if not self._in_buffer() or self.length + n > self._kbuf.shape[-2]:
            self._rebuffer(n)
        self._kbuf[:, :, self.length:self.length + n] = key_states
        self._vbuf[:, :, self.length:self.length + n] = value_states
        self.length += n
        self.keys = self._kview = self._kbuf[:, :, :self.length]
        self.values = self._vview = self._vbuf[:, :, :self.length]
        return self.keys, self.values

    def _in_buffer(self) -> bool:
        return getattr(self, "_kview", None) is self.keys and getattr(self, "_vview", None) is self.values

    def _rebuffer(self, n: int) -> None:
        keys, values = (self.keys, self.values) if self.keys.numel() else (None, None)
        self.length = keys.shape[-2] if keys is not None else 0
        like = keys if keys is not None else self._shape_source
        shape = list(like.shape)
        shape[-2] = self.length + n + HEADROOM
        self._kbuf, self._vbuf = like.new_empty(shape), like.new_empty(shape)
        if keys is not None:
            self._kbuf[:, :, :self.length] = keys
            self._vbuf[:, :, :self.length] = values

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._shape_source = key_states


class GrowingCache(DynamicCache):
    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 2 of a (B, H, T, D) cache tensor (or dim 1 of a (B, T) mask) on the left to `length`."""
    dim = 2 if t.dim() == 4 else 1
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Batch:
    def __init__(self, model, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.prefix_cache = prefix_cache
        self.device = next(model.parameters()).device
        self.rows: list[Sequence] = []
        self.cache: GrowingCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) 1 = real token
        self.positions: torch.Tensor | None = None  # (B,) position id of each row's next token
        self.padded = False  # whether any row has left padding (else no mask is needed: faster)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Prefill a new sequence, sample its first token, and merge it into the batch."""
        if seq.cancelled.is_set():
            seq.finish_cancelled()
            return
        ids = torch.tensor([seq.ids], device=self.device)
        cache = GrowingCache()
        hit = self.prefix_cache.lookup(seq.ids) if self.prefix_cache is not None else None
        start = 0
        if hit is not None:
            start, layers = hit
            for i, (k, v) in enumerate(layers):
                cache.update(k, v, i)
        # Positions follow from the cache's length: the suffix is computed as if the prefix had just been.
        out = self.model(input_ids=ids[:, start:], past_key_values=cache, use_cache=True, logits_to_keep=1)
        if self.prefix_cache is not None:
            self.prefix_cache.store(seq.ids, [(layer.keys, layer.values) for layer in cache.layers])
        seq.advance(out.logits[0, -1])
        if seq.done:
            return
        mask = torch.ones_like(ids)
        pos = torch.tensor([ids.shape[1]], device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.positions, self.rows = cache, mask, pos, [seq]
            self.padded = False
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        self.padded = self.padded or self.mask.shape[1] != mask.shape[1]
        self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(mask, length)])
        self.positions = torch.cat([self.positions, pos])
        self.rows.append(seq)

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every row; finished and cancelled rows leave the batch."""
        if not self.rows:
            return
        for seq in self.rows:
            if seq.cancelled.is_set():
                seq.finish_cancelled()
        live = [i for i, s in enumerate(self.rows) if not s.done]
        if len(live) < len(self.rows):
            self._keep(live)
            if not self.rows:
                return
        last = torch.tensor([[s.ids[-1]] for s in self.rows], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        out = self.model(input_ids=last, attention_mask=self.mask if self.padded else None,
                         position_ids=self.positions[:, None], past_key_values=self.cache, use_cache=True)
        self.positions = self.positions + 1
        logits = out.logits[:, -1]
        greedy = [s.plain_greedy for s in self.rows]
        argmax = logits.argmax(-1).tolist() if any(greedy) else None
        for i, seq in enumerate(self.rows):
            if greedy[i]:
                seq.push(argmax[i])
            else:
                seq.advance(logits[i])
        live = [i for i, s in enumerate(self.rows) if not s.done]
        if len(live) < len(self.rows):
            self._keep(live)

    def _remember_finished(self, live: list[int]) -> None:
        """Store each finished row's KV (prompt + reply): the client's next turn starts with both."""
        for i, seq in enumerate(self.rows):
            if i in live or seq.cancelled.is_set():
                continue
            n = int(self.mask[i].sum())
            self.prefix_cache.store(seq.ids[:n], [(layer.keys[i:i + 1, :, -n:], layer.values[i:i + 1, :, -n:])
                                                  for layer in self.cache.layers])

    def _keep(self, live: list[int]) -> None:
        """Drop finished rows, then the left columns that are padding in every remaining row."""
        if self.prefix_cache is not None and self.cache is not None:
            self._remember_finished(live)
        if not live:
            self.rows, self.cache, self.mask, self.positions = [], None, None, None
            return
        index = torch.tensor(live, device=self.device)
        self.rows = [self.rows[i] for i in live]
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        leading = (self.mask.cumsum(1) == 0).sum(1)
        pad = int(leading.min())
        self.padded = bool((leading != pad).any())
        self.mask = self.mask[:, pad:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, pad:]
            layer.values = layer.values[index, :, pad:]
