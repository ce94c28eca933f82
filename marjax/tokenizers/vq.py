"""A VQ tokenizer on the KL-VAE's conv backbone (LlamaGen's VQ-16 widths and quantizer by default).

Images (B, H, W, C) in [-1, 1] -> encoder features (B, h, w, z_channels) -> 1x1 quant_conv to
code_dim -> nearest codebook entry (optionally L2-normalised) -> 1x1 post_quant_conv back to
z_channels -> decoder -> images. Codes are (B, h, w) int32. LlamaGen's attention layout (every
res block of the lowest level, encoder and decoder) is `llamagen_vq.llamagen_vq`'s.
"""
import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.conv_backbone import Decoder, Encoder, conv
from marjax.tokenizers.vector_quantizer import VectorQuantizer


class VQModel(nn.Module):
    """Defaults: LlamaGen VQ-16's ch 128, ch_mult (1, 1, 2, 2, 4), z_channels 256, codebook 16384 x 8,
    L2-normalised, beta 0.25; the decoder's up path attends only at `decoder_attn_levels` (0 = full resolution)."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    codebook_size: int = 16384
    code_dim: int = 8
    l2_normalize: bool = True
    commitment_beta: float = 0.25
    image_channels: int = 3
    resolution: int = 256  # nominal image size that places the encoder attention (any input size runs)
    decoder_attn_levels: Sequence[int] = ()

    def setup(self):
        self.encoder = Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, tuple(self.attn_resolutions),
                               self.z_channels, self.resolution)
        self.decoder = Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.image_channels,
                               tuple(self.decoder_attn_levels))
        self.quant_conv = conv(self.code_dim, 1, "quant_conv")
        self.quantizer = VectorQuantizer(self.codebook_size, self.code_dim, self.commitment_beta, self.l2_normalize)
        self.post_quant_conv = conv(self.z_channels, 1, "post_quant_conv")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """(B, H, W, C) -> (quantised latents (B, h, w, code_dim), codes (B, h, w), VQ losses/stats)."""
        return self.quantizer(self.quant_conv(self.encoder(images)))

    def decode(self, quantized: jax.Array) -> jax.Array:
        """(B, h, w, code_dim) -> (B, H, W, C)."""
        return self.decoder(self.post_quant_conv(quantized))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """(B, h, w) int -> (B, H, W, C)."""
        return self.decode(self.quantizer.lookup(codes))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Reconstruction, codes, and the VQ losses and code statistics."""
        quantized, codes, stats = self.encode(images)
        return self.decode(quantized), codes, stats


def init_vq_params(model: VQModel, rng: jax.Array) -> dict:
    """Initial params (unboxed), made on one code's worth of pixels: the shapes do not depend on the image size."""
    images = jnp.zeros((1, model.stride, model.stride, model.image_channels))
    return nn.unbox(model.init(rng, images)["params"])


@dataclasses.dataclass(frozen=True, eq=False)
class VQTokenizer:
    """A VQ autoencoder with its params, as a discrete tokenizer: images <-> codes."""

    model: VQModel
    params: dict

    @property
    def stride(self) -> int:
        return self.model.stride

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @functools.partial(jax.jit, static_argnums=0)
    def encode_codes(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> (B, h, w) int32 codes."""
        return self.model.apply({"params": self.params}, images, method=VQModel.encode)[1]

    @functools.partial(jax.jit, static_argnums=0)
    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """(B, h, w) int codes -> (B, h stride, w stride, C) images in about [-1, 1]."""
        return self.model.apply({"params": self.params}, codes, method=VQModel.decode_codes)
