"""The OpenAI-compatible HTTP API (SPEC §5) and the web chat page, over the continuous-batching scheduler."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from openhermes.formats import Message
from openhermes.formats.base import Roleplay
from openhermes.infer.engine import BaseEngine
from openhermes.infer.sampling import PRESETS, SamplingParams, preset
from openhermes.infer.scheduler import QueueFull, Scheduler
from openhermes.infer.sequence import ContextWindowError, GenerationRequest, GenerationResult
from openhermes.serve.metrics import Metrics
from openhermes.serve.schemas import ChatCompletionRequest, CompletionRequest

STATIC = Path(__file__).parent / "static"


class APIError(Exception):
    """An error in OpenAI's JSON form: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(),
                        code="invalid_json")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "extra_forbidden":
        names = sorted({str(e["loc"][-1]) for e in errors if e.get("type") == "extra_forbidden"})
        return APIError(400, f"unrecognized request argument(s): {', '.join(names)}", param=names[0],
                        code="unknown_parameter")
    param = ".".join(loc) or None
    where = f"'{param}': " if param else ""
    return APIError(400, f"{where}{first.get('msg', 'invalid request')}", param=param, code="invalid_value")


def create_app(engine: BaseEngine, *, api_key: str | None = None, max_batch_size: int = 16,
               max_queue: int = 64) -> FastAPI:
    metrics = Metrics()
    scheduler: Scheduler | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal scheduler
        scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_queue=max_queue,
                              on_step=metrics.batch_rows.observe)
        yield
        scheduler.stop()

    app = FastAPI(title="openhermes", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat and completions for an openhermes model.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(JSONBodyMiddleware)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return await _api_error(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return await _api_error(request, APIError(exc.status_code, str(exc.detail), kind=kind))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name != engine.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{engine.name}'",
                           param="model", code="model_not_found", kind="not_found_error")

    def sampling(body) -> SamplingParams:
        try:
            base = preset(body.preset) if body.preset else SamplingParams()
            return base.with_(**body.sampler_settings())
        except ValueError as e:
            raise APIError(400, str(e), param="preset" if body.preset and body.preset not in PRESETS else None,
                           code="invalid_value") from None

    def unsupported(names: list[str]) -> None:
        if names:
            raise APIError(400, f"not supported by this server: {', '.join(names)}", param=names[0],
                           code="unsupported_parameter")

    async def run(request: Request, gen: GenerationRequest, body, kind: str) -> Response:
        """Submit to the scheduler; answer with one JSON body or a Server-Sent Events stream."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(item):
            loop.call_soon_threadsafe(events.put_nowait, item)

        def on_done(result: GenerationResult) -> None:
            if result.finish_reason == "cancelled":
                metrics.cancelled.inc()
            put(("done", result))

        started = time.perf_counter()
        try:
            seq = scheduler.submit(gen, on_delta=lambda d: put(("delta", d)), on_done=on_done,
                                   on_error=lambda m: put(("error", m)))
        except QueueFull as e:
            raise APIError(503, str(e), code="queue_full", kind="server_error") from None
        except ContextWindowError as e:
            raise APIError(400, str(e), param="messages" if kind == "chat" else "prompt",
                           code="context_length_exceeded") from None
        metrics.queue_depth.set(scheduler.queued)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        path = request.url.path

        def finished(result: GenerationResult) -> None:
            metrics.requests.labels(path, "200").inc()
            metrics.prompt_tokens.inc(result.prompt_tokens)
            metrics.completion_tokens.inc(result.completion_tokens)
            metrics.latency.observe(time.perf_counter() - started)

        if not body.stream:
            pieces: list[str] = []
            watcher = asyncio.ensure_future(_wait_disconnect(request))
            try:
                while True:
                    getter = asyncio.ensure_future(events.get())
                    done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        seq.cancel()
                        return Response(status_code=499)
                    what, value = getter.result()
                    if what == "delta":
                        if not pieces:
                            metrics.ttft.observe(time.perf_counter() - started)
                        pieces.append(value)
                    elif what == "error":
                        raise APIError(500, value, kind="server_error")
                    else:
                        finished(value)
                        return JSONResponse(_full_body(kind, rid, created, engine.name, value))
            finally:
                watcher.cancel()
                seq.cancel()

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            try:
                if kind == "chat":
                    yield _sse(_chunk(kind, rid, created, engine.name, {"role": "assistant", "content": ""},
                                      None, include_usage))
                first = True
                while True:
                    text, end = await _drain(events)
                    if text:
                        if first:
                            metrics.ttft.observe(time.perf_counter() - started)
                            first = False
                        delta = {"content": text} if kind == "chat" else text
                        yield _sse(_chunk(kind, rid, created, engine.name, delta, None, include_usage))
                    if end is None:
                        continue
                    what, value = end
                    if what == "error":
                        yield _sse({"error": {"message": value, "type": "server_error", "param": None, "code": None}})
                        break
                    finished(value)
                    yield _sse(_chunk(kind, rid, created, engine.name, {} if kind == "chat" else "",
                                      value.finish_reason, include_usage))
                    if include_usage:
                        yield _sse({"id": rid, "object": _object(kind, True), "created": created,
                                    "model": engine.name, "choices": [], "usage": _usage(value)})
                    break
                yield "data: [DONE]\n\n"
            finally:  # also on client disconnect (the task is cancelled): free the place in the batch
                seq.cancel()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "active": scheduler.active if scheduler else 0,
                "queued": scheduler.queued if scheduler else 0}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        if scheduler is not None:
            metrics.queue_depth.set(scheduler.queued)
            metrics.active.set(scheduler.active)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [_model_card(engine)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        authorize(request)
        check_model(model_id)
        return _model_card(engine)

    @app.get("/v1/presets")
    async def presets():
        """The named sampler presets and LimaRP's length modifiers (the web page reads them from here)."""
        from openhermes.formats import limarp

        return {"presets": {name: p.as_dict() for name, p in PRESETS.items()}, "roleplay_lengths": limarp.LENGTHS}

    def checked(body, request: Request) -> SamplingParams:
        """What every generation request goes through first: key, model, unsupported options, samplers."""
        authorize(request)
        check_model(body.model)
        unsupported(body.unsupported())
        return sampling(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        params = checked(body, request)
        with prompt_errors("messages"):
            messages = [Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
            if body.roleplay is not None:
                rp = body.roleplay
                ids = engine.roleplay_prompt(Roleplay(rp.char_name, rp.user_name, rp.char_persona, rp.user_persona,
                                                      rp.scenario), messages, rp.length)
            else:
                ids = engine.chat_prompt(messages)
        stops = body.stop_strings()
        if body.roleplay is not None:
            from openhermes.formats import limarp

            stops = (*stops, *limarp.STOP_STRINGS, f"\n{body.roleplay.user_name}:")
        limit = body.max_completion_tokens or body.max_tokens or engine.context_window
        gen = GenerationRequest(ids, params, limit, stops, ignore_eos=body.ignore_eos)
        return await run(request, gen, body, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        params = checked(body, request)
        with prompt_errors("prompt"):
            ids = engine.text_prompt(body.prompt_text())
        gen = GenerationRequest(ids, params, body.max_tokens or 16, body.stop_strings(), ignore_eos=body.ignore_eos)
        return await run(request, gen, body, "completion")

    return app


@contextmanager
def prompt_errors(param: str):
    """A prompt that cannot be built is the client's mistake: a 400 naming the field."""
    try:
        yield
    except ContextWindowError as e:
        raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
    except ValueError as e:
        raise APIError(400, str(e), param=param, code="invalid_value") from None


class JSONBodyMiddleware:
    """POST bodies on /v1 are read as JSON whatever the Content-Type says (curl -d sends a form type),
    as llama.cpp's and vLLM's servers do."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


async def _drain(events: asyncio.Queue) -> tuple[str, tuple | None]:
    """Wait for events, then take all that are waiting: (joined text deltas, end event or None). A busy
    server so sends fewer, larger chunks instead of falling behind the decoder."""
    items = [await events.get()]
    while not events.empty():
        items.append(events.get_nowait())
    text = "".join(v for what, v in items if what == "delta")
    return text, next((item for item in items if item[0] != "delta"), None)


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _model_card(engine: BaseEngine) -> dict:
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "openhermes",
            "context_window": engine.context_window}


def _object(kind: str, chunk: bool) -> str:
    if kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _usage(r: GenerationResult) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}


def _full_body(kind: str, rid: str, created: int, model: str, r: GenerationResult) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                  "finish_reason": r.finish_reason}
    else:
        choice = {"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
    return {"id": rid, "object": _object(kind, False), "created": created, "model": model, "choices": [choice],
            "usage": _usage(r), "system_fingerprint": None}


def _chunk(kind: str, rid: str, created: int, model: str, delta, finish: str | None, include_usage: bool) -> dict:
    if kind == "chat":
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
    out = {"id": rid, "object": _object(kind, True), "created": created, "model": model, "choices": [choice]}
    if include_usage:
        out["usage"] = None
    return out


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(jsonable_encoder(payload), ensure_ascii=False)}\n\n"
