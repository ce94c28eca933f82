"""The DiffLoss denoiser: the reference's SimpleMLPAdaLN.

A per-token MLP that predicts (epsilon, variance values) for a noisy token x at timestep t,
conditioned on the transformer's output z for that token:
  y = TimeEmbed(t) + cond_embed(z);  h = input_proj(x);  h = ResBlock_i(h, y);  FinalLayer(h, y).
Each block is modulated by y through adaLN (shift, scale, gate) = Linear(SiLU(y)), zero-initialised
so the blocks start as identities. SiLU(y) is the same for every block, so it is computed once and
passed in.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.heads.diffusion import NUM_TRAIN_TIMESTEPS
from marjax.blocks.layers import Dtype, dense, layer_norm

FREQUENCY_DIM = 256
zeros = nn.initializers.zeros
normal_002 = nn.initializers.normal(0.02)


def timestep_embedding(t: jax.Array, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features of timesteps t (N,) -> (N, dim), cos features first, in float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t (N,) -> Linear(256, W) -> SiLU -> Linear(W, W); both Linears normal(0.02) init."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        h = dense(self.width, "mlp_0", self.dtype, kernel_init=normal_002, axes=("freq", "embed"))(
            timestep_embedding(t))
        return dense(self.width, "mlp_2", self.dtype, kernel_init=normal_002)(nn.silu(h))


class ResBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), with (shift, scale, gate) = Linear(SiLU(y)).
    Called with x (N, W) and silu_y = SiLU(y) (N, W)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, silu_y: jax.Array) -> jax.Array:
        width = x.shape[-1]
        modulation = dense(3 * width, "adaLN_modulation", self.dtype, kernel_init=zeros,
                           axes=("embed", "mlp"))(silu_y)
        shift, scale, gate = jnp.split(modulation, 3, axis=-1)
        h = modulate(layer_norm("in_ln", self.dtype)(x), shift, scale)
        h = dense(width, "mlp_2", self.dtype)(nn.silu(dense(width, "mlp_0", self.dtype)(h)))
        return x + gate * h


class FinalLayer(nn.Module):
    """Linear(LN_noaffine(x) * (1 + scale) + shift), with (shift, scale) = Linear(SiLU(y)); all zero init.
    Called with x (N, W) and silu_y = SiLU(y) (N, W)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, silu_y: jax.Array) -> jax.Array:
        width = x.shape[-1]
        modulation = dense(2 * width, "adaLN_modulation", self.dtype, kernel_init=zeros,
                           axes=("embed", "mlp"))(silu_y)
        shift, scale = jnp.split(modulation, 2, axis=-1)
        h = modulate(layer_norm("norm_final", self.dtype, affine=False)(x), shift, scale)
        return dense(self.out_channels, "linear", self.dtype, kernel_init=zeros, axes=("embed", "token"))(h)


class SimpleMLPAdaLN(nn.Module):
    """The denoiser. Call with x (N, C), original timesteps t (N,) (or (1,) shared by all rows),
    condition c (N / k, Dz) -> (N, 2C), where each row of c conditions k consecutive rows of x
    (k = 1 in sampling; the diffusion_batch_mul copies of a token in training)."""

    token_dim: int
    width: int
    depth: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        time_embed = TimestepEmbedder(self.width, self.dtype, name="time_embed")
        if t.shape[0] > NUM_TRAIN_TIMESTEPS:
            # More rows than timesteps (training: each row draws its own t): embedding every
            # timestep once and gathering computes the same values with fewer matmul rows.
            y = jnp.take(time_embed(jnp.arange(NUM_TRAIN_TIMESTEPS)), t, axis=0)
        else:
            y = time_embed(t)
        copies, rest = divmod(x.shape[0], c.shape[0])
        if rest:
            raise ValueError(f"{x.shape[0]} rows of x cannot share {c.shape[0]} condition rows evenly")
        # Embedding each condition once, not once per copy, computes the same values.
        y = y + jnp.repeat(dense(self.width, "cond_embed", self.dtype)(c), copies, axis=0)
        silu_y = nn.silu(y)
        h = dense(self.width, "input_proj", self.dtype, axes=("token", "embed"))(x)
        for i in range(self.depth):
            h = ResBlock(self.dtype, name=f"res_blocks_{i}")(h, silu_y)
        return FinalLayer(2 * self.token_dim, self.dtype, name="final_layer")(h, silu_y)
