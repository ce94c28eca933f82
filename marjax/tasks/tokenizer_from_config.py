"""The tokenizer a config names (`config.tokenizer`), with its weights.

`tokenizer.kind` picks one:
- "pixels": the identity (the model patchifies pixels itself: pixel-patch tokens).
- "kl": a KL autoencoder of the section's architecture (default: MAR's KL-16), continuous.
- "vq": a VQ autoencoder of the section's architecture, discrete (codes).
- "msvq": VAR's multi-scale residual VQVAE (`tokenizer.patch_nums`, `num_phis`, `phi_ratio` and
  the shared ch, ch_mult, num_res_blocks, codebook_size, code_dim), discrete: codes per scale, for
  images of `patch_nums[-1]` x stride pixels.
Weights (`tokenizer.checkpoint`): a directory written by `python -m marjax.convert --kind=kl16`,
or the workdir of a marjax tokenizer run (`task="tokenizer"`), whose latest checkpoint's EMA
params are read. A KL tokenizer encodes by sampling the posterior and multiplying by
`tokenizer.scale`, and decodes after dividing by it.
"""
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from marjax.errors import ConfigError
from marjax.tokenizers.kl import AutoencoderKL, KLTokenizer
from marjax.tokenizers.msvq_vae import VQVAE, MSVQTokenizer
from marjax.tokenizers.pixels import PixelTokenizer
from marjax.tokenizers.vq import VQModel, VQTokenizer

Tokenizer = PixelTokenizer | KLTokenizer | VQTokenizer | MSVQTokenizer
Autoencoder = AutoencoderKL | VQModel | VQVAE


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Shape facts of a tokenizer: pixels per token along a side; channels of a continuous token
    (None for codes); the codebook size of a discrete one (None for latents)."""

    stride: int
    channels: int | None
    codebook_size: int | None

    @property
    def discrete(self) -> bool:
        return self.codebook_size is not None


def autoencoder_from_config(config: ml_collections.ConfigDict) -> Autoencoder:
    """The KL, VQ or multi-scale VQ autoencoder of `config.tokenizer` for `data.channels`-channel images."""
    t = config.tokenizer
    if t.kind == "msvq":
        return VQVAE(ch=t.ch, ch_mult=tuple(t.ch_mult), num_res_blocks=t.num_res_blocks, code_dim=t.code_dim,
                     codebook_size=t.codebook_size, patch_nums=tuple(t.patch_nums), num_phis=t.num_phis,
                     phi_ratio=t.phi_ratio, image_channels=config.data.channels)
    backbone = dict(ch=t.ch, ch_mult=tuple(t.ch_mult), num_res_blocks=t.num_res_blocks,
                    attn_resolutions=tuple(t.attn_resolutions), image_channels=config.data.channels,
                    resolution=t.resolution)
    if t.kind == "kl":
        return AutoencoderKL(embed_dim=t.embed_dim, **backbone)
    if t.kind == "vq":
        return VQModel(z_channels=t.z_channels, codebook_size=t.codebook_size, code_dim=t.code_dim,
                       l2_normalize=t.l2_normalize, decoder_attn_levels=tuple(t.decoder_attn_levels), **backbone)
    raise ConfigError(f"tokenizer.kind={t.kind!r} has no autoencoder; choose 'kl', 'vq' or 'msvq'")


def tokenizer_spec(config: ml_collections.ConfigDict) -> TokenizerSpec:
    """Stride, channels and codebook size of `config.tokenizer`, from the config alone."""
    if config.tokenizer.kind == "pixels":
        return TokenizerSpec(stride=1, channels=config.data.channels, codebook_size=None)
    model = autoencoder_from_config(config)  # a module description: no params are made
    if isinstance(model, AutoencoderKL):
        return TokenizerSpec(stride=model.stride, channels=model.embed_dim, codebook_size=None)
    return TokenizerSpec(stride=model.stride, channels=None, codebook_size=model.codebook_size)


def check_msvq_image_size(config: ml_collections.ConfigDict) -> None:
    """For tokenizer.kind "msvq": ConfigError unless data.image_size = patch_nums[-1] x stride (the
    last scale's token map covers the image exactly)."""
    if config.tokenizer.kind != "msvq":
        return
    stride, last = autoencoder_from_config(config).stride, config.tokenizer.patch_nums[-1]
    if config.data.image_size != last * stride:
        raise ConfigError(f"data.image_size={config.data.image_size}: the multi-scale VQ tokenizer takes images of "
                          f"tokenizer.patch_nums[-1] x stride = {last} x {stride} = {last * stride} pixels")


def _is_run_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def check_available(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when a learned tokenizer's weights are not given or missing."""
    kind, checkpoint = config.tokenizer.kind, config.tokenizer.checkpoint
    if kind == "pixels":
        return
    how = ("pass --config.tokenizer.checkpoint=<dir>: the output of `python -m marjax.convert --kind=kl16 "
           "--input=<kl16.ckpt> --output=<dir>`, or the workdir of a marjax tokenizer run (task='tokenizer')")
    if not checkpoint:
        raise ConfigError(f"tokenizer.kind={kind!r} needs its weights: {how}")
    if not os.path.isdir(checkpoint):
        raise ConfigError(f"tokenizer.checkpoint={checkpoint!r}: no such directory; {how}")


def abstract_tokenizer_params(model: Autoencoder) -> dict:
    """The params of `model` as ShapeDtypeStructs (nothing allocated)."""
    # Param shapes do not depend on the image size, but a multi-scale VQ takes only its own.
    size = model.patch_nums[-1] * model.stride if isinstance(model, VQVAE) else 2 * model.stride
    images = jnp.zeros((1, size, size, model.image_channels))
    args = (images, jax.random.key(0)) if isinstance(model, AutoencoderKL) else (images,)
    return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *args)["params"]))


def load_converted_params(model: Autoencoder, directory: str) -> dict:
    """Params of `model` from an Orbax checkpoint written by `python -m marjax.convert --kind=kl16`."""
    return ocp.StandardCheckpointer().restore(os.path.abspath(directory), abstract_tokenizer_params(model))


def load_trained_params(model: Autoencoder, workdir: str) -> dict:
    """The EMA params of the latest checkpoint of a marjax tokenizer run in `workdir`."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
    if not steps:
        raise ConfigError(f"tokenizer.checkpoint={workdir!r} holds no finished checkpoint")
    target = {"ema_params": abstract_tokenizer_params(model)}
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(directory, str(steps[-1]), "state"),
        args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True))
    return restored["ema_params"]


def make_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer of `config.tokenizer` with its weights, to encode training images and decode samples."""
    check_available(config)
    if config.tokenizer.kind == "pixels":
        return PixelTokenizer(channels=config.data.channels)
    model = autoencoder_from_config(config)
    checkpoint = config.tokenizer.checkpoint
    params = load_trained_params(model, checkpoint) if _is_run_workdir(checkpoint) else \
        load_converted_params(model, checkpoint)
    if isinstance(model, AutoencoderKL):
        return KLTokenizer(model, params, config.tokenizer.scale)
    if isinstance(model, VQVAE):
        return MSVQTokenizer(model, params)
    return VQTokenizer(model, params)
