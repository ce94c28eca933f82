"""Multi-head attention: the module, its masks, an explicit KV cache and rotary position embeddings.

`Attention` is the reference's ViT attention (timm 0.9.12 `Attention`): one fused qkv Linear
with bias whose output is laid out (3, heads, head_dim), scale head_dim^-0.5, then `proj`;
dropout on the attention probabilities and after `proj`. Optional arguments serve the causal
families: a boolean mask (padding, causal, block-causal), rotary embeddings on q and k, grouped
K/V heads, Linears without bias and with another init (LlamaGen), and a KV cache passed in and
returned (the cache is a pytree, so a sampler carries it through `jax.lax.scan`).

Attention goes through `jax.nn.dot_product_attention` (cuDNN's fused kernel on GPU with
`attention_impl="cudnn"`). That API has no dropout on the probabilities, so while training with
attention dropout the softmax is computed explicitly. With a KV cache, `cached_attention` does the
same arithmetic on the cache's own layouts (`KVCache`).

Masks are bool arrays broadcastable to (B, heads, q_len, k_len), True where a query may attend a key.
"""
from functools import reduce
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from marjax.blocks.dropout import Dropout
from marjax.blocks.layers import Dtype, dense, xavier_uniform

Rope = tuple[jax.Array, jax.Array]


def padding_mask(lengths: jax.Array, k_len: int) -> jax.Array:
    """Key padding. lengths: (B,) int -> (B, 1, 1, k_len), key j valid when j < lengths[b]."""
    return (jnp.arange(k_len) < lengths[:, None])[:, None, None, :]


def causal_mask(q_len: int, k_len: int, offset: int | jax.Array = 0) -> jax.Array:
    """Query i sits at absolute position offset + i and attends keys j <= offset + i.

    offset: int or int scalar -> (1, 1, q_len, k_len); (B,) int -> (B, 1, q_len, k_len).
    """
    query_pos = jnp.asarray(offset)[..., None, None] + jnp.arange(q_len)[:, None]
    return (jnp.arange(k_len) <= query_pos).reshape(-1, 1, q_len, k_len)


