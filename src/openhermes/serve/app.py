"""The OpenAI-compatible HTTP API (SPEC §5) and the web chat page, over the continuous-batching scheduler.

The app is routers over one ServerState (serve/state.py): completions.py (chat and completions), tokens.py
(tokenize, detokenize), info.py (models, health, metrics, presets), page.py (the web page); running.py runs a
request against the scheduler, shapes.py writes OpenAI's JSON, errors.py its errors."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from openhermes.infer.engine import BaseEngine
from openhermes.infer.scheduler import Scheduler, Watchdog
from openhermes.serve import completions, info, kobold_api, llamacpp_api, page, textgen_api, tokens
from openhermes.serve.errors import APIError, validation_error
from openhermes.serve.mailbox import Mailbox
from openhermes.serve.state import ServerState


def create_app(engine: BaseEngine, *, api_key: str | None = None, max_batch_size: int = 16,
               max_queue: int = 64, stream_interval: int = 1, reserved_cores: int | None = None,
               max_body_mb: float = 4, stall_seconds: float = 120, strict_model_name: bool = False,
               truncate: str = "none") -> FastAPI:
    """`stream_interval`: text deltas per streamed chunk after the first, which is sent at once (SGLang's and
    vLLM's `--stream-interval`): fewer chunks cost the HTTP side less, which on a small CPU shares the cores and
    the interpreter with decoding. `reserved_cores`: CPU cores decode steps leave to the HTTP side (torch engine on
    a CPU; None: infer/threads.py's default). `max_body_mb`: larger request bodies are answered 413 before they are
    read. `stall_seconds`: /health answers 503 when the scheduler has had work and made no step for this long.
    `strict_model_name`: a request naming a model other than the engine's is a 404 (else any name is served).
    `truncate`: "keep-system" drops a chat's oldest turns after its system message until it fits the window (else
    such a chat is OpenAI's 400)."""
    if stream_interval < 1:
        raise ValueError("stream_interval must be at least 1")
    if truncate not in ("none", "keep-system"):
        raise ValueError(f"truncate={truncate!r}: none or keep-system")
    state = ServerState(engine, api_key=api_key, stream_interval=stream_interval, stall_seconds=stall_seconds,
                        strict_model_name=strict_model_name, truncate=truncate)
    engine.max_token_bytes  # noqa: B018 (computed once now, not on a client's first request)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.mailbox = Mailbox(asyncio.get_running_loop())
        state.scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_queue=max_queue,
                                    on_step=state.metrics.batch_rows.observe,
                                    threads=engine.serving_threads(reserved_cores))
        watchdog = Watchdog(state.scheduler, stall_seconds)
        yield
        watchdog.stop()
        state.scheduler.stop()
        state.prompt_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="openhermes", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat and completions for an openhermes model.")
    app.state.openhermes = state
    page.mount_static(app)
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_mb * 2**20))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        state.metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return await _api_error(request, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return await _api_error(request, APIError(exc.status_code, str(exc.detail), kind=kind))

    # The order of the original app's routes: the page, info, generation, tokens.
    for router in (page.router, info.router, completions.router, tokens.router):
        app.include_router(router)
    # Other servers' own routes, for the clients built on them (SillyTavern's three local text-completion types)
    for router in (textgen_api.router, llamacpp_api.router, kobold_api.router):
        app.include_router(router)
    return app


JSON_ROUTES = ("/v1/", "/api/", "/completion", "/tokenize", "/detokenize")


class JSONBodyMiddleware:
    """POST bodies on the API routes are read as JSON whatever the Content-Type says (curl -d sends a form type),
    as llama.cpp's and vLLM's servers do."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(JSON_ROUTES):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """A request body over `max_bytes` is answered 413 as soon as its size is known (Content-Length, or the
    bytes read so far), before any of it is parsed: one client's 100 MB upload costs no one else anything."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send, int(declared))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send, size)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:  # afterwards: the real channel (a disconnect)
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send, size: int) -> None:
        error = APIError(413, f"the request body is {'at least ' if size <= self.max_bytes else ''}{size} bytes; "
                              f"this server takes at most {self.max_bytes} (serve --max-body-mb)",
                         code="request_too_large")
        await error.response()(scope, receive, send)
