"""Every request and response body and query-parameter model of the API (pydantic v2, unknown fields rejected)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Json,
    Tag,
    field_validator,
    model_validator,
)

from service.core.bundle import LANDMARKS
from service.core.compositing import Detail, Output
from service.core.detection import Face
from service.core.framing import Align
from service.core.imaging import ImageFormat
from service.core.runtime import Interpolation, SamplingMode

#: NaN and Infinity parse from JSON (`NaN` is accepted by Python's parser), so finiteness is checked here; strict, so
#: `true` and `"1.5"` are not taken for numbers (integers still are).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


def _distinct_names(names: list[str]) -> list[str]:
    """Attribute names match ignoring case, so `["Male", "male"]` names one attribute twice: refused."""
    seen: set[str] = set()
    for name in names:
        if name.casefold() in seen:
            raise ValueError(f"{name[:100]!r} is given more than once (names ignore case)")
        seen.add(name.casefold())
    return names


#: The OpenAPI markers `service.api.contract` replaces with the loaded model's real limits.
LATENT_MARK, LATENTS_MARK, STRENGTH_MARK, BATCH_MARK = "x-latent", "x-latents", "x-strength", "x-batch"
Latent = Annotated[
    list[FiniteFloat],
    Field(min_length=1, description="One latent vector of z_dim numbers.", json_schema_extra={LATENT_MARK: True}),
]


def _some_strength(strengths: dict[str, float]) -> dict[str, float]:
    """An empty edit is a mistake, not a no-op: say what to send instead of pydantic's "at least 1 item"."""
    if not strengths:
        raise ValueError(
            'attributes is empty: name at least one attribute with a strength, e.g. {"Smiling": 2} '
            "(GET /attributes lists the names)"
        )
    return strengths


Strengths = Annotated[
    dict[str, FiniteFloat],
    AfterValidator(_some_strength),
    Field(
        description="Attribute name (any case) to strength. Strength 1 moves a face by the average difference "
        "between training faces with and without the attribute times its length_scale (GET /attributes), so +2 is "
        "a clear edit; several attributes add up.",
        examples=[{"Smiling": 1.5, "Eyeglasses": -1}],
        json_schema_extra={STRENGTH_MARK: True, "minProperties": 1},
    ),
]
Keep = Annotated[
    list[str],
    AfterValidator(_distinct_names),
    Field(
        max_length=40,
        description="Attributes the edit must not change: their directions are projected out of it "
        "(InterFaceGAN's conditional edit), e.g. Mustache +2 keeping Male does not change the sex.",
        examples=[["Male"]],
    ),
]
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        lt=2**32,
        description="Makes the random draw reproducible; without it a random seed is used and returned.",
        examples=[42],
    ),
]

#: A placeholder latent: `service.api.contract` puts the loaded model's mean latent (an average face) in its place.
EXAMPLE_LATENT = [0.1, -0.5, 1.2, 0.0, -0.8, 0.3, 0.9, -1.1]


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- query parameters -------------------------------------------------------------------------------------------


class QueryParams(Schema):
    @field_validator("*", mode="before")
    @classmethod
    def _no_surrounding_space(cls, value: object) -> object:
        """Query values are text, and pydantic would strip white space from a number ('%0A5' as 5): refuse it."""
        if isinstance(value, str) and value != value.strip():
            raise ValueError(f"{value!r} has white space around it")
        return value


class ImageOptions(QueryParams):
    format: ImageFormat | None = Field(
        None, description="Image encoding; overrides the image type in Accept. Default: from Accept, else PNG."
    )


class FramingParams(QueryParams):
    align: Align = Field(
        Align.AUTO,
        description="auto: find the face and align its landmarks to where the training crops have them (any photo: "
        "a face anywhere, tilted, at any size); none: crop the bundle's box, for CelebA-style aligned crops.",
    )
    face: int = Field(0, ge=0, le=1000, description="align=auto: which face, 0 the largest (POST /detect lists them).")


class EncodeParams(FramingParams):
    seed: Seed = None


class SampleParams(ImageOptions):
    n: int = Field(
        1, ge=1, description="Number of faces (at most the configured max_batch).", json_schema_extra={BATCH_MARK: True}
    )
    seed: Seed = None
    mode: SamplingMode | None = Field(
        None,
        description="trick: z = mean + temperature * L eps from a Gaussian fitted to the training faces' codes "
        "(the aggregate posterior); textbook: the book's z = mean + std_scalar * temperature * eps with the average "
        "posterior std; prior: z = temperature * eps, eps ~ N(0, I). Default: the bundle's best-measured mode "
        "(GET /metadata).",
    )
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False, description="Scales the random part of z.")
    grid: bool = Field(True, description="n > 1: one grid image (true) or a JSON list of faces (false).")


