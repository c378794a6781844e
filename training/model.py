"""The convolutional VAE (Hands-On Image Generation with TF 2.0, ch. 2; keras.io VAE example style)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from service.bundle import DECODER_INPUT, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS


def conv_block(x: keras.KerasTensor, width: int, kernel: int, strides: int = 1) -> keras.KerasTensor:
    """Conv2D (no bias: BatchNorm has one) + BatchNorm + LeakyReLU, the unit both halves are built of."""
    x = layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.LeakyReLU(0.2)(x)


def build_encoder(image_size: int, z_dim: int, filters: tuple[int, ...]) -> keras.Model:
    """Stride-2 Conv2D + BatchNorm + LeakyReLU blocks, Flatten, two Dense heads."""
    image = keras.Input(shape=(image_size, image_size, 3), name=ENCODER_INPUT)
    x = image
    for width in filters:
        x = conv_block(x, width, kernel=4, strides=2)
    x = layers.Flatten()(x)
    z_mean = layers.Dense(z_dim, name=ENCODER_OUTPUTS[0])(x)
    z_log_var = layers.Dense(z_dim, name=ENCODER_OUTPUTS[1])(x)
    return keras.Model(image, [z_mean, z_log_var], name="encoder")


def build_decoder(image_size: int, z_dim: int, filters: tuple[int, ...]) -> keras.Model:
    """Dense, Reshape, (Conv2D + BatchNorm + LeakyReLU + UpSampling2D) blocks, a full-resolution Conv2D
    block, then Conv2D(3, sigmoid).

    `filters` is the encoder's list; the decoder walks it backwards so the two mirror each other.
    Convolving before upsampling costs a quarter of the other order (93 vs 31 img/s at 64x64 on
    2 CPU cores), which is what makes training on a CPU practical. Nearest upsampling keeps detail
    (bilinear blurred faces 4x more by a Laplacian measure); the narrow full-resolution block lets
    the decoder smooth away the 2x2 checkerboard that nearest upsampling would otherwise print.
    """
    base = image_size // 2 ** len(filters)
    if base * 2 ** len(filters) != image_size:
        raise ValueError(f"image_size {image_size} is not divisible by 2**{len(filters)} (one per conv block)")
    z = keras.Input(shape=(z_dim,), name=DECODER_INPUT)
    x = layers.Dense(base * base * filters[-1])(z)
    x = layers.Reshape((base, base, filters[-1]))(x)
    for width in reversed(filters):
        x = layers.UpSampling2D(2)(conv_block(x, width, kernel=3))
    x = conv_block(x, max(filters[0] // 2, 8), kernel=3)
    image = layers.Conv2D(3, 3, padding="same", activation="sigmoid", name=DECODER_OUTPUT)(x)
    return keras.Model(z, image, name="decoder")


class VAE(keras.Model):
    """Encoder + reparameterisation + decoder with the loss split into its two named parts.

    loss = reconstruction (MSE per pixel on the [0, 1] scale) + kl_weight * KL (nats per image,
    summed over latent dimensions, averaged over the batch).
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, kl_weight: float, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.kl_weight = kl_weight
        self.noise = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def reparameterize(self, z_mean: tf.Tensor, z_log_var: tf.Tensor) -> tf.Tensor:
        """z = z_mean + exp(0.5 * z_log_var) * eps, eps ~ N(0, I): keeps sampling differentiable."""
        eps = keras.random.normal(ops.shape(z_mean), seed=self.noise)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        z_mean, z_log_var = self.encoder(images, training=training)
        return self.decoder(self.reparameterize(z_mean, z_log_var), training=training)

    def vae_losses(self, images: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(total, reconstruction, kl) for one batch."""
        z_mean, z_log_var = self.encoder(images, training=training)
        reconstruction = self.decoder(self.reparameterize(z_mean, z_log_var), training=training)
        reconstruction_loss = ops.mean(ops.square(images - reconstruction))
        kl = -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)
        kl_loss = ops.mean(kl)
        return reconstruction_loss + self.kl_weight * kl_loss, reconstruction_loss, kl_loss

    def _track(self, total: tf.Tensor, reconstruction: tf.Tensor, kl: tf.Tensor) -> dict[str, tf.Tensor]:
        self.loss_tracker.update_state(total)
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            total, reconstruction, kl = self.vae_losses(images, training=True)
        grads = tape.gradient(total, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        return self._track(total, reconstruction, kl)

    def test_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._track(*self.vae_losses(images, training=False))
