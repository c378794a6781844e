"""A typed Python client of the face VAE service: `Client` (sync) and `AsyncClient`, and the `facevae` command.

from facevae_client import Client
with Client() as client:                     # $FACEVAE_URL, else http://127.0.0.1:8000
    faces = client.sample(4, seed=7)         # faces.images: Pillow images, faces.z: numpy [4, z_dim]
    code = client.encode("photo.jpg").code
    client.edit(code, {"Smiling": 2}).image.save("smiling.png")
"""

from facevae_client.client import AsyncClient, Client
from facevae_client.errors import (
    APIError,
    BadRequest,
    ConnectionFailed,
    FaceVAEError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from facevae_client.types import Attribute, DetectedFace, Detection, Encoding, Faces, Metadata

__all__ = [
    "APIError",
    "AsyncClient",
    "Attribute",
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "DetectedFace",
    "Detection",
    "Encoding",
    "FaceVAEError",
    "Faces",
    "InvalidInput",
    "Metadata",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "UnsupportedMediaType",
]
