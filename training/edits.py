"""Learned latent edits: a small network that turns a code's move so the decoded face gains (or loses) the asked
attribute and keeps the others, trained through the bundle's frozen decoder against an image classifier.

After the Latent Transformer (Yao et al., ICCV 2021), with the attributes read from the decoded image instead of
from the code: a classifier on codes is satisfied by moves the picture does not show. The edit moves a code exactly
as far as the shipped class-mean move of the same strength times a calibrated length scale, in a direction the
network chooses per face:

    d = S @ M + C([z, S]) - C([z, 0]),     z' = z + |S @ F M| * d / |d|

(M: the class-mean moves of strength 1, F: the length scales, C: a two-layer network), so strength keeps its
meaning (1 = the average difference between faces with and without the attribute, as a distance in latent space,
lengthened only where +2 would not show), S = 0 is exactly z, and the network can only choose where to go, not go
further: its edits are compared with a random move of the same length, and a longer move would buy a higher floor,
not a cleaner edit. F is chosen after training by held-out classifiers the editor never saw (`calibrate_lengths`):
the first length at which +2 shows to them and changes no more of their unrelated verdicts than a random move as
long. Trained on the training split's codes, each batch editing one attribute per face at a
random strength, with seven named losses:

- `target`: the guide classifier's logit of the edited attribute reaches |s| * `target_logit` on the requested side
  (a soft hinge), weighted per attribute by a multiplier that training adjusts (dual ascent) until the guide
  judges `success_goal` of the edits of at least `goal_strength` done: each attribute gets the least pull that
  still makes +2 a clear edit and leaves the rest of the move to keeping the others (one weight for all traded
  one attribute's success for another's side effects);
- `keep`: every other attribute's verdict stays (Bernoulli KL from the unedited face's probabilities; for the
  edits of `EditConfig.verdict_keep`, by default `VERDICT_KEEP` (Smiling, Male), a hinge that only stops a guide
  logit from coming closer to the other verdict than `keep_margin`, or than it was, and leaves the probabilities
  that do not cross free),
  weighted by how independent the two attributes are in the labels (`keep_weights`), so an edit may move
  what goes with it, and more firmly for the edits whose +2 still shows under a firm keep
  (`EditConfig.keep_weight_by_attribute`, by default `FIRM_KEEP`; Male and Chubby lose their success to a keep
  as firm as the others'), and less firmly for what real photos with the attribute show too
  (`EditConfig.keep_boost`, by default `FREED`: Chubby's edits may narrow the eyes);
- `identity`: the guide's penultimate features stay (the person);
- `perceptual`: the edited face stays close to the unedited one in the guide's first three ReLU layers (LPIPS's
  distance without learned weights, the layers the VAE's perceptual loss compares): of the directions that make the
  edit, the one that changes least of the picture;
- `turn`: 1 - cos(edit, class-mean move), a light pull towards the shipped direction;
- `density`: how much rarer the edited code is than the code under the aggregate posterior (Mahalanobis, per
  dimension, only increases count): edits stay where the decoder was trained instead of finding the decoder's
  blind spots that fool the guide (patterned texture);
- `redness`: how much redder the inner face's reddest patch got (`red_patch`): every classifier here, the judges
  too, reads a red nose as male, so the guides reward painting one and no side-effect count sees it
  (docs/benchmarks.md, "A red nose is not a man").

The guide sees each edited face mirrored at random, shifted by up to `JITTER_SHIFT` pixels and with noise of
`guide_jitter` (it was trained under blur and noise, so its verdicts hold): a pattern that sways the guide only on
one exact pixel grid is not an edit, and under a strong keep weight the editor otherwise learns such patterns
(docs/benchmarks.md, "Learned edits").

The guide is a classifier of its own (training.classifier, blur- and noise-augmented, another seed), never the
judge that bench_quality scores with; with several `guide_seeds`, the edit is read from their mean logit, so a move
that sways one classifier's quirks but not the others' does not count as the edit. The network is exported as
`editor.onnx` in the bundle (docs/bundle-format.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from service.core.bundle import (
    EDITOR_FILE,
    EDITOR_INPUTS,
    EDITOR_OUTPUT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    AttributeVector,
    LatentStats,
    ModelBundle,
    sha256_file,
    write_json,
)
from service.core.runtime import FaceModel
from service.core.sessions import open_session
from training.classifier import (
    INNER_FACE,
    PERCEPTUAL_LAYERS,
    AttributeClassifier,
    ClassifierConfig,
    crop,
    fit_classifier,
    perceptual_distance,
    relu_outputs,
)
from training.config import EditConfig, Region, TrainConfig
from training.export import PARITY_BATCHES, PARITY_TOLERANCE, ParityError, keras_to_onnx
from training.onnx_tf import OnnxFunction
from training.prepared import PreparedData

log = logging.getLogger(__name__)

#: Faces per onnxruntime call while encoding the training split.
BATCH = 256


def gelu(x: keras.KerasTensor) -> keras.KerasTensor:
    """GELU written with erf: Keras's own becomes an Erfc node, which ONNX opset 17 does not have."""
    return 0.5 * x * (1.0 + ops.erf(x / np.sqrt(2.0).astype(np.float32)))


