"""What every tokenizer offers: images in [-1, 1] (B, H, W, C) <-> the tokens a model trains on.

Continuous tokenizers (pixels, KL) give latents (B, H/stride, W/stride, channels); discrete ones
(VQ) give codes (B, H/stride, W/stride) int32 in [0, codebook_size). A model family states which
kind it needs; the task that builds it checks the config's `tokenizer.kind` against it.
"""
from typing import Protocol, runtime_checkable

import jax


@runtime_checkable
class ContinuousTokenizer(Protocol):
    """stride: pixels per latent along a side; channels: latent channels."""

    stride: int
    channels: int

    def encode(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> (B, H/stride, W/stride, channels) latents (rng: posterior sampling)."""
        ...

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, h, w, channels) -> (B, h stride, w stride, C) images in about [-1, 1]."""
        ...


@runtime_checkable
class DiscreteTokenizer(Protocol):
    """stride: pixels per code along a side; codebook_size: the number of codes."""

    stride: int
    codebook_size: int

    def encode_codes(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> (B, H/stride, W/stride) int32 codes."""
        ...

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """(B, h, w) int codes -> (B, h stride, w stride, C) images in about [-1, 1]."""
        ...
