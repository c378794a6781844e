"""The FastAPI application: settings, model lifespan, middleware, error handlers and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.api.admission import AdmissionMiddleware
from service.api.apidocs import add_api_docs
from service.api.contract import with_model_limits
from service.api.dependencies import ModelState
from service.api.errors import add_exception_handlers
from service.api.metrics import Metrics, add_metrics
from service.api.middleware import BodySizeLimitMiddleware, BodyTimeoutMiddleware, RequestLogMiddleware
from service.api.routers import faces, health, info
from service.api.routers.v2 import add_open_inference_protocol
from service.api.settings import Settings
from service.api.web import add_web_page
from service.core.framing import FaceFramer
from service.core.imaging import PhotoDecoder
from service.core.runtime import FaceModel

logger = logging.getLogger(__name__)


def load_model(settings: Settings) -> FaceModel:
    """The model as the settings configure it, loaded and warmed up."""
    return FaceModel.load(
        settings.model,
        providers=settings.providers,
        threads=settings.session_threads,
        max_batch=settings.max_batch,
        max_strength=settings.max_strength,
        refine_steps=settings.refine_steps,
        warm_up=True,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm up the model before serving; a broken bundle stops startup with the loader's message."""
    settings: Settings = app.state.settings
    state: ModelState = app.state.model_state
    state.model = await run_in_threadpool(load_model, settings)
    state.model.run_observer = app.state.metrics.observe_run
    app.openapi_schema = None
    app.openapi_schema = with_model_limits(app.openapi(), state.model)
    state.framer = FaceFramer(state.model.bundle.preprocess, mesh_passes=settings.mesh_passes)
    await run_in_threadpool(state.framer.warm_up)
    if settings.require_gpu and not state.model.uses_gpu:
        state.problem = f"require_gpu is set but CUDA is not in use: {state.model.providers}"
        logger.error("not ready: %s", state.problem)
    else:
        state.problem = None
        logger.info("ready: providers %s", state.model.providers)
    yield
    state.model, state.framer, state.problem = None, None, "shutting down"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; without `settings` they come from `FACEVAE_*` variables (how uvicorn workers get them)."""
    settings = settings or Settings()
    app = FastAPI(
        title="Face VAE service",
        summary="Encode, decode, sample and edit faces with a variational autoencoder under onnxruntime.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served from a package by add_api_docs instead of a CDN
        redoc_url=None,  # ReDoc has no offline package; /docs is the interactive reference
    )
    app.state.settings = settings
    app.state.model_state = ModelState()
    app.state.photo_decoder = PhotoDecoder(settings.max_pixels, settings.max_decodes)
    add_exception_handlers(app)
    add_api_docs(app)
    add_web_page(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeoutMiddleware, seconds=settings.body_timeout)
    app.state.metrics = Metrics()
    app.add_middleware(
        AdmissionMiddleware,
        max_in_flight=settings.max_in_flight,
        queue_timeout=settings.queue_timeout,
        request_timeout=settings.request_timeout,
        on_reject=app.state.metrics.reject,
    )
    add_metrics(app, app.state.metrics)  # around the admission limit and the body limit: their 503s and 413s count
    add_open_inference_protocol(app)  # its middleware reshapes the errors of everything added before it
    app.add_middleware(RequestLogMiddleware)  # outermost, so it also logs the 413s
    for router in (health.router, info.router, faces.router):
        app.include_router(router)
    return app
