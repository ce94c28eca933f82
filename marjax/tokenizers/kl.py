"""The KL autoencoder of latent diffusion (LDM), as MAR uses it for its KL-16 tokenizer.

Images (B, H, W, 3) in [-1, 1] -> posterior moments (B, H/f, W/f, 2 z) (mean || logvar, f =
2^(len(ch_mult) - 1)) -> latents -> images, on the conv backbone of `marjax.blocks.conv_backbone`
(LTH14/mar `models/vae.py`). Layout NHWC.
"""
import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.conv_backbone import Decoder, Encoder, conv

@dataclasses.dataclass(frozen=True)
class Posterior:
    """Diagonal Gaussian over latents; logvar clamped to [-30, 20] as the reference."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "Posterior":
        """moments (..., 2 z): mean then logvar along the last axis."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    def sample(self, rng: jax.Array) -> jax.Array:
        return self.mean + jnp.exp(0.5 * self.logvar) * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL to N(0, I), summed over all but the batch axis: (B,)."""
        terms = self.mean ** 2 + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))


class AutoencoderKL(nn.Module):
    """LDM KL autoencoder. `kl16` (MAR's tokenizer): ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks,
    attention at resolution 16, 16 latent channels, 66.456M params."""

    embed_dim: int = 16
    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    image_channels: int = 3
    resolution: int = 256  # nominal image size that places the encoder attention (any input size runs)

    def setup(self):
        self.encoder = Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, tuple(self.attn_resolutions),
                               2 * self.embed_dim, self.resolution)
        self.decoder = Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.image_channels)
        self.quant_conv = conv(2 * self.embed_dim, 1, "quant_conv")
        self.post_quant_conv = conv(self.embed_dim, 1, "post_quant_conv")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def encode(self, images: jax.Array) -> Posterior:
        """(B, H, W, C) in [-1, 1] -> the posterior over (B, H/stride, W/stride, embed_dim) latents."""
        return Posterior.from_moments(self.quant_conv(self.encoder(images)))

    def moments(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H/stride, W/stride, 2 embed_dim) mean || logvar (unclamped)."""
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, h, w, embed_dim) -> (B, h stride, w stride, C) images in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(latents))

    def __call__(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, Posterior]:
        """Reconstruction from a posterior sample, and the posterior."""
        posterior = self.encode(images)
        return self.decode(posterior.sample(rng)), posterior


KL_PRESETS = {"kl16": dict(embed_dim=16, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                           attn_resolutions=(16,))}


def init_vae_params(model: AutoencoderKL, rng: jax.Array, image_size: int = 256) -> dict:
    """Initial params for (1, image_size, image_size, C) inputs."""
    return nn.unbox(init_boxed_vae_params(model, rng, image_size))


def init_boxed_vae_params(model: AutoencoderKL, rng: jax.Array, image_size: int = 256) -> dict:
    """`init_vae_params` with each param boxed with its logical axis names."""
    images = jnp.zeros((1, image_size, image_size, model.image_channels))
    return model.init(rng, images, jax.random.key(0))["params"]


@dataclasses.dataclass(frozen=True, eq=False)
class KLTokenizer:
    """A KL autoencoder with its params, as a continuous tokenizer: posterior samples times `scale`."""

    model: AutoencoderKL
    params: dict
    scale: float

    @property
    def stride(self) -> int:
        return self.model.stride

    @property
    def channels(self) -> int:
        return self.model.embed_dim

    @functools.partial(jax.jit, static_argnums=0)
    def moments(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> (B, h, w, 2 embed_dim) posterior moments (mean || logvar)."""
        return self.model.apply({"params": self.params}, images, method=AutoencoderKL.moments)

    @functools.partial(jax.jit, static_argnums=0)
    def encode(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> (B, h, w, embed_dim) scaled posterior samples."""
        return self.latents_from_moments(self.moments(images), rng)

    @functools.partial(jax.jit, static_argnums=0)
    def latents_from_moments(self, moments: jax.Array, rng: jax.Array) -> jax.Array:
        """(B, h, w, 2 embed_dim) posterior moments (e.g. from a latent cache) -> scaled posterior samples."""
        return Posterior.from_moments(moments).sample(rng) * self.scale

    @functools.partial(jax.jit, static_argnums=0)
    def decode(self, latents: jax.Array) -> jax.Array:
        """(B, h, w, embed_dim) scaled latents -> (B, h stride, w stride, C) images in about [-1, 1]."""
        return self.model.apply({"params": self.params}, latents / self.scale, method=AutoencoderKL.decode)
