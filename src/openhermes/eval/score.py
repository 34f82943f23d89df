"""Batched log-likelihood scoring, the way lm-evaluation-harness defines it, with each context run once.

loglikelihood(context, continuation) = the summed log-softmax of the continuation's tokens after the
context. Tokenization follows the harness: trailing whitespace of the context moves into the
continuation; the pair is encoded whole and split where the context's own tokens end. No BOS by
default (the card's `hf-causal` runs); `add_bos=True` prepends it.

Speed: the requests of a question share its context, so the context goes through the model once,
its KV cache is copied to one row per choice, and only the continuations are computed, batched.
Contexts are taken longest first (the progress bar's estimate holds).
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
            groups[ctx].append((i, cont))
        results: list[LLResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not self.progress)
        for ctx in sorted(groups, key=len, reverse=True):
            items = groups[ctx]
            ctx = self._fit(ctx, max(len(c) for _, c in items))
            cache = self._prefill(ctx[:-1])
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                for (i, _), res in zip(chunk, self._continuations(ctx, cache, [c for _, c in chunk]), strict=True):
                    results[i] = res
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _fit(self, ctx: tuple[int, ...], cont_len: int) -> tuple[int, ...]:
        """Keep the end of a context that would not fit with its continuation (as the harness does)."""
        room = self.max_length - cont_len
        return ctx[-room:] if len(ctx) > room else ctx

    def _prefill(self, ids: tuple[int, ...]) -> DynamicCache | None:
        if not ids:
            return None
        cache = DynamicCache()
        self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True,
                   logits_to_keep=1)
        return cache

    def _continuations(self, ctx: tuple[int, ...], cache: DynamicCache | None,
                       conts: list[tuple[int, ...]]) -> list[LLResult]:
        """All continuations of one context in one forward: rows [last context token, cont[:-1]], padded
        on the right (causal attention: padding after a position cannot change it)."""
        k, width = len(conts), max(len(c) for c in conts)
        pad = self.tokenizer.pad_token_id or 0
        rows = [[ctx[-1], *c[:-1]] + [pad] * (width - len(c)) for c in conts]
        past = None
        if cache is not None:
            past = DynamicCache()
            for layer_idx, layer in enumerate(cache.layers):
                past.update(layer.keys.expand(k, -1, -1, -1).contiguous(),
                            layer.values.expand(k, -1, -1, -1).contiguous(), layer_idx)
        offset = len(ctx) - 1
        positions = torch.arange(offset, offset + width, device=self.device).expand(k, -1)
        logits = self.model(input_ids=torch.tensor(rows, device=self.device), position_ids=positions,
                            past_key_values=past, use_cache=past is not None).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        out = []
        for row, cont in enumerate(conts):
            target = torch.tensor(cont, device=self.device)
            n = len(cont)
            lp = logprobs[row, :n].gather(-1, target[:, None]).sum().item()
            greedy = bool((logits[row, :n].argmax(-1) == target).all())
            out.append(LLResult(lp, greedy))
        return out
