"""Running a request: its choices go to the scheduler as one batch; the answer is one JSON body or a stream of
Server-Sent Events. The one place where requests meet the decoder."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from openhermes.infer.scheduler import QueueFull
from openhermes.infer.sequence import ContextWindowError, GenerationRequest, GenerationResult
from openhermes.serve.errors import APIError
from openhermes.serve.mailbox import Deltas
from openhermes.serve.shapes import Echo, Shape, ignored_header, nothing, object_name, truncated_header
from openhermes.serve.shapes import usage as usage_of
from openhermes.serve.state import ServerState


async def run(state: ServerState, request: Request, gens: list[GenerationRequest], body, kind: str,
              echoes: list[Echo] | None = None, shape: Shape | None = None) -> Response:
    """Submit every choice to the scheduler (one batch); answer with one JSON body or a Server-Sent
    Events stream, in OpenAI's shape or `shape`'s. A choice with max_new_tokens 0 generates nothing (the echoed
    prompt only)."""
    events: asyncio.Queue = asyncio.Queue()
    headers = ignored_header(body) | truncated_header(body)
    engine, metrics, scheduler = state.engine, state.metrics, state.scheduler

    def put(item):
        state.mailbox.put(events, item)

    # text-generation-webui's max_tokens_second: a stream sends at most that many deltas (tokens) a second, one each
    pace = 1 / body.max_tokens_second if body.stream and body.max_tokens_second else 0.0
    interval = 1 if pace else state.stream_interval
    deltas = {i: Deltas(interval, lambda text, i=i: put((i, "delta", text))) for i in range(len(gens))}

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
    state.in_flight.update(seqs.values())
    metrics.queue_depth.set(scheduler.queued)
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    path = request.url.path
    results: dict[int, GenerationResult] = {i: nothing(g) for i, g in enumerate(gens) if g.max_new_tokens == 0}
    echoes = echoes or [Echo() for _ in gens]
    shape = shape or Shape(kind, engine, body)

    def finished() -> dict:
        """Count the finished request in the metrics; its usage, as the response reports it."""
        metrics.requests.labels(path, "200").inc()
        usage = usage_of(gens, results)
        metrics.prompt_tokens.inc(usage["prompt_tokens"])
        metrics.cached_tokens.inc(usage["prompt_tokens_details"]["cached_tokens"])
        metrics.completion_tokens.inc(usage["completion_tokens"])
        metrics.latency.observe(time.perf_counter() - started)
        if body.truncated_tokens:
            usage["truncated_prompt_tokens"] = body.truncated_tokens
        return usage

    def cancel_all() -> None:
        for seq in seqs.values():
            seq.cancel()
        state.in_flight.difference_update(seqs.values())

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
                if what == "error" and value.startswith("response_format"):  # the client's schema, at a dead end
                    raise APIError(400, value, param="response_format", code="invalid_value")
                if what == "error":
                    raise APIError(500, value, kind="server_error")
                if what == "done":
                    results[i] = value
            usage = finished()
            choices = [shape.choice(i, results[i], echoes[i]) for i in range(len(gens))]
            return JSONResponse(shape.full(rid, created, choices, usage), headers=headers)
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
                    yield shape.event(shape.chunk(rid, created, opening, include_usage))
            for i in list(results):  # nothing to generate: finished at once
                yield shape.event(shape.chunk(rid, created, shape.closing(i, results[i]), include_usage))
            first, last = True, 0.0
            while len(results) < len(gens):
                # the first text goes alone, however much the decoder has made meanwhile: the reply starts at once
                texts, ends = await _drain(events, one=bool(pace) or first)
                for i, text in texts.items():
                    lps = seqs[i].logprobs
                    new = lps[sent[i]:] if lps is not None else None
                    sent[i] += len(new or ())
                    if text or new:
                        if pace:  # the decoder runs on at its own speed; only this stream waits
                            await asyncio.sleep(max(0.0, last + pace - time.perf_counter()))
                            last = time.perf_counter()
                        if first:
                            metrics.ttft.observe(time.perf_counter() - started)
                            first = False
                        yield shape.event(shape.chunk(rid, created, shape.delta(i, text, new), include_usage))
                for i, (what, value) in ends.items():
                    if what == "error":
                        yield shape.event({"error": {"message": value, "type": "server_error", "param": None,
                                                 "code": None}})
                        return
                    results[i] = value
                    rest = value.logprobs[sent[i]:] if value.logprobs is not None else None
                    if rest:
                        yield shape.event(shape.chunk(rid, created, shape.delta(i, "", rest), include_usage))
                    yield shape.event(shape.chunk(rid, created, shape.closing(i, value), include_usage))
            usage = finished()
            if include_usage:
                yield shape.event({"id": rid, "object": object_name(kind, True), "created": created,
                                   "model": engine.name, "choices": [], "usage": usage})
            yield shape.end_of_stream
        finally:  # also on client disconnect (the task is cancelled): free the places in the batch
            cancel_all()

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})


async def _drain(events: asyncio.Queue, one: bool = False) -> tuple[dict[int, str], dict[int, tuple]]:
    """Wait for events, then take all that are waiting (`one`: only the first): (joined text per choice, end event
    per choice). A busy server so sends fewer, larger chunks instead of falling behind the decoder."""
    items = [await events.get()]
    while not one and not events.empty():
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
