"""/tokenize and /detokenize, in llama.cpp's shape with vLLM's field names accepted."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from openhermes.serve.errors import APIError, prompt_errors
from openhermes.serve.schemas import DetokenizeRequest, TokenizeRequest
from openhermes.serve.state import ServerState, server_state

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request, state: ServerState = Depends(server_state)):
    """llama.cpp's /tokenize ({"content", "add_special", "with_pieces"}) or vLLM's ({"prompt",
    "add_special_tokens"}) -> {"tokens": [...]}."""
    engine = state.engine
    state.authorize(request)
    with prompt_errors("content"):  # any length (it counts tokens); a long one off the loop
        size = len(body.content.encode("utf-8", "surrogatepass"))
        ids = await state.tokenized(size, lambda: engine.text_prompt(body.content, check=False))
    if not body.add_special and engine.bos_id is not None and ids[:1] == [engine.bos_id]:
        ids = ids[1:]
    if body.with_pieces:
        return {"tokens": [{"id": t, "piece": engine.token_piece(t)[0]} for t in ids]}
    return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_window}  # vLLM's extra keys


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request, state: ServerState = Depends(server_state)):
    """llama.cpp's and vLLM's /detokenize: {"tokens": [...]} -> {"content": text, "prompt": text}."""
    engine = state.engine
    state.authorize(request)
    bad = [t for t in body.tokens if t >= engine.vocab_size]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary ({engine.vocab_size})", param="tokens",
                       code="invalid_value")
    text = engine.backend.decode(body.tokens, skip_special_tokens=False)
    return {"content": text, "prompt": text}  # llama.cpp's key and vLLM's
