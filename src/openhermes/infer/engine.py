"""The generation engine: a model folder (optionally a peft adapter on top) that turns prompts into text.

`generate` runs many requests batched; `stream` yields text deltas of one. Both stop at eos, at
`<|im_end|>` (and `<|im_start|>`, so a ChatML reply never runs on into a next turn), and at the
request's stop strings.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from openhermes.data.tokenize import ConversationTokenizer
from openhermes.formats import Conversation, Message, chatml
from openhermes.formats.base import Roleplay
from openhermes.infer.batch import Batch
from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sequence import ContextWindowError, GenerationRequest, GenerationResult, Sequence
from openhermes.infer.threads import CPUThreads
from openhermes.model.load import adds_bos, is_byte_token


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
    takes_back = True  # whether its batches can take tokens back from a reply (banned strings)

    def _prompt_ids(self, conv: Conversation, fmt: str, length: str | None = None) -> list[int]:
        raise NotImplementedError

    def new_batch(self):
        raise NotImplementedError

    def check_params(self, params) -> None:
        """Raise ValueError (with a `field` attribute) for sampler settings this engine cannot run."""

    def serving_threads(self, reserved_cores: int | None) -> CPUThreads | None:
        """The CPU threads a server's scheduler runs this engine's steps on (infer/threads.py); None: the
        engine's own."""
        return None

    # ---- prompts -------------------------------------------------------------------------------
    def chat_prompt(self, messages: Iterable[Message | dict], check: bool = True) -> list[int]:
        """ChatML prompt ids with the assistant header; message text that spells a control token
        stays plain text. `check=False` leaves the context-window check to the caller (truncation)."""
        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        _valid_text(*(m.content for m in msgs))
        ids = self._prompt_ids(Conversation(msgs), "chatml")
        return self._checked(ids) if check else ids

    def roleplay_prompt(self, roleplay: Roleplay, messages: Iterable[Message], length: str | None,
                        check: bool = True) -> list[int]:
        """The LimaRP card's prompt, ending in `### Response: (length = ...)\\n{char}:`."""
        conv = Conversation(list(messages), roleplay=roleplay)
        _valid_text(*(m.content for m in conv.messages), roleplay.char_name, roleplay.user_name,
                    roleplay.char_persona, roleplay.user_persona, roleplay.scenario)
        ids = self._prompt_ids(conv, "limarp", length)
        return self._checked(ids) if check else ids

    def text_prompt(self, text: str, check: bool = True) -> list[int]:
        """Raw completion text: special-token spellings in it are read as those tokens (as llama.cpp's
        /completion does), since the caller writes the whole prompt format."""
        _valid_text(text)
        ids = self._text_ids(text)
        return self._checked(ids) if check else ids

    def grammar(self, response_format: dict | None):
        """A structured-output grammar (structured.py) for one reply, or None."""
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        return self._grammar(response_format)

    def _grammar(self, response_format: dict):
        """A response_format other than text as this engine's constraint: llguidance's token mask."""
        from openhermes.infer.structured import make_grammar

        return make_grammar(response_format, self.grammar_tokenizer(), self.vocab_size)

    def grammar_tokenizer(self):
        raise NotImplementedError

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes of text one token stands for: a text longer than context_window times this cannot
        fit the context, which a server can tell without tokenizing it."""
        return max(len(self.token_piece(t)[1]) for t in range(self.vocab_size))

    def token_piece(self, token: int) -> tuple[str, bytes]:
        """One token as text and as the bytes it stands for (a byte-fallback token is one byte)."""
        raise NotImplementedError

    def prompt_logprobs(self, ids: list[int], top: int) -> list:
        """Each prompt token's log-probability given the ones before it (None for the first), with the
        `top` most likely tokens at each position (completions' echo + logprobs)."""
        raise NotImplementedError(f"echo with logprobs is not supported by the {type(self).__name__}")

    def breaker_ids(self, breakers: tuple[str, ...]) -> frozenset[int]:
        """DRY's sequence breakers as token ids: the last token of "a" + breaker (the breaker as it is
        tokenized after text, as text-generation-webui takes it)."""
        cache = self.__dict__.setdefault("_breaker_cache", {})
        if breakers not in cache:
            cache[breakers] = frozenset(ids[-1] for b in breakers if b and (ids := self._text_ids("a" + b)))
        return cache[breakers]

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
        if request.banned_strings and not self.takes_back:
            raise ValueError(f"banned strings need a reply taken back, which the {type(self).__name__} cannot do")
        breakers = self.breaker_ids(request.params.dry_sequence_breakers) if request.params.dry_multiplier else frozenset()
        return Sequence(request, backend=self.backend, stop_ids=self.stop_ids, max_total=self.context_window,
                        device=self.device, on_delta=on_delta, on_done=on_done, on_error=on_error,
                        breaker_ids=breakers)

    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        """All requests, up to max_batch_size decoding at once; results in request order."""
        seqs = [self.sequence(r) for r in requests]
        pending = list(seqs)
        batch = self.new_batch()
        bar = tqdm(total=len(seqs), desc="generate", unit="req", disable=not progress)
        finished = 0
        while pending or len(batch):
            room = self.max_batch_size - len(batch)
            if pending and room > 0:
                batch.add_many(pending[:room])
                del pending[:room]
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


class TokenizerEngine(BaseEngine):
    """An engine whose prompts come from a transformers tokenizer, encoded exactly as training encodes
    them (data/tokenize.py): the torch engine's and the vLLM engine's."""

    def _use_tokenizer(self, tokenizer, eos, add_bos: bool | None) -> None:
        """eos: the generation config's eos_token_id (an id, a list of them, or None)."""
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        vocab = tokenizer.get_vocab()
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.stop_ids = frozenset(i for i in eos_ids | {vocab.get(t) for t in chatml.CONTROL_TOKENS} if i is not None)
        has_chatml = all(t in vocab for t in chatml.CONTROL_TOKENS)
        bos = add_bos if add_bos is not None else adds_bos(tokenizer)  # the folder's BOS rule, as training
        self._encoders = {fmt: ConversationTokenizer(tokenizer, fmt, add_bos=bos)
                          for fmt in (["chatml"] if has_chatml else []) + ["limarp"]}
        self.add_bos = bos

    def grammar_tokenizer(self):
        return self.tokenizer

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def token_piece(self, token: int) -> tuple[str, bytes]:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str) and is_byte_token(piece):
            raw = bytes([int(piece[3:5], 16)])
            return raw.decode("utf-8", "replace"), raw
        if isinstance(piece, str) and "\u2581" in piece and token not in self.tokenizer.all_special_ids:
            text = piece.replace("\u2581", " ")  # SentencePiece's word marker (decode() would strip it)
        else:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
        return text, text.encode("utf-8")

    def _prompt_ids(self, conv: Conversation, fmt: str, length: str | None = None) -> list[int]:
        enc = self._encoders.get(fmt)
        if enc is None:
            raise ValueError(f"{self.name}: the tokenizer has no ChatML tokens; use a roleplay prompt")
        return enc.prompt_ids(conv, length=length)

    def _text_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([self.tokenizer.bos_token_id] if self.add_bos else []) + ids