class DecodeParams(ImageOptions):
    grid: bool = Field(False, description="Several latents: one grid image (true) or a JSON list of faces (false).")


class EditParams(ImageOptions, FramingParams):
    steps: int | None = Field(
        None,
        ge=3,
        json_schema_extra={BATCH_MARK: True},
        description="Odd number of faces in a strip from -strength to +strength, the unedited face in the middle.",
    )

    @field_validator("steps")
    @classmethod
    def _odd(cls, steps: int | None) -> int | None:
        if steps is not None and steps % 2 == 0:
            raise ValueError(f"steps must be odd so the unedited face is in the middle, got {steps}")
        return steps

    output: Output = Field(
        Output.FACE,
        description="A photo edit: face returns the edited face square (the model's size); photo returns the whole "
        "photo at its own resolution with the edited face warped back into place (one photo: no steps).",
    )
    detail: Detail = Field(
        Detail.KEEP,
        description="A photo edit: keep adds only the edit's change, decode(z + delta) - decode(z), to the photo's "
        "own face, so hair, skin and eyes stay the person's (the model's edited face where the change is large); model "
        "shows the model's own decoding of the face.",
    )

    @model_validator(mode="after")
    def _one_photo(self) -> EditParams:
        if self.output is Output.PHOTO and self.steps is not None:
            raise ValueError("output=photo returns one photo; a strip (steps) needs output=face")
        return self


class InterpolateParams(ImageOptions, FramingParams):
    steps: int = Field(
        7,
        ge=2,
        description="Faces in the strip, both ends included (at most max_batch).",
        json_schema_extra={BATCH_MARK: True},
    )
    method: Interpolation = Field(
        Interpolation.SLERP,
        description="slerp: along the great circle around the codes' mean, so midpoints keep the ends' distance "
        "from it (no washed-out average face); lerp: the straight line.",
    )


# ---- request bodies ---------------------------------------------------------------------------------------------


def _latent_layout(value: Any) -> str:
    """Route `z` to the one-latent or several-latents schema so errors come from the right one only."""
    return "several" if isinstance(value, list) and value and isinstance(value[0], list) else "one"


class DecodeRequest(Schema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"z": EXAMPLE_LATENT}, {"z": [EXAMPLE_LATENT, EXAMPLE_LATENT]}]}
    )

    z: Annotated[
        Annotated[Latent, Tag("one")]
        | Annotated[list[Latent], Tag("several"), Field(min_length=1, json_schema_extra={LATENTS_MARK: True})],
        Discriminator(_latent_layout),
    ] = Field(description="One latent, or a list of latents.")

    @property
    def several(self) -> bool:
        return _latent_layout(self.z) == "several"

    @property
    def latents(self) -> list[list[float]]:
        return self.z if self.several else [self.z]


class EditRequest(Schema):
    """Edit a latent the client already has (from /encode, /sample or an earlier response)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"z": EXAMPLE_LATENT, "attributes": {"Smiling": 1.5}},
                {"z": EXAMPLE_LATENT, "attributes": {"Mustache": 2}, "keep": ["Male"]},
            ]
        }
    )

    z: Latent
    attributes: Strengths
    keep: Keep = []


class InterpolateRequest(Schema):
    """Two latents the client already has (from /encode, /sample or an earlier response)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"start": EXAMPLE_LATENT, "end": EXAMPLE_LATENT}]})

    start: Latent
    end: Latent


class EncodeUpload(Schema):
    """multipart/form-data body of /encode."""

    image: bytes = Field(description="The face photo (PNG, JPEG, WebP, GIF, BMP or TIFF).")


class InterpolateUpload(Schema):
    """multipart/form-data body of /interpolate: two photos, each framed as /encode frames it."""

    start: bytes = Field(description="The first face photo.")
    end: bytes = Field(description="The second face photo.")


class EditUpload(EncodeUpload):
    """multipart/form-data body of /edit: the photo is encoded and its code edited."""

    attributes: Json[Strengths] = Field(description='JSON object, e.g. {"Smiling": 1.5, "Eyeglasses": -1}.')
    keep: Json[Keep] = Field([], description='JSON list of attributes the edit must not change, e.g. ["Male"].')


