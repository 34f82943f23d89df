"""What every route of the server shares (the engine, the scheduler, the key, the metrics), and the checks every
generation request goes through before it is run."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from openhermes.infer.engine import BaseEngine
from openhermes.infer.sampling import PRESETS, SamplingParams, preset
from openhermes.infer.scheduler import Scheduler
from openhermes.infer.sequence import GenerationRequest
from openhermes.serve.errors import APIError, prompt_errors
from openhermes.serve.mailbox import Mailbox
from openhermes.serve.metrics import Metrics

INLINE_PROMPT_BYTES = 64 * 1024


@dataclass
class ServerState:
    engine: BaseEngine
    api_key: str | None = None
    stream_interval: int = 1
    stall_seconds: float = 120  # /health is 503 when the scheduler has work and made no step for this long
    strict_model_name: bool = False  # True: a request naming another model is a 404 (OpenAI's, vLLM's rule)
    truncate: str = "none"  # "keep-system": a chat over the window drops its oldest turns after the system message
    metrics: Metrics = field(default_factory=Metrics)
    scheduler: Scheduler | None = None  # made in the app's lifespan, on its event loop
    mailbox: Mailbox | None = None
    # Long prompts are tokenized here, off the event loop (tokenizers releases the GIL while it encodes), so one
    # delays only its own request; two workers, so many long ones wait for each other and not for the rest.
    # Short ones (most) are tokenized on the loop: in well under a millisecond, and never behind a long one.
    prompt_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="openhermes-prompt"))
    # The sequences being generated, for text-generation-webui's stop-generation and KoboldCpp's abort.
    in_flight: set = field(default_factory=set)

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def stop_all(self) -> None:
        """Cancel every reply being generated (text-generation-webui's stop-generation, KoboldCpp's abort): each
        ends at its next step with finish_reason "cancelled" and the text so far."""
        for seq in list(self.in_flight):
            seq.cancel()

    def check_model(self, name: str | None) -> None:
        """One model is served, and it answers to any name (as llama.cpp's and text-generation-webui's servers
        do: SillyTavern users type one by hand); the response says which it is. serve --strict-model-name: 404."""
        if self.strict_model_name and name is not None and name != self.engine.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.engine.name}'",
                           param="model", code="model_not_found", kind="not_found_error")

    @staticmethod
    def sampling(body) -> SamplingParams:
        try:
            base = preset(body.preset) if body.preset else SamplingParams()
            return base.with_(**body.sampler_settings())
        except ValueError as e:
            raise APIError(400, str(e), param="preset" if body.preset and body.preset not in PRESETS else None,
                           code="invalid_value") from None

    @staticmethod
    def unsupported(names: list[str]) -> None:
        if names:
            raise APIError(400, f"not supported by this server: {', '.join(names)}", param=names[0],
                           code="unsupported_parameter")

    def checked(self, body, request: Request) -> SamplingParams:
        """What every generation request goes through first: key, model, unsupported options, samplers."""
        self.authorize(request)
        self.check_model(body.model)
        self.unsupported(body.unsupported())
        body.log_spelling_notes()
        try:
            bans = body.token_bans()
        except ValueError as e:
            raise APIError(400, str(e), param="custom_token_bans", code="invalid_value") from None
        for param, ids in (("logit_bias", [t for t, _ in body.logit_bias or ()]), ("custom_token_bans", bans)):
            outside = [t for t in ids if not 0 <= t < self.engine.vocab_size]
            if outside:
                raise APIError(400, f"{param}: token id {outside[0]} is outside the vocabulary (0 to "
                                    f"{self.engine.vocab_size - 1})", param=param, code="invalid_value")
        if body.banned() and not self.engine.takes_back:
            raise APIError(400, f"banned_strings: the {self.engine.name} engine ({type(self.engine).__name__}) "
                                "cannot take a reply back, which banning a string needs",
                           param="banned_strings", code="unsupported_parameter")
        params = self.sampling(body)
        try:
            self.engine.check_params(params)
        except ValueError as e:  # a setting this engine cannot compute as asked: refused, never changed
            raise APIError(400, str(e), param=getattr(e, "field", None), code="unsupported_parameter") from None
        return params

    def check_text_size(self, texts: Iterable[str], body, param: str) -> int:
        """Refuse, before tokenizing, a prompt whose text is longer than the context window could hold at the
        tokenizer's longest token: it cannot fit, and tokenizing megabytes would only cost time. A request
        that asks to cut its prompt (truncation_length) is tokenized and cut instead. Returns the size in bytes."""
        engine = self.engine
        limit = engine.context_window * engine.max_token_bytes
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if size > limit and not (body.truncation_length or body.truncate_prompt_tokens or self.truncate != "none"):
            raise APIError(400, f"the prompt is {size} bytes of text: more than this model's context window of "
                                f"{engine.context_window} tokens can hold (its tokens are at most "
                                f"{engine.max_token_bytes} bytes, so at most {limit} bytes); it was not tokenized",
                           param=param, code="context_length_exceeded")
        return size

    async def tokenized(self, size: int, fn: Callable[[], list[int]]) -> list[int]:
        """fn() (a prompt's ids) on the loop for a short text, on the prompt workers for one over 64 KiB."""
        if size <= INLINE_PROMPT_BYTES:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.prompt_pool, fn)

    async def request_choices(self, body, *args) -> list[GenerationRequest]:
        """choices(), with a response_format's grammar compiled on a worker thread (llguidance bounds its work)."""
        if getattr(body, "response_format", None):
            return await asyncio.to_thread(self.choices, body, *args)
        return self.choices(body, *args)

    def fitted(self, ids: list[int], body, reply: int | None, param: str) -> list[int]:
        """BOS as `add_bos_token` asks; an over-long prompt cut to its end by `truncation_length`
        (text-generation-webui keeps the last truncation_length - max_new_tokens tokens)."""
        engine = self.engine
        bos = engine.bos_id
        if bos is not None and body.add_bos_token is False and ids[:1] == [bos]:
            ids = ids[1:]
        elif bos is not None and body.add_bos_token and ids[:1] != [bos]:
            ids = [bos, *ids]
        if body.truncation_length:
            keep = min(body.truncation_length, engine.context_window) - (reply or 1)
            if keep < 1:
                raise APIError(400, f"truncation_length {body.truncation_length} leaves no room for the prompt "
                                    f"with max_tokens {reply}", param="truncation_length", code="invalid_value")
            ids = _keep_end(ids, keep, bos, body, "truncation_length")
        keep = body.truncate_prompt_tokens
        if keep == -1:  # vLLM's: as many as the window holds with the reply
            keep = engine.context_window - (reply or 1)
        if keep is not None and keep > 0:
            ids = _keep_end(ids, keep, bos, body, "truncate_prompt_tokens")
        with prompt_errors(param):
            engine._checked(ids)
        return ids

    def choices(self, body, ids: list[int], params: SamplingParams, limit: int, stops: tuple[str, ...],
                logprobs: int | None) -> list[GenerationRequest]:
        """The request's n choices (SillyTavern's swipes), decoded together; with a seed, choice j
        uses seed + j, so each is reproducible and they differ."""
        out = []
        for j in range(body.choices()):
            p = params if params.seed is None or j == 0 else params.with_(seed=(params.seed + j) % 2**64)
            try:
                grammar = self.engine.grammar(body.response_format)
            except ValueError as e:
                raise APIError(400, str(e), param="response_format", code="invalid_value") from None
            out.append(GenerationRequest(ids, p, limit, stops, ignore_eos=body.ignore_eos,
                                         min_tokens=body.min_tokens or 0, logprobs=logprobs,
                                         skip_special_tokens=body.skip_special_tokens, constraint=grammar,
                                         banned_strings=body.banned()))
        return out


def _keep_end(ids: list[int], keep: int, bos: int | None, body, why: str) -> list[int]:
    """The last `keep` tokens of a longer prompt, BOS staying first; the cut is noted on the body."""
    if len(ids) <= keep:
        return ids
    head = ids[:1] if bos is not None and ids[:1] == [bos] else []
    cut = len(ids) - keep
    body.note_truncated(cut, why)
    return head + ids[cut + len(head):]


def server_state(request: Request) -> ServerState:
    """The state of the app serving this request (routes take it as a dependency)."""
    return request.app.state.openhermes
