"""The llama.cpp engine: a GGUF file run by llama-cpp-python, the fast CPU path for real 7B models.

llama.cpp computes the logits; the samplers, stop rules and streaming are the same code as the
PyTorch engine's (infer/sampling.py, infer/sequence.py), so both engines behave alike, and TFS,
which llama.cpp removed in 2024 (SPEC §4), still works. llama-cpp-python's `Llama` holds one
sequence, so this engine decodes one request at a time (the server queues the others); prompts
that share a prefix with the previous one reuse its KV cache.
"""

from __future__ import annotations

import atexit
import itertools
from pathlib import Path

import numpy as np
import torch

from openhermes.formats import Conversation, chatml, get_format
from openhermes.infer.engine import BaseEngine
from openhermes.infer.sequence import Sequence


class EngineUnavailable(RuntimeError):
    pass


class _Detokenizer:
    """`decode(ids)` for Sequence, through llama.cpp's own detokenizer."""

    def __init__(self, llm):
        self.llm = llm

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(ids, special=not skip_special_tokens).decode("utf-8", errors="replace")


class LlamaCppEngine(BaseEngine):
    def __init__(self, gguf_path: str | Path, *, name: str | None = None, n_ctx: int | None = None,
                 n_threads: int | None = None, lora: str | Path | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise EngineUnavailable("the llama.cpp engine needs llama-cpp-python: pip install 'openhermes[llamacpp]' "
                                    "(it builds llama.cpp from source, about 5 minutes)") from None
        path = Path(gguf_path)
        if not path.is_file():
            raise EngineUnavailable(f"{path}: no such GGUF file (make one with `openhermes export MODEL --to gguf`)")
        if lora is not None and not Path(lora).is_file():
            raise EngineUnavailable(f"{lora}: no such LoRA GGUF file (make one with `openhermes export ADAPTER "
                                    f"--to gguf-lora`)")
        # A LoRA GGUF (export --to gguf-lora) is applied by llama.cpp on top of the base file, unmerged.
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx or 0, n_threads=n_threads, n_batch=512, verbose=False,
                         lora_path=str(lora) if lora is not None else None)
        atexit.register(self.llm.close)  # freed before interpreter teardown, which its __del__ trips over
        self.name = name or path.name
        self.context_window = self.llm.n_ctx()
        self.max_batch_size = 1
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

    def new_batch(self) -> OneAtATime:
        return OneAtATime(self)

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
        """Logits of the next token after `ids`, reusing the KV cache for the prefix already evaluated."""
        llm = self.llm
        same = 0
        limit = min(llm.n_tokens, len(ids) - 1)
        cached = llm.input_ids[:limit]
        while same < limit and cached[same] == ids[same]:
            same += 1
        llm.n_tokens = same  # eval() drops the cache beyond this point
        llm.eval(ids[same:])
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,)).copy()


class OneAtATime:
    """The Batch interface (add, step, len) for an engine that holds one sequence."""

    def __init__(self, engine: LlamaCppEngine):
        self.engine = engine
        self.rows: list[Sequence] = []

    def __len__(self) -> int:
        return len(self.rows)

    def _advance(self, seq: Sequence) -> None:
        seq.advance(torch.from_numpy(self.engine.logits_after(seq.ids)))

    def add(self, seq: Sequence) -> None:
        if self.rows:
            raise RuntimeError("the llama.cpp engine decodes one sequence at a time")
        if seq.cancelled.is_set():
            seq.finish_cancelled()
            return
        self._advance(seq)
        if not seq.done:
            self.rows = [seq]

    def step(self) -> None:
        if not self.rows:
            return
        seq = self.rows[0]
        if seq.cancelled.is_set():
            seq.finish_cancelled()
        else:
            self._advance(seq)
        if seq.done:
            self.rows = []
