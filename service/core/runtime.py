"""The model at run time: onnxruntime sessions for the bundle's encoder and decoder, and the latent-space math.

No HTTP here, so the benchmark and tests can time and check the same work the endpoints do.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.core.bundle import (
    DECODER_INPUT,
    DECODER_OUTPUT,
    EDITOR_FILE,
    EDITOR_INPUTS,
    EDITOR_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    AttributeVector,
    BundleError,
    ModelBundle,
    SamplingMode,
)
from service.core.defaults import MAX_BATCH, MAX_STRENGTH, REFINE_STEPS
from service.core.sessions import CPU, CUDA, open_session, select_providers

if TYPE_CHECKING:
    import onnxruntime as ort


logger = logging.getLogger(__name__)
#: Largest latent value a client may send: codes lie within a few units of 0 (and stay finite through the decoder up
#: to 1e6), while float32's 3e38 overflowed inside it and came back as a black face with 200.
MAX_LATENT = 1000.0


class Interpolation(StrEnum):
    SLERP = "slerp"
    LERP = "lerp"


class InputError(ValueError):
    """A request the model cannot honour; `field` names the offending input as the API calls it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Encoding:
    """The encoder's posterior for a batch of faces, and the codes the service decodes and edits, each [N, z_dim]."""

    z_mean: np.ndarray
    z_log_var: np.ndarray
    #: z_mean refined so the face decoded from it encodes back to z_mean (`FaceModel.refine`); z_mean itself when
    #: the model refines nothing.
    code: np.ndarray

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One reparameterised draw z = mean + exp(log_var / 2) * eps."""
        eps = rng.standard_normal(self.z_mean.shape, dtype=np.float32)
        return self.z_mean + np.exp(0.5 * self.z_log_var) * eps


def refined_codes(
    z_mean: np.ndarray,
    steps: int,
    encode: Callable[[np.ndarray], np.ndarray],
    decode: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Codes [N, z_dim] whose decoded faces encode back to `z_mean`: `steps` fixed-point steps
    code <- code + (z_mean - encode(decode(code))), from code = z_mean (`encode`: float images in [0, 1] to z_mean,
    `decode`: latents to float images).

    Why: the encoder is amortised (one network for every face), so decode(z_mean) misses part of what it saw:
    details, and for some men the Male look. What the encoder reads in the reconstruction but not in the photo is
    that gap in its own terms; each step moves the code by it. Nothing here knows the judge or any label.
    """
    code = z_mean
    for _ in range(steps):
        code = code + (z_mean - encode(decode(code)))
    return code


def draw_seed() -> int:
    """A fresh seed for requests that give none, so the response can still tell how to reproduce it."""
    return secrets.randbelow(2**32)


