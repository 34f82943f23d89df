"""The generation engine: a model folder (optionally a peft adapter on top) that turns prompts into text.

`generate` runs many requests batched; `stream` yields text deltas of one. Both stop at eos, at
`<|im_end|>` (and `<|im_start|>`, so a ChatML reply never runs on into a next turn), and at the
request's stop strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from openhermes.data.tokenize import ConversationTokenizer
from openhermes.formats import Conversation, Message, chatml
from openhermes.formats.base import Roleplay
from openhermes.infer.batch import Batch
from openhermes.infer.sequence import ContextWindowError, GenerationRequest, GenerationResult, Sequence


def _valid_text(*texts: str) -> None:
    """Text must be valid Unicode: JSON can carry lone surrogates (\\ud800), which no tokenizer accepts."""
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"expected text, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"the text contains invalid Unicode (a lone surrogate at character {e.start})") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class BaseEngine:
    """What every engine shares: prompts in the cards' formats, and generation over `new_batch()`.

    A subclass sets name, context_window, max_batch_size, device, stop_ids, backend (an object with
    `decode(ids, skip_special_tokens=True)`), and implements `_prompt_ids` and `new_batch`."""

    name: str
    context_window: int
    max_batch_size: int
    stop_ids: frozenset[int]

    def _prompt_ids(self, conv: Conversation, fmt: str, length: str | None = None) -> list[int]:
        raise NotImplementedError

    def new_batch(self):
        raise NotImplementedError

    # ---- prompts -------------------------------------------------------------------------------
    def chat_prompt(self, messages: Iterable[Message | dict]) -> list[int]:
        """ChatML prompt ids with the assistant header; message text that spells a control token
        stays plain text."""
        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        _valid_text(*(m.content for m in msgs))
        return self._checked(self._prompt_ids(Conversation(msgs), "chatml"))

    def roleplay_prompt(self, roleplay: Roleplay, messages: Iterable[Message], length: str | None) -> list[int]:
        """The LimaRP card's prompt, ending in `### Response: (length = ...)\\n{char}:`."""
        conv = Conversation(list(messages), roleplay=roleplay)
        _valid_text(*(m.content for m in conv.messages), roleplay.char_name, roleplay.user_name,
                    roleplay.char_persona, roleplay.user_persona, roleplay.scenario)
        return self._checked(self._prompt_ids(conv, "limarp", length))

    def text_prompt(self, text: str) -> list[int]:
        """Raw completion text: special-token spellings in it are read as those tokens (as llama.cpp's
        /completion does), since the caller writes the whole prompt format."""
        _valid_text(text)
        return self._checked(self._text_ids(text))

    def _text_ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def _checked(self, ids: list[int]) -> list[int]:
        if len(ids) >= self.context_window:
            raise ContextWindowError(f"the prompt is {len(ids)} tokens; the model's context window is "
                                     f"{self.context_window}, which must also leave room for the reply")
        return ids

    # ---- generation ----------------------------------------------------------------------------
    def sequence(self, request: GenerationRequest, on_delta=None, on_done=None, on_error=None) -> Sequence:
        self._checked(request.prompt_ids)
        if request.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        return Sequence(request, backend=self.backend, stop_ids=self.stop_ids, max_total=self.context_window,
                        device=self.device, on_delta=on_delta, on_done=on_done, on_error=on_error)

    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        """All requests, up to max_batch_size decoding at once; results in request order."""
        seqs = [self.sequence(r) for r in requests]
        pending = list(seqs)
        batch = self.new_batch()
        bar = tqdm(total=len(seqs), desc="generate", unit="req", disable=not progress)
        finished = 0
        while pending or len(batch):
            while pending and len(batch) < self.max_batch_size:
                batch.add(pending.pop(0))
            batch.step()
            done = sum(s.done for s in seqs)
            bar.update(done - finished)
            finished = done
        bar.close()
        return [s.result() for s in seqs]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text deltas of one request as they are decoded."""
        deltas: list[str] = []
        seq = self.sequence(request, on_delta=deltas.append)
        batch = self.new_batch()
        batch.add(seq)
        while True:
            yield from deltas
            deltas.clear()
            if seq.done:
                return
            batch.step()


class Engine(BaseEngine):
    """transformers: a model folder or hub id, optionally with a peft adapter on top."""

    def __init__(self, model, tokenizer, *, name: str = "model", max_batch_size: int = 16,
                 context_window: int | None = None, add_bos: bool | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.context_window = context_window or int(getattr(model.config, "max_position_embeddings", 2048))
        self.backend = tokenizer.backend_tokenizer
        vocab = tokenizer.get_vocab()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.stop_ids = frozenset(i for i in eos_ids | {vocab.get(t) for t in chatml.CONTROL_TOKENS} if i is not None)
        has_chatml = all(t in vocab for t in chatml.CONTROL_TOKENS)
        bos = add_bos if add_bos is not None else tokenizer.bos_token_id is not None
        self._encoders = {fmt: ConversationTokenizer(tokenizer, fmt, add_bos=bos)
                          for fmt in (["chatml"] if has_chatml else []) + ["limarp"]}
        self.add_bos = bos

    @classmethod
    def load(cls, path: str | Path, *, adapter: str | Path | None = None, device: str | None = None,
             dtype: torch.dtype | None = None, **kwargs) -> Engine:
        """Load a model folder (or hub id); weights in bf16 on a GPU, fp32 on a CPU."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openhermes.model.load import ModelLoadError

        device = device or default_device()
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(adapter or path))
        except (OSError, ValueError):
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path))
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"cannot load a tokenizer from {path}: {e}") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load a model from {path}: {e}") from None
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        return cls(model.to(device), tokenizer, name=Path(str(path)).name, **kwargs)

    def new_batch(self) -> Batch:
        return Batch(self.model)

    def _prompt_ids(self, conv: Conversation, fmt: str, length: str | None = None) -> list[int]:
        enc = self._encoders.get(fmt)
        if enc is None:
            raise ValueError(f"{self.name}: the tokenizer has no ChatML tokens; use a roleplay prompt")
        return enc.prompt_ids(conv, length=length)

    def _text_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([self.tokenizer.bos_token_id] if self.add_bos else []) + ids
