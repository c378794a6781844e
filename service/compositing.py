"""An edited face back into the user's own photo: the model's change on the photo's own detail, warped into place.

A /edit of a photo normally answers with the model's 64x64 face. Two options make it the person's photo instead:
- `detail=keep` adds only what the edit changes, decode(z + delta) - decode(z), to the photo's own aligned face,
  so hair, skin and eyes stay the photo's instead of the model's average (`keep_detail`);
- `output=photo` returns the whole photo at its own resolution with the face square warped back by the inverse of
  the alignment and blended over a soft-edged disc (`paste`); every pixel outside that disc is the photo's own.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from PIL import Image

from service.alignment import Alignment, apply, warp

#: The face square is rendered at the photo's own resolution there, up to this many pixels a side.
MAX_SIDE = 1024
#: The blend fades from the face to the photo over this fraction of the disc's radius.
FEATHER = 0.25


class Output(StrEnum):
    FACE = "face"
    PHOTO = "photo"


class Detail(StrEnum):
    MODEL = "model"
    KEEP = "keep"


def disc_mask(side: int, feather: float = FEATHER) -> np.ndarray:
    """float32 [side, side]: 1 inside the square's inscribed disc, falling smoothly to exactly 0 at its rim."""
    centres = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
    radius = np.hypot(centres[np.newaxis, :], centres[:, np.newaxis]) / 0.5
    ramp = np.clip((1.0 - radius) / feather, 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)  # smoothstep: no visible edge to the fade


def resize_float(pixels: np.ndarray, side: int) -> np.ndarray:
    """float32 [h, w, 3] resized to [side, side, 3] with bicubic interpolation, signed values kept."""
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode="F").resize((side, side), Image.BICUBIC))
        for c in range(pixels.shape[2])
    ]
    return np.stack(channels, axis=-1)


def keep_detail(own: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The photo's own face `own` (uint8 [S, S, 3]) plus the model's change `after - before` (uint8 [s, s, 3])."""
    change = after.astype(np.float32) - before.astype(np.float32)
    if change.shape[0] != own.shape[0]:
        change = resize_float(change, own.shape[0])
    return np.clip(np.rint(own.astype(np.float32) + change), 0, 255).astype(np.uint8)


def face_side(alignment: Alignment, limit: int = MAX_SIDE) -> int:
    """Pixels a side the face square has in the photo, at least the model's size and at most `limit`."""
    return int(np.clip(round(alignment.size / alignment.scale), alignment.size, limit))


def _to_square(alignment: Alignment, side: int) -> np.ndarray:
    """3x3: photo pixels -> pixels of the face square rendered `side` pixels a side."""
    return np.diag([side / alignment.size, side / alignment.size, 1.0]) @ alignment.matrix


def own_face(photo: Image.Image, alignment: Alignment, side: int) -> np.ndarray:
    """The photo's face square at `side` pixels: what the model saw, at the photo's resolution."""
    return warp(photo, _to_square(alignment, side), side, supersample=1)


def paste(photo: Image.Image, face: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The photo (uint8 [H, W, 3]) with `face` (uint8 [S, S, 3], the aligned square at any S) warped into place and
    blended over the square's inscribed disc; pixels outside the disc are returned unchanged, bit for bit."""
    side = face.shape[0]
    to_square = _to_square(alignment, side)
    corners = apply(np.linalg.inv(to_square), np.array([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]]))
    result = np.array(photo.convert("RGB"))
    height, width = result.shape[:2]
    x0, y0 = (max(0, int(np.floor(v))) for v in corners.min(axis=0))
    x1, y1 = min(width, int(np.ceil(corners[:, 0].max()))), min(height, int(np.ceil(corners[:, 1].max())))
    if x1 <= x0 or y1 <= y0:
        return result
    region_to_square = to_square @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    data = tuple(float(v) for v in region_to_square[:2].ravel())
    size = (x1 - x0, y1 - y0)
    warped = np.asarray(Image.fromarray(face).transform(size, Image.AFFINE, data, Image.BICUBIC), dtype=np.float32)
    mask = Image.fromarray(disc_mask(side), mode="F").transform(size, Image.AFFINE, data, Image.BILINEAR)
    weight = np.clip(np.asarray(mask), 0.0, 1.0)[..., np.newaxis]
    region = result[y0:y1, x0:x1]
    blended = np.rint(region * (1.0 - weight) + warped * weight).astype(np.uint8)
    inside = weight[..., 0] > 0
    region[inside] = blended[inside]
    return result


def compose(
    photo: Image.Image,
    alignment: Alignment,
    before: np.ndarray,
    faces: np.ndarray,
    output: Output,
    detail: Detail,
) -> np.ndarray:
    """What a photo /edit returns, uint8 [N, ...]: `faces` (the decoded edits, [N, s, s, 3]) as they are, on the
    photo's detail (`detail=keep`, `before` the decoded unedited face), and/or pasted into the photo."""
    side = alignment.size if output is Output.FACE else face_side(alignment)
    if detail is Detail.KEEP:
        own = own_face(photo, alignment, side) if side != alignment.size else alignment.pixels
        faces = np.stack([keep_detail(own, before, face) for face in faces])
    elif side != alignment.size:
        faces = np.stack([np.clip(np.rint(resize_float(f.astype(np.float32), side)), 0, 255) for f in faces])
        faces = faces.astype(np.uint8)
    if output is Output.FACE:
        return faces
    return np.stack([paste(photo, face, alignment) for face in faces])
