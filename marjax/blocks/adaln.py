"""VAR's transformer block with adaptive LayerNorm (FoundationVision/VAR `models/basic_var.py`).

A condition c (VAR: the class embedding) gives six (B, C) vectors per block, in this order:
gamma1, gamma2, scale1, scale2, shift1, shift2, either from the block's own SiLU -> Linear(D, 6C)
(`ada_lin`) or, with `shared_aln`, as the model's one shared modulation (B, 6, C) plus the block's
learned offset `ada_gss` (6, C). With LN a LayerNorm without affine params:
    x = x + droppath(gamma1 * attn(LN(x) (1 + scale1) + shift1))
    x = x + droppath(gamma2 * ffn(LN(x) (1 + scale2) + shift2))
The attention L2-normalises q and k per head and multiplies q by a learned per-head scale
exp(min(s, ln 100)) (softmax scale 1); `QKNormAttention` writes it here because the shared
`Attention` has a k bias and no q/k normalisation. The FFN is fc1 -> GELU (tanh) -> fc2.
`AdaLNBeforeHead` is the last norm: LN(x) (1 + scale) + shift from SiLU -> Linear(D, 2C).

Initialisation is VAR's `init_weights` (trunc_normal cut at +-2 absolute, as torch's
`trunc_normal_`); its scale factors are fields, so the model passes its depth-dependent ones.
The blocks have no dropout: VAR builds every published model with drop_rate = attn_drop_rate = 0.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.blocks.attention import KVCache, cached_attention, combine_masks
from marjax.blocks.dropout import DropPath
from marjax.blocks.layers import Dtype, dense, layer_norm, named

MAX_SCALE_MUL = math.log(100.0)  # the clamp on the learned log scale of q


def default_std(width: int) -> float:
    """VAR's automatic init_std, sqrt(1 / (3 C))."""
    return math.sqrt(1.0 / (3 * width))


def trunc_normal(std: float, factor: float = 1.0) -> nn.initializers.Initializer:
    """torch's `trunc_normal_(std=std)` (a normal cut at +-2 absolute, not +-2 std), times `factor`."""
    return nn.initializers.truncated_normal(std * factor, lower=-2.0 / std, upper=2.0 / std)


def scaled_init(init: nn.initializers.Initializer, factors: np.ndarray) -> nn.initializers.Initializer:
    """`init` times `factors`, which broadcast to the param's shape."""
    def scaled(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return init(key, shape, dtype) * jnp.asarray(factors, dtype)

    return scaled


def adaln_factors(width: int, init_adaln: float, init_adaln_gamma: float) -> np.ndarray:
    """(6 width,) init factors of the 6-way modulation: `init_adaln_gamma` on the two gammas (the
    first 2 width features), `init_adaln` on the scales and shifts."""
    return np.concatenate([np.full(2 * width, init_adaln_gamma), np.full(4 * width, init_adaln)])


def l2_normalize(x: jax.Array) -> jax.Array:
    """torch's F.normalize over the last axis, x / max(|x|, 1e-12), in fp32; returns x's dtype."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, 1e-12)).astype(x.dtype)


class QKNormAttention(nn.Module):
    """VAR's SelfAttention: qkv Linear without bias plus learned q and v biases (k has none), then
    with `l2_norm` q, k L2-normalised per head and q times exp(min(scale_mul_h, ln 100)) at softmax
    scale 1; without it, softmax scale 0.25 / sqrt(head_dim). Then `proj` (with bias)."""

    num_heads: int
    l2_norm: bool = True
    init_std: float = 0.02
    proj_factor: float = 1.0  # VAR: 1 / sqrt(2 depth) on proj's init
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # None/"xla" or "cudnn"

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x: (B, N, C) -> (B, N, C), or ((B, N, C), the updated cache) when `cache` is given.

        mask: bool, broadcastable to (B, heads, N, keys), True where a query may attend a key.
        cache: a `KVCache` of the keys and values of the earlier positions; x's are written
        after them and x's queries attend every filled key and `mask` (VAR's cached scale: all of
        itself and the earlier scales, so no mask).
        """
        b, n, width = x.shape
        head_dim = width // self.num_heads
        qkv = dense(3 * width, "qkv", self.dtype, False, trunc_normal(self.init_std), axes=("embed", "qkv"))(x)
        q_bias = self.param("q_bias", named(nn.initializers.zeros, "qkv"), (width,))
        v_bias = self.param("v_bias", named(nn.initializers.zeros, "qkv"), (width,))
        qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.l2_norm:
            scale_mul = self.param("scale_mul", named(nn.initializers.constant(math.log(4.0)), None),
                                   (self.num_heads,))
            q = l2_normalize(q) * jnp.exp(jnp.minimum(scale_mul, MAX_SCALE_MUL))[:, None].astype(q.dtype)
            k = l2_normalize(k)
            scale = 1.0
        else:
            scale = 0.25 / math.sqrt(head_dim)
        if cache is not None:
            cache = cache.update(k, v)
            out = cached_attention(q, cache, combine_masks(mask, cache.filled_mask()), scale)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=self.attention_impl)
        out = dense(width, "proj", self.dtype, True, trunc_normal(self.init_std, self.proj_factor),
                    axes=("heads", "embed"))(out.reshape(b, n, width))
        return out if cache is None else (out, cache)


