"""The model bundle: the contract between `training` (which writes it) and `service` (which serves it).

This module is the single place that knows the bundle's file names and JSON layout, and it never
imports TensorFlow, so the service, the tests and the training package's own verification all use it.
See docs/bundle-format.md for the format in prose.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FORMAT_VERSION = 6
#: The bundle the lead trains and commits; resolved from the package, so any working directory finds it.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "celeba-64"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
LATENT_STATS_FILE = "latent_stats.json"
ATTRIBUTES_FILE = "attributes.json"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.png"
EDITOR_FILE = "editor.onnx"
#: Files whose sha256 the manifest must list (everything but the manifest itself).
HASHED_FILES = (ENCODER_FILE, DECODER_FILE, LATENT_STATS_FILE, ATTRIBUTES_FILE, REPORT_FILE)

ENCODER_INPUT = "image"
ENCODER_OUTPUTS = ("z_mean", "z_log_var")
DECODER_INPUT = "z"
DECODER_OUTPUT = "image"
BATCH_DIM = "batch"
#: The learned editor: codes and one strength column per edited attribute in, edited codes out.
EDITOR_INPUTS = ("z", "strengths")
EDITOR_OUTPUT = "z_edited"


class SamplingMode(StrEnum):
    """How `/sample` turns eps ~ N(0, I) into a latent (see `LatentStats.draw`)."""

    #: z = mean + temperature * L @ eps, L L^T the aggregate posterior's covariance: where the decoder was trained.
    TRICK = "trick"
    #: z = mean + std_scalar * temperature * eps: the book's literal recipe, kept so comparisons stay reproducible.
    TEXTBOOK = "textbook"
    #: z = temperature * eps: the prior.
    PRIOR = "prior"


#: How an attribute direction was found on the training split (training/latents.py computes each).
DirectionMethod = Literal["mean_difference", "balanced", "linear"]
DIRECTION_METHODS: tuple[DirectionMethod, ...] = get_args(DirectionMethod)


class BundleError(ValueError):
    """A bundle is unusable; the message names the file and the problem."""

    def __init__(self, file: str, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem


#: The five face landmarks, in this order, wherever the API or a bundle lists them ("left" as the viewer sees it).
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class Preprocess(BaseModel):
    """How a photo becomes model input: crop a box given as fractions of width and height, resize; or, for photos
    that are not aligned crops, move the detected landmarks onto `landmarks`, the training crops' template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop: tuple[float, float, float, float] = Field(description="[left, top, right, bottom] in [0, 1]")
    size: int = Field(gt=0)
    resample: str = "lanczos"
    landmarks: tuple[tuple[float, float], ...] | None = Field(
        None,
        description="Where the detector finds the five LANDMARKS on the training crops (median), as (x, y) "
        "fractions of the model input's side; every bundle has them, training's own framing needs none",
    )
    landmark_detector: str | None = Field(
        None,
        description="The detector that measured `landmarks` (service.core.detection.DETECTOR_NAME): photos are aligned "
        "to a template only by the detector that measured it, since detectors place landmarks differently",
    )

    @field_validator("landmarks")
    @classmethod
    def _landmarks_are_a_face(
        cls, points: tuple[tuple[float, float], ...] | None
    ) -> tuple[tuple[float, float], ...] | None:
        if points is None:
            return None
        if len(points) != len(LANDMARKS):
            raise ValueError(f"landmarks has {len(points)} points, expected {len(LANDMARKS)} ({', '.join(LANDMARKS)})")
        array = np.asarray(points, dtype=np.float64)
        if not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(array > 1):
            raise ValueError("landmarks must be finite fractions in [0, 1] of the model input's side")
        (left_eye, right_eye, _, mouth_left, mouth_right) = array
        if not (left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]):
            raise ValueError("landmarks: each left point must be left of its right point (as the viewer sees it)")
        if not max(left_eye[1], right_eye[1]) < min(mouth_left[1], mouth_right[1]):
            raise ValueError("landmarks: the eyes must be above the mouth")
        return points

    @field_validator("crop")
    @classmethod
    def _crop_is_a_box(cls, crop: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        left, top, right, bottom = crop
        if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
            raise ValueError(f"crop {crop} is not a box inside [0, 1]")
        return crop


class Editor(BaseModel):
    """The manifest's `editor` section: `editor.onnx` edits these attributes (one strength column each, in this
    order); the bundle's other attributes are edited by their vectors alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attributes: list[str] = Field(min_length=1)
    length_scales: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        description="per attribute, how many times the class-mean move of the same strength its edit moves"
    )
    parity_max_abs_diff: float = Field(ge=0, description="onnxruntime against the Keras editor it was exported from")
    training: dict[str, Any] = Field(description="how it was trained (training/edits.py's report)")


#: Numeric precision of a bundle's networks: float32 as exported, or int8 by `python -m training quantize`.
Precision = Literal["float32", "int8"]
#: The operators a statically quantized (QDQ) graph carries and a float32 graph must not.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class Calibration(BaseModel):
    """What a quantized bundle's activation ranges were measured on (training split only, never validation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["minmax", "entropy", "percentile"]
    faces: int = Field(gt=0, description="training-split faces run through the encoder")
    codes: int = Field(gt=0, description="latents run through the decoder")
    code_sources: dict[str, int] = Field(description="how many codes came from where (sampler draws, encoded faces)")
    seed: int


class Quantization(BaseModel):
    """`manifest.quantization` of an int8 bundle: how it was made from which float32 bundle, and how far it moved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["qdq"]
    weights: str = Field(description="e.g. int8, per output channel, symmetric")
    activations: str = Field(description="e.g. uint8, per tensor")
    calibration: Calibration
    source: dict[str, Any] = Field(description="the float32 bundle: name and the sha256 of its two networks")
    deviation: dict[str, Any] = Field(description="int8 against float32 on validation faces and codes")
    tool: str


class Manifest(BaseModel):
    """`manifest.json`. Free-form sections (training, dataset, ...) are kept as plain dicts."""

    model_config = ConfigDict(extra="forbid")

    format_version: int
    name: str
    image_size: int = Field(gt=0)
    z_dim: int = Field(gt=0)
    preprocess: Preprocess
    attributes: list[str]
    attributes_left_out: list[dict[str, Any]] = []
    training: dict[str, Any]
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    parity: dict[str, Any]
    versions: dict[str, str]
    opset: int
    editor: Editor | None = Field(None, description="the learned editor, when the bundle has one")
    files: dict[str, str] = Field(description="sha256 hex digest of every other bundle file")
    precision: Precision = "float32"
    quantization: Quantization | None = None

    @property
    def hashed_files(self) -> tuple[str, ...]:
        """The files this bundle has besides the manifest, each listed in `files` with its sha256."""
        return (*HASHED_FILES, EDITOR_FILE) if self.editor is not None else HASHED_FILES


class LatentStats(BaseModel):
    """`latent_stats.json`: the encoder's aggregate posterior over the training split, for `/sample`.

    `trick` samples z = mean + L @ eps with L the Cholesky factor of the aggregate posterior's covariance
    (Cov(z_mean) + diag(E[sigma^2])): codes where the decoder was really trained. `textbook` keeps the book's
    recipe, z = mean + std_scalar * eps with the *average posterior std* as one scalar, which on a model with a
    small KL weight is far narrower than those codes. `default_mode` is the mode that measured best.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float]
    std: list[float] = Field(description="per-dimension std of the aggregate posterior")
    posterior_std: list[float] = Field(description="per-dimension mean of the encoder's sigma")
    std_scalar: float = Field(gt=0, description="mean of posterior_std: the textbook's scalar")
    covariance_cholesky: list[list[float]] = Field(description="lower-triangular L with L @ L.T the covariance")
    count: int = Field(gt=0)
    default_mode: SamplingMode = SamplingMode.TRICK

    @cached_property
    def mean_array(self) -> np.ndarray:
        """`mean` as float32, converted once: every /sample request uses it."""
        return np.asarray(self.mean, dtype=np.float32)

    @cached_property
    def cholesky_array(self) -> np.ndarray:
        """`covariance_cholesky` as float32 [z_dim, z_dim], converted once."""
        return np.asarray(self.covariance_cholesky, dtype=np.float32)

    def draw(self, eps: np.ndarray, mode: SamplingMode, temperature: float = 1.0) -> np.ndarray:
        """Latents [N, z_dim] from float32 eps ~ N(0, I) [N, z_dim] by `mode`; the same eps gives comparable faces."""
        if mode is SamplingMode.PRIOR:
            return np.float32(temperature) * eps
        if mode is SamplingMode.TEXTBOOK:
            return self.mean_array + np.float32(self.std_scalar * temperature) * eps
        return self.mean_array + np.float32(temperature) * (eps @ self.cholesky_array.T)

    def check(self, z_dim: int) -> str | None:
        """What is wrong with these statistics for a model of `z_dim`, or None."""
        for field in ("mean", "std", "posterior_std"):
            if len(getattr(self, field)) != z_dim:
                return f"{field} has {len(getattr(self, field))} values, z_dim is {z_dim}"
        if len(self.covariance_cholesky) != z_dim or any(len(row) != z_dim for row in self.covariance_cholesky):
            return f"covariance_cholesky is not {z_dim}x{z_dim}"
        cholesky = self.cholesky_array
        if not np.all(np.isfinite(cholesky)) or np.any(np.triu(cholesky, 1) != 0) or np.any(np.diag(cholesky) <= 0):
            return "covariance_cholesky is not a finite lower-triangular matrix with a positive diagonal"
        return None


