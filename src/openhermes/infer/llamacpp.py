"""The llama.cpp engine: a GGUF file run by llama-cpp-python, the fast CPU path for real 7B models.

llama.cpp computes the logits; the samplers, stop rules and streaming are the same code as the
PyTorch engine's (infer/sampling.py, infer/sequence.py), so both engines behave alike, and TFS,
which llama.cpp removed in 2024 (SPEC §4), still works.

Concurrency is llama.cpp's own: one context holds `parallel` sequences (slots), each with its own
KV cache of `context_window` tokens, and every step is one `llama_decode` of a batch that carries
the next token of each decoding sequence plus chunks of new prompts (as llama-server mixes them),
through llama-cpp-python's low-level bindings (its `Llama` class holds one sequence). A slot keeps
the KV of its last conversation after the request ends; a new prompt goes to the free slot that
shares the longest prefix with it and prefills only the rest (llama-server's `cache_prompt`).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from openhermes.formats import Conversation, chatml, get_format
from openhermes.infer.engine import BaseEngine
from openhermes.infer.llama_load import load_llama
from openhermes.infer.prefix_cache import shared_prefix
from openhermes.infer.sequence import Sequence

N_BATCH = 512  # tokens per llama_decode call (llama.cpp's default batch)


class EngineUnavailable(RuntimeError):
    pass


class _Detokenizer:
    """`decode(ids)` for Sequence, through llama.cpp's own detokenizer."""

    def __init__(self, llm):
        self.llm = llm

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(ids, special=not skip_special_tokens).decode("utf-8", errors="replace")


