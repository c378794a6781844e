"""The convolutional VAE (Hands-On Image Generation with TF 2.0, ch. 2; keras.io VAE example style)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from service.core.bundle import DECODER_INPUT, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS
from training.classifier import FEATURES_LAYER, PERCEPTUAL_LAYERS, relu_outputs


def conv_block(
    x: keras.KerasTensor, width: int, kernel: int, strides: int = 1, synchronized: bool = False
) -> keras.KerasTensor:
    """Conv2D (no bias: BatchNorm has one) + BatchNorm + LeakyReLU, the unit both halves are built of.

    `synchronized` BatchNorm takes its batch statistics over the global batch when training on several replicas
    (tf.distribute), so a step on two devices normalises as the same step on one does."""
    x = layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(synchronized=synchronized)(x)
    return layers.LeakyReLU(0.2)(x)


def residual_block(x: keras.KerasTensor, width: int, synchronized: bool = False) -> keras.KerasTensor:
    """x + (conv block, Conv2D + BatchNorm), then LeakyReLU: more depth at one resolution at no cost in width."""
    y = conv_block(x, width, kernel=3, synchronized=synchronized)
    y = layers.BatchNormalization(synchronized=synchronized)(layers.Conv2D(width, 3, padding="same", use_bias=False)(y))
    return layers.LeakyReLU(0.2)(layers.Add()([x, y]))


def build_encoder(image_size: int, z_dim: int, filters: tuple[int, ...], synchronized: bool = False) -> keras.Model:
    """Stride-2 Conv2D + BatchNorm + LeakyReLU blocks, Flatten, two Dense heads."""
    image = keras.Input(shape=(image_size, image_size, 3), name=ENCODER_INPUT)
    x = image
    for width in filters:
        x = conv_block(x, width, kernel=4, strides=2, synchronized=synchronized)
    x = layers.Flatten()(x)
    z_mean = layers.Dense(z_dim, name=ENCODER_OUTPUTS[0])(x)
    z_log_var = layers.Dense(z_dim, name=ENCODER_OUTPUTS[1])(x)
    return keras.Model(image, [z_mean, z_log_var], name="encoder")


def build_decoder(
    image_size: int, z_dim: int, filters: tuple[int, ...], residual_blocks: int = 0, synchronized: bool = False
) -> keras.Model:
    """Dense, Reshape, (Conv2D + BatchNorm + LeakyReLU + UpSampling2D) blocks, a full-resolution Conv2D
    block, then Conv2D(3, sigmoid); `residual_blocks` residual blocks at the highest resolutions (full first).

    `filters` is the encoder's list; the decoder walks it backwards so the two mirror each other.
    Convolving before upsampling costs a quarter of the other order (93 vs 31 img/s at 64x64 on
    2 CPU cores), which is what makes training on a CPU practical. Nearest upsampling keeps detail
    (bilinear blurred faces 4x more by a Laplacian measure); the narrow full-resolution block lets
    the decoder smooth away the 2x2 checkerboard that nearest upsampling would otherwise print. Residual
    blocks add depth at the highest resolutions, where every pixel is otherwise two 3x3 convolutions away from
    a 32x32 map; measured (model card, ablations), they gave the discriminator room for texture, not detail,
    so the default has none.
    """
    base = image_size // 2 ** len(filters)
    if base * 2 ** len(filters) != image_size:
        raise ValueError(f"image_size {image_size} is not divisible by 2**{len(filters)} (one per conv block)")
    if not 0 <= residual_blocks <= len(filters) + 1:
        raise ValueError(f"residual_blocks must be 0-{len(filters) + 1} (one per resolution), not {residual_blocks}")
    z = keras.Input(shape=(z_dim,), name=DECODER_INPUT)
    x = layers.Dense(base * base * filters[-1])(z)
    x = layers.Reshape((base, base, filters[-1]))(x)
    for below_full, width in zip(range(len(filters), 0, -1), reversed(filters), strict=True):
        x = conv_block(x, width, kernel=3, synchronized=synchronized)
        if below_full < residual_blocks:
            x = residual_block(x, width, synchronized)
        x = layers.UpSampling2D(2)(x)
    full_width = max(filters[0] // 2, 8)
    x = conv_block(x, full_width, kernel=3, synchronized=synchronized)
    if residual_blocks > 0:
        x = residual_block(x, full_width, synchronized)
    image = layers.Conv2D(3, 3, padding="same", activation="sigmoid", name=DECODER_OUTPUT)(x)
    return keras.Model(z, image, name="decoder")


def build_discriminator(image_size: int, filters: tuple[int, ...]) -> keras.Model:
    """A patch discriminator (VAE-GAN, Larsen et al. 2016; PatchGAN): spectral-norm stride-2 convs, one logit per patch.

    Spectral normalisation (Miyato et al. 2018) keeps it 1-Lipschitz so the hinge loss stays stable without a
    gradient penalty; no BatchNorm, which would let it judge a face by its batch. Narrow on purpose: at 64x64
    three blocks see ~46-pixel patches (eyes, mouth, hair edges) for a fifth of the decoder's cost.
    """
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(image)
    for width in filters:
        x = layers.SpectralNormalization(layers.Conv2D(width, 4, strides=2, padding="same"))(x)
        x = layers.LeakyReLU(0.2)(x)
    logits = layers.SpectralNormalization(layers.Conv2D(1, 3, padding="same"))(x)
    return keras.Model(image, logits, name="discriminator")


#: Reported metric -> the named loss it averages.
METRIC_LOSSES = {
    "loss": "total",
    "reconstruction_loss": "reconstruction",
    "kl_loss": "kl",
    "perceptual_loss": "perceptual",
    "semantic_loss": "semantic",
    "generator_loss": "generator",
    "discriminator_loss": "discriminator",
    "adversarial_balance": "balance",
}


def _l2(tensor: tf.Tensor) -> tf.Tensor:
    return ops.sqrt(ops.sum(ops.square(tensor)))


def _replicas() -> tuple[int, int]:
    """(replicas in sync, this replica's index) inside a train step; (1, 0) without tf.distribute."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: not inside a step
        return 1, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def _sum_over_replicas(tensor: tf.Tensor) -> tf.Tensor:
    """The sum of `tensor` over every replica of the step (itself on one device)."""
    if _replicas()[0] == 1:
        return tensor
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tensor)