class AttributeVector(BaseModel):
    """One entry of `attributes.json`: a latent direction for an attribute, how far strength 1 moves, how good it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    method: DirectionMethod = Field(description="how the direction was found")
    vector: list[float]
    norm: float = Field(ge=0)
    step: float = Field(gt=0, description="latent distance along the unit vector that strength 1 moves")
    projection_std: float = Field(gt=0)
    auc: float = Field(ge=0, le=1)
    positives: int = Field(ge=0)
    negatives: int = Field(ge=0)

    @cached_property
    def unit(self) -> np.ndarray:
        """The direction of the vector, length 1, computed once: every /edit request uses it."""
        v = np.asarray(self.vector, dtype=np.float32)
        return v / np.float32(self.norm)


class AttributeVectors(Mapping[str, AttributeVector]):
    """Attribute vectors by name; lookups ignore case ("smiling" finds "Smiling")."""

    def __init__(self, vectors: list[AttributeVector]) -> None:
        self._by_key = {v.name.lower(): v for v in vectors}

    def __getitem__(self, name: str) -> AttributeVector:
        return self._by_key[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (v.name for v in self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_key

    @property
    def names(self) -> list[str]:
        return list(self)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed so large models do not need to fit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path.name, f"cannot be read as JSON ({exc})") from exc


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], path: Path, data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BundleError(path.name, f"invalid at {where}: {first['msg']}") from exc


def _onnx_signature(path: Path) -> dict[str, list[int | str]]:
    """Input and output shapes of an ONNX graph, symbolic dims as their names."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises several unrelated types for corrupt files
        raise BundleError(path.name, f"is not a readable ONNX model ({exc})") from exc
    shapes: dict[str, list[int | str]] = {}
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in dims]
    return shapes


