"""Tokenizers: images in [-1, 1] (B, H, W, C) <-> the token grid a model trains on (B, h, w, c).

`pixels` is the identity (the model patchifies pixels itself: pixel-patch tokens). `kl16` is
MAR's KL-16 VAE (16x16 pixels per latent, 16 channels): encoding samples the posterior and
multiplies by `tokenizer.scale` (0.2325), decoding divides by it. Its weights come from a file
the user supplies: the published checkpoint converted with `python -m marjax.convert --kind=kl16`.
"""
import dataclasses
import functools
import os

import jax
import orbax.checkpoint as ocp

from marjax.models.kl_vae import KL_PRESETS, AutoencoderKL, Posterior, init_vae_params


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Shape facts of a tokenizer: pixels per latent along a side, and latent channels."""

    stride: int
    channels: int


def tokenizer_spec(name: str, image_channels: int) -> TokenizerSpec:
    """The spec of tokenizer `name`; raises ValueError for an unknown name."""
    if name == "pixels":
        return TokenizerSpec(stride=1, channels=image_channels)
    if name in KL_PRESETS:
        model = AutoencoderKL(**KL_PRESETS[name])
        return TokenizerSpec(stride=model.stride, channels=model.embed_dim)
    raise ValueError(f"unknown tokenizer {name!r}; choose 'pixels' or one of {sorted(KL_PRESETS)}")


def check_available(name: str, checkpoint: str) -> None:
    """Raises ValueError when a learned tokenizer's weights directory is not given or missing."""
    if name == "pixels":
        return
    how = (f"convert the published weights with `python -m marjax.convert --kind={name} "
           f"--input=<{name}.ckpt> --output=<dir>` and pass --config.tokenizer.checkpoint=<dir>")
    if not checkpoint:
        raise ValueError(f"tokenizer.name={name!r} needs its weights: {how}")
    if not os.path.isdir(checkpoint):
        raise ValueError(f"tokenizer.checkpoint={checkpoint!r} does not exist; {how}")


@dataclasses.dataclass(frozen=True)
class PixelTokenizer:
    """Identity tokenizer: the model's latents are the images in [-1, 1]."""

    def encode(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> the same array."""
        del rng
        return images

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, H, W, C) -> images in [-1, 1] (unclipped)."""
        return latents


@dataclasses.dataclass(frozen=True, eq=False)
class KLTokenizer:
    """A KL-VAE with its params: posterior samples times `scale` <-> images."""

    model: AutoencoderKL
    params: dict
    scale: float

    @functools.partial(jax.jit, static_argnums=0)
    def encode(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, H, W, 3) in [-1, 1] -> (B, H/16, W/16, 16) scaled posterior samples."""
        moments = self.model.apply({"params": self.params}, images, method=AutoencoderKL.moments)
        return self.latents_from_moments(moments, rng)

    @functools.partial(jax.jit, static_argnums=0)
    def latents_from_moments(self, moments: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, h, w, 32) posterior moments (e.g. from a latent cache) -> scaled posterior samples."""
        return Posterior.from_moments(moments).sample(rng) * self.scale

    @functools.partial(jax.jit, static_argnums=0)
    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, h, w, 16) scaled latents -> (B, 16 h, 16 w, 3) images in about [-1, 1]."""
        return self.model.apply({"params": self.params}, latents / self.scale, method=AutoencoderKL.decode)


def load_vae_params(model: AutoencoderKL, directory: str) -> dict:
    """Params of `model` from an Orbax checkpoint written by `python -m marjax.convert --kind=kl16`."""
    target = jax.eval_shape(lambda: init_vae_params(model, jax.random.key(0), 2 * model.stride))
    return ocp.StandardCheckpointer().restore(os.path.abspath(directory), target)


def make_tokenizer(name: str, checkpoint: str = "", scale: float = 1.0) -> PixelTokenizer | KLTokenizer:
    """The tokenizer to encode training images and decode samples with."""
    tokenizer_spec(name, 3)
    check_available(name, checkpoint)
    if name == "pixels":
        return PixelTokenizer()
    model = AutoencoderKL(**KL_PRESETS[name])
    return KLTokenizer(model, load_vae_params(model, checkpoint), scale)
