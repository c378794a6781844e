"""Command-line settings for tiny real training runs on the shared CelebA subset (seconds, not minutes)."""

from __future__ import annotations

TINY = [
    "--max-images", "64", "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--z-dim", "16",
    "--filters", "8", "16", "--min-positives", "3", "--val-fraction", "0.25", "--name", "tiny",
    "--warmup-epochs", "1", "--discriminator-filters", "8", "16", "--perceptual-epochs", "1",
]  # fmt: skip