def build_correction(z_dim: int, attributes: int, hidden: int) -> keras.Model:
    """C([z, s]): two hidden layers, no activation on the output (a latent offset); starts at zero, so training
    starts from the class-mean move."""
    z = keras.Input(shape=(z_dim,), name="z")
    strengths = keras.Input(shape=(attributes,), name="strengths")
    x = layers.Concatenate()([z, strengths])
    x = layers.Dense(hidden, activation=gelu)(x)
    x = layers.Dense(hidden, activation=gelu)(x)
    offset = layers.Dense(z_dim, kernel_initializer="zeros")(x)
    return keras.Model([z, strengths], offset, name="correction")


def straight_moves(vectors: Sequence[AttributeVector]) -> np.ndarray:
    """[K, z_dim]: the class-mean move of strength 1 of each vector (what /edit did before learned edits)."""
    return np.stack([v.step * v.unit for v in vectors]).astype(np.float32)


def build_editor(moves: np.ndarray, correction: keras.Model, length_scales: np.ndarray | None = None) -> keras.Model:
    """z, strengths [N, K] -> z': z moved as far as the straight moves [K, z_dim] (one per strength column), each
    lengthened by its `length_scales` [K] (default 1), would move it, in the direction of the straight move plus the
    correction's change from s = 0."""
    z_dim = moves.shape[1]
    scales = np.ones(len(moves), np.float32) if length_scales is None else np.asarray(length_scales, np.float32)
    z = keras.Input(shape=(z_dim,), name=EDITOR_INPUTS[0])
    strengths = keras.Input(shape=(len(moves),), name=EDITOR_INPUTS[1])
    straight = ops.matmul(strengths, ops.convert_to_tensor(moves))
    turned = straight + correction([z, strengths]) - correction([z, ops.zeros_like(strengths)])
    lengthened = ops.matmul(strengths, ops.convert_to_tensor(moves * scales[:, np.newaxis]))
    length = ops.sqrt(ops.sum(ops.square(lengthened), axis=1, keepdims=True))
    scale = length / (ops.sqrt(ops.sum(ops.square(turned), axis=1, keepdims=True)) + 1e-6)
    edited = layers.Add(name=EDITOR_OUTPUT)([z, turned * scale])
    return keras.Model([z, strengths], edited, name="editor")


#: Reported per step: the weighted sum, the seven named losses, the share of edits whose target logit moved far
#: enough, and the share of edits of at least goal_strength the guide judges done.
LOSSES = ("loss", "target", "keep", "identity", "perceptual", "turn", "density", "redness", "reached", "clear")
#: YCbCr's Cr row (JPEG's, for RGB in 0-1): how red a pixel is against its brightness.
RED_CHROMA = (0.5, -0.4187, -0.0813)
#: Side, in pixels, of the blocks whose mean redness the `redness` loss compares.
REDNESS_BLOCK = 4
#: Blocks in a red patch (`red_patch`): about a nose, at 64 pixels.
RED_PATCH_BLOCKS = 8
#: Largest shift, in pixels either way, of the edited face the guide sees.
JITTER_SHIFT = 2
#: How fast each attribute's running success (the multipliers' signal) follows a step's.
SUCCESS_SMOOTHING = 0.1
#: The label that splits who can carry some attributes in CelebA (moustaches, goatees, lipstick): calibration
#: keeps to the sexes in which an attribute occurs.
STRATUM = "Male"
#: The multipliers stay within these bounds.
MULTIPLIER_RANGE = (0.05, 50.0)


