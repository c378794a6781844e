"""A photo to the model's input: find the face and align it like the training crops, or crop an aligned photo.

`align=auto` (the API's default) detects the faces (`service.core.detection`), picks one (the largest unless the caller
names another) and moves its landmarks onto the bundle's template (`service.core.alignment`); `align=none` crops the
bundle's box (`service.core.alignment.frame_face`), for callers that send CelebA-style aligned crops.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image

from service.core.alignment import Alignment, align, crop_box, frame_face
from service.core.bundle import Preprocess
from service.core.defaults import MESH_PASSES
from service.core.detection import DETECTOR_NAME, DetectorUnavailable, Face, FaceDetector
from service.core.runtime import InputError

logger = logging.getLogger(__name__)

#: Photos that only need their face framed are decoded at least this large (`decode_upload`'s draft mode): a face
#: a tenth of the photo wide still spans about 100 pixels, more than the 64 the model takes.
FRAMING_SIDE = 960


class Align(StrEnum):
    AUTO = "auto"
    NONE = "none"


@dataclass(frozen=True, eq=False)
class Framed:
    """The model input of one photo, and with `align=auto` the face it shows and the transform that framed it."""

    alignment: Alignment  # its pixels are the model input; its matrix maps the photo onto them
    face: Face | None = None

    @property
    def pixels(self) -> np.ndarray:
        """uint8 [size, size, 3]: the model input."""
        return self.alignment.pixels


class FaceFramer:
    """Frames photos for one bundle. The detector is created on first use (or by `warm_up`), once, shared by
    every request thread (`FaceDetector` is safe to share)."""

    def __init__(
        self, preprocess: Preprocess, detector: FaceDetector | None = None, mesh_passes: int = MESH_PASSES
    ) -> None:
        self.preprocess = preprocess
        self._detector = detector
        self.mesh_passes = mesh_passes
        self._lock = threading.Lock()

    @property
    def detector(self) -> FaceDetector:
        """The face detector; raises `DetectorUnavailable` where its networks cannot be loaded, or where the bundle's
        template was measured by another detector (whose landmarks sit elsewhere on a face)."""
        if self.preprocess.landmark_detector != DETECTOR_NAME:
            raise DetectorUnavailable(
                f"the bundle's landmark template was measured by {self.preprocess.landmark_detector!r}, this server "
                f"detects with {DETECTOR_NAME!r}; measure it again with `python -m training upgrade`"
            )
        with self._lock:
            if self._detector is None:
                self._detector = FaceDetector(mesh_passes=self.mesh_passes)
            return self._detector

    @property
    def available(self) -> bool:
        """Whether align=auto works here (the detector loads and the bundle's template is its own)."""
        try:
            self.detector  # noqa: B018 - created on first use
        except DetectorUnavailable:
            return False
        return True

    def warm_up(self) -> None:
        """Create the detector and run it once, so the first photo does not pay for it; log where there is none."""
        try:
            self.detector.detect(Image.new("RGB", (64, 64)))
        except DetectorUnavailable as exc:
            logger.warning("align=auto is unavailable: %s", exc)

    def detect(self, photo: Image.Image) -> list[Face]:
        """Every face in the photo, largest first."""
        return self.detector.detect(photo)

    def frame(self, photo: Image.Image, mode: Align = Align.AUTO, face: int = 0) -> Framed:
        """The model input for `photo`; with `align=auto` from its `face`-th largest face (422 when there is none)."""
        if mode is Align.NONE:
            left, top, right, _ = crop_box(self.preprocess, photo.width, photo.height)
            scale = self.preprocess.size / (right - left)
            matrix = np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale], [0.0, 0.0, 1.0]])
            return Framed(Alignment(frame_face(photo, self.preprocess), matrix))
        faces = self.detect(photo)
        if not faces:
            raise InputError(
                "image",
                "no face found in the photo: send a photo with a face in it (or align=none for a CelebA-style crop)",
            )
        if face >= len(faces):
            raise InputError("face", f"face={face}, but the photo has {len(faces)} (0 is the largest)")
        chosen = faces[face]
        assert self.preprocess.landmarks is not None  # the loader refuses bundles without a template
        alignment = align(photo, chosen.landmarks, np.asarray(self.preprocess.landmarks), self.preprocess)
        return Framed(alignment, chosen)
