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
    features = layers.Dense(6, activation="relu", name="features")(layers.Flatten()(x))
    return keras.Model(pixels, layers.Dense(2)(features))


def _vae(features: keras.Model | None, semantic_weight: float = 0.25) -> VAE:
    keras.utils.set_random_seed(0)
    return VAE(
        build_encoder(SIZE, Z, (4, 8)),
        build_decoder(SIZE, Z, (4, 8)),
        kl_weight=1e-3,
        feature_network=features,
        perceptual_weight=0.5,
        semantic_weight=semantic_weight,
    )


@pytest.mark.parametrize("loss", ["perceptual", "semantic"])
def test_feature_losses_are_zero_for_the_photo_itself_and_grow_with_blur(loss: str) -> None:
    vae = _vae(feature_extractor(_network(), semantic=True))
    images = np.random.default_rng(0).random((4, SIZE, SIZE, 3)).astype(np.float32)
    blurred = (images + np.roll(images, 1, axis=1) + np.roll(images, 1, axis=2)) / 3
    assert float(vae.feature_losses(images, images)[loss]) == pytest.approx(0.0, abs=1e-6)
    slightly = float(vae.feature_losses(images, 0.8 * images + 0.2 * blurred)[loss])
    assert 0 < slightly < float(vae.feature_losses(images, blurred)[loss])


def test_named_losses_add_up_to_the_total() -> None:
    vae = _vae(feature_extractor(_network(), semantic=True))
    images = np.random.default_rng(1).random((4, SIZE, SIZE, 3)).astype(np.float32)
    losses = {name: float(value) for name, value in vae.vae_losses(images, training=False).items()}
    expected_fit = losses["reconstruction"] + 0.5 * losses["perceptual"] + 0.25 * losses["semantic"]
    assert losses["fit"] == pytest.approx(expected_fit, rel=1e-5)
    assert losses["total"] == pytest.approx(losses["fit"] + 1e-3 * losses["kl"], rel=1e-5)
    assert losses["perceptual"] > 0
    assert losses["semantic"] > 0


def test_without_a_feature_network_there_is_no_perceptual_loss() -> None:
    vae = _vae(None)
    images = np.random.default_rng(2).random((2, SIZE, SIZE, 3)).astype(np.float32)
    losses = vae.vae_losses(images, training=False)
    assert float(losses["perceptual"]) == float(losses["semantic"]) == 0.0
    assert not {"perceptual_loss", "semantic_loss"} & {metric.name for metric in vae.metrics}


def test_feature_extractor_needs_enough_layers_and_is_frozen() -> None:
    extractor = feature_extractor(_network())
    assert not extractor.trainable
    assert [tuple(o.shape[1:]) for o in extractor.outputs] == [(8, 8, 4), (4, 4, 8), (2, 2, 8)]
    with_semantic = feature_extractor(_network(), semantic=True)
    assert [tuple(o.shape[1:]) for o in with_semantic.outputs][-1] == (6,)
    with pytest.raises(ValueError, match="has 3 ReLU layers, 4 were asked for"):
        feature_extractor(_network(), count=4)


def test_discriminator_gives_one_logit_per_patch() -> None:
    discriminator = build_discriminator(64, (8, 16, 32))
    logits = discriminator(np.zeros((2, 64, 64, 3), dtype=np.float32))
    assert tuple(logits.shape) == (2, 8, 8, 1)


@pytest.mark.parametrize(("blocks", "adds"), [(0, 0), (1, 1), (2, 2)])
def test_residual_blocks_sit_at_the_highest_resolutions(blocks: int, adds: int) -> None:
    decoder = build_decoder(SIZE, Z, (4, 8), residual_blocks=blocks)
    sums = [layer for layer in decoder.layers if isinstance(layer, layers.Add)]
    assert len(sums) == adds
    # Full resolution first, then half: the 16x16 block, then the 8x8 one.
    assert [tuple(layer.output.shape[1:3]) for layer in reversed(sums)] == [(16, 16), (8, 8)][:adds]
    assert tuple(decoder(np.zeros((1, Z), dtype=np.float32)).shape) == (1, SIZE, SIZE, 3)


def test_more_residual_blocks_than_resolutions_is_refused() -> None:
    with pytest.raises(ValueError, match="residual_blocks must be 0-3"):
        build_decoder(SIZE, Z, (4, 8), residual_blocks=4)


def test_without_a_semantic_weight_the_network_stops_at_the_perceptual_layers() -> None:
    vae = _vae(feature_extractor(_network()), semantic_weight=0.0)
    images = np.random.default_rng(4).random((2, SIZE, SIZE, 3)).astype(np.float32)
    losses = vae.vae_losses(images * 0.5, training=False)
    assert float(losses["perceptual"]) > 0
    assert float(losses["semantic"]) == 0.0
    assert "semantic_loss" not in {metric.name for metric in vae.metrics}