class FaceModel:
    """Encoder and decoder sessions plus the bundle's latent statistics and attribute vectors.

    `max_batch` and `max_strength` bound what one call may ask for, so a request cannot exhaust memory
    or push a face far outside the range the attribute vectors were measured on.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        *,
        max_batch: int,
        max_strength: float,
        refine_steps: int = REFINE_STEPS,
        editor: ort.InferenceSession | None = None,
    ) -> None:
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be at least 0, got {refine_steps}")
        self.bundle = bundle
        self.encoder = encoder
        self.decoder = decoder
        #: The bundle's learned editor (`editor.onnx`), or None: then every attribute moves along its vector alone.
        self.editor = editor
        self.max_batch = max_batch
        self.max_strength = max_strength
        self.refine_steps = refine_steps
        #: Called after every session.run with (network, batch size, seconds): the service's metrics.
        self.run_observer: Callable[[str, int, float], None] | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        providers: Sequence[str] = (),
        threads: int,
        max_batch: int = MAX_BATCH,
        max_strength: float = MAX_STRENGTH,
        refine_steps: int = REFINE_STEPS,
        warm_up: bool = False,
    ) -> FaceModel:
        """Verify the bundle, open both sessions and log the providers they actually use; with `warm_up`, run both
        networks once (`FaceModel.warm_up`), as the service does before it reports ready."""
        bundle = ModelBundle.load(path)
        chosen = select_providers(providers)
        model = cls(
            bundle,
            open_session(bundle.encoder_path, chosen, threads, spin=False),
            open_session(bundle.decoder_path, chosen, threads, spin=False),
            max_batch=max_batch,
            max_strength=max_strength,
            refine_steps=refine_steps,
            # A two-layer MLP: a GPU launch would cost more than it computes, so it runs on one CPU thread.
            editor=None if bundle.editor_path is None else open_session(bundle.editor_path, [CPU], 1, spin=False),
        )
        model.check_editor_lengths()
        logger.info(
            "loaded bundle %r (%s) from %s: encoder on %s, decoder on %s (%d threads each)",
            bundle.name,
            bundle.precision,
            bundle.path,
            model.encoder.get_providers(),
            model.decoder.get_providers(),
            threads,
        )
        if warm_up:
            model.warm_up()
        return model

    @property
    def learned_attributes(self) -> list[str]:
        """The attributes this model's editor moves, in its strength columns' order (none without one)."""
        return self.bundle.edited_by_editor if self.editor is not None else []

    def length_scale(self, name: str) -> float:
        """How many times the class-mean move of the same strength an edit of `name` moves: the editor's calibrated
        lengthening for its attributes (bundle-format.md), 1 for the vectors."""
        learned = self.learned_attributes
        if name not in learned:
            return 1.0
        assert self.bundle.manifest.editor is not None
        return self.bundle.manifest.editor.length_scales[learned.index(name)]

    def check_editor_lengths(self) -> None:
        """Raise BundleError unless the editor moves a code as far per unit of strength as the manifest says
        (`step` times `length_scale`, bundle-format.md): the scale /attributes reports is the one it applies."""
        learned = self.learned_attributes
        z = self.bundle.latent_stats.mean_array[np.newaxis]
        for k, name in enumerate(learned):
            strengths = np.zeros((1, len(learned)), np.float32)
            strengths[0, k] = 1.0
            feed = dict(zip(EDITOR_INPUTS, (z, strengths), strict=True))
            (edited,) = self._run("editor", self.editor, [EDITOR_OUTPUT], feed)
            moved = float(np.linalg.norm(edited - z))
            expected = self.bundle.attributes[name].step * self.length_scale(name)
            if not np.isclose(moved, expected, rtol=1e-3):
                raise BundleError(
                    EDITOR_FILE,
                    f"moves {name} {moved:.4g} per unit of strength; its step and length_scale say {expected:.4g}",
                )

    def without_editor(self) -> FaceModel:
        """The same networks and limits with every attribute moved along its vector alone, as /edit worked before
        learned edits: what the card and the benchmarks compare the editor with."""
        return FaceModel(
            self.bundle,
            self.encoder,
            self.decoder,
            max_batch=self.max_batch,
            max_strength=self.max_strength,
            refine_steps=self.refine_steps,
        )

    @property
    def z_dim(self) -> int:
        return self.bundle.z_dim

    @property
    def image_size(self) -> int:
        return self.bundle.image_size

    @property
    def providers(self) -> dict[str, list[str]]:
        """What each session really runs on; onnxruntime drops unusable providers without raising."""
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    @property
    def uses_gpu(self) -> bool:
        return all(CUDA in names for names in self.providers.values())

    def warm_up(self) -> None:
        """Run every graph once so the first request does not pay for lazy allocation and kernel selection."""
        size = self.image_size
        self.encode_pixels(np.zeros((1, size, size, 3), dtype=np.uint8))
        z = np.zeros((1, self.z_dim), dtype=np.float32)
        self.decode(z)
        if self.learned_attributes:
            self.edit_codes(z, {self.learned_attributes[0]: 1.0})

    def check_batch(self, field: str, count: int) -> None:
        if count > self.max_batch:
            raise InputError(field, f"{field}: {count} images requested, the maximum per request is {self.max_batch}")

    def latents(self, rows: Sequence[Sequence[float]], field: str = "z") -> np.ndarray:
        """Validate client latents (count and length) and stack them as float32 [N, z_dim]; `field` names them in
        errors as the request does."""
        self.check_batch(field, len(rows))
        for index, row in enumerate(rows):
            if len(row) != self.z_dim:
                where = field if len(rows) == 1 else f"{field}[{index}]"
                raise InputError(field, f"{where} has {len(row)} values, expected {self.z_dim}")
        with np.errstate(over="ignore"):  # reported below, as a 422 rather than a warning
            latents = np.asarray(rows, dtype=np.float32).reshape(len(rows), self.z_dim)
        if not np.all(np.isfinite(latents)):
            raise InputError(field, f"{field} has values beyond float32's range (±{np.finfo(np.float32).max:.3g})")
        if np.abs(latents).max(initial=0.0) > MAX_LATENT:  # 3e38 overflows inside the decoder: a black face
            raise InputError(field, f"{field} has values beyond ±{MAX_LATENT:g} (latents lie within a few units of 0)")
        return latents

    def encode_pixels(self, pixels: np.ndarray) -> Encoding:
        """Encode uint8 [N, size, size, 3] faces that are already framed, and refine their codes."""
        z_mean, z_log_var = self._encode(pixels.astype(np.float32) / np.float32(255.0))
        return Encoding(z_mean=z_mean, z_log_var=z_log_var, code=self.refine(z_mean))

    def refine(self, z_mean: np.ndarray) -> np.ndarray:
        """`refined_codes` of `z_mean` with this model's networks and `refine_steps`."""
        return refined_codes(z_mean, self.refine_steps, lambda images: self._encode(images)[0], self._decode)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Decode float32 [N, z_dim] latents to uint8 [N, size, size, 3] faces in one batch."""
        return np.clip(np.rint(self._decode(z) * 255.0), 0, 255).astype(np.uint8)

    def encoder_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The encoder network as it is (z_mean, z_log_var of float32 images in [0, 1]), for the Open Inference
        Protocol's `encoder` model."""
        return self._encode(images)

    def decoder_output(self, z: np.ndarray) -> np.ndarray:
        """The decoder network as it is (float32 images, unclipped), for the protocol's `decoder` model."""
        return self._decode(z)

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z_mean and z_log_var of float32 [N, size, size, 3] images in [0, 1]."""
        z_mean, z_log_var = self._run("encoder", self.encoder, list(ENCODER_OUTPUTS), {ENCODER_INPUT: images})
        return z_mean, z_log_var

    def _decode(self, z: np.ndarray) -> np.ndarray:
        """The decoder's float32 [N, size, size, 3] images in [0, 1]."""
        (images,) = self._run(
            "decoder", self.decoder, [DECODER_OUTPUT], {DECODER_INPUT: z.astype(np.float32, copy=False)}
        )
        return images

    def _run(
        self, network: str, session: ort.InferenceSession, outputs: list[str], feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        """session.run, timed for `run_observer` (network, batch size, seconds) when one is set."""
        started = time.perf_counter()
        results = session.run(outputs, feed)
        if self.run_observer is not None:
            self.run_observer(network, len(next(iter(feed.values()))), time.perf_counter() - started)
        return results

    @property
    def default_sampling(self) -> SamplingMode:
        """The bundle's best-measured sampling mode, used when a request names none."""
        return self.bundle.latent_stats.default_mode

    def sample_latents(
        self, n: int, rng: np.random.Generator, mode: SamplingMode | None = None, temperature: float = 1.0
    ) -> np.ndarray:
        """Draw n latents [n, z_dim]; a seeded `rng` makes the draw, and so the faces, reproducible.

        Every mode scales the same eps ~ N(0, I), so one seed compares the modes face for face.
        """
        self.check_batch("n", n)
        eps = rng.standard_normal((n, self.z_dim), dtype=np.float32)
        return self.bundle.latent_stats.draw(eps, mode or self.default_sampling, temperature)

    def attribute(self, name: str, field: str = "attributes") -> AttributeVector:
        """Look an attribute up ignoring case, or raise `InputError` listing the valid names."""
        if name not in self.bundle.attributes:
            valid = ", ".join(self.bundle.attributes.names)
            raise InputError(field, f"unknown attribute {name!r}; valid names: {valid}")
        return self.bundle.attributes[name]

    def _strengths(self, strengths: Mapping[str, float]) -> list[tuple[AttributeVector, float]]:
        """The requested edits as (vector, strength), each name known, given once and within `max_strength`."""
        named: dict[str, tuple[AttributeVector, float]] = {}
        for name, strength in strengths.items():
            vector = self.attribute(name)
            if vector.name in named:
                raise InputError("attributes", f"{vector.name!r} is given more than once (names ignore case)")
            if abs(strength) > self.max_strength:
                raise InputError(
                    "attributes",
                    f"strength {strength} for {vector.name!r} is outside [-{self.max_strength}, {self.max_strength}]",
                )
            named[vector.name] = (vector, strength)
        return list(named.values())

    def edit_codes(
        self,
        codes: np.ndarray,
        strengths: Mapping[str, float],
        keep: Sequence[str] = (),
        scales: np.ndarray | None = None,
    ) -> np.ndarray:
        """Edited codes [N, z_dim] of `codes` [N, z_dim]; row i is edited at `scales[i]` (default 1) times `strengths`.

        Strength 1 is the average difference between training faces with and without the attribute. Attributes
        the bundle's editor learned (training/edits.py) are moved by it, one after another, `length_scale(name)`
        times as far, in a direction learned through the decoder that keeps the face's other attributes. The
        others move by their vector alone (strength * step * unit). With `keep`, the kept attributes' directions
        are projected out of each row's whole change (InterFaceGAN's conditional manipulation), so "Mustache +2,
        keep Male" leaves the Male projection unchanged.
        """
        named = self._strengths(strengths)
        kept = [self.attribute(name, "keep") for name in keep]
        clash = sorted({vector.name for vector, _ in named} & {v.name for v in kept})
        if clash:
            raise InputError("keep", f"cannot both edit and keep {', '.join(clash)}")
        scales = np.ones(len(codes), np.float32) if scales is None else scales.astype(np.float32)
        learned = self.learned_attributes
        straight = np.zeros(self.z_dim, dtype=np.float32)
        for vector, strength in named:
            if vector.name not in learned:
                straight += np.float32(strength * vector.step) * vector.unit
        edited = (codes + scales[:, np.newaxis] * straight).astype(np.float32)
        for vector, strength in named:
            if vector.name in learned:
                columns = np.zeros((len(codes), len(learned)), dtype=np.float32)
                columns[:, learned.index(vector.name)] = scales * np.float32(strength)
                feed = dict(zip(EDITOR_INPUTS, (edited, columns), strict=True))
                (edited,) = self._run("editor", self.editor, [EDITOR_OUTPUT], feed)
        if kept:
            basis, _ = np.linalg.qr(np.stack([v.unit for v in kept], axis=1))
            change = edited - codes
            edited = codes + (change - (change @ basis) @ basis.T)
        return edited.astype(np.float32)

    def edit(
        self, z: np.ndarray, strengths: Mapping[str, float], steps: int | None = None, keep: Sequence[str] = ()
    ) -> np.ndarray:
        """Edited latents for one z [z_dim] (`edit_codes`): [1, z_dim], or with `steps` a strip [steps, z_dim].

        The strip runs from -strength to +strength; with an odd number of steps its middle is z itself.
        """
        if steps is None:
            return self.edit_codes(z[np.newaxis], strengths, keep)
        self.check_batch("steps", steps)
        scales = np.linspace(-1.0, 1.0, steps, dtype=np.float32)
        return self.edit_codes(np.repeat(z[np.newaxis], steps, axis=0), strengths, keep, scales)

    def interpolate(self, start: np.ndarray, end: np.ndarray, steps: int, method: Interpolation) -> np.ndarray:
        """`steps` latents [steps, z_dim] from `start` to `end`, both included.

        slerp (Tom White, "Sampling Generative Networks") walks the great circle between the two codes' offsets
        from the codes' mean, so every step is as far from the mean as its ends and none is the washed-out average
        face a straight line's midpoint gives; lerp is that straight line. Nearly parallel offsets fall back to it.
        """
        self.check_batch("steps", steps)
        mean = self.bundle.latent_stats.mean_array
        a, b = (start - mean).astype(np.float64), (end - mean).astype(np.float64)
        t = np.linspace(0.0, 1.0, steps)[:, np.newaxis]
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        omega = np.arccos(np.clip(a @ b / norms, -1.0, 1.0)) if norms > 0 else 0.0
        if method is Interpolation.LERP or np.sin(omega) < 1e-6:
            path = (1 - t) * a + t * b
        else:
            path = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
        return (mean + path).astype(np.float32)
