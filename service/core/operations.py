"""One function per operation: what each face endpoint computes, without HTTP.

The routers (`service.api.routers.faces`) call these and only parse requests and render the answers; the benchmarks
call the same functions to time the work without HTTP, so there is no second copy of a pipeline to keep in step.
Photos arrive as the uploaded bytes and are decoded by a `PhotoDecoder` (the memory budget of the caller's
settings); faces come back as uint8 arrays with the latents that made them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from service.core.bundle import DECODER_INPUT, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS, SamplingMode
from service.core.compositing import Detail, Output, compose
from service.core.detection import Face
from service.core.framing import FRAMING_SIDE, Align, FaceFramer, Framed
from service.core.imaging import PhotoDecoder, photo_scale, photo_size
from service.core.runtime import Encoding, FaceModel, Interpolation, draw_seed


class Networks(Protocol):
    """What runs the encoder and decoder: `FaceModel` (onnxruntime) is one; a benchmark may pass another."""

    def encode_pixels(self, pixels: np.ndarray) -> Encoding: ...

    def decode(self, z: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Framing:
    """How a photo's face is framed: `align=auto` (detect and align) or `none` (crop the bundle's box), and which
    face, 0 the largest."""

    align: Align = Align.AUTO
    face: int = 0


#: The API's default framing: the largest face, detected and aligned.
AUTO_LARGEST = Framing()


@dataclass(frozen=True, eq=False)
class Faces:
    """An operation's faces, uint8 [N, H, W, 3], the latents [N, z_dim] they come from, the seed that drew them
    (None when none was drawn) and how many a row when shown as one picture (None: a square grid)."""

    faces: np.ndarray
    latents: np.ndarray
    seed: int | None = None
    columns: int | None = None


@dataclass(frozen=True, eq=False)
class Detection:
    """The faces found in a photo, largest first, and the photo's size; coordinates are in the photo's own pixels
    once multiplied by `scale` (above 1 when the photo was decoded smaller, in draft mode)."""

    width: int
    height: int
    faces: list[Face]
    scale: float


@dataclass(frozen=True, eq=False)
class PhotoEncoding:
    """A photo's posterior and code (`encoding`, one row), one sample `z` drawn with `seed`, and the face used
    (None with align=none) with the `scale` of its coordinates as in `Detection`."""

    encoding: Encoding
    z: np.ndarray
    seed: int
    face: Face | None
    scale: float


def frame_photo(
    photo_decoder: PhotoDecoder, framer: FaceFramer, data: bytes, framing: Framing, whole: bool = False
) -> tuple[Image.Image, Framed]:
    """An uploaded photo (decoded whole, or only as large as framing needs) and its face framed as `framing` says."""
    photo = photo_decoder.decode(data, None if whole else FRAMING_SIDE)
    return photo, framer.frame(photo, framing.align, framing.face)


def detect(photo_decoder: PhotoDecoder, framer: FaceFramer, data: bytes) -> Detection:
    """Every face in a photo, largest first (none found: an empty list)."""
    photo = photo_decoder.decode(data, FRAMING_SIDE)
    width, height = photo_size(photo)
    return Detection(width, height, framer.detect(photo), photo_scale(photo))


def encode_photo(
    model: FaceModel,
    framer: FaceFramer,
    photo_decoder: PhotoDecoder,
    data: bytes,
    framing: Framing = AUTO_LARGEST,
    seed: int | None = None,
    networks: Networks | None = None,
) -> PhotoEncoding:
    """A photo's face to its posterior, its code (z_mean refined, `FaceModel.refine`) and one sample z drawn with
    `seed` (a fresh one when None)."""
    photo, framed = frame_photo(photo_decoder, framer, data, framing)
    encoding = (networks or model).encode_pixels(framed.pixels[np.newaxis])
    seed = draw_seed() if seed is None else seed
    z = encoding.sample(np.random.default_rng(seed))
    return PhotoEncoding(encoding, z, seed, framed.face, photo_scale(photo))


def decode(model: FaceModel, rows: Sequence[Sequence[float]], networks: Networks | None = None) -> Faces:
    """Client latents (checked as `FaceModel.latents` checks them) to faces, one batch."""
    z = model.latents(rows)
    return Faces((networks or model).decode(z), z)


def sample(
    model: FaceModel,
    n: int,
    seed: int | None = None,
    mode: SamplingMode | None = None,
    temperature: float = 1.0,
    networks: Networks | None = None,
) -> Faces:
    """`n` random faces; the same seed gives the same faces (a fresh seed when None, returned with them)."""
    seed = draw_seed() if seed is None else seed
    z = model.sample_latents(n, np.random.default_rng(seed), mode, temperature)
    return Faces((networks or model).decode(z), z, seed)


def interpolate_latents(
    model: FaceModel,
    start: Sequence[float],
    end: Sequence[float],
    steps: int,
    method: Interpolation,
    networks: Networks | None = None,
) -> Faces:
    """A walk of `steps` faces between two client latents, as one row."""
    first, last = (model.latents([z], name)[0] for name, z in (("start", start), ("end", end)))
    return _walk(model, first, last, steps, method, networks or model)


def interpolate_photos(
    model: FaceModel,
    framer: FaceFramer,
    photo_decoder: PhotoDecoder,
    start: bytes,
    end: bytes,
    steps: int,
    method: Interpolation,
    framing: Framing = AUTO_LARGEST,
    networks: Networks | None = None,
) -> Faces:
    """A walk of `steps` faces between two photos' codes, each photo framed as `encode_photo` frames it."""
    networks = networks or model
    pixels = np.stack([frame_photo(photo_decoder, framer, data, framing)[1].pixels for data in (start, end)])
    first, last = networks.encode_pixels(pixels).code
    return _walk(model, first, last, steps, method, networks)