# ---- responses --------------------------------------------------------------------------------------------------


class ErrorMessage(Schema):
    detail: str = Field(examples=["not a recognised image (accepted formats: PNG, JPEG, WEBP, GIF, BMP, TIFF)"])


class Liveness(Schema):
    live: bool


class Readiness(Schema):
    ready: bool
    detail: str | None = Field(None, description="Why the service is not ready.", examples=["model not loaded yet"])


class FaceInfo(Schema):
    """One face found in a photo, in the photo's pixel coordinates (after its EXIF orientation)."""

    box: list[float] = Field(description="[left, top, width, height].", examples=[[212.5, 96.0, 180.0, 224.0]])
    landmarks: list[list[float]] = Field(
        description=f"[x, y] of the {', '.join(LANDMARKS)} (left and right as the viewer sees them).",
        examples=[[[271.4, 188.2], [338.9, 190.0], [305.1, 231.7], [276.0, 270.3], [331.8, 271.9]]],
    )
    score: float = Field(description="The detector's confidence, 0-1.", examples=[0.93])

    @classmethod
    def of(cls, face: Face, scale: float = 1.0) -> FaceInfo:
        """`face` as found in a copy of the photo with `scale` times fewer pixels a side (draft decoding)."""
        return cls(
            box=[round(v * scale, 2) for v in face.box],
            landmarks=[[round(float(x) * scale, 2), round(float(y) * scale, 2)] for x, y in face.landmarks],
            score=round(face.score, 4),
        )


class DetectResponse(Schema):
    width: int = Field(description="Width of the photo, pixels (after its EXIF orientation).")
    height: int
    faces: list[FaceInfo] = Field(description="Every face found, largest first: `face=K` in /encode picks the K-th.")


class EncodeResponse(Schema):
    code: list[float] = Field(
        description="The latent to decode or edit for this face: z_mean refined so the face decoded from it encodes "
        "back to z_mean (FACEVAE_REFINE_STEPS steps; z_mean itself at 0). Photo /edit and /interpolate use it."
    )
    z_mean: list[float]
    z_log_var: list[float]
    z: list[float] = Field(description="z_mean + exp(z_log_var / 2) * eps, one reparameterised sample.")
    seed: int = Field(description="Seed of eps; send it back to get the same z.")
    face: FaceInfo | None = Field(description="The face that was encoded (align=auto); null with align=none.")


class FacesResponse(Schema):
    """JSON alternative to an image response: every face separately, with the latent it was decoded from."""

    images: list[str] = Field(description="Base64-encoded images, one per face.")
    media_type: str = Field(examples=["image/png"])
    z: list[list[float]] = Field(description="The latent of each face, in the same order.")
    seed: int | None = Field(description="Seed of a random draw, null when nothing was drawn.")


class AttributeInfo(Schema):
    name: str
    auc: float = Field(description="How well the projection on the vector separates faces with and without it.")
    norm: float
    method: str = Field(description="How the direction was found: mean_difference, balanced or linear.")
    step: float = Field(description="One unit of strength moves a face this far along the unit vector.")
    length_scale: float = Field(
        description="How many times `step` one unit of strength really moves a face: above 1 where the learned "
        "editor lengthens a move that would otherwise not show at +2, 1 for attributes moved along the vector alone."
    )
    projection_std: float = Field(description="Spread of the training faces' projections on the unit vector.")
    positives: int
    negatives: int
    strength_min: float
    strength_max: float
    learned: bool = Field(
        description="Whether /edit moves it with the bundle's learned editor (the vector's move plus a correction "
        "that keeps the face's other attributes) rather than along the vector alone."
    )


class AttributeList(Schema):
    attributes: list[AttributeInfo]


class Metadata(Schema):
    name: str
    format_version: int
    image_size: int
    z_dim: int
    attribute_count: int
    default_sampling: SamplingMode = Field(description="The /sample mode used when a request names none.")
    providers: dict[str, list[str]] = Field(
        description="Execution providers each onnxruntime session actually uses.",
        examples=[{"encoder": ["CPUExecutionProvider"], "decoder": ["CPUExecutionProvider"]}],
    )
    face_detection: bool = Field(description="Whether align=auto works: the face detector is installed here.")
    service_version: str
