"""Tokenizers: images in [-1, 1] (B, H, W, C) <-> the token grid a model trains on (B, h, w, c).

`tokenizer.name` picks one:
- "pixels": the identity (the model patchifies pixels itself: pixel-patch tokens).
- "kl16": MAR's KL-16 VAE (16x16 pixels per latent, 16 channels), weights from the published
  checkpoint converted with `python -m marjax.convert --kind=kl16` (`tokenizer.checkpoint`).
- "vae": the KL autoencoder described by the config's `vae` section, weights (EMA) from the
  latest checkpoint of a marjax tokenizer run (`tokenizer.checkpoint` = its workdir).
A KL tokenizer encodes by sampling the posterior and multiplying by `tokenizer.scale`, and
decodes after dividing by it.
"""
import dataclasses
import functools
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from marjax.models.kl_vae import KL_PRESETS, AutoencoderKL, Posterior, init_vae_params
from marjax.models.vq_tokenizer import VQModel


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Shape facts of a tokenizer: pixels per latent along a side, and latent channels."""

    stride: int
    channels: int


def vae_from_config(config: ml_collections.ConfigDict) -> AutoencoderKL | VQModel:
    """The autoencoder of `config.vae` for `data.channels`-channel images."""
    v = config.vae
    backbone = dict(ch=v.ch, ch_mult=tuple(v.ch_mult), num_res_blocks=v.num_res_blocks,
                    attn_resolutions=tuple(v.attn_resolutions), image_channels=config.data.channels,
                    resolution=v.resolution)
    if v.kind == "kl":
        return AutoencoderKL(embed_dim=v.embed_dim, **backbone)
    return VQModel(z_channels=v.z_channels, codebook_size=v.codebook_size, code_dim=v.code_dim,
                   l2_normalize=v.l2_normalize, **backbone)


def _kl_model(config: ml_collections.ConfigDict) -> AutoencoderKL:
    if config.tokenizer.name == "vae":
        if config.vae.kind != "kl":
            raise ValueError("tokenizer.name='vae' encodes with a KL autoencoder; set vae.kind='kl'")
        return vae_from_config(config)
    return AutoencoderKL(**KL_PRESETS[config.tokenizer.name])


def tokenizer_spec(config: ml_collections.ConfigDict) -> TokenizerSpec:
    """Stride and channels of `config.tokenizer.name`; raises ValueError for an unknown name."""
    name = config.tokenizer.name
    if name == "pixels":
        return TokenizerSpec(stride=1, channels=config.data.channels)
    if name in KL_PRESETS or name == "vae":
        model = _kl_model(config)
        return TokenizerSpec(stride=model.stride, channels=model.embed_dim)
    raise ValueError(f"unknown tokenizer {name!r}; choose 'pixels', 'vae' or one of {sorted(KL_PRESETS)}")


def check_available(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when a learned tokenizer's weights are not given or missing."""
    name, checkpoint = config.tokenizer.name, config.tokenizer.checkpoint
    if name == "pixels":
        return
    if name == "vae":
        how = "pass the workdir of a marjax tokenizer run (task='tokenizer') as --config.tokenizer.checkpoint"
        found = os.path.isdir(os.path.join(checkpoint, "checkpoints"))
    else:
        how = (f"convert the published weights with `python -m marjax.convert --kind={name} "
               f"--input=<{name}.ckpt> --output=<dir>` and pass --config.tokenizer.checkpoint=<dir>")
        found = os.path.isdir(checkpoint)
    if not checkpoint:
        raise ValueError(f"tokenizer.name={name!r} needs its weights: {how}")
    if not found:
        raise ValueError(f"tokenizer.checkpoint={checkpoint!r} holds no {name} weights; {how}")


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


def _abstract_vae_params(model: AutoencoderKL) -> dict:
    return jax.eval_shape(lambda: init_vae_params(model, jax.random.key(0), 2 * model.stride))


def load_vae_params(model: AutoencoderKL, directory: str) -> dict:
    """Params of `model` from an Orbax checkpoint written by `python -m marjax.convert --kind=kl16`."""
    return ocp.StandardCheckpointer().restore(os.path.abspath(directory), _abstract_vae_params(model))


def load_trained_vae_params(model: AutoencoderKL, workdir: str) -> dict:
    """The EMA params of the latest checkpoint of a marjax tokenizer run in `workdir`."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
    if not steps:
        raise ValueError(f"tokenizer.checkpoint={workdir!r} holds no finished checkpoint")
    target = {"ema_params": _abstract_vae_params(model)}
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(directory, str(steps[-1]), "state"),
        args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True))
    return restored["ema_params"]


def make_tokenizer(config: ml_collections.ConfigDict) -> PixelTokenizer | KLTokenizer:
    """The tokenizer of `config.tokenizer`, to encode training images and decode samples."""
    tokenizer_spec(config)
    check_available(config)
    name = config.tokenizer.name
    if name == "pixels":
        return PixelTokenizer()
    model = _kl_model(config)
    params = load_trained_vae_params(model, config.tokenizer.checkpoint) if name == "vae" else \
        load_vae_params(model, config.tokenizer.checkpoint)
    return KLTokenizer(model, params, config.tokenizer.scale)
