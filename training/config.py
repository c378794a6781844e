"""Every knob of a training run, in one validated object that is also recorded in the manifest."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator

from service.core.bundle import DirectionMethod, SamplingMode
from training.data import CELEBA_CROP

#: A part of the picture: (top, bottom) rows, then (left, right) columns, as fractions of its height and width.
Region = tuple[tuple[float, float], tuple[float, float]]

#: tf.distribute strategies a run can train under (training/distribute.py); not part of the recipe, so not recorded.
StrategyName = Literal["default", "mirrored", "multi-worker"]
STRATEGIES: tuple[StrategyName, ...] = get_args(StrategyName)


class TrainConfig(BaseModel):
    """Hyperparameters and data options; the defaults are the committed default model's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("celeba-64", description="bundle name recorded in the manifest")
    image_size: int = Field(64, gt=0, description="side of the square model input, pixels")
    z_dim: int = Field(128, gt=0, description="latent dimensions")
    filters: tuple[int, ...] = Field(
        (32, 64, 128, 256), description="encoder conv widths, one stride-2 block each; the decoder mirrors them"
    )
    kl_weight: float = Field(1e-5, ge=0, description="weight of KL (nats per image) against per-pixel MSE")
    optimizer: Literal["adam", "rmsprop"] = Field("adam", description="optimiser")
    learning_rate: float = Field(1e-3, gt=0, description="optimiser learning rate at the start")
    final_learning_rate: float = Field(
        1e-4, gt=0, description="learning rate at the last epoch (cosine decay; = learning_rate for a constant one)"
    )
    epochs: int = Field(36, gt=0, description="maximum epochs (early stopping may end sooner)")
    adversarial_weight: float = Field(
        0.8, ge=0, description="patch discriminator's loss weight, relative to the reconstruction gradient; 0: none"
    )
    perceptual_weight: float = Field(
        0.02, ge=0, description="weight of the perceptual loss (a face network's features) against pixel MSE; 0: none"
    )
    semantic_weight: float = Field(
        0.0, ge=0, description="weight of the face network's penultimate-feature distance against pixel MSE; 0: none"
    )
    residual_blocks: int = Field(
        0, ge=0, description="decoder residual blocks at the highest resolutions (1: 64x64 only, 2: 64 and 32)"
    )
    perceptual_epochs: int = Field(6, gt=0, description="epochs to train the perceptual loss's face network")
    warmup_epochs: int = Field(4, ge=0, description="epochs of plain VAE training before the discriminator joins")
    discriminator_filters: tuple[int, ...] = Field((32, 64, 128), description="patch discriminator conv widths")
    discriminator_learning_rate: float = Field(2e-4, gt=0, description="discriminator learning rate (Adam 0.5, 0.9)")
    batch_size: int = Field(64, gt=0, description="images per training step")
    patience: int = Field(5, gt=0, description="epochs without a better validation reconstruction before stopping")
    max_images: int | None = Field(None, gt=0, description="use only the first N images (sorted by file name)")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of files held out for validation (by name hash)")
    direction_method: DirectionMethod = Field(
        "mean_difference", description="how attribute directions are found (see training/latents.py)"
    )
    default_sampling: SamplingMode = Field(
        SamplingMode.TRICK, description="the /sample mode the bundle recommends (bench/bench_quality.py measures them)"
    )
    min_positives: int = Field(20, ge=1, description="fewest training faces with and without an attribute to keep it")
    crop: tuple[float, float, float, float] = Field(
        CELEBA_CROP, description="face box as fractions of width and height: left top right bottom"
    )
    seed: int = Field(0, description="seed for initialisation, shuffling and sampling noise")

    @property
    def uses_face_network(self) -> bool:
        """Whether a feature loss (perceptual or semantic) needs the face network trained before the VAE."""
        return self.perceptual_weight > 0 or self.semantic_weight > 0

    @classmethod
    def from_manifest(cls, training: dict[str, Any]) -> TrainConfig:
        """The configuration a bundle was trained with (its manifest's `training` section)."""
        return cls.model_validate({k: v for k, v in training.items() if k in cls.model_fields})


