"""The PatchGAN discriminator of pix2pix / taming-transformers (`NLayerDiscriminator`).

(B, H, W, C) images -> (B, H', W', 1) logits, one per overlapping patch. 4x4 convs: the first
with stride 2 and no norm, `num_layers - 1` more with stride 2, one with stride 1, each of those
with BatchNorm and LeakyReLU 0.2, widths ndf x min(2^n, 8); then a stride-1 conv to one channel.
Padding 1 throughout. Init as taming: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.conv_backbone import CONV_AXES
from marjax.blocks.layers import named


def _conv(features: int, stride: int, use_bias: bool, name: str) -> nn.Conv:
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=use_bias,
                   kernel_init=named(nn.initializers.normal(0.02), *CONV_AXES),
                   bias_init=named(nn.initializers.zeros, CONV_AXES[-1]), name=name)


def _scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class PatchDiscriminator(nn.Module):
    ndf: int = 64
    num_layers: int = 3

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """images (B, H, W, C) -> logits (B, H', W', 1). `train` updates BatchNorm statistics
        (call with mutable=["batch_stats"])."""
        x = nn.leaky_relu(_conv(self.ndf, 2, True, "conv_0")(images), 0.2)
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            x = _conv(self.ndf * min(2 ** n, 8), stride, False, f"conv_{n}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             scale_init=named(_scale_init, "norm"), bias_init=named(nn.initializers.zeros, "norm"),
                             name=f"norm_{n}")(x)
            x = nn.leaky_relu(x, 0.2)
        return _conv(1, 1, True, f"conv_{self.num_layers + 1}")(x)
