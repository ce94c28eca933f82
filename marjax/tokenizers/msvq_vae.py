"""VAR's multi-scale VQVAE (FoundationVision/VAR `models/vqvae.py`, vae_ch160v4096z32.pth).

Images (B, H, W, 3) in [-1, 1] -> encoder (B, H/16, W/16, 32) -> 3x3 quant_conv -> latents f ->
`MultiScaleQuantizer` (codes per scale, f_hat) -> 3x3 post_quant_conv -> decoder -> images, on
the conv backbone of `marjax.blocks.conv_backbone` in VAR's taming layout: attention after every
res block of the lowest-resolution level in both the encoder and the decoder, and mid attention.
VAR's fused qkv conv is the backbone's q, k, v convs (`msvq_torch_layout` splits it).
`MSVQTokenizer(model, params)` is what VAR's transformer reads: codes per scale, its
teacher-forcing input, and images from codes or from f_hat.
"""
import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.conv_backbone import Decoder, Encoder, conv
from marjax.tokenizers.msvq import MultiScaleQuantizer


class VQVAE(nn.Module):
    """The defaults are vae_ch160v4096z32's (108.95M params), for images of stride patch_nums[-1] pixels."""

    ch: int = 160
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    code_dim: int = 32
    codebook_size: int = 4096
    patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    num_phis: int = 4
    phi_ratio: float = 0.5
    beta: float = 0.25
    quant_conv_kernel: int = 3
    image_channels: int = 3

    def setup(self):
        last = len(self.ch_mult) - 1
        # The encoder places attention by a nominal resolution; naming it the stride puts
        # resolution 1 at the last level, the only one VAR attends at.
        self.encoder = Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, (1,), self.code_dim, self.stride)
        self.decoder = Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.image_channels, (last,))
        self.quant_conv = conv(self.code_dim, self.quant_conv_kernel, "quant_conv")
        self.quantizer = MultiScaleQuantizer(self.codebook_size, self.code_dim, tuple(self.patch_nums), self.num_phis,
                                             self.phi_ratio, self.beta)
        self.post_quant_conv = conv(self.code_dim, self.quant_conv_kernel, "post_quant_conv")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def latents(self, images: jax.Array) -> jax.Array:
        """(B, H, W, C) in [-1, 1] -> f (B, H/stride, W/stride, code_dim)."""
        return self.quant_conv(self.encoder(images))

    def codes(self, images: jax.Array) -> list[jax.Array]:
        """(B, H, W, C) -> codes per scale, each (B, p_k, p_k) int32 (VAR's img_to_idxBl)."""
        return self.quantizer.codes(self.latents(images))

    def decode(self, f_hat: jax.Array) -> jax.Array:
        """f_hat (B, h, w, code_dim) -> (B, h stride, w stride, C) images clamped to [-1, 1] (fhat_to_img)."""
        return jnp.clip(self.decoder(self.post_quant_conv(f_hat)), -1.0, 1.0)

    def decode_codes(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Codes per scale -> images (B, H, W, C) clamped to [-1, 1] (idxBl_to_img, last one)."""
        return self.decode(self.quantizer.latents_from_codes(codes))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array], dict[str, jax.Array]]:
        """Training forward: (reconstruction, not clamped, with straight-through gradients; codes per
        scale; {"vq_loss", "hits" (K, V)} of `MultiScaleQuantizer`)."""
        f_hat, codes, stats = self.quantizer(self.latents(images))
        return self.decoder(self.post_quant_conv(f_hat)), codes, stats


def init_boxed_vqvae_params(model: VQVAE, rng: jax.Array) -> dict:
    """Initial params, each boxed with its logical axis names (for images of stride patch_nums[-1] pixels)."""
    size = model.patch_nums[-1] * model.stride
    return model.init(rng, jnp.zeros((1, size, size, model.image_channels)))["params"]


def init_vqvae_params(model: VQVAE, rng: jax.Array) -> dict:
    """`init_boxed_vqvae_params` without the boxes."""
    return nn.unbox(init_boxed_vqvae_params(model, rng))


@dataclasses.dataclass(frozen=True, eq=False)
class MSVQTokenizer:
    """A multi-scale VQVAE with its params, as VAR's tokenizer: images (B, H, W, C) in [-1, 1] with
    H = W = patch_nums[-1] stride <-> codes per scale, each (B, p_k, p_k) int32."""

    model: VQVAE
    params: dict

    @property
    def stride(self) -> int:
        return self.model.stride

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def code_dim(self) -> int:
        return self.model.code_dim

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(self.model.patch_nums)

    @functools.partial(jax.jit, static_argnums=0)
    def encode_codes(self, images: jax.Array) -> list[jax.Array]:
        """(B, H, W, C) in [-1, 1] -> codes per scale, each (B, p_k, p_k) int32."""
        return self.model.apply({"params": self.params}, images, method=VQVAE.codes)

    @functools.partial(jax.jit, static_argnums=0)
    def teacher_forcing_input(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Codes per scale -> the transformer's inputs of scales 2..K, (B, sum p_k^2 - p_1^2, code_dim)."""
        return self.model.apply({"params": self.params}, codes,
                                method=lambda m, c: m.quantizer.teacher_forcing_input(c))

    @functools.partial(jax.jit, static_argnums=0)
    def decode_codes(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Codes per scale -> (B, H, W, C) images clamped to [-1, 1]."""
        return self.model.apply({"params": self.params}, codes, method=VQVAE.decode_codes)

    @functools.partial(jax.jit, static_argnums=0)
    def decode(self, f_hat: jax.Array) -> jax.Array:
        """f_hat (B, p_K, p_K, code_dim) -> (B, H, W, C) images clamped to [-1, 1]."""
        return self.model.apply({"params": self.params}, f_hat, method=VQVAE.decode)
