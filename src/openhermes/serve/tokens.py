"""/tokenize and /detokenize, in llama.cpp's shape with vLLM's field names accepted."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from openhermes.serve.errors import APIError, prompt_errors
from openhermes.serve.schemas import DetokenizeRequest, TokenizeRequest
from openhermes.serve.state import ServerState, server_state

router = APIRouter()


async def text_ids(state: ServerState, text: str, param: str) -> list[int]:
    """The ids a completion of this text would be given (BOS as the model's rule says), for routes that count
    tokens: any length (a long text off the event loop); text that is not valid is a 400 naming `param`."""
    with prompt_errors(param):
        size = len(text.encode("utf-8", "surrogatepass"))
        return await state.tokenized(size, lambda: state.engine.text_prompt(text, check=False))


def checked_ids(state: ServerState, tokens: list[int], param: str = "tokens") -> list[int]:
    bad = [t for t in tokens if t >= state.engine.vocab_size]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary ({state.engine.vocab_size})", param=param,
                       code="invalid_value")
    return tokens


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request, state: ServerState = Depends(server_state)):
    """llama.cpp's /tokenize ({"content", "add_special", "with_pieces"}) or vLLM's ({"prompt",
    "add_special_tokens"}) -> {"tokens": [...]}."""
    engine = state.engine
    state.authorize(request)
    ids = await text_ids(state, body.content, "content")
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
    text = engine.backend.decode(checked_ids(state, body.tokens), skip_special_tokens=False)
    return {"content": text, "prompt": text}  # llama.cpp's key and vLLM's
