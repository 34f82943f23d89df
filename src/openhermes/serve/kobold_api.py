"""KoboldCpp's API (KoboldAI's /api/v1 and KoboldCpp's /api/extra), in its shapes: generate, stream, token count,
abort, model and context size. SillyTavern's "KoboldCpp" type generates through /v1/completions and counts tokens
through /api/extra/tokencount; Kobold clients use the rest."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request

from openhermes.infer.sequence import GenerationResult
from openhermes.serve.completions import complete_text
from openhermes.serve.errors import APIError
from openhermes.serve.schemas import CompletionRequest, TokenCountRequest
from openhermes.serve.shapes import Echo, Shape
from openhermes.serve.state import ServerState, server_state
from openhermes.serve.tokens import text_ids

router = APIRouter()
DEFAULT_MAX_LENGTH = 100  # KoboldCpp's when a request gives no max_length


class KoboldShape(Shape):
    """{"results": [{"text", "finish_reason"}]}; streamed as `event: message` with {"token", "finish_reason"}."""

    end_of_stream = ""

    def choice(self, i: int, r: GenerationResult, echo: Echo) -> dict:
        return {"text": r.text, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens}

    def full(self, rid: str, created: int, choices: list[dict], usage: dict) -> dict:
        return {"results": choices}

    def opening(self, i: int, echo: Echo) -> dict | None:
        return None

    def delta(self, i: int, text: str, entries) -> dict:
        return {"token": text, "finish_reason": None}

    def closing(self, i: int, r: GenerationResult) -> dict:
        return {"token": "", "finish_reason": r.finish_reason}

    def chunk(self, rid: str, created: int, choice: dict, include_usage: bool) -> dict:
        return choice

    def event(self, payload: dict) -> str:
        return f"event: message\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _generate(body: CompletionRequest, request: Request, state: ServerState, stream: bool):
    """KoboldCpp's generate: one text prompt (its `memory` first), one reply, streamed or not by the route."""
    if not isinstance(body.prompt, str) or body.choices() != 1:
        raise APIError(400, "KoboldCpp's generate takes one text prompt and gives one reply", param="prompt",
                       code="invalid_value")
    memory = (body.model_extra or {}).pop("memory", "")
    if not isinstance(memory, str):
        raise APIError(400, "memory must be text", param="memory", code="invalid_value")
    body.prompt = memory + body.prompt
    body.stream = stream
    return await complete_text(body, request, state, KoboldShape("completion", state.engine, body),
                               default_max_tokens=DEFAULT_MAX_LENGTH)


@router.post("/api/v1/generate")
async def generate(body: CompletionRequest, request: Request, state: ServerState = Depends(server_state)):
    return await _generate(body, request, state, stream=False)


@router.post("/api/extra/generate/stream")
async def generate_stream(body: CompletionRequest, request: Request, state: ServerState = Depends(server_state)):
    return await _generate(body, request, state, stream=True)


@router.post("/api/extra/tokencount")
async def tokencount(body: TokenCountRequest, request: Request, state: ServerState = Depends(server_state)):
    """{"prompt"} -> {"value": count, "ids": [...]} (BOS included, as KoboldCpp counts it)."""
    state.authorize(request)
    ids = await text_ids(state, body.prompt, "prompt")
    return {"value": len(ids), "ids": ids}


@router.post("/api/extra/abort")
async def abort(request: Request, state: ServerState = Depends(server_state)):
    """Stops every reply being generated (KoboldCpp serves one user; so does this route)."""
    state.authorize(request)
    state.stop_all()
    return {"success": "true", "done": "true"}


@router.get("/api/v1/model")
async def model(request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    return {"result": f"koboldcpp/{state.engine.name}"}


@router.get("/api/v1/config/max_context_length")
async def max_context_length(request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    return {"value": state.engine.context_window}


@router.get("/api/v1/config/max_length")
async def max_length(request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    return {"value": DEFAULT_MAX_LENGTH}