def red_patch(faces0: tf.Tensor | np.ndarray, faces1: tf.Tensor | np.ndarray) -> tf.Tensor:
    """[N]: how much redder (`RED_CHROMA`, 0-1) the `RED_PATCH_BLOCKS` most reddened blocks of `REDNESS_BLOCK`
    pixels of the inner face are in faces1 than in faces0 (0-255, [N, H, W, 3]), on average: a red nose or cheek,
    not the hair (Blond_Hair) or the background. What the editor's `redness` loss holds down and bench_quality
    reports."""

    def redness(faces: tf.Tensor | np.ndarray) -> tf.Tensor:
        chroma = tf.tensordot(tf.cast(faces, tf.float32) / 255.0, tf.constant(RED_CHROMA), axes=1)[..., tf.newaxis]
        return tf.nn.avg_pool2d(chroma, REDNESS_BLOCK, REDNESS_BLOCK, "VALID")[..., 0]

    inner = crop(redness(faces1) - redness(faces0), INNER_FACE)
    patch = min(RED_PATCH_BLOCKS, inner.shape[1] * inner.shape[2])  # small test faces have fewer blocks
    return tf.reduce_mean(tf.math.top_k(tf.reshape(inner, [tf.shape(inner)[0], -1]), patch).values, axis=1)


def soft_box(size: int, region: Region, ramp: float = 2.0) -> np.ndarray:
    """[size, size, 1]: 1 inside `region` (rows, then columns, as fractions), falling to 0 over `ramp` pixels."""
    (top, bottom), (left, right) = region
    at = np.arange(size) + 0.5

    def edge(low: float, high: float) -> np.ndarray:
        return np.clip(np.minimum(at - low * size, high * size - at) / ramp + 0.5, 0.0, 1.0)

    return (edge(top, bottom)[:, None] * edge(left, right)[None, :])[..., None].astype(np.float32)


