"""An edited face back into the user's own photo: the model's change on the photo's own detail, warped into place.

A /edit of a photo normally answers with the model's 64x64 face. Two options make it the person's photo instead:
- `detail=keep` adds only what the edit changes, decode(z + delta) - decode(z), to the photo's own face, so hair,
  skin and eyes stay the photo's instead of the model's average (`keep_detail` for the face square; `add_change`
  for the whole photo, where the change is added to the photo's own pixels at their own resolution); where the
  edit changes the face a lot, the photo's own detail there gives way to the model's edited face (`detail_fade`),
  or both faces would show (a woman's eyes and make-up under a man's features);
- `output=photo` returns the whole photo at its own resolution with the edit warped into place by the inverse of
  the alignment over a soft-edged rounded square (`add_change`, or `paste` for the model's face); every pixel
  outside it is the photo's own, and with `detail=keep` so is every pixel the edit does not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from service.core.alignment import Alignment

#: What is laid over the photo (a 64-pixel face or change, enlarged) is drawn at most this many pixels a side, then
#: enlarged to the photo's resolution with bilinear interpolation: in a 12-megapixel photo a face's square can be
#: 1,500-3,000 pixels across, and drawing a 64-pixel image there at full size costs time and adds no detail
#: (docs/benchmarks.md, "Photo edits per output mode").
OVERLAY_SIDE = 512
#: The blend covers a rounded square inside the face square, |x|^SHAPE + |y|^SHAPE <= 1 in half-sides, and fades
#: to the photo over its outer FEATHER: a disc would fade out the jaw and cheeks, where edits such as Mustache and
#: Chubby show, and a narrower fade keeps more of the edit without a visible seam (the shapes measured:
#: docs/benchmarks.md, "Photo edits per output mode").
SHAPE = 4
FEATHER = 0.15
#: `detail_fade`: where an edit changes the face by FADE_LEVELS grey levels or more (mean over the channels, blurred
#: over FADE_BLUR of the face's side), the model's edited face replaces the photo's own detail; below, the photo's
#: detail fades smoothly in, and where nothing changes it is all the photo's. Chosen on phone photos by edit success,
#: side effects against a random move and by eye (docs/benchmarks.md, "Photo edits per output mode").
FADE_LEVELS = 24.0
FADE_BLUR = 1.5 / 64


class Output(StrEnum):
    FACE = "face"
    PHOTO = "photo"


class Detail(StrEnum):
    MODEL = "model"
    KEEP = "keep"


def blend_mask(side: int) -> np.ndarray:
    """float32 [side, side]: 1 inside the rounded square (`SHAPE`), falling smoothly to exactly 0 at its rim."""
    centres = np.abs((np.arange(side, dtype=np.float32) + 0.5) / side - 0.5) / 0.5
    distance = (centres[np.newaxis, :] ** SHAPE + centres[:, np.newaxis] ** SHAPE) ** (1 / SHAPE)
    ramp = np.clip((1.0 - distance) / FEATHER, 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)  # smoothstep: no visible edge to the fade


def resize_float(pixels: np.ndarray, side: int) -> np.ndarray:
    """float32 [h, w, 3] resized to [side, side, 3] with bicubic interpolation, signed values kept."""
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode="F").resize((side, side), Image.BICUBIC))
        for c in range(pixels.shape[2])
    ]
    return np.stack(channels, axis=-1)


def detail_fade(change: np.ndarray) -> np.ndarray:
    """float32 [s, s] in [0, 1]: how far the photo's own detail gives way to the model's edited face, from the
    edit's change `after - before` (float32 [s, s, 3]): 0 where nothing changes, 1 from `FADE_LEVELS` on."""
    levels = np.clip(np.rint(np.abs(change).mean(axis=2)), 0, 255).astype(np.uint8)
    blurred = Image.fromarray(levels).filter(ImageFilter.GaussianBlur(FADE_BLUR * change.shape[0]))
    ramp = np.clip(np.asarray(blurred, dtype=np.float32) / FADE_LEVELS, 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible edge where the photo's detail returns


def keep_detail(own: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The photo's own face `own` (uint8 [S, S, 3]) plus the model's change `after - before` (uint8 [s, s, 3]),
    the model's edited face instead where the change is large (`detail_fade`)."""
    change = after.astype(np.float32) - before.astype(np.float32)
    fade = detail_fade(change)[..., np.newaxis]
    edited = after.astype(np.float32)
    if change.shape[0] != own.shape[0]:
        change, fade, edited = (resize_float(v, own.shape[0]) for v in (change, fade, edited))
    kept = own.astype(np.float32) + change
    return np.clip(np.rint(kept + np.clip(fade, 0.0, 1.0) * (edited - kept)), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Placement:
    """Where the blend lies in a photo, and how an overlay is drawn there: from the face square at `side`
    pixels, into the photo's pixels `box` (x0, y0, x1, y1) at 1/`factor` of their resolution."""

    alignment: Alignment
    side: int
    box: tuple[int, int, int, int]
    factor: int

    @classmethod
    def of(cls, alignment: Alignment, width: int, height: int) -> _Placement | None:
        """The placement in a `width` x `height` photo, or None where the blend lies wholly outside it."""
        across = alignment.size / alignment.scale  # the square's side in photo pixels
        side = int(np.clip(round(across), alignment.size, OVERLAY_SIDE))
        factor = max(1, math.ceil(across / OVERLAY_SIDE))
        # The rounded square's bounding box whatever its rotation (its corners lie 2^(1/2 - 1/SHAPE) half-sides
        # from the centre), grown by what interpolation spreads beyond its rim: a pixel of the square and one of
        # the reduced grid.
        centre = alignment.to_photo(np.full((1, 2), alignment.size / 2))[0]
        reach = across / 2 * 2 ** (0.5 - 1 / SHAPE) + across / side + factor + 2
        x0, y0 = (max(0, math.floor(v - reach)) for v in centre)
        x1, y1 = min(width, math.ceil(centre[0] + reach)), min(height, math.ceil(centre[1] + reach))
        if x1 <= x0 or y1 <= y0:
            return None
        return cls(alignment, side, (x0, y0, x1, y1), factor)

    def draw(self, square: Image.Image) -> Image.Image:
        """`square` (the face square at `side` pixels, any mode) as it lies over `box`, 0 beyond it: warped by the
        inverse of the alignment at the reduced resolution, then enlarged. Bilinear sampling both times: what is
        drawn is a 64-pixel image enlarged, with no detail for a sharper kernel to keep."""
        x0, y0, x1, y1 = self.box
        factor = self.factor
        reduced = (math.ceil((x1 - x0) / factor), math.ceil((y1 - y0) / factor))
        to_square = np.diag([self.side / self.alignment.size, self.side / self.alignment.size, 1.0])
        grid_to_square = to_square @ self.alignment.matrix @ np.array([[factor, 0, x0], [0, factor, y0], [0, 0, 1]])
        data = tuple(float(v) for v in grid_to_square[:2].ravel())
        drawn = square.transform(reduced, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
        if factor > 1:
            drawn = drawn.resize((reduced[0] * factor, reduced[1] * factor), Image.Resampling.BILINEAR)
        return drawn.crop((0, 0, x1 - x0, y1 - y0))


def _as_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _blend_face(region: Image.Image, placement: _Placement, face: np.ndarray, weights: np.ndarray) -> None:
    """`face` (uint8 [s, s, 3]) warped into `region` (the photo's pixels over `placement.box`) with `weights`
    (float32 [side, side] in [0, 1], over the face square at `placement.side`) as its opacity."""
    side = placement.side
    enlarged = Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC)
    region.paste(placement.draw(enlarged), (0, 0), placement.draw(_as_image(255 * weights)))


def paste(photo: Image.Image, face: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The photo (uint8 [H, W, 3]) with the model's `face` (uint8 [s, s, 3], the aligned square) warped into place
    and blended over the rounded square (`blend_mask`); pixels outside it are returned unchanged, bit for bit."""
    result = photo.convert("RGB")
    placement = _Placement.of(alignment, *result.size)
    if placement is not None:
        region = result.crop(placement.box)
        _blend_face(region, placement, face, blend_mask(placement.side))
        result.paste(region, placement.box[:2])
    return np.asarray(result)


def add_change(photo: Image.Image, before: np.ndarray, after: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The photo (uint8 [H, W, 3]) plus the model's change `after - before` (uint8 [s, s, 3], decoded aligned
    squares), warped into place and faded out towards the rounded square's rim: each pixel is the photo's own plus
    the change there, the model's edited face instead where the change is large (`detail_fade`), so where nothing
    changes, inside the blend too, the photo comes back bit for bit."""
    result = photo.convert("RGB")
    placement = _Placement.of(alignment, *result.size)
    if placement is not None:
        side = placement.side
        change = after.astype(np.float32) - before.astype(np.float32)
        fade = np.clip(resize_float(detail_fade(change)[..., np.newaxis], side)[..., 0], 0.0, 1.0)
        mask = blend_mask(side)
        region = result.crop(placement.box)
        # photo + mask * change + mask * fade * (after - photo - change): the edited face laid over where the
        # change is large, then the rest of the change added.
        _blend_face(region, placement, after, mask * fade)
        change = resize_float(change, side) * (mask * (1.0 - fade))[..., np.newaxis]
        # Pillow adds and subtracts uint8 images with clipping, so the signed change goes on as its two parts.
        for part, apply_part in ((change, ImageChops.add), (-change, ImageChops.subtract)):
            region = apply_part(region, placement.draw(_as_image(part)))
        result.paste(region, placement.box[:2])
    return np.asarray(result)


def compose(
    photo: Image.Image,
    alignment: Alignment,
    before: np.ndarray,
    faces: np.ndarray,
    output: Output,
    detail: Detail,
) -> np.ndarray:
    """What a photo /edit returns, uint8 [N, ...]: `faces` (the decoded edits, [N, s, s, 3]) as they are, on the
    photo's detail (`detail=keep`, `before` the decoded unedited face), and/or put into the photo."""
    if output is Output.FACE:
        if detail is Detail.KEEP:
            return np.stack([keep_detail(alignment.pixels, before, face) for face in faces])
        return faces
    photos = [
        add_change(photo, before, face, alignment) if detail is Detail.KEEP else paste(photo, face, alignment)
        for face in faces
    ]
    return photos[0][np.newaxis] if len(photos) == 1 else np.stack(photos)  # a 12-megapixel copy costs 40 ms
