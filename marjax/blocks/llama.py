"""The Llama transformer block as LlamaGen builds it (`autoregressive/models/gpt.py`).

Pre-norm with RMSNorm: h = x + droppath(attn(attention_norm(x))), then h + droppath(ffn(ffn_norm(h))).
The attention is `marjax.blocks.attention.Attention` with a fused [q | k | v] Linear, optional grouped
K/V heads, RoPE on q and k and an optional KV cache; the FFN is SwiGLU, w2(silu(w1 x) * w3 x). No
Linear has a bias; every kernel starts normal(0, 0.02) and every RMSNorm weight at 1.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from marjax.blocks.attention import Attention, KVCache, Rope
from marjax.blocks.dropout import Dropout, DropPath
from marjax.blocks.layers import Dtype, dense, named

normal_002 = nn.initializers.normal(0.02)


def swiglu_hidden(width: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """LlamaGen's SwiGLU width: int(2 * 4 * width / 3), times `ffn_dim_multiplier` (then int) when
    given, rounded up to a multiple of `multiple_of` (GPT-B: 768 -> 2048; GPT-3B: 3200 -> 8704)."""
    hidden = int(2 * 4 * width / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), computed in fp32 and cast back to x's dtype, times a weight
    (param "scale", starts at 1). x: (..., D) -> (..., D) in x's dtype."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", named(nn.initializers.ones, "norm"), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # LlamaGen multiplies the cast-back x by the fp32 weight, which torch promotes to fp32; keeping
        # x's dtype here keeps the residual stream in the compute dtype (identical in fp32).
        return normed.astype(x.dtype) * scale.astype(x.dtype)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), then dropout: x (..., D) -> (..., D); w1, w3 (D, hidden), w2 (hidden, D)."""

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = normal_002

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        def linear(features: int, name: str, axes: tuple[str, str]) -> nn.Module:
            return dense(features, name, self.dtype, False, self.kernel_init, axes)

        gate = linear(self.hidden, "w1", ("embed", "mlp"))(x)
        up = linear(self.hidden, "w3", ("embed", "mlp"))(x)
        out = linear(x.shape[-1], "w2", ("mlp", "embed"))(nn.silu(gate) * up)
        return Dropout(self.dropout)(out, deterministic=deterministic)


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block with attention and SwiGLU, each residual branch under drop path.

    attn_dropout: on the attention probabilities; resid_dropout: after the attention's output
    Linear; ffn_dropout: after w2; drop_path: the probability of dropping a sample's branch.
    """

    num_heads: int
    ffn_hidden: int
    num_kv_heads: int | None = None
    norm_eps: float = 1e-5
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    ffn_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    kernel_init: nn.initializers.Initializer = normal_002

    @nn.compact
    def __call__(self, x: jax.Array, kv_lengths: jax.Array | None = None, deterministic: bool = True, *,
                 rope: Rope, mask: jax.Array | None = None,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x: (B, N, D) -> (B, N, D), or ((B, N, D), the updated cache) when `cache` is given.

        The arguments are the ViT `Block`'s, plus rope: (cos, sin) for x's positions, each
        broadcastable to (B, N, head_dim // 2). kv_lengths, mask and cache: as `Attention` (a causal
        mask for a whole sequence; no mask with a cache).
        """
        attention = Attention(self.num_heads, self.attn_dropout, self.resid_dropout, self.dtype, self.attention_impl,
                              self.num_kv_heads, use_bias=False, kernel_init=self.kernel_init, name="attention")
        out = attention(RMSNorm(self.norm_eps, name="attention_norm")(x), kv_lengths, deterministic, mask=mask,
                        rope=rope, cache=cache)
        if cache is not None:
            out, cache = out
        drop_path = DropPath(self.drop_path)
        h = x + drop_path(out, deterministic)
        ffn = SwiGLU(self.ffn_hidden, self.ffn_dropout, self.dtype, self.kernel_init, name="feed_forward")
        out = h + drop_path(ffn(RMSNorm(self.norm_eps, name="ffn_norm")(h), deterministic), deterministic)
        return out if cache is None else (out, cache)