#: The attributes the API's documentation and the explorer page edit most; the editor covers these by default.
DEFAULT_EDIT_ATTRIBUTES = ("Smiling", "Male", "Eyeglasses", "Mustache", "Chubby", "Young", "Blond_Hair", "Pale_Skin")
#: Edits whose +2 still shows to the held-out classifiers with the keep loss weighted more than keep_weight, and how
#: much (docs/benchmarks.md, "A firmer keep where +2 still shows", "Three guides, calibrated by a classifier
#: trained as the judge is", "Three judges, and firmer keeps", "Where Chubby's side effects fall" and "Three held-out
#: classifiers choose the lengths").
FIRM_KEEP = {"Smiling": 36.0, "Male": 24.0, "Eyeglasses": 60.0, "Mustache": 60.0, "Chubby": 46.0, "Young": 24.0}
#: Attributes an edit is let change (their keep weights multiplied by these): the judges read real chubby faces as
#: having less pointed noses, narrower eyes and higher hairlines, and an editor held to keep those changed more of
#: everything else (docs/benchmarks.md, "Where Chubby's side effects fall").
FREED = {"Chubby": {"Pointy_Nose": 0.01, "Narrow_Eyes": 0.01, "Receding_Hairline": 0.01}}
#: Epochs of the project's judge: `bench_quality --train-classifier` trains it for these, as docs/benchmarks.md's
#: command does (`python -m training.classifier ... --epochs 12`), and the edits' held-out classifiers as long.
JUDGE_EPOCHS = 12
#: Edits whose keep is the verdict keep (a hinge on the guide's logits) instead of the KL of every verdict: these
#: change fewer unrelated verdicts with it and still show; Mustache and Chubby do not (docs/benchmarks.md, "A
#: verdict keep: only the verdicts that would cross").
VERDICT_KEEP = ("Smiling", "Male")
#: Edits held back from reddening the face more firmly than redness_weight, and how much: Male +2, whose guides read a
#: red nose as male (docs/benchmarks.md, "A red nose is not a man"); at 300 for every edit Chubby lost success.
FIRM_REDNESS = {"Male": 300.0}

V = TypeVar("V")


def _for_learned(table: Mapping[str, V]) -> Callable[[dict[str, Any]], dict[str, V]]:
    """A default factory: `table`'s entries for the attributes the editor learns, so that `--set attributes=...`
    still validates."""
    return lambda data: {name: value for name, value in table.items() if name in data.get("attributes", ())}