def _walk(
    model: FaceModel, start: np.ndarray, end: np.ndarray, steps: int, method: Interpolation, networks: Networks
) -> Faces:
    path = model.interpolate(start, end, steps, method)
    faces = networks.decode(path)
    return Faces(faces, path, columns=len(faces))


def edit_latent(
    model: FaceModel,
    z: Sequence[float],
    strengths: Mapping[str, float],
    steps: int | None = None,
    keep: Sequence[str] = (),
    networks: Networks | None = None,
) -> Faces:
    """A client latent moved along attribute vectors (`FaceModel.edit`): one face, or with `steps` a strip."""
    edited = model.edit(model.latents([z])[0], strengths, steps, keep)
    faces = (networks or model).decode(edited)
    return Faces(faces, edited, columns=len(faces))


def edit_photo(
    model: FaceModel,
    framer: FaceFramer,
    photo_decoder: PhotoDecoder,
    data: bytes,
    strengths: Mapping[str, float],
    steps: int | None = None,
    keep: Sequence[str] = (),
    framing: Framing = AUTO_LARGEST,
    output: Output = Output.FACE,
    detail: Detail = Detail.KEEP,
    networks: Networks | None = None,
) -> Faces:
    """A photo's face moved along attribute vectors: its code (as `encode_photo` gives it) edited, decoded, and
    returned as the model's face or the person's own (`output`, `detail`; `service.core.compositing.compose`).

    The photo is decoded whole only for output=photo; otherwise only as large as framing needs.
    """
    networks = networks or model
    photo, framed = frame_photo(photo_decoder, framer, data, framing, whole=output is Output.PHOTO)
    z = networks.encode_pixels(framed.pixels[np.newaxis]).code[0]
    edited = model.edit(z, strengths, steps, keep)
    before = networks.decode(z[np.newaxis])[0]
    faces = compose(photo, framed.alignment, before, networks.decode(edited), output, detail)
    return Faces(faces, edited, columns=len(faces))


def run_network(model: FaceModel, network: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundle's `encoder` (`image` -> `z_mean`, `z_log_var`) or `decoder` (`z` -> `image`) as it is: no face
    framing, no refinement, no clipping, float32 in and out (the Open Inference Protocol's two models)."""
    if network == "encoder":
        return dict(zip(ENCODER_OUTPUTS, model.encoder_outputs(inputs[ENCODER_INPUT]), strict=True))
    if network == "decoder":
        return {DECODER_OUTPUT: model.decoder_output(inputs[DECODER_INPUT])}
    raise ValueError(f"unknown network {network!r}")