class FFN(nn.Module):
    """fc1 (C -> hidden) -> GELU, tanh approximation -> fc2 (hidden -> C), both with bias."""

    hidden: int
    init_std: float = 0.02
    fc2_factor: float = 1.0  # VAR: 1 / sqrt(2 depth) on fc2's init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., C) -> (..., C)."""
        h = dense(self.hidden, "fc1", self.dtype, True, trunc_normal(self.init_std), axes=("embed", "mlp"))(x)
        h = jax.nn.gelu(h, approximate=True)
        return dense(x.shape[-1], "fc2", self.dtype, True, trunc_normal(self.init_std, self.fc2_factor),
                     axes=("mlp", "embed"))(h)


def modulate(normed: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """normed (B, N, C) * (1 + scale) + shift, scale and shift (B, C)."""
    return normed * (1.0 + scale[:, None]) + shift[:, None]


class AdaLNSelfAttention(nn.Module):
    """VAR's AdaLNSelfAttn. init_std None: sqrt(1 / (3 C)), VAR's automatic init_std."""

    num_heads: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    attn_l2_norm: bool = True
    shared_aln: bool = False
    init_std: float | None = None
    residual_factor: float = 1.0  # VAR: 1 / sqrt(2 depth) on attn.proj and ffn.fc2
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, deterministic: bool = True, *, mask: jax.Array | None = None,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x: (B, N, C) -> (B, N, C), or ((B, N, C), the updated cache) when `cache` is given.

        cond: (B, D) the condition, or with `shared_aln` the model's shared modulation (B, 6, C).
        mask and cache: as `QKNormAttention`. Drop path draws from the "dropout" rng when not
        `deterministic`.
        """
        width = x.shape[-1]
        std = default_std(width) if self.init_std is None else self.init_std
        factors = adaln_factors(width, self.init_adaln, self.init_adaln_gamma)
        if self.shared_aln:
            # VAR: randn / sqrt(C), then the factors of ada_lin's output features.
            gss_init = scaled_init(nn.initializers.normal(width ** -0.5), factors.reshape(6, width))
            ada_gss = self.param("ada_gss", named(gss_init, None, "embed"), (6, width))
            mods = (ada_gss + cond).astype(self.dtype)
        else:
            mods = dense(6 * width, "ada_lin", self.dtype, True, scaled_init(trunc_normal(std), factors),
                         axes=("embed", "adaln"))(nn.silu(cond))
            mods = mods.reshape(-1, 6, width)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (mods[:, i] for i in range(6))
        norm = layer_norm(dtype=self.dtype, affine=False)  # one norm, no params: reused
        drop_path = DropPath(self.drop_path)

        attention = QKNormAttention(self.num_heads, self.attn_l2_norm, std, self.residual_factor, self.dtype,
                                    self.attention_impl, name="attn")
        out = attention(modulate(norm(x), scale1, shift1), mask=mask, cache=cache)
        if cache is not None:
            out, cache = out
        x = x + drop_path(out * gamma1[:, None], deterministic)
        ffn = FFN(round(width * self.mlp_ratio), std, self.residual_factor, self.dtype, name="ffn")
        x = x + drop_path(ffn(modulate(norm(x), scale2, shift2)) * gamma2[:, None], deterministic)
        return x if cache is None else (x, cache)


class AdaLNBeforeHead(nn.Module):
    """VAR's last norm: LN(x) (1 + scale) + shift, (scale, shift) = SiLU -> Linear(D, 2C) of the
    condition, computed in fp32 as the reference. init_std None: sqrt(1 / (3 C)); the Linear's
    weight starts at trunc_normal(init_std) * init_adaln."""

    init_std: float | None = None
    init_adaln: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        """x: (B, N, C), cond: (B, D) -> (B, N, C) fp32."""
        width = x.shape[-1]
        std = default_std(width) if self.init_std is None else self.init_std
        mods = dense(2 * width, "ada_lin", jnp.float32, True, trunc_normal(std, self.init_adaln),
                     axes=("embed", "adaln"))(nn.silu(cond.astype(jnp.float32)))
        scale, shift = mods[:, :width], mods[:, width:]
        return modulate(layer_norm(affine=False)(x.astype(jnp.float32)), scale, shift)
