"""The landmark template photos are aligned to: the service's own detector run over the aligned training images.

`measure` is what `export` writes into every bundle's `preprocess.landmarks` (with the detector's name in
`preprocess.landmark_detector`); `upgrade` measures it again for a format-3 bundle (the previous layout, whose
template has no detector's name: YuNet's) or for a bundle whose template another detector measured, so a bundle
whose training run is gone can be served again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.alignment import measure_template
from service.core.bundle import FORMAT_VERSION, MANIFEST_FILE, ModelBundle, Preprocess, write_json
from service.core.detection import DETECTOR_NAME, FaceDetector
from training.prepared import PreparedData

log = logging.getLogger(__name__)

#: Training faces the template is measured on: the median settles long before (it moves < 0.1 % past 200 faces).
TEMPLATE_FACES = 500


def measure(data: PreparedData, preprocess: Preprocess, count: int = TEMPLATE_FACES) -> list[list[float]]:
    """Median landmarks of the largest face the detector finds in each of the first `count` training images."""
    detector = FaceDetector()
    found = []
    chosen = data.train[:count]
    for index in chosen:
        with Image.open(data.dataset.image_dir / data.dataset.files[index]) as image:
            rgb = image.convert("RGB")
        faces = detector.detect(rgb)
        if faces:
            found.append((rgb, faces[0]))
    if len(found) < max(1, len(chosen) // 2):
        raise ValueError(f"the detector found a face in only {len(found)} of {len(chosen)} training images")
    template = measure_template(found, preprocess)
    rounded = np.round(template, 3).tolist()
    log.info("landmark template from %d of %d training faces: %s", len(found), len(chosen), rounded)
    return template.tolist()


#: Formats the template upgrade turns into this one: 3 (YuNet's template), 4 (no editor, which stays optional),
#: 5 (an editor that moves exactly as far as the vectors: length scales of 1).
UPGRADABLE = (3, 4, 5, FORMAT_VERSION)


def upgrade(bundle: Path, data: PreparedData) -> ModelBundle:
    """Measure the template again with this detector, write it into the bundle's manifest (an `UPGRADABLE` format,
    or this format with another detector's template) and mark it this format; verify the result."""
    path = bundle / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") not in UPGRADABLE:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')}, upgrade takes "
            + ", ".join(str(version) for version in UPGRADABLE)
        )
    preprocess = Preprocess.model_validate(
        {k: v for k, v in manifest["preprocess"].items() if k not in ("landmarks", "landmark_detector")}
    )
    manifest["preprocess"]["landmarks"] = measure(data, preprocess)
    manifest["preprocess"]["landmark_detector"] = DETECTOR_NAME
    if manifest.get("editor") and "length_scales" not in manifest["editor"]:
        manifest["editor"]["length_scales"] = [1.0] * len(manifest["editor"]["attributes"])
    manifest["format_version"] = FORMAT_VERSION
    write_json(path, manifest)
    return ModelBundle.load(bundle)