def _check_precision(path: Path, precision: Precision) -> None:
    """The graph is what the manifest's precision says: QDQ nodes in an int8 bundle and none in a float32 one."""
    graph = onnx.load(str(path), load_external_data=False).graph
    quantized = any(node.op_type in QDQ_OPS for node in graph.node)
    if quantized != (precision == "int8"):
        has = "has QuantizeLinear/DequantizeLinear nodes" if quantized else "has no quantized (QDQ) nodes"
        raise BundleError(path.name, f"{has}, but the manifest's precision is {precision}")


def _check_signature(path: Path, expected: dict[str, list[int | str]]) -> None:
    actual = _onnx_signature(path)
    for name, shape in expected.items():
        if name not in actual:
            raise BundleError(path.name, f"has no tensor named {name!r} (has {sorted(actual)})")
        if actual[name] != shape:
            raise BundleError(path.name, f"tensor {name!r} has shape {actual[name]}, manifest implies {shape}")


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle on disk: paths to the two ONNX models plus the parsed JSON."""

    path: Path
    manifest: Manifest
    latent_stats: LatentStats
    attributes: AttributeVectors

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER_FILE

    @property
    def editor_path(self) -> Path | None:
        return None if self.manifest.editor is None else self.path / EDITOR_FILE

    @property
    def edited_by_editor(self) -> list[str]:
        """The attributes `editor.onnx` edits, in its strength columns' order (none without an editor)."""
        return [] if self.manifest.editor is None else self.manifest.editor.attributes

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def precision(self) -> Precision:
        return self.manifest.precision

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def z_dim(self) -> int:
        return self.manifest.z_dim

    @property
    def preprocess(self) -> Preprocess:
        return self.manifest.preprocess

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Load and verify a bundle; raise `BundleError` naming the first bad file."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(str(root), "bundle folder does not exist")
        for file in (MANIFEST_FILE, *HASHED_FILES):
            if not (root / file).is_file():
                raise BundleError(file, f"missing from bundle {root}")

        raw_manifest = _read_json(root / MANIFEST_FILE)
        version = raw_manifest.get("format_version") if isinstance(raw_manifest, dict) else None
        if version != FORMAT_VERSION:  # before parsing: an older layout would fail on a field, not on its version
            raise BundleError(MANIFEST_FILE, f"format_version {version} is not supported (expected {FORMAT_VERSION})")
        manifest = _parse(Manifest, root / MANIFEST_FILE, raw_manifest)
        if manifest.preprocess.size != manifest.image_size:
            raise BundleError(MANIFEST_FILE, "preprocess.size differs from image_size")
        if (manifest.precision == "int8") != (manifest.quantization is not None):
            raise BundleError(MANIFEST_FILE, "precision int8 needs a quantization section, and only int8 may have one")
        if manifest.preprocess.landmarks is None or not manifest.preprocess.landmark_detector:
            raise BundleError(
                MANIFEST_FILE,
                "preprocess.landmarks (the template photos are aligned to) or preprocess.landmark_detector is missing",
            )
        for file in manifest.hashed_files:
            expected = manifest.files.get(file)
            if not (root / file).is_file():
                raise BundleError(file, f"missing from bundle {root} (the manifest lists it)")
            if expected is None:
                raise BundleError(MANIFEST_FILE, f"lists no sha256 for {file}")
            if sha256_file(root / file) != expected:
                raise BundleError(file, "sha256 does not match the manifest (file changed or corrupt)")

        size, z_dim = manifest.image_size, manifest.z_dim
        _check_signature(
            root / ENCODER_FILE,
            {
                ENCODER_INPUT: [BATCH_DIM, size, size, 3],
                **{name: [BATCH_DIM, z_dim] for name in ENCODER_OUTPUTS},
            },
        )
        _check_signature(
            root / DECODER_FILE,
            {DECODER_INPUT: [BATCH_DIM, z_dim], DECODER_OUTPUT: [BATCH_DIM, size, size, 3]},
        )
        if manifest.editor is not None:
            edited = manifest.editor.attributes
            strangers = sorted(set(edited) - set(manifest.attributes))
            if strangers or len(set(edited)) != len(edited):
                raise BundleError(
                    MANIFEST_FILE, f"editor.attributes must be distinct attributes of the bundle (not {strangers})"
                )
            _check_signature(
                root / EDITOR_FILE,
                {
                    EDITOR_INPUTS[0]: [BATCH_DIM, z_dim],
                    EDITOR_INPUTS[1]: [BATCH_DIM, len(edited)],
                    EDITOR_OUTPUT: [BATCH_DIM, z_dim],
                },
            )
            scales = manifest.editor.length_scales
            if len(scales) != len(edited):
                raise BundleError(
                    MANIFEST_FILE, f"editor.length_scales has {len(scales)} values for {len(edited)} attributes"
                )

        for file in (ENCODER_FILE, DECODER_FILE):
            _check_precision(root / file, manifest.precision)

        stats = _parse(LatentStats, root / LATENT_STATS_FILE, _read_json(root / LATENT_STATS_FILE))
        problem = stats.check(z_dim)
        if problem is not None:
            raise BundleError(LATENT_STATS_FILE, problem)

        raw = _read_json(root / ATTRIBUTES_FILE)
        if not isinstance(raw, list):
            raise BundleError(ATTRIBUTES_FILE, "must be a JSON list of attribute vectors")
        vectors = [_parse(AttributeVector, root / ATTRIBUTES_FILE, item) for item in raw]
        for vector in vectors:
            if len(vector.vector) != z_dim:
                raise BundleError(
                    ATTRIBUTES_FILE, f"vector {vector.name!r} has {len(vector.vector)} values, z_dim is {z_dim}"
                )
            if not np.all(np.isfinite(vector.vector)) or vector.norm <= 0:
                raise BundleError(ATTRIBUTES_FILE, f"vector {vector.name!r} is not finite and non-zero")
        if [v.name for v in vectors] != manifest.attributes:
            raise BundleError(ATTRIBUTES_FILE, "attribute names differ from the manifest's list")

        return cls(path=root, manifest=manifest, latent_stats=stats, attributes=AttributeVectors(vectors))


def write_json(path: Path, data: Any) -> None:
    """Write JSON the way every bundle file is written (UTF-8, indented, trailing newline)."""
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