class Slots:
    """A llama.cpp context with `parallel` sequences, and the tokens whose KV each one holds."""

    def __init__(self, llm, parallel: int, window: int, n_threads: int, lora=None):
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = window * parallel
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = parallel
        params.kv_unified = False  # each sequence its own `window` cells: one long chat cannot starve the others
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self.ctx = LlamaContext(model=llm._model, params=params, verbose=False)
        if lora is not None:  # the adapter llama-cpp-python loaded for its own context, on ours too
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                raise EngineUnavailable("llama.cpp could not apply the LoRA adapter")
        self.window = llama_cpp.llama_n_ctx_seq(self.ctx.ctx)
        self.batch = LlamaBatch(n_tokens=N_BATCH + parallel, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = llm.n_vocab()
        self.kv: list[list[int]] = [[] for _ in range(parallel)]
        self.busy = [False] * parallel
        self.last_used = [0] * parallel
        self.clock = itertools.count(1)
        self.reused_tokens = 0  # prompt tokens served from a slot's kept KV (tests read it)

    @property
    def parallel(self) -> int:
        return len(self.kv)

    def acquire(self, ids: list[int]) -> tuple[int, int]:
        """A free slot for a prompt: the one whose KV shares the longest prefix with it (else the least
        recently used); its KV is cut back to that prefix. Returns (slot, tokens reused)."""
        free = [s for s in range(self.parallel) if not self.busy[s]]
        if not free:
            raise RuntimeError("no free llama.cpp sequence slot")
        # At least one prompt token is computed again: its logits choose the first reply token.
        shared = {s: shared_prefix(self.kv[s], ids[:-1]) for s in free}
        slot = max(free, key=lambda s: (shared[s], -self.last_used[s]))
        self.cut(slot, shared[slot])
        keep = len(self.kv[slot])
        self.busy[slot] = True
        self.last_used[slot] = next(self.clock)
        self.reused_tokens += keep
        return slot, keep

    def cut(self, slot: int, keep: int) -> None:
        """Cut a slot's KV back to its first `keep` tokens (all of it where llama.cpp cannot cut there)."""
        if not self.ctx.kv_cache_seq_rm(slot, keep, -1):
            self.ctx.kv_cache_seq_rm(slot, -1, -1)
            keep = 0
        del self.kv[slot][keep:]

    def release(self, slot: int) -> None:
        self.busy[slot] = False

    def release_all(self) -> None:
        self.busy = [False] * self.parallel

    def forward(self, work: list[tuple[int, list[int], bool]]) -> list[np.ndarray | None]:
        """One llama_decode of several sequences' tokens: (slot, tokens, want logits of the last one).
        Each slot's tokens continue its KV; returns the wanted logits (copies) in order."""
        b = self.batch.batch
        n = 0
        for slot, tokens, want in work:
            start = len(self.kv[slot])
            for i, token in enumerate(tokens):
                b.token[n] = token
                b.pos[n] = start + i
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = slot
                b.logits[n] = 0
                n += 1
            b.logits[n - 1] = int(want)
        b.n_tokens = n
        self.ctx.decode(self.batch)
        out: list[np.ndarray | None] = []
        row = 0
        for slot, tokens, want in work:
            self.kv[slot].extend(tokens)
            row += len(tokens)
            out.append(np.ctypeslib.as_array(self.ctx.get_logits_ith(row - 1), shape=(self.n_vocab,)).copy()
                       if want else None)
        return out


@dataclass
class _Row:
    seq: Sequence
    slot: int


class SlotBatch:
    """The Batch interface (add, step, len, rows) over Slots: each step decodes every running sequence's
    next token and feeds new prompts in chunks, in one llama_decode."""

    def __init__(self, slots: Slots):
        self.slots = slots
        slots.release_all()  # a new batch (the scheduler's restart after a failure) owns every slot
        self.running: list[_Row] = []

    @property
    def rows(self) -> list[Sequence]:
        return [r.seq for r in self.running]

    def __len__(self) -> int:
        return len(self.running)

    def add_many(self, seqs: list[Sequence]) -> None:
        for seq in seqs:  # their prompts are fed together by the next steps, under N_BATCH
            self.add(seq)

    def add(self, seq: Sequence) -> None:
        """Take a new sequence; its prompt is fed from the next step on."""
        if seq.cancelled.is_set():
            seq.finish_cancelled()
            return
        if len(self.running) >= self.slots.parallel:
            raise RuntimeError(f"the llama.cpp engine holds {self.slots.parallel} sequences at once")
        slot, seq.cached_tokens = self.slots.acquire(seq.ids)
        self.running.append(_Row(seq, slot))

    def step(self) -> None:
        for row in self.running:
            if row.seq.cancelled.is_set() and not row.seq.done:
                row.seq.finish_cancelled()
        self._drop_done()
        if not self.running:
            return
        for row in self.running:
            if row.seq.kv_stale:  # taken back (a banned string): its last kept token is fed again
                row.seq.kv_stale = False
                self.slots.cut(row.slot, len(row.seq.ids) - 1)
        # Running sequences first (one token each), then prompts in arrival order up to the batch size.
        pending = [(r, r.seq.ids[len(self.slots.kv[r.slot]):]) for r in self.running]
        budget = N_BATCH
        work: list[tuple[_Row, list[int], bool]] = []
        for row, feed in sorted(pending, key=lambda p: len(p[1]) > 1):
            if budget <= 0:
                break
            chunk = feed[:budget]
            work.append((row, chunk, len(chunk) == len(feed)))
            budget -= len(chunk)
        # In slot order: with a KV cache per sequence llama.cpp puts only sequences with consecutive ids, in batch
        # order, into one micro-batch (llama_batch_allocr::split_equal), so any other order splits the step into
        # several passes over the weights (measured: a step of 8 rows took 2x as long in arrival order).
        work.sort(key=lambda w: w[0].slot)
        logits = self.slots.forward([(row.slot, chunk, last) for row, chunk, last in work])
        for (row, _, last), row_logits in zip(work, logits, strict=True):
            if not last:
                continue
            bans = row.seq.greedy_bans
            if bans is not None:
                if bans:  # under min_tokens: the stop tokens cannot be chosen
                    row_logits = row_logits.copy()
                    row_logits[bans] = float("-inf")
                row.seq.push(int(row_logits.argmax()))
            else:
                row.seq.advance(torch.from_numpy(row_logits))
        self._drop_done()

    def _drop_done(self) -> None:
        for row in self.running:
            if row.seq.done:
                self.slots.release(row.slot)
        self.running = [r for r in self.running if not r.seq.done]


class LlamaCppEngine(BaseEngine):
    def __init__(self, gguf_path: str | Path, *, name: str | None = None, n_ctx: int | None = None,
                 n_threads: int | None = None, lora: str | Path | None = None, parallel: int = 4):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise EngineUnavailable("the llama.cpp engine needs llama-cpp-python: pip install 'openhermes[llamacpp]' "
                                    "(it builds llama.cpp from source, about 5 minutes)") from None
        path = Path(gguf_path)
        if not path.is_file():
            raise EngineUnavailable(f"{path}: no such GGUF file (make one with `openhermes export MODEL --to gguf`)")
        if lora is not None and not Path(lora).is_file():
            raise EngineUnavailable(f"{lora}: no such LoRA GGUF file (make one with `openhermes export ADAPTER "
                                    f"--to gguf-lora`)")
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1 (got {parallel})")
        n_threads = n_threads or len(os.sched_getaffinity(0))
        # `Llama` loads the weights, tokenizer, metadata and the LoRA GGUF (applied unmerged); its own context
        # stays small, since the sequences run in ours (Slots).
        self.llm = load_llama(path, n_ctx=256, n_batch=256, n_threads=n_threads, verbose=False,
                         lora_path=str(lora) if lora is not None else None)
        atexit.register(self.llm.close)  # freed before interpreter teardown, which its __del__ trips over
        window = n_ctx or min(self.llm._model.n_ctx_train(), 8192)
        self.slots = Slots(self.llm, parallel, window, n_threads, lora=self.llm._lora_adapter)
        atexit.register(self.slots.ctx.close)
        self.name = name or path.name
        self.context_window = self.slots.window
        self.max_batch_size = parallel
        self.device = "cpu"
        self.backend = _Detokenizer(self.llm)
        meta = self.llm.metadata
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self.bos_id = self.llm.token_bos()
        controls = {t: self._control_id(t) for t in chatml.CONTROL_TOKENS}
        self._controls = {t: i for t, i in controls.items() if i is not None}
        self.stop_ids = frozenset({self.llm.token_eos(), *self._controls.values()})
        self.n_vocab = self.llm.n_vocab()
        self.path = path
        self._hf_tokenizer = None

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    def token_piece(self, token: int) -> tuple[str, bytes]:
        raw = self.llm.detokenize([token], special=True)
        return raw.decode("utf-8", "replace"), raw

    def grammar_tokenizer(self):
        """transformers' reading of the GGUF's own vocabulary, for the structured-output grammar."""
        if self._hf_tokenizer is None:
            from transformers import AutoTokenizer

            self._hf_tokenizer = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        return self._hf_tokenizer

    def _control_id(self, text: str) -> int | None:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def new_batch(self) -> SlotBatch:
        return SlotBatch(self.slots)

    def _prompt_ids(self, conv: Conversation, fmt: str, length: str | None = None) -> list[int]:
        if fmt == "chatml" and len(self._controls) < 2:
            raise ValueError(f"{self.name}: the model has no ChatML tokens; use a roleplay prompt")
        kwargs = {"length": length} if length is not None else {}
        segs = get_format(fmt).segments(conv, add_generation_prompt=True, **kwargs)
        ids = [self.bos_id] if self.add_bos else []
        for is_text, group in itertools.groupby(segs, key=lambda s: s.kind == "text"):
            if is_text:  # text between control tokens: special-token spellings stay plain text
                text = "".join(s.text for s in group)
                ids += self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            else:
                ids += [self.llm.token_eos() if s.kind == "eos" else self._controls[s.text] for s in group]
        return ids

    def _text_ids(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True)

    # ---- the model -----------------------------------------------------------------------------
    def logits_after(self, ids: list[int]) -> np.ndarray:
        """Logits of the next token after `ids` (a free slot's kept KV is reused for a shared prefix)."""
        slot, keep = self.slots.acquire(ids)
        try:
            logits = None
            for start in range(keep, len(ids), N_BATCH):
                chunk = ids[start:start + N_BATCH]
                logits = self.slots.forward([(slot, chunk, start + len(chunk) == len(ids))])[0]
            return logits
        finally:
            self.slots.release(slot)
