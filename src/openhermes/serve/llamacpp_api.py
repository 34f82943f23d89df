"""llama.cpp server's own routes (tools/server), in its shapes: /completion and /props (/tokenize, /detokenize
and /health are in tokens.py and info.py). SillyTavern's "llama.cpp" type generates through /completion and
counts tokens through /tokenize."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from openhermes.infer.sequence import GenerationResult
from openhermes.serve.completions import complete_text
from openhermes.serve.errors import APIError
from openhermes.serve.schemas import CompletionRequest
from openhermes.serve.shapes import Echo, Shape
from openhermes.serve.state import ServerState, server_state

router = APIRouter()


class LlamaCppShape(Shape):
    """/completion's JSON: one completion; streamed as {"content", "stop": false} chunks, then one
    {"stop": true, ...} with the counts and timings, and no [DONE] line."""

    end_of_stream = ""

    def __init__(self, engine, body):
        super().__init__("completion", engine, body)
        self.started = time.perf_counter()
        self.first_text: float | None = None

    def _partial(self, text: str) -> dict:
        return {"index": 0, "content": text, "tokens": [], "stop": False, "id_slot": 0}

    def _final(self, r: GenerationResult, content: str, tokens: list[int]) -> dict:
        now = time.perf_counter()
        first = self.first_text or now
        prompt_ms, predicted_ms = (first - self.started) * 1000, (now - first) * 1000
        if r.finish_reason == "stop":
            stop_type = "word" if r.stop_string else "eos"
        else:
            stop_type = {"length": "limit"}.get(r.finish_reason, "none")
        prompt = self.body.prompt
        return {
            "index": 0, "content": content, "tokens": tokens, "id_slot": 0, "stop": True, "model": self.engine.name,
            "tokens_predicted": r.completion_tokens, "tokens_evaluated": r.prompt_tokens,
            "prompt": prompt if isinstance(prompt, str) else "", "truncated": self.body.truncated_tokens > 0,
            "stop_type": stop_type, "stopping_word": r.stop_string, "tokens_cached": r.cached_tokens,
            "timings": {"prompt_n": r.prompt_tokens - r.cached_tokens, "prompt_ms": prompt_ms,
                        "predicted_n": r.completion_tokens, "predicted_ms": predicted_ms,
                        "predicted_per_second": r.completion_tokens / (predicted_ms / 1000) if predicted_ms else 0.0},
        }

    def choice(self, i: int, r: GenerationResult, echo: Echo) -> dict:
        return self._final(r, echo.text + r.text, list(r.token_ids))

    def full(self, rid: str, created: int, choices: list[dict], usage: dict) -> dict:
        return choices[0]

    def opening(self, i: int, echo: Echo) -> dict | None:
        return self._partial(echo.text) if echo.text else None

    def delta(self, i: int, text: str, entries) -> dict:
        if self.first_text is None:
            self.first_text = time.perf_counter()
        return self._partial(text)

    def closing(self, i: int, r: GenerationResult) -> dict:
        return self._final(r, "", [])

    def chunk(self, rid: str, created: int, choice: dict, include_usage: bool) -> dict:
        return choice


@router.post("/completion")
async def completion(body: CompletionRequest, request: Request, state: ServerState = Depends(server_state)):
    """llama.cpp's /completion: the same fields as /v1/completions (SillyTavern sends both servers' spellings);
    n_predict unset = until the context window is full, as in llama.cpp."""
    if body.choices() != 1 or len(body.prompts()) != 1:
        raise APIError(400, "/completion returns one completion of one prompt; use /v1/completions for n > 1 or "
                            "several prompts", param="n", code="invalid_value")
    return await complete_text(body, request, state, LlamaCppShape(state.engine, body),
                               default_max_tokens=state.engine.context_window)


@router.get("/props")
async def props(request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    engine = state.engine
    template = getattr(getattr(engine, "tokenizer", None), "chat_template", None) or ""
    return {"default_generation_settings": {"n_ctx": engine.context_window, "model": engine.name},
            "total_slots": engine.max_batch_size, "model_path": engine.name, "chat_template": template,
            "build_info": "openhermes"}