def keep_weights(labels: np.ndarray, free: float = 0.2, loose: float = 0.4) -> np.ndarray:
    """[A, A]: how firmly an edit of one attribute must keep another, from |phi| of their +-1 labels [N, A]: 1 up to
    `free` (unrelated: the judge counts it as a side effect), 0 from `loose` on (Mustache may bring Goatee), linear
    between."""
    positive = (labels > 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # an attribute no face (or every face) has: phi 0
        phi = np.abs(np.nan_to_num(np.corrcoef(positive, rowvar=False)))
    return np.clip((loose - phi) / (loose - free), 0.0, 1.0).astype(np.float32)


def keep_matrix(labels: np.ndarray, columns: Sequence[str], config: EditConfig) -> np.ndarray:
    """[K, A]: per edited attribute of `config`, how firmly its edits keep each of the guide's `columns` (labels
    [N, A] in that order): `keep_weights`, times `config.keep_boost`'s factors, 0 on its own column."""
    index = {name: i for i, name in enumerate(columns)}
    edited = [index[name] for name in config.attributes]
    kept = keep_weights(labels)[edited]
    for name, boosts in config.keep_boost.items():
        for other, factor in boosts.items():
            kept[config.attributes.index(name), index[other]] *= factor
    kept[np.arange(len(edited)), edited] = 0.0
    return kept


class EditTrainer(keras.Model):
    """The editor trained through the frozen decoder against the guide; each loss named and reported."""

    def __init__(
        self,
        editor: keras.Model,
        moves: np.ndarray,
        stats: LatentStats,
        decoder: OnnxFunction,
        guides: Sequence[AttributeClassifier],
        columns: np.ndarray,
        kept: np.ndarray,
        config: EditConfig,
    ) -> None:
        super().__init__()
        self.editor, self.decoder, self.config = editor, decoder, config
        self.moves = tf.constant(moves, tf.float32)  # [K, z_dim] the class-mean move of strength 1
        # Whitening by the aggregate posterior (L L^T its covariance): |whiten(z)|^2 is how unlikely a code is.
        self.mean = tf.constant(stats.mean_array)
        self.whiten = tf.constant(np.linalg.inv(stats.cholesky_array.astype(np.float64)).T.astype(np.float32))
        # Each guide up to its features, and its last layer as a matrix: logits stay finite where p saturates.
        self.guides = [
            (keras.Model(guide.model.input, guide.model.outputs[1]), *map(tf.constant, last_layer(guide)))
            for guide in guides
        ]
        self.looks = keras.Model(guides[0].model.input, relu_outputs(guides[0].model, PERCEPTUAL_LAYERS))
        self.columns = tf.constant(columns, tf.int32)  # [K] guide columns of the edited attributes
        self.kept = tf.constant(kept, tf.float32)  # [K, A] keep weights, 0 on the edited column
        attributes = len(config.attributes)
        self.keep_loss_weights = tf.constant(config.attribute_keep_weights(), tf.float32)  # [K] per edited attribute
        self.redness_weights = tf.constant(config.attribute_redness_weights(), tf.float32)  # [K] likewise
        self.verdict_kept = tf.constant([name in config.verdict_keep for name in config.attributes])  # [K]
        self.multipliers = tf.Variable(tf.fill([attributes], config.target_weight), trainable=False)
        self.success = tf.Variable(tf.fill([attributes], config.success_goal), trainable=False)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSSES}
        self.target_masks = None
        if config.target_hidden:
            size = int(guides[0].model.input.shape[1])
            masks = np.zeros((attributes, size, size, 1), np.float32)
            for name, region in config.target_hidden.items():
                masks[config.attributes.index(name)] = soft_box(size, region)
            self.target_masks = tf.constant(masks)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    def _mahalanobis(self, z: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.square(tf.matmul(z - self.mean, self.whiten)), axis=1)

    def _strengths(self, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One edited attribute per face, its signed strength, and the [B, K] strength matrix."""
        batch, k = tf.shape(labels)[0], len(self.config.attributes)
        chosen = tf.random.uniform([batch], 0, k, dtype=tf.int32)
        magnitude = tf.random.uniform([batch], self.config.min_strength, self.config.max_strength)
        has = tf.gather(tf.gather(labels, self.columns, axis=1), chosen, axis=1, batch_dims=1) > 0
        toward = tf.where(has, -1.0, 1.0)
        anyway = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0)
        sign = tf.where(tf.random.uniform([batch]) < self.config.toward_label, toward, anyway)
        strength = sign * magnitude
        return chosen, strength, tf.one_hot(chosen, k) * strength[:, None]

    def _jitter(self, faces: tf.Tensor) -> tf.Tensor:
        """Faces [B, H, W, 3] (0-255) each mirrored at random, all shifted by one random offset, with noise."""
        if self.config.guide_jitter == 0:
            return faces
        mirrored = tf.random.uniform([tf.shape(faces)[0], 1, 1, 1]) < 0.5
        faces = tf.where(mirrored, tf.reverse(faces, axis=[2]), faces)
        shift = tf.random.uniform([2], -JITTER_SHIFT, JITTER_SHIFT + 1, dtype=tf.int32)
        faces = tf.roll(faces, shift, axis=[1, 2])
        noise = tf.random.normal(tf.shape(faces), stddev=self.config.guide_jitter)
        return tf.clip_by_value(faces + noise, 0.0, 255.0)

    def _follow_goal(self, chosen: tf.Tensor, strength: tf.Tensor, moved: tf.Tensor) -> tf.Tensor:
        """Update each attribute's running success (edits of at least goal_strength the guide judges done) and move
        its target multiplier up while it is short of the goal, down while above; returns this batch's success."""
        clear = tf.cast(tf.abs(strength) >= self.config.goal_strength, tf.float32)
        done = tf.cast(moved > 0, tf.float32) * clear
        edited = tf.one_hot(chosen, len(self.config.attributes)) * clear[:, None]  # [B, K]
        counts, hits = tf.reduce_sum(edited, axis=0), tf.reduce_sum(edited * done[:, None], axis=0)
        seen = tf.cast(counts > 0, tf.float32)
        rates = hits / tf.maximum(counts, 1.0)
        self.success.assign_add(SUCCESS_SMOOTHING * seen * (rates - self.success))
        change = tf.exp(self.config.multiplier_rate * (self.config.success_goal - self.success))
        self.multipliers.assign(tf.clip_by_value(self.multipliers * change, *MULTIPLIER_RANGE))
        return tf.reduce_sum(done) / tf.maximum(tf.reduce_sum(clear), 1.0)

    def _keep(self, chosen: tf.Tensor, logits0: tf.Tensor, logits1: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """How far the other attributes' verdicts moved (Bernoulli KL; for edits of `verdict_keep`, how far each
        guide logit came closer to the other verdict than `keep_margin` or than it was), weighted by how independent
        each is of the edited one, as reported and as trained: each face's times its edited attribute's keep
        weight."""
        p0 = tf.sigmoid(logits0)
        kl = p0 * (tf.math.log_sigmoid(logits0) - tf.math.log_sigmoid(logits1)) + (1 - p0) * (
            tf.math.log_sigmoid(-logits0) - tf.math.log_sigmoid(-logits1)
        )
        crossing = tf.nn.relu(tf.minimum(self.config.keep_margin, tf.abs(logits0)) - tf.sign(logits0) * logits1)
        terms = tf.where(tf.gather(self.verdict_kept, chosen)[:, None], crossing, kl)
        weights = tf.gather(self.kept, chosen)
        moved = tf.reduce_sum(weights * terms, axis=1) / tf.reduce_sum(weights, axis=1)  # [B]
        return tf.reduce_mean(moved), tf.reduce_mean(tf.gather(self.keep_loss_weights, chosen) * moved)

    def _guides(self, faces: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The guides' mean logits [B, A] on faces (0-255), and the first guide's features (the person's)."""
        logits, first = [], None
        for features_of, kernel, bias in self.guides:
            features = features_of(faces, training=False)
            first = features if first is None else first
            logits.append(tf.matmul(features, kernel) + bias)
        return tf.add_n(logits) / len(logits), first

    def _perceptual(self, faces0: tf.Tensor, faces1: tf.Tensor) -> tf.Tensor:
        """The mean perceptual distance (`perceptual_distance`) between faces (0-255) in the guide's first ReLU
        layers."""
        return tf.reduce_mean(
            perceptual_distance(self.looks(faces0, training=False), self.looks(faces1, training=False))
        )

    def _redness(self, chosen: tf.Tensor, faces0: tf.Tensor, faces1: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """How much redder the edited faces' reddest patch got than the unedited ones (`red_patch`), beyond
        `redness_margin` (every classifier here, the judges too, reads a red nose as male), as reported and as
        trained: each face's times its edited attribute's redness weight."""
        redder = tf.nn.relu(red_patch(faces0, faces1) - self.config.redness_margin)
        return tf.reduce_mean(redder), tf.reduce_mean(tf.gather(self.redness_weights, chosen) * redder)

    def train_step(self, batch: tuple[tf.Tensor, ...]) -> dict[str, tf.Tensor]:
        z, labels, logits0, features0, faces0 = batch
        chosen, strength, matrix = self._strengths(labels)
        with tf.GradientTape() as tape:
            edited = self.editor([z, matrix], training=True)
            faces1 = self.decoder(edited) * 255.0
            logits1, features1 = self._guides(self._jitter(faces1))
            column = tf.gather(self.columns, chosen)
            shown = logits1
            if self.target_masks is not None:
                masks = tf.gather(self.target_masks, chosen)
                shown, _ = self._guides(self._jitter(faces1 * (1.0 - masks) + tf.cast(faces0, tf.float32) * masks))
            moved = tf.gather(shown, column, axis=1, batch_dims=1) * tf.sign(strength)
            wanted = tf.abs(strength) * self.config.target_logit
            short = tf.nn.softplus(wanted - moved)
            target = tf.reduce_mean(short)
            keep, weighted_keep = self._keep(chosen, logits0, logits1)
            identity = tf.reduce_mean(tf.square(features1 - features0)) / (tf.reduce_mean(tf.square(features0)) + 1e-6)
            perceptual = self._perceptual(tf.cast(faces0, tf.float32), faces1)
            straight = tf.math.l2_normalize(tf.matmul(matrix, self.moves), axis=1)
            turn = tf.reduce_mean(1.0 - tf.reduce_sum(straight * tf.math.l2_normalize(edited - z, axis=1), axis=1))
            rarer = self._mahalanobis(edited) - self._mahalanobis(z)
            density = tf.reduce_mean(tf.nn.relu(rarer)) / z.shape[1]
            redness, weighted_redness = self._redness(chosen, faces0, faces1)
            loss = (
                tf.reduce_mean(tf.gather(self.multipliers, chosen) * short)
                + weighted_keep
                + self.config.identity_weight * identity
                + self.config.perceptual_weight * perceptual
                + self.config.turn_weight * turn
                + self.config.density_weight * density
                + weighted_redness
            )
        variables = self.editor.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        reached = tf.reduce_mean(tf.cast(moved >= wanted, tf.float32))
        clear = self._follow_goal(chosen, strength, moved)
        values = {
            "loss": loss,
            "target": target,
            "keep": keep,
            "identity": identity,
            "perceptual": perceptual,
            "turn": turn,
            "density": density,
            "redness": redness,
        }
        for name, value in {**values, "reached": reached, "clear": clear}.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def guide_classifier(
    folder: Path, training: TrainConfig, data: PreparedData, seed: int, epochs: int
) -> AttributeClassifier:
    """A classifier edits are trained against (or, with the held-out seed, calibrated with): loaded from `folder`,
    or trained there first for `epochs` on the bundle's own framing and training split (blur- and noise-augmented
    like the judge, from `seed`)."""
    if (folder / "classifier.json").is_file():
        classifier = AttributeClassifier.load(folder)
        if (classifier.config.seed, classifier.config.epochs) != (seed, epochs):
            raise ValueError(
                f"{folder} holds the classifier of seed {classifier.config.seed} trained for "
                f"{classifier.config.epochs} epochs, not seed {seed} for {epochs}"
            )
        return classifier
    settings = ClassifierConfig.framing_like(training, training.max_images, epochs=epochs, seed=seed)
    log.info("training the edits' classifier of seed %d (%d epochs) into %s", settings.seed, settings.epochs, folder)
    return fit_classifier(settings, data, folder)


def seed_folder(guide_dir: Path, seed: int) -> Path:
    """Where the classifier of `seed` lives beside the first guide's folder: `<guide_dir>-s<seed>`."""
    return guide_dir.with_name(f"{guide_dir.name}-s{seed}")


def guide_folders(guide_dir: Path, seeds: Sequence[int]) -> list[Path]:
    """Where each guide lives: the first in `guide_dir`, each other beside it (`seed_folder`, the rule the held-out
    classifier's default folder follows too)."""
    return [guide_dir] + [seed_folder(guide_dir, seed) for seed in seeds[1:]]


def last_layer(guide: AttributeClassifier) -> tuple[np.ndarray, np.ndarray]:
    """The guide's attribute layer as (kernel [F, A], bias [A]): logits = features @ kernel + bias."""
    kernel, bias = guide.model.get_layer("attributes").get_weights()
    return kernel, bias


def check_same_attributes(classifiers: Sequence[AttributeClassifier]) -> None:
    """Classifiers whose outputs are averaged must read the same attributes in the same columns."""
    if any(other.attributes != classifiers[0].attributes for other in classifiers):
        raise ValueError("the classifiers read different attributes: their outputs cannot be averaged")


def guide_logits(guides: Sequence[AttributeClassifier], faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 faces -> the guides' mean logits [N, A], as the trainer computes them, and the first guide's features."""
    logits, first = [], None
    for guide in guides:
        _, features = guide.predict(faces)
        first = features if first is None else first
        kernel, bias = last_layer(guide)
        logits.append(features @ kernel + bias)
    return np.mean(logits, axis=0), first


def where_it_occurs(
    train_labels: np.ndarray, labels: np.ndarray, attribute_names: list[str], name: str, min_examples: int
) -> np.ndarray:
    """[N] bool over the faces of `labels`: of a sex in which at least `min_examples` training faces
    (`train_labels`) have `name`; every face for the sex label itself. No classifier learnt from CelebA can see a
    moustache on a woman (none of its training women has one): it calls one only once the face turns male, so an
    edit is calibrated, and its success read, where the attribute occurs."""
    occurs = np.ones(len(labels), bool)
    if STRATUM not in attribute_names or name == STRATUM:
        return occurs
    has = train_labels[:, attribute_names.index(name)] > 0
    sex_in_training = train_labels[:, attribute_names.index(STRATUM)] > 0
    sex = labels[:, attribute_names.index(STRATUM)] > 0
    for in_training, here in ((sex_in_training, sex), (~sex_in_training, ~sex)):
        if np.count_nonzero(has & in_training) < min_examples:
            occurs &= ~here
    return occurs


def calibration_rows(labels: np.ndarray, attribute_names: list[str], name: str, config: EditConfig) -> np.ndarray:
    """Training faces a +2 edit of `name` is calibrated on: labelled without it, where it occurs (`where_it_occurs`):
    calibrated on women too, the moustache would be lengthened until the face changes sex, not until it shows."""
    lacks = labels[:, attribute_names.index(name)] < 0
    occurs = where_it_occurs(labels, labels, attribute_names, name, config.calibration_min_examples)
    return np.flatnonzero(lacks & occurs)[: config.calibration_faces]


def calibrate_lengths(
    editor: keras.Model,
    codes: np.ndarray,
    labels: np.ndarray,
    attribute_names: list[str],
    decode: Callable[[np.ndarray], np.ndarray],
    held_out: Sequence[AttributeClassifier],
    config: EditConfig,
) -> tuple[np.ndarray, dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per edited attribute, the first of `config.length_scales` at which classifiers the editor was not trained
    against (a verdict where their mean probability reaches 0.5) see the attribute on `clear_goal` of the
    +`goal_strength` edits of its `calibration_rows` and, with `side_goal` set, change no more of their unrelated
    verdicts than a random move as long, times `side_goal` (`held_out_side_ratio`); where no clear length does, the
    clear one with the fewest (a longer edit often changes fewer of them than a random move as long, and shows
    better). Where none is clear but the best reaches `shown_goal`, the shortest within one binomial standard error
    of the best (a longer move that the held-out classifiers cannot tell apart buys only side effects); where not even
    that, 1 (the edit does not show, and lengthening it would not make it). Lengthening a one-attribute edit keeps its
    direction, so each scale is the editor's move times the scale. Returns the scales [K] and, per attribute, the
    held-out success at each scale tried and the side-effect ratio at each clear one."""
    check_same_attributes(held_out)
    reader = held_out[0]
    scales, seen, sides = np.ones(len(config.attributes), np.float32), {}, {}
    unrelated = keep_weights(labels) >= 1.0  # |phi| <= 0.2: what the judge counts as a side effect
    rng = np.random.default_rng(config.seed)

    def verdicts(z: np.ndarray) -> np.ndarray:
        faces = np.concatenate([decode(z[i : i + BATCH]) for i in range(0, len(z), BATCH)])
        return np.mean([classifier.predict(faces)[0] for classifier in held_out], axis=0) >= 0.5

    for k, name in enumerate(config.attributes):
        z = codes[calibration_rows(labels, attribute_names, name, config)]
        seen[name], sides[name] = {}, {}
        if len(z) == 0:
            log.warning("%s: no training face to calibrate its length on; it stays 1", name)
            continue
        strengths = np.zeros((len(z), len(config.attributes)), np.float32)
        strengths[:, k] = config.goal_strength
        move = editor.predict([z, strengths], batch_size=BATCH, verbose=0) - z
        row = attribute_names.index(name)
        others = [
            reader.column(other)
            for other in reader.attributes
            if other != name and other in attribute_names and unrelated[row, attribute_names.index(other)]
        ]
        unedited = verdicts(z)[:, others] if config.side_goal is not None and others else None
        heading = rng.normal(size=move.shape)
        heading /= np.linalg.norm(heading, axis=1, keepdims=True)
        clear: list[float] = []
        chosen = None
        for scale in config.length_scales:
            edited = verdicts(z + np.float32(scale) * move)
            success = float(np.mean(edited[:, reader.column(name)]))
            seen[name][str(scale)] = round(success, 3)
            if success < config.clear_goal:
                continue
            clear.append(scale)
            if unedited is None:  # success alone (no side_goal, or nothing unrelated to read)
                chosen = scale
                break
            length = np.linalg.norm(scale * move, axis=1, keepdims=True)
            random = verdicts((z + heading * length).astype(np.float32))[:, others]
            ratio = float(np.mean(edited[:, others] != unedited) / max(float(np.mean(random != unedited)), 1e-9))
            sides[name][str(scale)] = round(ratio, 3)
            if ratio <= config.side_goal:  # set: `unedited` is read only with a side_goal
                chosen = scale
                break
        if chosen is None and clear:  # no clear length as clean as a random move: the cleanest of them
            chosen = min(clear, key=lambda scale: (sides[name].get(str(scale), 0.0), scale))
        if chosen is None:
            chosen = shortest_near_best(seen[name], len(z), config.shown_goal)
        scales[k] = chosen
        message = "%s: held-out success at +%g per length %s, side effects / random move %s: %g"
        log.info(message, name, config.goal_strength, seen[name], sides[name], scales[k])
    return scales, seen, sides


def shortest_near_best(success_by_scale: dict[str, float], faces: int, shown_goal: float) -> float:
    """The shortest scale whose success is within one binomial standard error (over `faces`) of the best, if the
    best reaches `shown_goal`; else 1."""
    best = max(success_by_scale.values())
    if best < shown_goal:
        return 1.0
    error = np.sqrt(best * (1.0 - best) / faces)
    return min(float(scale) for scale, success in success_by_scale.items() if success >= best - error)


def train_editor(
    bundle: ModelBundle,
    codes: np.ndarray,
    decoded: np.ndarray,
    labels: np.ndarray,
    attribute_names: list[str],
    guides: Sequence[AttributeClassifier],
    config: EditConfig,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train the editor on training-split `codes` [N, z_dim] (what /encode gives), their decoded faces uint8
    [N, size, size, 3] and labels [N, A] (+-1, columns `attribute_names`). Returns the editor and a report."""
    guide = guides[0]
    check_same_attributes(guides)
    keras.utils.set_random_seed(config.seed)
    moves = straight_moves([bundle.attributes[name] for name in config.attributes])
    logits0, features = guide_logits(guides, decoded)
    guide_columns = np.array([guide.column(name) for name in config.attributes])
    label_columns = [attribute_names.index(name) for name in guide.attributes]
    guide_labels = labels[:, label_columns]  # labels in the guide's column order
    kept = keep_matrix(guide_labels, guide.attributes, config)
    editor = build_editor(moves, build_correction(bundle.z_dim, len(moves), config.hidden))
    trainer = EditTrainer(
        editor,
        moves,
        bundle.latent_stats,
        OnnxFunction(bundle.decoder_path),
        guides,
        guide_columns,
        kept,
        config,
    )
    trainer.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            (codes.astype(np.float32), guide_labels.astype(np.float32), logits0.astype(np.float32), features, decoded)
        )
        .shuffle(len(codes), seed=config.seed)
        .repeat()
        .batch(config.batch_size, drop_remainder=True)
    )
    started = time.perf_counter()
    epochs = 10
    history = trainer.fit(dataset, epochs=epochs, steps_per_epoch=max(config.steps // epochs, 1), verbose=2)
    report = {
        "config": config.model_dump(),
        "seconds": round(time.perf_counter() - started, 1),
        "target_multipliers": dict(
            zip(config.attributes, np.round(trainer.multipliers.numpy(), 3).tolist(), strict=True)
        ),
        "guide_success": dict(zip(config.attributes, np.round(trainer.success.numpy(), 3).tolist(), strict=True)),
        "history": {key: [round(float(v), 5) for v in values] for key, values in history.history.items()},
    }
    return editor, report


def add_editor(
    bundle_dir: Path,
    editor: keras.Model,
    attributes: Sequence[str],
    length_scales: Sequence[float],
    report: dict[str, Any],
) -> None:
    """Export `editor` into the bundle as `editor.onnx`, check onnxruntime against Keras, and record it in the
    manifest (its attributes, their length scales, its training report and its sha256); the bundle is verified
    afterwards."""
    path = bundle_dir / EDITOR_FILE
    staging = path.with_name(path.name + ".partial")
    keras_to_onnx(editor, EDITOR_INPUTS, (EDITOR_OUTPUT,), staging)
    session = open_session(staging)
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch in PARITY_BATCHES:
        z = rng.standard_normal((batch, editor.inputs[0].shape[1])).astype(np.float32)
        strengths = rng.uniform(-3, 3, (batch, len(attributes))).astype(np.float32)
        (exported,) = session.run([EDITOR_OUTPUT], dict(zip(EDITOR_INPUTS, (z, strengths), strict=True)))
        worst = max(worst, float(np.abs(exported - editor.predict([z, strengths], verbose=0)).max()))
    if not worst <= PARITY_TOLERANCE:
        staging.unlink()
        raise ParityError(f"{path.name}: onnxruntime differs from Keras by {worst:.3g}")
    staging.replace(path)
    manifest_path = bundle_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["format_version"] = FORMAT_VERSION
    manifest["editor"] = {
        "attributes": list(attributes),
        "length_scales": [float(scale) for scale in length_scales],
        "parity_max_abs_diff": worst,
        "training": report,
    }
    manifest["files"][EDITOR_FILE] = sha256_file(path)
    write_json(manifest_path, manifest)
    ModelBundle.load(bundle_dir)
    log.info("%s: %d attributes, parity %.1e, written to %s", EDITOR_FILE, len(attributes), worst, bundle_dir)


def fit_edits(
    bundle_dir: Path,
    training: TrainConfig,
    data: PreparedData,
    config: EditConfig,
    guide_dir: Path,
    held_out_dirs: Sequence[Path],
) -> dict[str, Any]:
    """The whole job on a finished bundle (trained with `training`, whose faces `data` are): encode the training
    split as /encode does (refined codes), decode them, load or train the guides, train the editor, calibrate its
    lengths with the held-out classifiers (loaded or trained too) and add it to the bundle. Returns the report."""
    if data.labels is None:
        raise ValueError(f"{data.dataset.root} has no attribute labels; learned edits need them")
    model = FaceModel.load(bundle_dir, threads=0)
    missing = [name for name in config.attributes if name not in model.bundle.attributes]
    if missing:
        raise ValueError(f"the bundle has no vector for {missing}: learned edits start from the attribute vectors")
    log.info("encoding %d training faces as /encode does", len(data.train))
    faces = data.images[data.train]
    codes = np.concatenate([model.encode_pixels(faces[i : i + BATCH]).code for i in range(0, len(faces), BATCH)])
    decoded = np.concatenate([model.decode(codes[i : i + BATCH]) for i in range(0, len(codes), BATCH)])
    guides = [
        guide_classifier(folder, training, data, seed, config.guide_epochs)
        for folder, seed in zip(guide_folders(guide_dir, config.guide_seeds), config.guide_seeds, strict=True)
    ]
    labels, names = data.labels[data.train], data.dataset.attribute_names
    editor, report = train_editor(model.bundle, codes, decoded, labels, names, guides, config)
    held_out = [
        guide_classifier(folder, training, data, seed, config.held_out_epochs)
        for folder, seed in zip(held_out_dirs, config.held_out_seeds, strict=True)
    ]
    calibration = calibrate_lengths(editor, codes, labels, names, model.decode, held_out, config)
    scales, report["held_out_success"], report["held_out_side_ratio"] = calibration
    moves = straight_moves([model.bundle.attributes[name] for name in config.attributes])
    lengthened = build_editor(moves, editor.get_layer("correction"), scales)
    add_editor(bundle_dir, lengthened, config.attributes, scales, report)
    return report