class Engine(TokenizerEngine):
    """transformers: a model folder or hub id, optionally with a peft adapter on top."""

    def __init__(self, model, tokenizer, *, name: str = "model", max_batch_size: int = 16,
                 context_window: int | None = None, add_bos: bool | None = None, prefix_cache_mb: float = 1024):
        self.model = model.eval()
        # KV of recent prompts and replies reused across requests (infer/prefix_cache.py); 0 turns it off.
        self.prefix_cache = PrefixCache(prefix_cache_mb) if prefix_cache_mb > 0 else None
        self.name = name
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.context_window = context_window or int(getattr(model.config, "max_position_embeddings", 2048))
        self._use_tokenizer(tokenizer, model.generation_config.eos_token_id, add_bos)

    @classmethod
    def load(cls, path: str | Path, *, adapter: str | Path | None = None, device: str | None = None,
             dtype: torch.dtype | None = None, **kwargs) -> Engine:
        """Load a model folder (or hub id); weights in bf16 on a GPU, fp32 on a CPU."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openhermes.model.load import ModelLoadError, quantized_load_kwargs

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
        try:  # a GPTQ/AWQ folder loads through its kernels (quantized_load_kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **quantized_load_kwargs(path))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load a model from {path}: {e}") from None
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        return cls(model.to(device), tokenizer, name=Path(str(path)).name, **kwargs)

    def new_batch(self) -> Batch:
        return Batch(self.model, self.prefix_cache)

    def serving_threads(self, reserved_cores: int | None) -> CPUThreads | None:
        return CPUThreads.reserving(reserved_cores) if self.device.type == "cpu" else None

    @torch.inference_mode()
    def prompt_logprobs(self, ids: list[int], top: int) -> list:
        from openhermes.infer.sequence import TokenLogprob

        logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        chosen = logp[:-1].gather(1, torch.tensor(ids[1:], device=self.device)[:, None])[:, 0].tolist()
        best = logp[:-1].topk(top, dim=-1) if top else None
        out: list = [None]
        for i, token in enumerate(ids[1:]):
            pairs = tuple(zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True)) if best is not None else ()
            out.append(TokenLogprob(token, chosen[i], pairs))
        return out

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]
