"""text-generation-webui's internal API (its modules/api/script.py), in its shapes. SillyTavern's "Text Generation
WebUI" type asks /v1/internal/model/info on connect; when it answers, SillyTavern counts tokens with
/v1/internal/encode (the model's own tokenizer) instead of its own LLaMA tokenizer, so it fits its prompts to the
context it is told."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from openhermes.serve.schemas import Lenient
from openhermes.serve.state import ServerState, server_state
from openhermes.serve.tokens import checked_ids, text_ids

router = APIRouter(prefix="/v1/internal")


class EncodeRequest(BaseModel):
    model_config = Lenient
    text: str


class DecodeRequest(BaseModel):
    model_config = Lenient
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1_000_000)]


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
async def decode(body: DecodeRequest, request: Request, state: ServerState = Depends(server_state)):
    """Special tokens left out, as text-generation-webui's decode() does by default."""
    state.authorize(request)
    return {"text": state.engine.backend.decode(checked_ids(state, body.tokens), skip_special_tokens=True)}


@router.post("/stop-generation")
async def stop_generation(request: Request, state: ServerState = Depends(server_state)):
    """Stops every reply being generated, as text-generation-webui (a one-user server) does; each ends with
    finish_reason "cancelled" and the text so far."""
    state.authorize(request)
    stop_all(state)
    return "OK"


def stop_all(state: ServerState) -> int:
    seqs = list(state.in_flight)
    for seq in seqs:
        seq.cancel()
    return len(seqs)
