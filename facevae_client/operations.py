"""Each API operation once, as a request to send and a parser of its answer; `Client` and `AsyncClient` only send.

An operation returns a `Call`: the sync client sends it with httpx.Client, the async one with httpx.AsyncClient, and
both hand the response to `Call.parse`, so the two clients cannot drift apart.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx
import numpy as np
from PIL import Image

from facevae_client.types import Attribute, Detection, Encoding, Faces, Metadata

T = TypeVar("T")

#: A photo: a file path, its encoded bytes, or a Pillow image (sent as PNG).
Photo = str | PathLike[str] | bytes | Image.Image
#: One latent of z_dim numbers (a numpy array or any sequence of floats).
Latent = np.ndarray | Sequence[float]
Align = Literal["auto", "none"]
ImageFormat = Literal["png", "jpeg", "webp"]
JSON = "application/json"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request of an operation and how to read its successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"Accept": JSON})

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return client.build_request(
            self.method,
            self.path,
            params={key: value for key, value in self.params.items() if value is not None},
            json=self.json,
            content=self.content,
            files=self.files,
            data=self.data,
            headers=self.headers,
        )


def photo_bytes(photo: Photo) -> bytes:
    """The encoded bytes of a photo given as a path, bytes or a Pillow image."""
    if isinstance(photo, bytes):
        return photo
    if isinstance(photo, Image.Image):
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
        return buffer.getvalue()
    return Path(photo).read_bytes()


def _is_photo(source: object) -> bool:
    return isinstance(source, str | PathLike | bytes | Image.Image)


def latent_list(z: Latent | np.ndarray) -> list[Any]:
    """A latent (or a batch of them) as JSON numbers."""
    return np.asarray(z, dtype=np.float64).tolist()


def _faces(response: httpx.Response) -> Faces:
    return Faces.from_json(response.json())


def detect(photo: Photo) -> Call[Detection]:
    """Every face in a photo, largest first, with box, five landmarks and score."""
    return Call(
        "POST", "/detect", lambda r: Detection.from_json(r.json()), files={"image": ("photo", photo_bytes(photo))}
    )


def encode(
    photo: Photo, *, seed: int | None = None, align: Align | None = None, face: int | None = None
) -> Call[Encoding]:
    """A photo's latent: `code` (to decode or edit), the posterior `z_mean`/`z_log_var`, a draw `z` and its seed."""
    return Call(
        "POST",
        "/encode",
        lambda r: Encoding.from_json(r.json()),
        params={"seed": seed, "align": align, "face": face},
        files={"image": ("photo", photo_bytes(photo))},
    )


def decode(z: Latent | np.ndarray) -> Call[Faces]:
    """Faces of one latent [z_dim] or of several [N, z_dim]."""
    latents = np.asarray(z, dtype=np.float32)
    body = {"z": latent_list(latents)}
    return Call("POST", "/decode", _faces, params={"grid": "false"} if latents.ndim == 2 else {}, json=body)


def sample(
    n: int = 1,
    *,
    seed: int | None = None,
    mode: Literal["trick", "textbook", "prior"] | None = None,
    temperature: float | None = None,
) -> Call[Faces]:
    """`n` random faces (reproducible with `seed`) with their latents; `Faces.seed` is the seed used."""
    params = {"n": n, "seed": seed, "mode": mode, "temperature": temperature, "grid": "false"}
    return Call("GET", "/sample", _faces, params=params)


def edit(
    source: Photo | Latent,
    attributes: Mapping[str, float],
    *,
    keep: Sequence[str] = (),
    steps: int | None = None,
    align: Align | None = None,
    face: int | None = None,
    detail: Literal["keep", "model"] | None = None,
    output: Literal["face", "photo"] | None = None,
    image_format: ImageFormat | None = None,
) -> Call[Faces]:
    """A photo (path, bytes or image) or a latent moved along attribute vectors; with `steps` a strip from
    -strength to +strength. `keep` names attributes the edit must leave alone."""
    params = {"steps": steps, "format": image_format}
    if _is_photo(source):
        params |= {"align": align, "face": face, "detail": detail, "output": output}
        form = {"attributes": json.dumps(dict(attributes)), "keep": json.dumps(list(keep))}
        return Call("POST", "/edit", _faces, params=params, files={"image": ("photo", photo_bytes(source))}, data=form)  # type: ignore[arg-type]
    body = {"z": latent_list(source), "attributes": dict(attributes), "keep": list(keep)}  # type: ignore[arg-type]
    return Call("POST", "/edit", _faces, params=params, json=body)


def interpolate(
    start: Photo | Latent,
    end: Photo | Latent,
    *,
    steps: int | None = None,
    method: Literal["slerp", "lerp"] | None = None,
    align: Align | None = None,
    face: int | None = None,
) -> Call[Faces]:
    """A walk from one face to another (two photos or two latents), both ends included."""
    params = {"steps": steps, "method": method}
    if _is_photo(start) and _is_photo(end):
        files = {name: (name, photo_bytes(photo)) for name, photo in (("start", start), ("end", end))}  # type: ignore[arg-type]
        return Call("POST", "/interpolate", _faces, params=params | {"align": align, "face": face}, files=files)
    if _is_photo(start) or _is_photo(end):
        raise TypeError("interpolate takes two photos or two latents, not one of each")
    body = {"start": latent_list(start), "end": latent_list(end)}  # type: ignore[arg-type]
    return Call("POST", "/interpolate", _faces, params=params, json=body)


def attributes() -> Call[list[Attribute]]:
    """The attribute vectors /edit accepts and their allowed strengths."""
    return Call("GET", "/attributes", lambda r: [Attribute.from_json(item) for item in r.json()["attributes"]])


def metadata() -> Call[Metadata]:
    """The served bundle: name, sizes, providers in use, face detection, service version."""
    return Call("GET", "/metadata", lambda r: Metadata.from_json(r.json()))
