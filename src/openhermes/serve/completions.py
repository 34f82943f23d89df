"""The generation routes: /v1/chat/completions and /v1/completions (OpenAI's, with other servers' fields)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from openhermes.formats import Message
from openhermes.formats.base import Roleplay
from openhermes.serve.errors import APIError, prompt_errors
from openhermes.serve.running import run
from openhermes.serve.schemas import ChatCompletionRequest, CompletionRequest
from openhermes.serve.shapes import Echo, Shape
from openhermes.serve.state import ServerState, server_state

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           state: ServerState = Depends(server_state)):
    engine = state.engine
    params = state.checked(body, request)
    with prompt_errors("messages"):
        messages = [Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
        rp = body.roleplay
        size = state.check_text_size([m.content for m in messages] + (
            [rp.char_name, rp.user_name, rp.char_persona, rp.user_persona, rp.scenario] if rp else []), body, "messages")
        if rp is not None:
            block = Roleplay(rp.char_name, rp.user_name, rp.char_persona, rp.user_persona, rp.scenario)

            def encode(ms: list[Message]) -> list[int]:
                return engine.roleplay_prompt(block, ms, rp.length, check=False)
        else:
            def encode(ms: list[Message]) -> list[int]:
                return engine.chat_prompt(ms, check=False)
        ids = await state.tokenized(size, lambda: encode(messages))
    asked = body.max_completion_tokens or body.max_tokens
    if state.truncate == "keep-system" and not body.truncation_length and len(ids) + (asked or 1) > engine.context_window:
        ids = await state.tokenized(size, lambda: _drop_oldest_turns(messages, encode, ids, body, asked,
                                                                     engine.context_window, keep_first=rp is None))
    stops = body.stop_strings()
    if body.roleplay is not None:
        from openhermes.formats import limarp

        stops = (*stops, *limarp.STOP_STRINGS, f"\n{body.roleplay.user_name}:")
    if asked == 0:
        raise APIError(400, "max_tokens must be at least 1", param="max_tokens", code="invalid_value")
    ids = state.fitted(ids, body, asked, "messages")
    limit = asked if asked is not None else engine.context_window
    gens = await state.request_choices(body, ids, params, limit, stops, body.logprobs_k())
    return await run(state, request, gens, body, "chat")


def _drop_oldest_turns(messages: list[Message], encode, ids: list[int], body, reply: int | None, window: int,
                       keep_first: bool) -> list[int]:
    """serve --truncate keep-system: the prompt without the fewest oldest turns that makes it fit with the reply,
    keeping the system message (ChatML's first message when it is one; the roleplay block is outside the
    messages) and the last message whole. Found by bisection: the prompt's length falls as turns are dropped.
    Too long even then: left as it is, for the window check's 400."""
    head = messages[:1] if keep_first and messages[0].role == "system" else []
    turns = messages[len(head):]

    def fits(n: int) -> list[int] | None:
        candidate = encode(head + turns[n:])
        return candidate if len(candidate) + (reply or 1) <= window else None

    best = fits(len(turns) - 1)
    if best is None or len(turns) < 2:
        return ids
    lo, hi = 0, len(turns) - 1  # hi fits; find the fewest dropped turns that fit
    while lo < hi:
        mid = (lo + hi) // 2
        found = fits(mid)
        if found is not None:
            hi, best = mid, found
        else:
            lo = mid + 1
    body.note_truncated(len(ids) - len(best), f"serve --truncate keep-system ({hi} oldest turns)")
    return best


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: ServerState = Depends(server_state)):
    return await complete_text(body, request, state)


async def complete_text(body: CompletionRequest, request: Request, state: ServerState, shape: Shape | None = None,
                        default_max_tokens: int = 16):
    """A text completion (OpenAI's route, and llama.cpp's and KoboldCpp's in their shapes)."""
    engine = state.engine
    params = state.checked(body, request)
    limit = default_max_tokens if body.max_tokens is None else body.max_tokens
    if limit == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 generates nothing; use it with echo", param="max_tokens",
                       code="invalid_value")
    gens, echoes = [], []
    for prompt in body.prompts():
        with prompt_errors("prompt"):
            if isinstance(prompt, str):
                size = state.check_text_size([prompt], body, "prompt")
                ids = await state.tokenized(size, lambda p=prompt: engine.text_prompt(p, check=False))
            elif max(prompt) >= engine.vocab_size:
                raise ValueError(f"token id {max(prompt)} is outside the vocabulary ({engine.vocab_size})")
            else:
                ids = list(prompt)
        ids = state.fitted(ids, body, limit, "prompt")
        echo = Echo(first_token=ids[0] if ids else None)
        if body.echo:
            echo.text = prompt if isinstance(prompt, str) else engine.backend.decode(ids, skip_special_tokens=False)
            if body.logprobs is not None:
                try:
                    echo.logprobs = await asyncio.to_thread(engine.prompt_logprobs, ids, body.logprobs)
                except NotImplementedError as e:
                    raise APIError(400, str(e), param="echo", code="unsupported_parameter") from None
        for gen in await state.request_choices(body, ids, params, limit, body.stop_strings(), body.logprobs):
            gens.append(gen)
            echoes.append(echo)
    return await run(state, request, gens, body, "completion", echoes, shape)
