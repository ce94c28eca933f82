"""The ViT block of the reference (timm 0.9.12 `Block`, as MAR configures it).

Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x)) (`marjax.blocks.attention` for the
attention, whose optional mask and KV cache the block passes through: MAR runs without either,
the causal baselines with a causal mask in training and a cache in decoding). The MLP is
fc1 -> exact GELU -> fc2. Dropout sits after GELU and after fc2 (`marjax.blocks.dropout`:
hashed masks, cheaper than threefry). No layer scale, no drop path.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.attention import Attention, KVCache
from marjax.blocks.dropout import Dropout
from marjax.blocks.layers import Dtype, dense, layer_norm


def exact_gelu(x: jax.Array) -> jax.Array:
    """x * Phi(x) written as torch's exact GELU, x/2 (1 + erf(x/sqrt 2)). XLA's CPU backend runs
    erf about 2.5x faster than the erfc form of `jax.nn.gelu(approximate=False)`; the two agree
    to a float32 rounding step."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        width = x.shape[-1]
        h = exact_gelu(dense(self.hidden, "fc1", self.dtype, axes=("embed", "mlp"))(x))
        h = Dropout(self.dropout)(h, deterministic=deterministic)
        h = dense(width, "fc2", self.dtype, axes=("mlp", "embed"))(h)
        return Dropout(self.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    num_heads: int
    mlp_ratio: float = 4.0
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, kv_lengths: jax.Array | None = None, deterministic: bool = True, *,
                 mask: jax.Array | None = None,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x: (B, N, D) -> (B, N, D), or ((B, N, D), the updated cache) when `cache` is given.

        kv_lengths: (B,) number of valid leading rows, or None. mask: bool, broadcastable to
        (B, heads, N, keys), True where a query may attend a key. cache: this block's keys and
        values of the earlier positions (`Attention` describes both).
        """
        width = x.shape[-1]
        attn = Attention(self.num_heads, self.attn_dropout, self.proj_dropout, self.dtype,
                         self.attention_impl, name="attn")
        attended = attn(layer_norm("norm1", self.dtype)(x), kv_lengths, deterministic, mask=mask, cache=cache)
        if cache is not None:
            attended, cache = attended
        x = x + attended
        mlp = Mlp(int(width * self.mlp_ratio), self.proj_dropout, self.dtype, name="mlp")
        x = x + mlp(layer_norm("norm2", self.dtype)(x), deterministic)
        return x if cache is None else (x, cache)
