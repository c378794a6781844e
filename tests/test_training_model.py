"""The VAE's loss parts on tiny networks: what each one measures, and that the discriminator judges patches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from training.model import VAE, build_decoder, build_discriminator, build_encoder, feature_extractor

SIZE, Z = 16, 4


def _network() -> keras.Model:
    pixels = keras.Input((SIZE, SIZE, 3))
    x = layers.Rescaling(1 / 255)(pixels)
    for width in (4, 8, 8):
        x = layers.ReLU()(layers.Conv2D(width, 3, strides=2, padding="same")(x))
    return keras.Model(pixels, layers.Dense(2)(layers.Flatten()(x)))


def _vae(features: keras.Model | None) -> VAE:
    keras.utils.set_random_seed(0)
    return VAE(
        build_encoder(SIZE, Z, (4, 8)),
        build_decoder(SIZE, Z, (4, 8)),
        kl_weight=1e-3,
        feature_network=features,
        perceptual_weight=0.5,
    )


def test_perceptual_loss_is_zero_for_the_photo_itself_and_grows_with_blur() -> None:
    vae = _vae(feature_extractor(_network()))
    images = np.random.default_rng(0).random((4, SIZE, SIZE, 3)).astype(np.float32)
    blurred = (images + np.roll(images, 1, axis=1) + np.roll(images, 1, axis=2)) / 3
    assert float(vae.perceptual(images, images)) == pytest.approx(0.0, abs=1e-6)
    slightly = float(vae.perceptual(images, 0.8 * images + 0.2 * blurred))
    assert 0 < slightly < float(vae.perceptual(images, blurred))


def test_named_losses_add_up_to_the_total() -> None:
    vae = _vae(feature_extractor(_network()))
    images = np.random.default_rng(1).random((4, SIZE, SIZE, 3)).astype(np.float32)
    losses = {name: float(value) for name, value in vae.vae_losses(images, training=False).items()}
    assert losses["fit"] == pytest.approx(losses["reconstruction"] + 0.5 * losses["perceptual"], rel=1e-5)
    assert losses["total"] == pytest.approx(losses["fit"] + 1e-3 * losses["kl"], rel=1e-5)
    assert losses["perceptual"] > 0


def test_without_a_feature_network_there_is_no_perceptual_loss() -> None:
    vae = _vae(None)
    images = np.random.default_rng(2).random((2, SIZE, SIZE, 3)).astype(np.float32)
    assert float(vae.vae_losses(images, training=False)["perceptual"]) == 0.0
    assert "perceptual_loss" not in [metric.name for metric in vae.metrics]


def test_feature_extractor_needs_enough_layers_and_is_frozen() -> None:
    extractor = feature_extractor(_network())
    assert not extractor.trainable
    assert [tuple(o.shape[1:]) for o in extractor.outputs] == [(8, 8, 4), (4, 4, 8), (2, 2, 8)]
    with pytest.raises(ValueError, match="has 3 ReLU layers, the perceptual loss needs 4"):
        feature_extractor(_network(), count=4)


def test_discriminator_gives_one_logit_per_patch() -> None:
    discriminator = build_discriminator(64, (8, 16, 32))
    logits = discriminator(np.zeros((2, 64, 64, 3), dtype=np.float32))
    assert tuple(logits.shape) == (2, 8, 8, 1)