class EditConfig(BaseModel):
    """How the editor is built and trained."""

    model_config = ConfigDict(extra="forbid")

    attributes: tuple[str, ...] = Field(DEFAULT_EDIT_ATTRIBUTES, description="attributes the editor learns")
    steps: int = Field(1600, gt=0, description="training steps")
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    hidden: int = Field(256, gt=0, description="width of the correction network's two hidden layers")
    min_strength: float = Field(0.5, gt=0, description="strengths are drawn from [min, max] in absolute value")
    max_strength: float = Field(3.0, gt=0)
    toward_label: float = Field(
        0.8, ge=0, le=1, description="share of edits that move a face toward the attribute it lacks (else any way)"
    )
    target_logit: float = Field(
        2.0, gt=0, description="the guide's logit of the edited attribute must reach strength times this (signed)"
    )
    target_weight: float = Field(1.0, gt=0, description="each attribute's target multiplier (at the start)")
    success_goal: float = Field(
        0.95, gt=0, lt=1, description="share of edits of at least goal_strength the guide must judge done"
    )
    goal_strength: float = Field(2.0, gt=0, description="the strength from which an edit must be clear")
    multiplier_rate: float = Field(
        0.0, ge=0, description="how fast each target multiplier follows its goal (0: they stay at target_weight)"
    )
    keep_weight: float = Field(12.0, ge=0, description="weight of the keep loss for edits of the other attributes")
    keep_weight_by_attribute: dict[str, NonNegativeFloat] = Field(
        default_factory=_for_learned(FIRM_KEEP),
        description="the keep loss's weight for edits of these attributes instead of keep_weight",
    )
    keep_boost: dict[str, dict[str, PositiveFloat]] = Field(
        default_factory=_for_learned(FREED),
        description="for edits of an attribute, other attributes' keep weights multiplied by these factors",
    )
    target_hidden: dict[str, Region] = Field(
        default_factory=dict,
        description="for edits of an attribute, a region (rows, then columns, as fractions) the guides read the "
        "target on from the unedited face: the edit must show elsewhere",
    )
    guide_jitter: float = Field(
        0.0, ge=0, description="noise (0-255 scale) on the edited face the guide sees, with a random mirror and shift"
    )
    verdict_keep: tuple[str, ...] = Field(
        default_factory=lambda data: tuple(name for name in VERDICT_KEEP if name in data.get("attributes", ())),
        description="edits whose keep loss only stops the other verdicts from crossing (a hinge at keep_margin) "
        "instead of the KL of every verdict (docs/benchmarks.md, 'A verdict keep')",
    )
    keep_margin: float = Field(
        1.0,
        gt=0,
        description="the verdict keep's margin: no guide logit closer to the other verdict than this (or than it was)",
    )
    identity_weight: float = Field(0.5, ge=0)
    perceptual_weight: float = Field(
        1.0, ge=0, description="weight of the edited face's perceptual distance from the unedited one"
    )
    turn_weight: float = Field(0.1, ge=0, description="weight of 1 - cos(edit, straight move)")
    density_weight: float = Field(2.0, ge=0, description="weight of the edited code's Mahalanobis increase")
    redness_weight: float = Field(
        100.0,
        ge=0,
        description="weight of how much redder the inner face's reddest patch got (`redness`; docs/benchmarks.md, "
        "'A red nose is not a man')",
    )
    redness_weight_by_attribute: dict[str, NonNegativeFloat] = Field(
        default_factory=_for_learned(FIRM_REDNESS),
        description="the redness loss's weight for edits of these attributes instead of redness_weight",
    )
    redness_margin: float = Field(
        0.02, ge=0, description="how much redder (YCbCr's Cr, 0-1) the reddest patch may get for free"
    )
    guide_epochs: int = Field(8, gt=0, description="epochs of the guide classifier when it must be trained")
    guide_seeds: list[int] = Field(
        [7, 8, 9],
        min_length=1,
        description="seeds of the guide classifiers, none the judge's (0): an edit is judged by their mean logit, so "
        "it cannot lean on one classifier's quirks; the first one's layers also give the identity and perceptual keeps",
    )
    held_out_seeds: list[int] = Field(
        [11, 13, 14],
        min_length=1,
        description="seeds of the held-out classifiers that calibrate lengths, none a guide's or the judge's (0): an "
        "edit shows where their mean probability says so, so a length is chosen by no one classifier's reading of the "
        "attribute (classifiers trained alike from other seeds disagree most on Chubby)",
    )
    held_out_epochs: int = Field(
        JUDGE_EPOCHS,
        gt=0,
        description="epochs of the held-out classifiers when they must be trained: the judge's, so the lengths are "
        "chosen by classifiers trained as the judge is, from other seeds (the guides' shorter training sees edits "
        "sooner)",
    )
    clear_goal: float = Field(
        0.99, gt=0, le=1, description="share of goal_strength edits the held-out classifiers must see done"
    )
    shown_goal: float = Field(
        0.9,
        gt=0,
        le=1,
        description="where no length reaches clear_goal but one reaches this, the shortest within one standard error "
        "of the best (the edit shows; a cliff to length 1 at clear_goal would only follow the held-out noise)",
    )
    side_goal: PositiveFloat | None = Field(
        1.0,
        description="a clear length must also change no more of the calibration faces' unrelated verdicts (|phi| <= "
        "0.2 in the labels) to the held-out classifiers than a random move as long, times this; where no clear length "
        "does, the clear one with the lowest ratio (None: success alone)",
    )
    length_scales: tuple[PositiveFloat, ...] = Field(
        (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5),
        min_length=1,
        description="lengthenings tried, in order, until clear_goal (and side_goal) holds",
    )
    calibration_faces: int = Field(400, gt=0, description="training faces lacking each attribute, for calibration")
    calibration_min_examples: int = Field(
        20, ge=0, description="a sex joins an attribute's calibration if this many of its training faces have it"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _weights_of_edited_attributes(self) -> EditConfig:
        for field_name, names in (
            ("keep_weight_by_attribute", self.keep_weight_by_attribute),
            ("verdict_keep", self.verdict_keep),
            ("keep_boost", self.keep_boost),
            ("target_hidden", self.target_hidden),
            ("redness_weight_by_attribute", self.redness_weight_by_attribute),
        ):
            unknown = sorted(set(names) - set(self.attributes))
            if unknown:
                raise ValueError(f"{field_name} names attributes the editor does not learn: {unknown}")
        if set(self.held_out_seeds) & set(self.guide_seeds):
            raise ValueError("held_out_seeds shares a seed with guide_seeds: a guide would calibrate the lengths")
        for field_name, seeds in (("guide_seeds", self.guide_seeds), ("held_out_seeds", self.held_out_seeds)):
            if len(set(seeds)) < len(seeds):
                raise ValueError(f"{field_name} repeats a seed: the same classifier would count twice")
        return self

    def attribute_keep_weights(self) -> list[float]:
        """The keep loss's weight for edits of each of `attributes`, in order."""
        return self._per_attribute(self.keep_weight_by_attribute, self.keep_weight)

    def attribute_redness_weights(self) -> list[float]:
        """The redness loss's weight for edits of each of `attributes`, in order."""
        return self._per_attribute(self.redness_weight_by_attribute, self.redness_weight)

    def _per_attribute(self, weights: dict[str, float], default: float) -> list[float]:
        return [weights.get(name, default) for name in self.attributes]
