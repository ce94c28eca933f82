"""The conv encoder and decoder of LDM's autoencoders (KL and VQ tokenizers share them).

Structure and numerics of LTH14/mar `models/vae.py`: GroupNorm (32 groups, eps 1e-6) and swish;
ResNet blocks with a 1x1 `nin_shortcut` when the width changes; single-head attention through
1x1 convs q, k, v, proj_out with scale c^-0.5; downsampling pads the bottom and right by one and
applies a stride-2 3x3 conv without padding; upsampling is nearest x2 then a 3x3 conv. The
encoder attends at `attn_resolutions`, the decoder's up path only at `attn_levels` (none in
LDM's KL-VAE; VAR's VQVAE attends at the lowest resolution); both have mid attention. Layout NHWC.

Submodule names follow the reference's keys with "_" for ".": `encoder/down_4_attn_0/q`
stands for `encoder.down.4.attn.0.q`. Conv weights init as PyTorch's default (uniform with
bound 1/sqrt(fan_in)); biases start at zero.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.layers import named

torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
CONV_AXES = (None, None, "conv_in", "conv_out")  # logical names of a (kh, kw, in, out) kernel


def conv(features: int, kernel: int, name: str, stride: int = 1, padding: str | int = "SAME") -> nn.Conv:
    pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                   kernel_init=named(torch_default_init, *CONV_AXES),
                   bias_init=named(nn.initializers.zeros, CONV_AXES[-1]), name=name)


def group_norm(name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False,
                        scale_init=named(nn.initializers.ones, "norm"),
                        bias_init=named(nn.initializers.zeros, "norm"), name=name)


class ResnetBlock(nn.Module):
    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = conv(self.out_channels, 3, "conv1")(nn.swish(group_norm("norm1")(x)))
        h = conv(self.out_channels, 3, "conv2")(nn.swish(group_norm("norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = group_norm("norm")(x)
        q, k, v = (conv(c, 1, name)(y).reshape(b, h * w, c) for name in ("q", "k", "v"))
        weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) * c ** -0.5, axis=-1)
        out = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, h, w, c)
        return x + conv(c, 1, "proj_out")(out)


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(x.shape[-1], 3, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(x.shape[-1], 3, "conv")(x)


class Encoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    out_channels: int
    resolution: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H/f, W/f, out_channels)."""
        h = conv(self.ch, 3, "conv_in")(x)
        resolution = self.resolution  # nominal, as the reference: where attention sits, not the input size
        for level, mult in enumerate(self.ch_mult):
            for block in range(self.num_res_blocks):
                h = ResnetBlock(self.ch * mult, name=f"down_{level}_block_{block}")(h)
                if resolution in self.attn_resolutions:
                    h = AttnBlock(name=f"down_{level}_attn_{block}")(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(name=f"down_{level}_downsample")(h)
                resolution //= 2
        width = h.shape[-1]
        h = ResnetBlock(width, name="mid_block_1")(h)
        h = AttnBlock(name="mid_attn_1")(h)
        h = ResnetBlock(width, name="mid_block_2")(h)
        return conv(self.out_channels, 3, "conv_out")(nn.swish(group_norm("norm_out")(h)))


class Decoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    out_channels: int
    attn_levels: Sequence[int] = ()  # levels (0 = full resolution) whose res blocks are each followed by attention

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """(B, h, w, z_channels) -> (B, h f, w f, out_channels)."""
        width = self.ch * self.ch_mult[-1]
        h = conv(width, 3, "conv_in")(z)
        h = ResnetBlock(width, name="mid_block_1")(h)
        h = AttnBlock(name="mid_attn_1")(h)
        h = ResnetBlock(width, name="mid_block_2")(h)
        for level in reversed(range(len(self.ch_mult))):
            for block in range(self.num_res_blocks + 1):
                h = ResnetBlock(self.ch * self.ch_mult[level], name=f"up_{level}_block_{block}")(h)
                if level in self.attn_levels:
                    h = AttnBlock(name=f"up_{level}_attn_{block}")(h)
            if level != 0:
                h = Upsample(name=f"up_{level}_upsample")(h)
        return conv(self.out_channels, 3, "conv_out")(nn.swish(group_norm("norm_out")(h)))
