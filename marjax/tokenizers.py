"""Tokenizers: images in [-1, 1] (B, H, W, C) <-> the token grid a model trains on (B, h, w, c).

`pixels` is the identity (the model patchifies pixels itself: pixel-patch tokens). A learned
tokenizer maps with a stride (KL-16: 16x16 pixels per latent, 16 channels) and scales its
latents by `tokenizer.scale`.
"""
import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Shape facts of a tokenizer: pixels per latent along a side, and latent channels."""

    stride: int
    channels: int


# Learned tokenizers whose JAX implementation is not in this version of marjax.
_UNAVAILABLE = {"kl16": TokenizerSpec(stride=16, channels=16)}


def tokenizer_spec(name: str, image_channels: int) -> TokenizerSpec:
    """The spec of tokenizer `name`; raises ValueError for an unknown name."""
    if name == "pixels":
        return TokenizerSpec(stride=1, channels=image_channels)
    if name in _UNAVAILABLE:
        return _UNAVAILABLE[name]
    raise ValueError(f"unknown tokenizer {name!r}; choose 'pixels' or one of {sorted(_UNAVAILABLE)}")


def check_available(name: str) -> None:
    """Raises ValueError when the tokenizer cannot run in this version."""
    if name in _UNAVAILABLE:
        raise ValueError(f"tokenizer.name={name!r}: the KL-16 VAE is not part of this marjax version yet, "
                         f"so ImageNet recipes cannot train end to end; pixel-space models run with "
                         f"tokenizer.name='pixels'")


@dataclasses.dataclass(frozen=True)
class PixelTokenizer:
    """Identity tokenizer: the model's latents are the images in [-1, 1]."""

    def encode(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> the same array."""
        return images

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, H, W, C) -> images in [-1, 1] (unclipped)."""
        return latents


def make_tokenizer(name: str) -> PixelTokenizer:
    """The tokenizer to encode training images and decode samples with."""
    check_available(name)
    tokenizer_spec(name, 1)
    return PixelTokenizer()
