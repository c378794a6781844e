"""The FastAPI application: settings, model lifespan, middleware, error handlers and routers."""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.api.admission import BYPASS_PREFIXES, AdmissionMiddleware
from service.api.apidocs import add_api_docs
from service.api.contract import with_model_limits
from service.api.dependencies import ModelState
from service.api.errors import add_exception_handlers
from service.api.metrics import Metrics, add_metrics
from service.api.middleware import (
    RequestLogMiddleware,
    SecurityHeadersMiddleware,
    ShutdownMiddleware,
    UploadMiddleware,
)
from service.api.routers import faces, health, info
from service.api.routers.v2 import add_open_inference_protocol
from service.api.settings import Settings
from service.api.web import ASSETS, CONTENT_SECURITY_POLICY, add_web_page
from service.core import memory
from service.core.framing import FaceFramer
from service.core.imaging import PhotoDecoder
from service.core.runtime import FaceModel

logger = logging.getLogger(__name__)
#: Uvicorn's exit status for a server that failed to start.
STARTUP_FAILURE = 3


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
    try:
        state.model = await run_in_threadpool(load_model, settings)
        state.model.run_observer = app.state.metrics.observe_run
        app.openapi_schema = None
        app.openapi_schema = with_model_limits(app.openapi(), state.model)
        state.framer = FaceFramer(state.model.bundle.preprocess, mesh_passes=settings.mesh_passes)
        await run_in_threadpool(state.framer.warm_up)
        # What is loaded now lives as long as the server: kept out of the collector's full passes, each of which
        # would otherwise stop the event loop for tens of milliseconds (docs/benchmarks.md, "fixed arrival rate").
        gc.collect()
        gc.freeze()
    except Exception as exc:
        if not app.state.exit_on_startup_failure:
            raise
        # One line, and a non-zero status for any number of workers: uvicorn would log a traceback, and its worker
        # supervisor exits 0 when a worker fails to start (the command's own check catches most causes first).
        logger.critical("cannot serve %s: %s: %s", settings.model, type(exc).__name__, " ".join(str(exc).split()))
        for handler in logging.getLogger("service").handlers + logging.getLogger().handlers:
            handler.flush()
        os._exit(STARTUP_FAILURE)
    if settings.require_gpu and not state.model.uses_gpu:
        state.problem = f"require_gpu is set but CUDA is not in use: {state.model.providers}"
        logger.error("not ready: %s", state.problem)
    else:
        state.problem = None
        logger.info("ready: providers %s", state.model.providers)
    yield
    state.model, state.framer, state.problem = None, None, "shutting down"
    app.state.metrics.close()
    gc.unfreeze()  # collectable again: an app stopped in a process that goes on (tests) leaves nothing behind


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; without `settings` they come from `FACEVAE_*` variables (how uvicorn workers get them)."""
    exit_on_startup_failure = settings is None
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
    #: Under `python -m service` a failed start-up exits the worker process; in tests the lifespan raises.
    app.state.exit_on_startup_failure = exit_on_startup_failure
    memory.limit_arenas()  # fewer malloc arenas: memory freed after a burst of large photos goes back sooner
    app.state.model_state = ModelState()
    app.state.photo_decoder = PhotoDecoder(settings.max_pixels, settings.max_decodes)
    add_exception_handlers(app)
    for router in (faces.router, health.router, info.router):
        app.include_router(router)
    add_api_docs(app)
    add_web_page(app)
    app.state.metrics = Metrics()
    app.add_middleware(
        AdmissionMiddleware,
        max_in_flight=settings.max_in_flight,
        queue_timeout=settings.queue_timeout,
        request_timeout=settings.request_timeout,
        on_reject=app.state.metrics.reject,
    )
    app.add_middleware(  # outside the admission limit: a slow upload holds no model slot
        UploadMiddleware,
        max_bytes=settings.max_body_bytes,
        stall_timeout=settings.body_timeout,
        min_rate=settings.min_upload_rate,
        deadline=settings.body_deadline,
        buffer_bytes=settings.upload_buffer_bytes,
        retry_after=max(1, math.ceil(settings.queue_timeout)),
        bypass=BYPASS_PREFIXES,
    )
    app.add_middleware(ShutdownMiddleware)
    add_metrics(app, app.state.metrics)  # around the admission limit and the body limit: their 503s and 413s count
    add_open_inference_protocol(app)  # its middleware reshapes the errors of everything added before it
    app.add_middleware(SecurityHeadersMiddleware, page_paths=(f"{ASSETS}/",), policy=CONTENT_SECURITY_POLICY)
    app.add_middleware(RequestLogMiddleware)  # outermost, so it also logs the 413s
    return app
