"""What the server is and how it is doing: /v1/models, /health, /metrics, /v1/presets."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from openhermes.infer.sampling import PRESETS
from openhermes.serve.shapes import model_card
from openhermes.serve.state import ServerState, server_state

router = APIRouter()


@router.get("/health")
async def health(state: ServerState = Depends(server_state)):
    """200 while the scheduler runs; 503 when it has stopped, or has had work and made no step for
    `serve --stall-seconds` (a load balancer or supervisor can then restart the server)."""
    scheduler = state.scheduler
    body = {"status": "ok", "model": state.engine.name, "active": scheduler.active if scheduler else 0,
            "queued": scheduler.queued if scheduler else 0}
    if scheduler is None or not scheduler.alive:
        return JSONResponse(body | {"status": "error", "reason": "the scheduler is not running"}, status_code=503)
    stalled = scheduler.stalled_for()
    if stalled > state.stall_seconds:
        return JSONResponse(body | {"status": "stalled", "reason": f"no decode step for {stalled:.0f} s with work "
                                                                     "waiting"}, status_code=503)
    return body


@router.get("/metrics", include_in_schema=False)
async def prometheus(state: ServerState = Depends(server_state)):
    metrics = state.metrics
    if state.scheduler is not None:
        metrics.queue_depth.set(state.scheduler.queued)
        metrics.active.set(state.scheduler.active)
    return Response(metrics.render(), media_type=metrics.content_type)


@router.get("/v1/models")
async def models(request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    return {"object": "list", "data": [model_card(state.engine)]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request, state: ServerState = Depends(server_state)):
    state.authorize(request)
    state.check_model(model_id)
    return model_card(state.engine)


@router.get("/v1/presets")
async def presets():
    """The named sampler presets and LimaRP's length modifiers (the web page reads them from here)."""
    from openhermes.formats import limarp

    return {"presets": {name: p.as_dict() for name, p in PRESETS.items()}, "roleplay_lengths": limarp.LENGTHS}
