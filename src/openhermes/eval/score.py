"""Batched log-likelihood scoring, the way lm-evaluation-harness defines it, with each context run once.

loglikelihood(context, continuation) = the summed log-softmax of the continuation's tokens after the
context. Tokenization follows the harness: trailing whitespace of the context moves into the
continuation; the pair is encoded whole and split where the context's own tokens end. No BOS by
default (the card's `hf-causal` runs); `add_bos=True` prepends it.

A request longer than the window is cut on its own, as the harness cuts it: the model sees
`(context + continuation)[-(max_length + 1):][:-1]`, so each choice keeps `max_length + 1 - len(choice)`
context tokens (a longer choice keeps fewer).

Speed: the requests of a question share its context, so each context goes through the model once
and only the continuations are computed after it. Contexts of similar length are prefilled together
(right padding, masked), each context's KV cache rows are repeated for its choices, and all those
continuations run in one forward with per-row positions. Contexts are taken longest first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache


@dataclass(frozen=True)
class LLRequest:
    context: str
    continuation: str


@dataclass(frozen=True)
class LLResult:
    logprob: float
    is_greedy: bool  # every continuation token is the argmax


class Scorer:
    def __init__(self, model, tokenizer, *, add_bos: bool = False, batch_size: int = 32, progress: bool = True):
        """batch_size: contexts (questions) per forward pass."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.batch_size = batch_size
        self.progress = progress
        self.device = next(model.parameters()).device
        self.max_length = int(getattr(model.config, "max_position_embeddings", 2048))

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        whole = self._enc(context + continuation)
        ctx = self._enc(context)
        cont = whole[len(ctx):]
        prefix = [self.tokenizer.bos_token_id] if self.add_bos else []
        if not prefix and not ctx:  # nothing to condition on: the v0.3 harness uses the eos token
            prefix = [self.tokenizer.eos_token_id]
        return tuple(prefix + ctx), tuple(cont)

    @torch.inference_mode()
    def loglikelihood(self, requests: list[LLRequest], desc: str = "scoring") -> list[LLResult]:
        groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
        for i, r in enumerate(requests):
            ctx, cont = self.encode_pair(r.context, r.continuation)
            if not cont:
                raise ValueError(f"request {i}: the continuation {r.continuation!r} has no tokens")
            if len(cont) > self.max_length:
                raise ValueError(f"request {i}: the continuation has {len(cont)} tokens, more than the model's "
                                 f"window of {self.max_length}")
            groups[self._fit(ctx, len(cont))].append((i, cont))
        results: list[LLResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not self.progress)
        # batch_size contexts per batch (their choices ride along), at most 8 x batch_size continuation rows
        batch: list[tuple[tuple[int, ...], list[tuple[int, tuple[int, ...]]]]] = []
        rows = 0
        for ctx in sorted(groups, key=len, reverse=True):
            items = groups[ctx]
            if batch and (len(batch) == self.batch_size or rows + len(items) > 8 * self.batch_size):
                self._score_batch(batch, results, bar)
                batch, rows = [], 0
            batch.append((ctx, items))
            rows += len(items)
        if batch:
            self._score_batch(batch, results, bar)
        bar.close()
        return results  # type: ignore[return-value]

    def _fit(self, ctx: tuple[int, ...], cont_len: int) -> tuple[int, ...]:
        """The context tokens the harness keeps for one request: the end of `context + continuation`,
        max_length + 1 tokens, less its last (which is only a target)."""
        room = self.max_length + 1 - cont_len
        return ctx[-room:] if len(ctx) > room else ctx

    def _score_batch(self, batch, results, bar) -> None:
        """Prefill the contexts (all but their last token) together, right-padded; then every
        continuation of every context in one forward over the repeated cache rows."""
        dev = self.device
        pad = self.tokenizer.pad_token_id or 0
        heads = [ctx[:-1] for ctx, _ in batch]
        width = max(len(h) for h in heads)
        cache, ctx_mask = None, None
        if width:
            ids = torch.tensor([list(h) + [pad] * (width - len(h)) for h in heads], device=dev)
            ctx_mask = torch.tensor([[1] * len(h) + [0] * (width - len(h)) for h in heads], device=dev)
            cache = DynamicCache()
            self.model(input_ids=ids, attention_mask=ctx_mask, past_key_values=cache, use_cache=True,
                       logits_to_keep=1)
        owners = [k for k, (_, items) in enumerate(batch) for _ in items]
        conts = [c for _, items in batch for _, c in items]
        span = max(len(c) for c in conts)
        rows = [[batch[k][0][-1], *c[:-1]] + [pad] * (span - len(c)) for k, c in zip(owners, conts, strict=True)]
        starts = torch.tensor([len(batch[k][0]) - 1 for k in owners], device=dev)
        positions = starts[:, None] + torch.arange(span, device=dev)[None, :]
        mask = None
        if cache is not None:
            index = torch.tensor(owners, device=dev)
            cache.batch_select_indices(index)
            mask = torch.cat([ctx_mask[index], torch.ones(len(rows), span, dtype=ctx_mask.dtype, device=dev)], 1)
        logits = self.model(input_ids=torch.tensor(rows, device=dev), attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=cache is not None).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        flat = [i for _, items in batch for i, _ in items]
        for row, (i, cont) in enumerate(zip(flat, conts, strict=True)):
            target = torch.tensor(cont, device=dev)
            n = len(cont)
            lp = logprobs[row, :n].gather(-1, target[:, None]).sum().item()
            greedy = bool((logits[row, :n].argmax(-1) == target).all())
            results[i] = LLResult(lp, greedy)
        bar.update(len(flat))
