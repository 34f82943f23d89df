"""The OpenAI-compatible HTTP API (SPEC §5) and the web chat page, over the continuous-batching scheduler."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
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
from openhermes.infer.sequence import ContextWindowError, GenerationRequest, GenerationResult, TokenLogprob
from openhermes.serve.mailbox import Deltas, Mailbox
from openhermes.serve.metrics import Metrics
from openhermes.serve.schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

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
               max_queue: int = 64, stream_interval: int = 1, reserved_cores: int | None = None) -> FastAPI:
    """`stream_interval`: text deltas per streamed chunk after the first, which is sent at once (SGLang's and
    vLLM's `--stream-interval`): fewer chunks cost the HTTP side less, which on a small CPU shares the cores and
    the interpreter with decoding. `reserved_cores`: CPU cores decode steps leave to the HTTP side (torch engine on
    a CPU; None: infer/threads.py's default)."""
    if stream_interval < 1:
        raise ValueError("stream_interval must be at least 1")
    metrics = Metrics()
    scheduler: Scheduler | None = None
    mailbox: Mailbox | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal scheduler, mailbox
        mailbox = Mailbox(asyncio.get_running_loop())
        scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_queue=max_queue,
                              on_step=metrics.batch_rows.observe, threads=engine.serving_threads(reserved_cores))
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

    async def run(request: Request, gens: list[GenerationRequest], body, kind: str,
                  echoes: list[Echo] | None = None) -> Response:
        """Submit every choice to the scheduler (one batch); answer with one JSON body or a Server-Sent
        Events stream. A choice with max_new_tokens 0 generates nothing (the echoed prompt only)."""
        events: asyncio.Queue = asyncio.Queue()
        headers = _ignored_header(body)

        def put(item):
            mailbox.put(events, item)

        deltas = {i: Deltas(stream_interval, lambda text, i=i: put((i, "delta", text))) for i in range(len(gens))}

        def on_done(i: int, result: GenerationResult) -> None:
            deltas[i].flush()
            if result.finish_reason == "cancelled":
                metrics.cancelled.inc()
            put((i, "done", result))

        started = time.perf_counter()
        seqs: dict[int, object] = {}
        try:
            for i, gen in enumerate(gens):
                if gen.max_new_tokens > 0:
                    seqs[i] = scheduler.submit(gen, on_delta=deltas[i].add,
                                               on_done=lambda r, i=i: on_done(i, r),
                                               on_error=lambda m, i=i: put((i, "error", m)))
        except (QueueFull, ContextWindowError) as e:
            for seq in seqs.values():
                seq.cancel()
            if isinstance(e, QueueFull):
                raise APIError(503, str(e), code="queue_full", kind="server_error") from None
            raise APIError(400, str(e), param="messages" if kind == "chat" else "prompt",
                           code="context_length_exceeded") from None
        metrics.queue_depth.set(scheduler.queued)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        path = request.url.path
        results: dict[int, GenerationResult] = {i: _nothing(g) for i, g in enumerate(gens) if g.max_new_tokens == 0}
        echoes = echoes or [Echo() for _ in gens]
        shape = Shape(kind, engine, body)

        def finished() -> None:
            metrics.requests.labels(path, "200").inc()
            usage = _usage(gens, results)
            metrics.prompt_tokens.inc(usage["prompt_tokens"])
            metrics.cached_tokens.inc(usage["prompt_tokens_details"]["cached_tokens"])
            metrics.completion_tokens.inc(usage["completion_tokens"])
            metrics.latency.observe(time.perf_counter() - started)

        def cancel_all() -> None:
            for seq in seqs.values():
                seq.cancel()

        if not body.stream:
            watcher = asyncio.ensure_future(_wait_disconnect(request))
            first = True
            try:
                while len(results) < len(gens):
                    getter = asyncio.ensure_future(events.get())
                    done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        cancel_all()
                        return Response(status_code=499)
                    i, what, value = getter.result()
                    if what == "delta" and first:
                        metrics.ttft.observe(time.perf_counter() - started)
                        first = False
                    if what == "error":
                        raise APIError(500, value, kind="server_error")
                    if what == "done":
                        results[i] = value
                finished()
                choices = [shape.choice(i, results[i], echoes[i]) for i in range(len(gens))]
                return JSONResponse(shape.full(rid, created, choices, _usage(gens, results)), headers=headers)
            finally:
                watcher.cancel()
                cancel_all()

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            sent = dict.fromkeys(range(len(gens)), 0)  # log-probabilities already sent, per choice
            try:
                for i in range(len(gens)):
                    opening = shape.opening(i, echoes[i])
                    if opening is not None:
                        yield _sse(shape.chunk(rid, created, opening, include_usage))
                for i in list(results):  # nothing to generate: finished at once
                    yield _sse(shape.chunk(rid, created, shape.closing(i, results[i]), include_usage))
                first = True
                while len(results) < len(gens):
                    texts, ends = await _drain(events)
                    for i, text in texts.items():
                        lps = seqs[i].logprobs
                        new = lps[sent[i]:] if lps is not None else None
                        sent[i] += len(new or ())
                        if text or new:
                            if first:
                                metrics.ttft.observe(time.perf_counter() - started)
                                first = False
                            yield _sse(shape.chunk(rid, created, shape.delta(i, text, new), include_usage))
                    for i, (what, value) in ends.items():
                        if what == "error":
                            yield _sse({"error": {"message": value, "type": "server_error", "param": None,
                                                  "code": None}})
                            return
                        results[i] = value
                        rest = value.logprobs[sent[i]:] if value.logprobs is not None else None
                        if rest:
                            yield _sse(shape.chunk(rid, created, shape.delta(i, "", rest), include_usage))
                        yield _sse(shape.chunk(rid, created, shape.closing(i, value), include_usage))
                finished()
                if include_usage:
                    yield _sse({"id": rid, "object": _object(kind, True), "created": created, "model": engine.name,
                                "choices": [], "usage": _usage(gens, results)})
                yield "data: [DONE]\n\n"
            finally:  # also on client disconnect (the task is cancelled): free the places in the batch
                cancel_all()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

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
        body.log_spelling_notes()
        return sampling(body)

    def fitted(ids: list[int], body, reply: int | None, param: str) -> list[int]:
        """BOS as `add_bos_token` asks; an over-long prompt cut to its end by `truncation_length`
        (text-generation-webui keeps the last truncation_length - max_new_tokens tokens)."""
        bos = engine.bos_id
        if bos is not None and body.add_bos_token is False and ids[:1] == [bos]:
            ids = ids[1:]
        elif bos is not None and body.add_bos_token and ids[:1] != [bos]:
            ids = [bos, *ids]
        if body.truncation_length:
            keep = min(body.truncation_length, engine.context_window) - (reply or 1)
            if keep < 1:
                raise APIError(400, f"truncation_length {body.truncation_length} leaves no room for the prompt "
                                    f"with max_tokens {reply}", param="truncation_length", code="invalid_value")
            if len(ids) > keep:
                head = ids[:1] if bos is not None and ids[:1] == [bos] else []  # BOS stays first
                ids = head + ids[len(ids) - keep + len(head):]
        with prompt_errors(param):
            engine._checked(ids)
        return ids

    def choices(body, ids: list[int], params: SamplingParams, limit: int, stops: tuple[str, ...],
                logprobs: int | None) -> list[GenerationRequest]:
        """The request's n choices (SillyTavern's swipes), decoded together; with a seed, choice j
        uses seed + j, so each is reproducible and they differ."""
        out = []
        for j in range(body.choices()):
            p = params if params.seed is None or j == 0 else params.with_(seed=(params.seed + j) % 2**64)
            try:
                grammar = engine.grammar(body.response_format)
            except ValueError as e:
                raise APIError(400, str(e), param="response_format", code="invalid_value") from None
            out.append(GenerationRequest(ids, p, limit, stops, ignore_eos=body.ignore_eos,
                                         min_tokens=body.min_tokens or 0, logprobs=logprobs,
                                         skip_special_tokens=body.skip_special_tokens, constraint=grammar))
        return out

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        params = checked(body, request)
        with prompt_errors("messages"):
            messages = [Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
            if body.roleplay is not None:
                rp = body.roleplay
                ids = engine.roleplay_prompt(Roleplay(rp.char_name, rp.user_name, rp.char_persona, rp.user_persona,
                                                      rp.scenario), messages, rp.length, check=False)
            else:
                ids = engine.chat_prompt(messages, check=False)
        stops = body.stop_strings()
        if body.roleplay is not None:
            from openhermes.formats import limarp

            stops = (*stops, *limarp.STOP_STRINGS, f"\n{body.roleplay.user_name}:")
        asked = body.max_completion_tokens or body.max_tokens
        if asked == 0:
            raise APIError(400, "max_tokens must be at least 1", param="max_tokens", code="invalid_value")
        ids = fitted(ids, body, asked, "messages")
        limit = asked if asked is not None else engine.context_window
        return await run(request, choices(body, ids, params, limit, stops, body.logprobs_k()), body, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        params = checked(body, request)
        limit = 16 if body.max_tokens is None else body.max_tokens
        if limit == 0 and not body.echo:
            raise APIError(400, "max_tokens 0 generates nothing; use it with echo", param="max_tokens",
                           code="invalid_value")
        gens, echoes = [], []
        for prompt in body.prompts():
            with prompt_errors("prompt"):
                if isinstance(prompt, str):
                    ids = engine.text_prompt(prompt, check=False)
                elif max(prompt) >= engine.vocab_size:
                    raise ValueError(f"token id {max(prompt)} is outside the vocabulary ({engine.vocab_size})")
                else:
                    ids = list(prompt)
            ids = fitted(ids, body, limit, "prompt")
            echo = Echo(first_token=ids[0] if ids else None)
            if body.echo:
                echo.text = prompt if isinstance(prompt, str) else engine.backend.decode(ids, skip_special_tokens=False)
                if body.logprobs is not None:
                    try:
                        echo.logprobs = await asyncio.to_thread(engine.prompt_logprobs, ids, body.logprobs)
                    except NotImplementedError as e:
                        raise APIError(400, str(e), param="echo", code="unsupported_parameter") from None
            for gen in choices(body, ids, params, limit, body.stop_strings(), body.logprobs):
                gens.append(gen)
                echoes.append(echo)
        return await run(request, gens, body, "completion", echoes)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        """llama.cpp's /tokenize ({"content", "add_special", "with_pieces"}) or vLLM's ({"prompt",
        "add_special_tokens"}) -> {"tokens": [...]}."""
        authorize(request)
        with prompt_errors("content"):
            ids = engine.text_prompt(body.content, check=False)
        if not body.add_special and engine.bos_id is not None and ids[:1] == [engine.bos_id]:
            ids = ids[1:]
        if body.with_pieces:
            return {"tokens": [{"id": t, "piece": engine.token_piece(t)[0]} for t in ids]}
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_window}  # vLLM's extra keys

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        """llama.cpp's and vLLM's /detokenize: {"tokens": [...]} -> {"content": text, "prompt": text}."""
        authorize(request)
        bad = [t for t in body.tokens if t >= engine.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary ({engine.vocab_size})", param="tokens",
                           code="invalid_value")
        text = engine.backend.decode(body.tokens, skip_special_tokens=False)
        return {"content": text, "prompt": text}  # llama.cpp's key and vLLM's

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


async def _drain(events: asyncio.Queue) -> tuple[dict[int, str], dict[int, tuple]]:
    """Wait for events, then take all that are waiting: (joined text per choice, end event per choice).
    A busy server so sends fewer, larger chunks instead of falling behind the decoder."""
    items = [await events.get()]
    while not events.empty():
        items.append(events.get_nowait())
    texts: dict[int, str] = {}
    ends: dict[int, tuple] = {}
    for i, what, value in items:
        if what == "delta":
            texts[i] = texts.get(i, "") + value
        else:
            ends[i] = (what, value)
    return texts, ends


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _model_card(engine: BaseEngine) -> dict:
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "openhermes",
            "context_window": engine.context_window, "max_model_len": engine.context_window}


def _object(kind: str, chunk: bool) -> str:
    if kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _ignored_header(body) -> dict[str, str]:
    """The ignored field names as an ASCII header value (names are escaped as in JSON; capped)."""
    names = [json.dumps(n)[1:-1] for n in body.ignored_fields()]
    value = ", ".join(names)
    return {"x-openhermes-ignored": value[:4000]} if names else {}


def _nothing(gen: GenerationRequest) -> GenerationResult:
    return GenerationResult("", [], "length", len(gen.prompt_ids), 0, [] if gen.logprobs is not None else None)


def _usage(gens: list[GenerationRequest], results: dict[int, GenerationResult]) -> dict:
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
    """OpenAI's JSON for one endpoint: choices, chunks and log-probabilities."""

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
        return {"id": rid, "object": _object(self.kind, False), "created": created, "model": self.engine.name,
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

    def chunk(self, rid: str, created: int, choice: dict, include_usage: bool) -> dict:
        out = {"id": rid, "object": _object(self.kind, True), "created": created, "model": self.engine.name,
               "choices": [choice]}
        if include_usage:
            out["usage"] = None
        return out


def _sse(payload: dict) -> str:
    try:  # chunks are plain dicts; jsonable_encoder (slow) only for anything else
        text = json.dumps(payload, ensure_ascii=False)
    except TypeError:
        text = json.dumps(jsonable_encoder(payload), ensure_ascii=False)
    return f"data: {text}\n\n"