def block_causal_mask(block_ids: jax.Array) -> jax.Array:
    """Token i attends token j when block_ids[j] <= block_ids[i] (VAR: a block is a scale).

    block_ids: (L,) or (B, L) int -> (1, 1, L, L) or (B, 1, L, L).
    """
    length = block_ids.shape[-1]
    return (block_ids[..., None, :] <= block_ids[..., :, None]).reshape(-1, 1, length, length)


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical and of the masks that are not None, broadcast together; None when all are None."""
    present = [m for m in masks if m is not None]
    return reduce(jnp.logical_and, present) if present else None


@struct.dataclass
class KVCache:
    """Keys and values of the positions seen so far, at static shapes, in chunks of `chunk_len`
    positions (chunk j holds positions [j * chunk_len, (j + 1) * chunk_len)), each in the layout the
    attention products read: k[j] (B, kv_heads, head_dim, chunk_len), the keys transposed, and
    v[j] (B, kv_heads, chunk_len, head_dim). length: int32 scalar, the number of filled positions
    (shared by the batch); positions at and after it hold zeros or stale values and are masked.

    open_chunk (static): the chunk that `update` writes; attention reads chunks 0..open_chunk only,
    `visible_len` positions. A cache of one chunk is the plain static cache. A decoding loop over
    many chunks advances open_chunk between segments of its steps (`with_open_chunk`): each step
    then reads only the chunks filled so far (with 4 chunks, 5/8 of the cache on average) and writes
    into a chunk small enough to stay in the CPU's cache.

    Not (B, max_len, kv_heads, head_dim), the layout the keys come in: with it XLA's CPU backend
    transposed every layer's whole cache at every decode step, most of a small GPT's step
    (BENCHMARKS.md). Here only the new positions are transposed, when they are written.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array
    open_chunk: int = struct.field(pytree_node=False, default=0)

    @classmethod
    def init(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype: Dtype = jnp.float32,
             chunks: int = 1) -> "KVCache":
        """An empty cache of `chunks` equal chunks holding at least `max_len` positions, zeros,
        length 0, chunk 0 open."""
        if chunks < 1 or chunks > max_len:
            raise ValueError(f"a KV cache of {max_len} positions takes 1 to {max_len} chunks, got {chunks}")
        chunk_len = -(-max_len // chunks)
        return cls(k=tuple(jnp.zeros((batch, kv_heads, head_dim, chunk_len), dtype) for _ in range(chunks)),
                   v=tuple(jnp.zeros((batch, kv_heads, chunk_len, head_dim), dtype) for _ in range(chunks)),
                   length=jnp.zeros((), jnp.int32))

    @property
    def chunk_len(self) -> int:
        return self.v[0].shape[-2]

    @property
    def max_len(self) -> int:
        return self.chunk_len * len(self.v)

    @property
    def visible_len(self) -> int:
        """The positions attention reads: those of chunks 0..open_chunk."""
        return self.chunk_len * (self.open_chunk + 1)

    def update(self, k_new: jax.Array, v_new: jax.Array) -> "KVCache":
        """Writes k_new, v_new: (B, n, kv_heads, head_dim) at positions [length, length + n) and
        advances length by n. Those positions must lie in the open chunk (dynamic_update_slice would
        clamp the start and overwrite other positions): with one chunk, length + n <= max_len."""
        j = self.open_chunk
        offset = self.length - j * self.chunk_len
        k = jax.lax.dynamic_update_slice(self.k[j], k_new.transpose(0, 2, 3, 1).astype(self.k[j].dtype),
                                         (0, 0, 0, offset))
        v = jax.lax.dynamic_update_slice(self.v[j], v_new.transpose(0, 2, 1, 3).astype(self.v[j].dtype),
                                         (0, 0, offset, 0))
        return self.replace(k=self.k[:j] + (k,) + self.k[j + 1:], v=self.v[:j] + (v,) + self.v[j + 1:],
                            length=self.length + k_new.shape[1])

    def keys(self) -> jax.Array:
        """(B, max_len, kv_heads, head_dim): the keys in the layout they were written in."""
        return jnp.concatenate(self.k, axis=-1).transpose(0, 3, 1, 2)

    def values(self) -> jax.Array:
        """(B, max_len, kv_heads, head_dim): the values in the layout they were written in."""
        return jnp.concatenate(self.v, axis=-2).transpose(0, 2, 1, 3)

    def filled_mask(self) -> jax.Array:
        """(1, 1, 1, visible_len) bool, True at filled positions."""
        return (jnp.arange(self.visible_len) < self.length)[None, None, None, :]


def with_open_chunk(caches: Any, chunk: int) -> Any:
    """Every `KVCache` in the pytree `caches` with chunk `chunk` open (see `KVCache`)."""
    return jax.tree.map(lambda c: c.replace(open_chunk=chunk) if isinstance(c, KVCache) else c, caches,
                        is_leaf=lambda c: isinstance(c, KVCache))


def cached_attention(q: jax.Array, cache: KVCache, mask: jax.Array | None, scale: float) -> jax.Array:
    """Attention of q over the visible positions of `cache`, the arithmetic of
    `jax.nn.dot_product_attention`'s XLA path: logits q.k in float32 (bf16 products accumulated in
    float32), times `scale`, masked logits set to its large negative, softmax in float32,
    probabilities in the values' dtype.

    q: (B, n, heads, head_dim) with heads a multiple of the cache's kv_heads (query head h uses K/V
    head h // (heads / kv_heads)); mask: bool broadcastable to (B, heads, n, visible_len), or None.
    Returns (B, n, heads, head_dim) in q's dtype.
    """
    b, n, heads, head_dim = q.shape
    kv_heads = cache.k[0].shape[1]
    groups = heads // kv_heads
    chunks = cache.open_chunk + 1
    q = q.reshape(b, n, kv_heads, groups, head_dim)
    precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
    # One product per chunk: each reads its chunk in place, where slicing one array would copy it.
    logits = jnp.concatenate([
        jnp.einsum("btkgh,bkhs->bkgts", q, k.astype(q.dtype), precision=precision,
                   preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
        for k in cache.k[:chunks]], axis=-1)
    logits *= jnp.array(scale, logits.dtype)
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        mask_heads = mask.shape[1]
        grouped = (mask[:, :, None] if mask_heads == 1
                   else mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:]))
        large_negative = -0.7 * float(jnp.finfo(logits.dtype).max)
        logits = jnp.where(grouped, logits, jnp.array(large_negative, logits.dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    probs = jnp.split(probs, chunks, axis=-1)
    out = reduce(jnp.add, [jnp.einsum("bkgts,bksh->btkgh", p, v.astype(q.dtype))
                           for p, v in zip(probs, cache.v[:chunks])])
    return out.reshape(b, n, heads, head_dim)


def rope_1d(positions: jax.Array, head_dim: int, base: float = 10000.0) -> Rope:
    """Rotary angles position * base^(-2i / head_dim) for pair i < head_dim / 2, in fp32.

    positions: (..., L) int -> (cos, sin), each (..., L, head_dim // 2).
    """
    freqs = 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32)[: head_dim // 2] / head_dim)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs
    return jnp.cos(angles), jnp.sin(angles)


def rope_2d(grid_size: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1,
            zero_prefix: bool = True) -> Rope:
    """LlamaGen's 2-D table (`precompute_freqs_cis_2d`) for cls_token_num prefix tokens followed by a
    row-major grid_size x grid_size token map.

    The token at row r, column c gets the angles concat(rope_1d(r, head_dim / 2), rope_1d(c, head_dim / 2)):
    the first head_dim / 4 pairs rotate with the row, the last head_dim / 4 with the column.
    The prefix rows: with `zero_prefix` (LlamaGen's table) cos = sin = 0, so `apply_rope` turns the
    prefix tokens' q and k into zero vectors (every query gives them logit 0), which checkpoints
    trained by LlamaGen expect; otherwise angle 0 (cos 1, sin 0) and the prefix passes unrotated.
    Returns (cos, sin), each (cls_token_num + grid_size^2, head_dim // 2), fp32.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    rows, cols = jnp.divmod(jnp.arange(grid_size * grid_size), grid_size)
    row_cos, row_sin = rope_1d(rows, head_dim // 2, base)
    col_cos, col_sin = rope_1d(cols, head_dim // 2, base)
    prefix = jnp.full((cls_token_num, head_dim // 2), 0.0 if zero_prefix else 1.0, jnp.float32)
    cos = jnp.concatenate([prefix, jnp.concatenate([row_cos, col_cos], axis=-1)])
    sin = jnp.concatenate([jnp.zeros_like(prefix), jnp.concatenate([row_sin, col_sin], axis=-1)])
    return cos, sin


def apply_rope(x: jax.Array, rope: Rope) -> jax.Array:
    """Rotates adjacent pairs (x[2i], x[2i+1]) by the angle of pair i, LlamaGen's and Meta Llama's
    convention (torch.view_as_complex on x reshaped to (..., head_dim / 2, 2), times cos + i sin).

    x: (B, L, H, head_dim); rope: (cos, sin), each broadcastable to (B, L, head_dim // 2).
    Computed in fp32; returns x's shape and dtype.
    """
    cos, sin = (t[..., None, :] for t in rope)  # a heads axis
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imag * sin, imag * cos + real * sin], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


def _explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                        dropout: Dropout, deterministic: bool) -> jax.Array:
    """Softmax attention with dropout on the probabilities.

    q: (B, N, H, hd); k, v: (B, S, K, hd) with H a multiple of K; mask: broadcastable to
    (B, H, N, S) or None. Returns (B, N, H, hd).
    """
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), deterministic=deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    The qkv Linear's output is [q (heads * hd) | k (kv_heads * hd) | v (kv_heads * hd)]; with
    num_kv_heads None (kv_heads = heads) that is the reference's (3, heads, hd) layout of 3 * width
    features. Query head h uses K/V head h // (heads / kv_heads), as torch's repeat_interleave.
    """

    num_heads: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # None/"xla" or "cudnn"
    num_kv_heads: int | None = None  # grouped K/V heads; None: one per query head
    use_bias: bool = True  # LlamaGen's qkv and output Linears have none
    kernel_init: nn.initializers.Initializer = xavier_uniform

    @nn.compact
    def __call__(self, x: jax.Array, kv_lengths: jax.Array | None = None, deterministic: bool = True, *,
                 mask: jax.Array | None = None, rope: Rope | None = None,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x: (B, N, D) -> (B, N, D), or ((B, N, D), the updated cache) when `cache` is given.

        kv_lengths: (B,) int, keys at positions >= length are ignored. rope: (cos, sin) for the
        positions of x, each broadcastable to (B, N, head_dim // 2) (see `rope_1d`, `rope_2d`).
        mask: bool, broadcastable to (B, heads, N, S) with S the number of keys (N, or the
        cache's visible_len).
        cache: a `KVCache` of the keys and values of the earlier positions; x's k and
        v are written after them, x's queries sit at absolute positions length + i, and keys not yet
        filled are masked. Without `mask`, attention over the cache is causal in absolute positions;
        a given `mask` replaces causality (e.g. all True for a VAR scale attending all earlier scales
        and itself).
        """
        b, n, width = x.shape
        head_dim = width // self.num_heads
        kv_heads = self.num_kv_heads or self.num_heads
        qkv = dense((self.num_heads + 2 * kv_heads) * head_dim, "qkv", self.dtype, self.use_bias, self.kernel_init,
                    axes=("embed", "qkv"))(x)
        if kv_heads == self.num_heads:
            # The reference's (3, heads, hd) view; slicing it (not `split`) keeps XLA's fusion of the
            # backward pass, and so MAR's training numbers, exactly as before grouped heads existed.
            qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = jnp.split(qkv, [self.num_heads * head_dim, (self.num_heads + kv_heads) * head_dim], axis=-1)
            q = q.reshape(b, n, self.num_heads, head_dim)
            k, v = k.reshape(b, n, kv_heads, head_dim), v.reshape(b, n, kv_heads, head_dim)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            if kv_lengths is not None or (self.attn_dropout > 0.0 and not deterministic):
                raise ValueError("with a KV cache, attention takes neither kv_lengths (the cache's length "
                                 "masks it) nor dropout on the probabilities (decoding is deterministic)")
            cache = cache.update(k, v)
            step_mask = causal_mask(n, cache.visible_len, cache.length - n) if mask is None else mask
            out = cached_attention(q, cache, combine_masks(step_mask, cache.filled_mask()), head_dim ** -0.5)
        else:
            if mask is not None:
                mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # the fused call wants 4 dims
            if self.attn_dropout > 0.0 and not deterministic:
                padding = None if kv_lengths is None else padding_mask(kv_lengths, k.shape[1])
                out = _explicit_attention(q, k, v, combine_masks(padding, mask), Dropout(self.attn_dropout),
                                          deterministic)
            else:
                out = jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=kv_lengths,
                                                   implementation=self.attention_impl)
        out = dense(width, "proj", self.dtype, self.use_bias, self.kernel_init,
                    axes=("heads", "embed"))(out.reshape(b, n, width))
        out = Dropout(self.proj_dropout)(out, deterministic=deterministic)
        return out if cache is None else (out, cache)
