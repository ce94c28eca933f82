"""The identity tokenizer: a pixel-space model's latents are the images in [-1, 1]."""
import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class PixelTokenizer:
    """Continuous tokens of stride 1: the model patchifies the pixels itself."""

    channels: int = 3
    stride: int = 1

    def encode(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> the same array."""
        del rng
        return images

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, H, W, C) -> images in [-1, 1] (unclipped)."""
        return latents
