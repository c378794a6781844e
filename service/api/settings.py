"""Service configuration: every option has a default that works on a fresh clone and a `FACEVAE_*` variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import ENV_PREFIX
from service.core import defaults
from service.core.bundle import DEFAULT_MODEL
from service.core.defaults import MAX_BATCH, MAX_STRENGTH, MESH_PASSES, REFINE_STEPS

__all__ = ["DEFAULT_MODEL", "ENV_PREFIX", "LogLevel", "Settings"]

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Read from `FACEVAE_*` environment variables; the CLI exports its flags into them (see `service.api.cli`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    model: Path = Field(DEFAULT_MODEL, description="Model bundle folder (encoder.onnx, decoder.onnx, *.json).")
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(
        0,
        ge=0,
        description="Uvicorn worker processes, each with its own copy of the model; 0 means one per usable core.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="onnxruntime execution providers in priority order, comma-separated; "
        "empty means CUDA when this onnxruntime offers it, else CPU.",
    )
    require_gpu: bool = Field(False, description="Report not-ready unless both sessions really run on CUDA.")
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime threads per session and worker; 0 means half the usable cores / workers."
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest request body accepted, in bytes.")
    body_timeout: float = Field(
        10.0, gt=0, description="Seconds a request body may stall between two chunks before 408 (stalled uploads)."
    )
    min_upload_rate: float = Field(
        16384.0,
        gt=0,
        description="Bytes per second a request body must average, counted from 2 s after the headers (408 below): a "
        "client trickling its upload is cut off within seconds.",
    )
    body_deadline: float = Field(
        60.0, gt=0, description="Seconds a whole request body may take to arrive (408 beyond)."
    )
    upload_buffer_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="Bytes of request bodies one worker holds at once, read before admission and not yet answered "
        "(503 with Retry-After beyond).",
    )
    max_header_bytes: int = Field(
        65536, ge=1024, description="Largest request line and headers together, in bytes (431 beyond)."
    )
    max_headers: int = Field(100, ge=1, description="Most header lines in one request (431 beyond).")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection may take to send a request's headers before it is closed (408)."
    )
    max_pixels: int = Field(
        25_000_000,
        ge=1,
        le=40_000_000,
        description="Largest image accepted, in pixels (413 beyond), checked before decoding.",
    )
    max_decodes: int = Field(2, ge=1, description="Photos one worker decodes at once; more wait, bounding memory.")
    mesh_passes: int = Field(
        MESH_PASSES,
        ge=1,
        le=4,
        description="Face Mesh passes per detected face at most (a further one only while the face's region moves); "
        "what fewer save and cost: docs/benchmarks.md.",
    )
    refine_steps: int = Field(
        REFINE_STEPS,
        ge=0,
        le=10,
        description="Steps refining a photo's code so its decoded face encodes back to the photo's z_mean; each "
        "costs one decoder and one encoder run, and 0 decodes z_mean as it is (docs/benchmarks.md).",
    )
    max_batch: int = Field(MAX_BATCH, ge=1, description="Most latents, samples (n) or strip steps in one request.")
    max_strength: float = Field(
        MAX_STRENGTH, gt=0, description="Largest attribute strength (1 = the gap between faces with and without it)."
    )
    max_in_flight: int = Field(
        8, ge=1, description="Requests one worker runs at once; more wait up to queue_timeout, then get 503."
    )
    queue_timeout: float = Field(
        2.0, gt=0, description="Seconds a request waits for a slot before 503 with Retry-After."
    )
    request_timeout: float = Field(30.0, gt=0, description="Seconds a request may take before 504.")
    graceful_timeout: float = Field(
        20.0, gt=0, description="Seconds to let in-flight requests finish after SIGTERM before closing them."
    )
    log_level: LogLevel = Field("info", description="Level of the service and uvicorn loggers.")

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        """Accept "CUDAExecutionProvider,CPUExecutionProvider" from the environment or the command line."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def worker_count(self) -> int:
        """Worker processes: as set, or (0) one per usable core (`service.core.defaults.worker_count`)."""
        return defaults.worker_count(self.workers)

    @property
    def session_threads(self) -> int:
        """Threads per onnxruntime session unless set explicitly: half the cores, shared among the workers
        (`service.core.defaults.session_threads`)."""
        return defaults.session_threads(self.worker_count, self.intra_op_threads)
