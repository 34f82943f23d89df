"""OpenAI's response shapes: choices, chunks, usage, log-probabilities, the model card, Server-Sent Events."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi.encoders import jsonable_encoder

from openhermes.infer.engine import BaseEngine
from openhermes.infer.sequence import GenerationRequest, GenerationResult, TokenLogprob


def model_card(engine: BaseEngine) -> dict:
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "openhermes",
            "context_window": engine.context_window, "max_model_len": engine.context_window}


def object_name(kind: str, chunk: bool) -> str:
    if kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def ignored_header(body) -> dict[str, str]:
    """The ignored field names as an ASCII header value (names are escaped as in JSON; capped)."""
    names = [json.dumps(n)[1:-1] for n in body.ignored_fields()]
    value = ", ".join(names)
    return {"x-openhermes-ignored": value[:4000]} if names else {}


def truncated_header(body) -> dict[str, str]:
    """How many prompt tokens truncation_length dropped, when it dropped any (also in usage)."""
    return {"x-openhermes-truncated-tokens": str(body.truncated_tokens)} if body.truncated_tokens else {}


def nothing(gen: GenerationRequest) -> GenerationResult:
    return GenerationResult("", [], "length", len(gen.prompt_ids), 0, [] if gen.logprobs is not None else None)


def usage(gens: list[GenerationRequest], results: dict[int, GenerationResult]) -> dict:
    prompt = sum({id(g.prompt_ids): len(g.prompt_ids) for g in gens}.values())  # n choices share one prompt
    completion = sum(r.completion_tokens for r in results.values())
    # OpenAI's prompt_tokens_details.cached_tokens (as vLLM reports prefix-cache hits): per prompt, the fewest
    # reused among the choices that share it.
    cached: dict[int, int] = {}
    for i, g in enumerate(gens):
        if i in results:
            cached[id(g.prompt_ids)] = min(cached.get(id(g.prompt_ids), len(g.prompt_ids)), results[i].cached_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(cached.values())}}


@dataclass
class Echo:
    """A completion's echoed prompt: its text and, with logprobs, its tokens' (the first has none)."""
    text: str = ""
    logprobs: list[TokenLogprob | None] | None = None
    first_token: int | None = None


class Shape:
    """OpenAI's JSON for one endpoint: choices, chunks and log-probabilities, and how a stream's events are
    written and ended. Other servers' shapes (serve/llamacpp_api.py, kobold_api.py) are subclasses."""

    end_of_stream = "data: [DONE]\n\n"

    def __init__(self, kind: str, engine: BaseEngine, body):
        self.kind, self.engine, self.body = kind, engine, body

    def _piece(self, token: int) -> tuple[str, list[int]]:
        text, raw = self.engine.token_piece(token)
        return text, list(raw)

    def chat_logprobs(self, entries: list[TokenLogprob] | None) -> dict | None:
        if entries is None:
            return None
        content = []
        for e in entries:
            if e.token in self.engine.stop_ids:  # the end of the turn is no part of the message
                continue
            text, raw = self._piece(e.token)
            top = [{"token": (p := self._piece(t))[0], "logprob": lp, "bytes": p[1]} for t, lp in e.top]
            content.append({"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}

    def completion_logprobs(self, entries: list[TokenLogprob | None] | None, offset: int = 0) -> dict | None:
        if entries is None:
            return None
        tokens, token_lps, tops, offsets = [], [], [], []
        for e in entries:
            if e is None:  # the first prompt token has no context to be predicted from
                continue
            text = self._piece(e.token)[0]
            tokens.append(text)
            token_lps.append(e.logprob)
            tops.append({self._piece(t)[0]: lp for t, lp in e.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}

    def choice(self, i: int, r: GenerationResult, echo: Echo) -> dict:
        if self.kind == "chat":
            return {"index": i, "message": {"role": "assistant", "content": r.text},
                    "logprobs": self.chat_logprobs(r.logprobs), "finish_reason": r.finish_reason}
        logprobs = None
        if r.logprobs is not None or echo.logprobs is not None:
            prompt = echo.logprobs or []
            logprobs = self.completion_logprobs([e for e in prompt if e is not None] + list(r.logprobs or []))
            if prompt and prompt[0] is None and echo.first_token is not None:
                # OpenAI's shape: the prompt's first token is listed, with a null log-probability
                first = self._piece(echo.first_token)[0]
                logprobs = {"tokens": [first, *logprobs["tokens"]],
                            "token_logprobs": [None, *logprobs["token_logprobs"]],
                            "top_logprobs": [None, *logprobs["top_logprobs"]],
                            "text_offset": [0, *[o + len(first) for o in logprobs["text_offset"]]]}
        return {"index": i, "text": echo.text + r.text, "logprobs": logprobs, "finish_reason": r.finish_reason}

    def full(self, rid: str, created: int, choices: list[dict], usage: dict) -> dict:
        return {"id": rid, "object": object_name(self.kind, False), "created": created, "model": self.engine.name,
                "choices": choices, "usage": usage, "system_fingerprint": None}

    def opening(self, i: int, echo: Echo) -> dict | None:
        if self.kind == "chat":
            return {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        if echo.text:
            return {"index": i, "text": echo.text, "logprobs": None, "finish_reason": None}
        return None

    def delta(self, i: int, text: str, entries: list[TokenLogprob] | None) -> dict:
        if self.kind == "chat":
            return {"index": i, "delta": {"content": text}, "logprobs": self.chat_logprobs(entries) if entries else None,
                    "finish_reason": None}
        return {"index": i, "text": text, "logprobs": self.completion_logprobs(entries) if entries else None,
                "finish_reason": None}

    def closing(self, i: int, r: GenerationResult) -> dict:
        if self.kind == "chat":
            return {"index": i, "delta": {}, "logprobs": None, "finish_reason": r.finish_reason}
        return {"index": i, "text": "", "logprobs": None, "finish_reason": r.finish_reason}

    def event(self, payload: dict) -> str:
        return sse_event(payload)

    def chunk(self, rid: str, created: int, choice: dict, include_usage: bool) -> dict:
        out = {"id": rid, "object": object_name(self.kind, True), "created": created, "model": self.engine.name,
               "choices": [choice]}
        if include_usage:
            out["usage"] = None
        return out


def sse_event(payload: dict) -> str:
    try:  # chunks are plain dicts; jsonable_encoder (slow) only for anything else
        text = json.dumps(payload, ensure_ascii=False)
    except TypeError:
        text = json.dumps(jsonable_encoder(payload), ensure_ascii=False)
    return f"data: {text}\n\n"