def _global_energy(activations: tf.Tensor) -> tf.Tensor:
    """Mean square of a layer's activations over the global batch (the perceptual loss's normaliser), no gradient."""
    energy = _sum_over_replicas(ops.sum(ops.square(activations)))
    count = _sum_over_replicas(ops.cast(ops.size(activations), activations.dtype))
    return ops.stop_gradient(energy / count)


def feature_extractor(network: keras.Model, count: int = PERCEPTUAL_LAYERS, semantic: bool = False) -> keras.Model:
    """A trained face network's first `count` ReLU activations (the perceptual loss's feature space), and with
    `semantic` its `features` layer last (the semantic loss's; left out otherwise, so the default does not pay for
    the network's deeper layers), frozen."""
    outputs = relu_outputs(network, count)
    if semantic:
        outputs.append(network.get_layer(FEATURES_LAYER).output)
    extractor = keras.Model(network.input, outputs, name="face_features")
    extractor.trainable = False
    return extractor


class VAE(keras.Model):
    """Encoder + reparameterisation + decoder, optionally with a perceptual loss and a patch discriminator.

    loss = reconstruction (MSE per pixel on the [0, 1] scale) + kl_weight * KL (nats per image, summed over latent
    dimensions, averaged over the batch) [+ perceptual_weight * perceptual + semantic_weight * semantic]
    [+ adversarial_weight * lambda * generator hinge loss].

    - perceptual (DFC-VAE, Hou et al. 2017): the squared difference of a frozen face network's activations on the
      photo and on its reconstruction, each layer relative to the photo's own activation energy. Pixel MSE alone
      is minimised by the average of every face that could have encoded to z, which is a blur; features of eyes,
      mouths and hair edges are not.
    - semantic: the same relative distance in the face network's penultimate `features` (the 256 numbers its 40
      attribute verdicts are read from), off by default: it raised the judge's verdict agreement and edit success
      but printed patches a viewer sees and cost a fifth more pixel error (model card, ablations).
    - adversarial (VAE-GAN, Larsen et al. 2016): after a warm-up the decoder also decodes a half batch of latents
      drawn from a Gaussian fitted to the batch's codes, so the discriminator teaches it to draw sharp faces where
      `/sample` draws, not only where photos encode. `lambda` balances the adversarial gradient against the
      reconstruction gradient at the decoder's last layer (Esser et al. 2021, VQGAN), so one setting holds while
      both losses drift.

    Under tf.distribute (training/distribute.py) each replica gets its share of the global batch and Keras sums
    the replicas' gradients, so every loss a gradient is taken of is divided by the number of replicas (the
    per-replica mean over the global batch). Everything else a step computes over "the batch" is computed over
    the global batch too: the reparameterisation noise (each replica takes its slice of the global draw), the
    fitted Gaussian's moments, lambda's two gradients and, with `synchronized` BatchNorm, the batch statistics. So
    a step on two devices is the same step as on one, which tests/test_training_distributed.py checks.
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder: keras.Model,
        kl_weight: float,
        seed: int = 0,
        discriminator: keras.Model | None = None,
        adversarial_weight: float = 0.0,
        feature_network: keras.Model | None = None,
        perceptual_weight: float = 0.0,
        semantic_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.discriminator = discriminator
        self.feature_network = feature_network
        self.kl_weight = kl_weight
        self.adversarial_weight = adversarial_weight
        self.perceptual_weight = perceptual_weight
        self.semantic_weight = semantic_weight
        #: Read when the train step is traced: `fit` runs a warm-up phase without it, then one with it.
        self.adversarial = False
        self.d_optimizer: keras.optimizers.Optimizer | None = None
        self.noise = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")
        self.perceptual_tracker = keras.metrics.Mean(name="perceptual_loss")
        self.semantic_tracker = keras.metrics.Mean(name="semantic_loss")
        self.generator_tracker = keras.metrics.Mean(name="generator_loss")
        self.discriminator_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.balance_tracker = keras.metrics.Mean(name="adversarial_balance")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        tracked = [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]
        if self.feature_network is not None:
            tracked.append(self.perceptual_tracker)
            if self.semantic_weight > 0:
                tracked.append(self.semantic_tracker)
        if self.discriminator is not None:
            tracked += [self.generator_tracker, self.discriminator_tracker, self.balance_tracker]
        return tracked

    def normal(self, like: tf.Tensor) -> tf.Tensor:
        """N(0, I) noise shaped like this replica's `like` [batch, dims]: its slice of one draw for the global batch,
        so a replica's examples get the noise they would get on one device (replicas hold contiguous slices)."""
        replicas, index = _replicas()
        batch = ops.shape(like)[0]
        noise = keras.random.normal((replicas * batch, ops.shape(like)[1]), seed=self.noise)
        return noise[index * batch : (index + 1) * batch]

    def reparameterize(self, z_mean: tf.Tensor, z_log_var: tf.Tensor) -> tf.Tensor:
        """z = z_mean + exp(0.5 * z_log_var) * eps, eps ~ N(0, I): keeps sampling differentiable."""
        return z_mean + ops.exp(0.5 * z_log_var) * self.normal(z_mean)

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        z_mean, z_log_var = self.encoder(images, training=training)
        return self.decoder(self.reparameterize(z_mean, z_log_var), training=training)

    def build_all(self, image_size: int) -> None:
        """Create every variable (both halves, the discriminator, both optimizers) so checkpoints can load."""
        self(np.zeros((1, image_size, image_size, 3), dtype=np.float32))
        self.optimizer.build(self.vae_variables)
        if self.discriminator is not None:
            self.discriminator(np.zeros((1, image_size, image_size, 3), dtype=np.float32), training=True)
            self.d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def vae_variables(self) -> list[tf.Variable]:
        return self.encoder.trainable_variables + self.decoder.trainable_variables

    @property
    def optimizer_variables(self) -> list[tf.Variable]:
        """Both optimizers' state, in a fixed order, for --resume."""
        extra = self.d_optimizer.variables if self.d_optimizer is not None else []
        return [*self.optimizer.variables, *extra]

    def kl_divergence(self, z_mean: tf.Tensor, z_log_var: tf.Tensor) -> tf.Tensor:
        return ops.mean(-0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1))

    def feature_losses(self, images: tf.Tensor, reconstruction: tf.Tensor) -> dict[str, tf.Tensor]:
        """perceptual: sum over the ReLU layers of |F(x) - F(x_hat)|^2 / |F(x)|^2 (batch means); semantic: the same
        for the `features` layer (0 unless semantic_weight > 0, when the network's last output is that layer). Both
        0 without a network."""
        if self.feature_network is None:
            return {"perceptual": ops.zeros(()), "semantic": ops.zeros(())}
        real = self.feature_network(images * 255.0, training=False)
        fake = self.feature_network(reconstruction * 255.0, training=False)
        distances = [ops.mean(ops.square(r - f)) / (_global_energy(r) + 1e-6) for r, f in zip(real, fake, strict=True)]
        if self.semantic_weight > 0:
            return {"perceptual": sum(distances[:-1]), "semantic": distances[-1]}
        return {"perceptual": sum(distances), "semantic": ops.zeros(())}

    def _named_losses(
        self, images: tf.Tensor, reconstruction: tf.Tensor, z_mean: tf.Tensor, z_log_var: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        losses = {
            "reconstruction": ops.mean(ops.square(images - reconstruction)),
            "kl": self.kl_divergence(z_mean, z_log_var),
            **self.feature_losses(images, reconstruction),
        }
        losses["fit"] = (
            losses["reconstruction"]
            + self.perceptual_weight * losses["perceptual"]
            + self.semantic_weight * losses["semantic"]
        )
        losses["total"] = losses["fit"] + self.kl_weight * losses["kl"]
        return losses

    def vae_losses(self, images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        """The named losses of one batch: reconstruction, kl, perceptual, semantic, fit (the first + the weighted
        feature losses), total."""
        z_mean, z_log_var = self.encoder(images, training=training)
        reconstruction = self.decoder(self.reparameterize(z_mean, z_log_var), training=training)
        return self._named_losses(images, reconstruction, z_mean, z_log_var)

    def _track(self, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Update every reported metric from its loss (the adversarial ones only once that phase runs)."""
        for metric in self.metrics:
            key = METRIC_LOSSES[metric.name]
            if key in losses:
                metric.update_state(losses[key])
        results = {m.name: m.result() for m in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 reduces a step's results across workers with strategy.reduce(MEAN, axis=0), which fails on
            # scalars; a length-1 axis reduces to the same scalar.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

    def train_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.discriminator is None or not self.adversarial:
            with tf.GradientTape() as tape:
                losses = self.vae_losses(images, training=True)
                replica_share = losses["total"] / _replicas()[0]
            grads = tape.gradient(replica_share, self.vae_variables)
            self.optimizer.apply_gradients(zip(grads, self.vae_variables, strict=True))
            return self._track(losses)
        return self._adversarial_step(images)

    def _adversarial_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = ops.shape(images)[0]
        replicas = _replicas()[0]
        last_kernel = self.decoder.get_layer(DECODER_OUTPUT).kernel
        with tf.GradientTape(persistent=True) as tape:
            z_mean, z_log_var = self.encoder(images, training=True)
            z = self.reparameterize(z_mean, z_log_var)
            # Latents like /sample's: a Gaussian fitted to the (global) batch's codes (no gradient into the encoder).
            codes = ops.stop_gradient(z)
            count = _sum_over_replicas(ops.cast(batch, codes.dtype))
            mean = _sum_over_replicas(ops.sum(codes, axis=0)) / count
            variance = ops.relu(_sum_over_replicas(ops.sum(ops.square(codes), axis=0)) / count - ops.square(mean))
            drawn = mean + ops.sqrt(variance + 1e-6) * self.normal(codes[: batch // 2])
            decoded = self.decoder(ops.concatenate([z, drawn], axis=0), training=True)
            losses = self._named_losses(images, decoded[:batch], z_mean, z_log_var)
            losses["generator"] = -ops.mean(self.discriminator(decoded, training=True))
            with tape.stop_recording():
                fit_grad = _sum_over_replicas(tape.gradient(losses["fit"], last_kernel) / replicas)
                adv_grad = _sum_over_replicas(tape.gradient(losses["generator"], last_kernel) / replicas)
            losses["balance"] = ops.stop_gradient(ops.clip(_l2(fit_grad) / (_l2(adv_grad) + 1e-4), 0.0, 1e4))
            losses["total"] += self.adversarial_weight * losses["balance"] * losses["generator"]
            fake = ops.stop_gradient(decoded)
            losses["discriminator"] = ops.mean(ops.relu(1.0 - self.discriminator(images, training=True))) + ops.mean(
                ops.relu(1.0 + self.discriminator(fake, training=True))
            )
            vae_share, d_share = losses["total"] / replicas, losses["discriminator"] / replicas
        grads = tape.gradient(vae_share, self.vae_variables)
        self.optimizer.apply_gradients(zip(grads, self.vae_variables, strict=True))
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_share, d_vars), d_vars, strict=True))
        del tape
        return self._track(losses)

    def test_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._track(self.vae_losses(images, training=False))
