"""Liveness and readiness probes, under both our paths and the KServe Open Inference Protocol's /v2 paths."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.api.dependencies import StateDep
from service.api.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])

_NOT_READY = {503: {"model": Readiness, "description": "Not ready; detail says why."}}


@router.get("/health/live")
@router.get("/v2/health/live")
async def live() -> Liveness:
    """The process answers HTTP; says nothing about the model."""
    return Liveness(live=True)


@router.get("/health/ready", responses=_NOT_READY)
@router.get("/v2/health/ready", responses=_NOT_READY)
async def ready(state: StateDep, response: Response) -> Readiness:
    """200 once the bundle is loaded and warmed up (and on CUDA when require_gpu is set), else 503."""
    if state.problem:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(ready=False, detail=state.problem)
    return Readiness(ready=True)
