"""The ViT block of the reference (timm 0.9.12 `Block`, as MAR configures it).

Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x)). Attention has one fused qkv Linear with
bias whose output is laid out (3, heads, head_dim), scale head_dim^-0.5, then `proj`. The MLP is
fc1 -> exact GELU -> fc2. Dropout sits on the attention probabilities, after proj, after GELU and
after fc2 (`marjax.models.dropout`: hashed masks, cheaper than threefry). No layer scale, no drop path.

Attention goes through `jax.nn.dot_product_attention` (cuDNN's fused kernel on GPU with
`attention_impl="cudnn"`). That API has no dropout on the probabilities, so while training with
attention dropout the block computes the softmax explicitly.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.models.dropout import Dropout
from marjax.models.layers import Dtype, dense, layer_norm


def exact_gelu(x: jax.Array) -> jax.Array:
    """x * Phi(x) written as torch's exact GELU, x/2 (1 + erf(x/sqrt 2)). XLA's CPU backend runs
    erf about 2.5x faster than the erfc form of `jax.nn.gelu(approximate=False)`; the two agree
    to a float32 rounding step."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_lengths: jax.Array | None,
                        dropout: Dropout, deterministic: bool) -> jax.Array:
    """Softmax attention with dropout on the probabilities. q, k, v: (B, N, H, hd) -> (B, N, H, hd)."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if kv_lengths is not None:
        valid = jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None]
        logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), deterministic=deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection. Optional key lengths mask padded keys."""

    num_heads: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # None/"xla" or "cudnn"

    @nn.compact
    def __call__(self, x: jax.Array, kv_lengths: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """x: (B, N, D); kv_lengths: (B,) int, keys at positions >= length are ignored. Returns (B, N, D)."""
        b, n, width = x.shape
        head_dim = width // self.num_heads
        qkv = dense(3 * width, "qkv", self.dtype, axes=("embed", "qkv"))(x).reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.attn_dropout > 0.0 and not deterministic:
            out = _explicit_attention(q, k, v, kv_lengths, Dropout(self.attn_dropout), deterministic)
        else:
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths,
                                               implementation=self.attention_impl)
        out = dense(width, "proj", self.dtype, axes=("heads", "embed"))(out.reshape(b, n, width))
        return Dropout(self.proj_dropout)(out, deterministic=deterministic)


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
    def __call__(self, x: jax.Array, kv_lengths: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """x: (B, N, D) -> (B, N, D). kv_lengths: (B,) number of valid leading rows, or None."""
        width = x.shape[-1]
        attn = Attention(self.num_heads, self.attn_dropout, self.proj_dropout, self.dtype,
                         self.attention_impl, name="attn")
        x = x + attn(layer_norm("norm1", self.dtype)(x), kv_lengths, deterministic)
        mlp = Mlp(int(width * self.mlp_ratio), self.proj_dropout, self.dtype, name="mlp")
        return x + mlp(layer_norm("norm2", self.dtype)(x), deterministic)
