"""text-generation-webui's internal API (its modules/api/script.py), in its shapes. SillyTavern's "Text Generation
WebUI" type asks /v1/internal/model/info on connect; when it answers, SillyTavern counts tokens with
/v1/internal/encode (the model's own tokenizer) instead of its own LLaMA tokenizer, so it fits its prompts to the
context it is told."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from openhermes.serve.schemas import DetokenizeRequest, EncodeRequest
from openhermes.serve.state import ServerState, server_state
from openhermes.serve.tokens import checked_ids, text_ids

router = APIRouter(prefix="/v1/internal")


@router.get("/model/info")
async def model_info(request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    return {"model_name": state.engine.name, "lora_names": [], "loader": "openhermes"}


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.post("/encode")
async def encode(body: EncodeRequest, request: Request, state: ServerState = Depends(server_state)):
    """The text's ids with BOS, as text-generation-webui's encode() adds it (and as a completion is given)."""
    state.authorize(request)
    ids = await text_ids(state, body.text, "text")
    return {"tokens": ids, "length": len(ids)}


@router.post("/token-count")
async def token_count(body: EncodeRequest, request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    return {"length": len(await text_ids(state, body.text, "text"))}


@router.post("/decode")
async def decode(body: DetokenizeRequest, request: Request, state: ServerState = Depends(server_state)):
    """Special tokens left out, as text-generation-webui's decode() does by default."""
    state.authorize(request)
    return {"text": state.engine.backend.decode(checked_ids(state, body.tokens), skip_special_tokens=True)}


@router.post("/stop-generation")
async def stop_generation(request: Request, state: ServerState = Depends(server_state)):
    """Stops every reply being generated, as text-generation-webui (a one-user server) does."""
    state.authorize(request)
    state.stop_all()
    return "OK"
