"""What the client returns: Pillow images, numpy latents and small frozen dataclasses of the API's JSON."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, fields
from typing import Any, Self

import numpy as np
from PIL import Image


def _latents(rows: Any) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


class _Known:
    """Built from a JSON object by its known keys, so fields a newer server adds do not break an older client."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Self:
        return cls(**{field.name: body[field.name] for field in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Faces:
    """Faces with the latents they were decoded from: `images[i]` is the face of `z[i]` ([N, z_dim] float32)."""

    images: list[Image.Image]
    z: np.ndarray
    seed: int | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Faces:
        images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in body["images"]]
        for image in images:
            image.load()  # decode now, so a bad payload fails here and not on first use
        return cls(images=images, z=_latents(body["z"]), seed=body.get("seed"))

    @property
    def image(self) -> Image.Image:
        """The first (often the only) face."""
        return self.images[0]

    def grid(self, columns: int | None = None) -> Image.Image:
        """All faces in one picture, `columns` wide (default: a square grid; one row for a strip: len(images))."""
        columns = columns or math.ceil(math.sqrt(len(self.images)))
        rows = math.ceil(len(self.images) / columns)
        width, height = self.images[0].size
        picture = Image.new("RGB", (columns * width, rows * height))
        for index, image in enumerate(self.images):
            picture.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
        return picture


@dataclass(frozen=True)
class DetectedFace:
    """A face in a photo's pixel coordinates: `box` = (left, top, width, height), five (x, y) landmarks."""

    box: tuple[float, float, float, float]
    landmarks: list[tuple[float, float]]
    score: float

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DetectedFace:
        return cls(
            box=tuple(body["box"]),  # type: ignore[arg-type]
            landmarks=[(x, y) for x, y in body["landmarks"]],
            score=body["score"],
        )


@dataclass(frozen=True)
class Detection:
    width: int
    height: int
    faces: list[DetectedFace]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Detection:
        return cls(body["width"], body["height"], [DetectedFace.from_json(face) for face in body["faces"]])


@dataclass(frozen=True)
class Encoding:
    """/encode's answer; `code` is the latent to decode or edit, each latent a float32 [z_dim] array."""

    code: np.ndarray
    z_mean: np.ndarray
    z_log_var: np.ndarray
    z: np.ndarray
    seed: int
    face: DetectedFace | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Encoding:
        return cls(
            code=_latents(body["code"]),
            z_mean=_latents(body["z_mean"]),
            z_log_var=_latents(body["z_log_var"]),
            z=_latents(body["z"]),
            seed=body["seed"],
            face=None if body.get("face") is None else DetectedFace.from_json(body["face"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The same JSON /encode answers (what `facevae encode` writes and `facevae decode` reads)."""
        return {
            "code": self.code.tolist(),
            "z_mean": self.z_mean.tolist(),
            "z_log_var": self.z_log_var.tolist(),
            "z": self.z.tolist(),
            "seed": self.seed,
            "face": None
            if self.face is None
            else {
                "box": list(self.face.box),
                "landmarks": [list(p) for p in self.face.landmarks],
                "score": self.face.score,
            },
        }


@dataclass(frozen=True)
class Attribute(_Known):
    """One attribute vector /edit accepts, with its quality and allowed strengths (see GET /attributes)."""

    name: str
    auc: float
    norm: float
    method: str
    step: float
    #: How many times `step` one unit of strength really moves a face (the learned editor's lengthening, else 1).
    length_scale: float
    projection_std: float
    positives: int
    negatives: int
    strength_min: float
    strength_max: float
    #: Whether /edit moves it with the bundle's learned editor rather than along the vector alone.
    learned: bool


@dataclass(frozen=True)
class Metadata(_Known):
    name: str
    format_version: int
    image_size: int
    z_dim: int
    attribute_count: int
    default_sampling: str
    providers: dict[str, list[str]]
    face_detection: bool
    service_version: str
