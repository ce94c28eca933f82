"""Attention, its masks, the KV cache and RoPE against NumPy statements (LlamaGen's RoPE included)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.blocks.attention import (Attention, KVCache, apply_rope, cached_attention, block_causal_mask, causal_mask, combine_masks,
                                     padding_mask, rope_1d, rope_2d, with_open_chunk)
from marjax.blocks.dropout import Dropout
from marjax.blocks.layers import dense


def random_params(module, x, seed=0):
    """Initial params with every leaf perturbed, so the zero biases are not trivially zero."""
    params = nn.unbox(module.init(jax.random.key(seed), x)["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [v + 0.2 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def to_np(tree):
    return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


# ---- NumPy statements -------------------------------------------------------------------------

def np_freqs_cis_2d(grid, n_elem, base=10000.0, cls_token_num=1):
    """LlamaGen's precompute_freqs_cis_2d: (cls_token_num + grid^2, n_elem / 2, 2) of (cos, sin)."""
    half = n_elem // 2
    freqs = 1.0 / base ** (np.arange(0, half, 2)[: half // 2] / half)
    freqs = np.outer(np.arange(grid), freqs)
    grid_freqs = np.concatenate([np.broadcast_to(freqs[:, None, :], (grid, grid, freqs.shape[1])),
                                 np.broadcast_to(freqs[None, :, :], (grid, grid, freqs.shape[1]))], axis=-1)
    table = np.stack([np.cos(grid_freqs), np.sin(grid_freqs)], axis=-1).reshape(grid * grid, half, 2)
    return np.concatenate([np.zeros((cls_token_num, half, 2)), table])


def np_apply_rotary_emb(x, freqs_cis):
    """LlamaGen's apply_rotary_emb. x: (B, L, H, hd); freqs_cis: (L, hd / 2, 2)."""
    xs = x.reshape(*x.shape[:-1], -1, 2)
    f = freqs_cis[None, :, None]
    out = np.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                    xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], axis=-1)
    return out.reshape(x.shape)


def np_rope_complex(x, positions, base=10000.0):
    """1-D RoPE as complex numbers: pair i of x at position p times exp(i p base^(-2i/hd)). x: (B, L, H, hd)."""
    hd = x.shape[-1]
    z = x[..., 0::2] + 1j * x[..., 1::2]
    angles = np.asarray(positions)[:, None] * base ** (-np.arange(0, hd, 2) / hd)
    z = z * np.exp(1j * angles)[None, :, None, :]
    return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def np_attention(x, p, heads, kv_heads=None, mask=None, freqs_cis=None):
    """Softmax attention with a fused [q | k | v] projection, K/V heads repeated (repeat_interleave)."""
    b, n, d = x.shape
    hd, kvh = d // heads, kv_heads or heads
    qkv = x @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    q = qkv[..., : heads * hd].reshape(b, n, heads, hd)
    k = qkv[..., heads * hd: (heads + kvh) * hd].reshape(b, n, kvh, hd)
    v = qkv[..., (heads + kvh) * hd:].reshape(b, n, kvh, hd)
    if freqs_cis is not None:
        q, k = np_apply_rotary_emb(q, freqs_cis), np_apply_rotary_emb(k, freqs_cis)
    k, v = np.repeat(k, heads // kvh, axis=2), np.repeat(v, heads // kvh, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d)
    return out @ p["proj"]["kernel"] + p["proj"]["bias"]


class LegacyAttention(nn.Module):
    """The module as it stood before the masks, RoPE, grouped heads and cache were added."""

    num_heads: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, kv_lengths=None, deterministic=True):
        b, n, width = x.shape
        head_dim = width // self.num_heads
        qkv = dense(3 * width, "qkv", axes=("embed", "qkv"))(x).reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.attn_dropout > 0.0 and not deterministic:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim ** -0.5
            if kv_lengths is not None:
                valid = jnp.arange(n)[None, :] < kv_lengths[:, None]
                logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
            probs = Dropout(self.attn_dropout)(jax.nn.softmax(logits, axis=-1), deterministic=deterministic)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths)
        out = dense(width, "proj", axes=("heads", "embed"))(out.reshape(b, n, width))
        return Dropout(self.proj_dropout)(out, deterministic=deterministic)


# ---- (a) the default path ---------------------------------------------------------------------

@pytest.mark.parametrize("deterministic", [True, False])
def test_default_path_is_bitwise_the_legacy_module(deterministic):
    x = jax.random.normal(jax.random.key(0), (2, 6, 16))
    lengths = jnp.array([4, 6], jnp.int32)
    legacy = LegacyAttention(num_heads=2, attn_dropout=0.3, proj_dropout=0.2)
    attn = Attention(num_heads=2, attn_dropout=0.3, proj_dropout=0.2)
    params = random_params(attn, x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, random_params(legacy, x))
    assert params["qkv"]["kernel"].shape == (16, 48)
    rngs = {"dropout": jax.random.key(7)}
    for kv_lengths in (None, lengths):
        expected = legacy.apply({"params": params}, x, kv_lengths, deterministic, rngs=rngs)
        out = attn.apply({"params": params}, x, kv_lengths, deterministic, rngs=rngs)
        explicit_defaults = attn.apply({"params": params}, x, kv_lengths, deterministic, mask=None, rope=None,
                                       cache=None, rngs=rngs)
        same_kv_heads = Attention(2, 0.3, 0.2, num_kv_heads=2).apply({"params": params}, x, kv_lengths,
                                                                      deterministic, rngs=rngs)
        assert isinstance(out, jax.Array)
        for result in (out, explicit_defaults, same_kv_heads):
            np.testing.assert_array_equal(result, expected)


def test_key_padding_against_numpy_and_as_an_explicit_mask():
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    lengths = jnp.array([3, 6], jnp.int32)
    attn = Attention(num_heads=4)
    params = random_params(attn, x, seed=2)
    out = attn.apply({"params": params}, x, lengths)
    np_mask = np.arange(6)[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
    np.testing.assert_allclose(out, np_attention(to_np(x), to_np(params), 4, mask=np_mask), rtol=2e-5, atol=2e-5)
    assert padding_mask(lengths, 6).shape == (2, 1, 1, 6)
    np.testing.assert_array_equal(padding_mask(lengths, 6), np_mask)
    np.testing.assert_allclose(attn.apply({"params": params}, x, mask=padding_mask(lengths, 6)), out, atol=1e-6)
    # The explicit-softmax path takes the same mask (dropout rate small enough to keep every element).
    explicit = Attention(num_heads=4, attn_dropout=1e-12)
    rngs = {"dropout": jax.random.key(0)}
    for kwargs in ({"kv_lengths": lengths}, {"mask": padding_mask(lengths, 6)}):
        np.testing.assert_allclose(explicit.apply({"params": params}, x, deterministic=False, rngs=rngs, **kwargs),
                                   out, atol=1e-6)


# ---- masks ------------------------------------------------------------------------------------

def test_causal_mask_with_offsets_against_numpy():
    expected = np.array([[j <= 3 + i for j in range(7)] for i in range(2)])
    np.testing.assert_array_equal(causal_mask(2, 7, 3), expected[None, None])
    np.testing.assert_array_equal(causal_mask(4, 4), np.tril(np.ones((4, 4), bool))[None, None])
    per_row = causal_mask(2, 7, jnp.array([3, 0]))
    assert per_row.shape == (2, 1, 2, 7)
    np.testing.assert_array_equal(per_row[0, 0], expected)
    np.testing.assert_array_equal(per_row[1, 0], np.tril(np.ones((2, 7), bool)))


def test_block_causal_with_one_block_per_token_is_causal():
    np.testing.assert_array_equal(block_causal_mask(jnp.arange(6)), causal_mask(6, 6))


def test_block_causal_mask_and_attention_against_numpy():
    sizes = (1, 2, 3)  # VAR's scales 1x1, then blocks of 2 and 3 tokens
    ids = np.repeat(np.arange(len(sizes)), sizes)
    expected = np.array([[ids[j] <= ids[i] for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(block_causal_mask(jnp.asarray(ids)), expected[None, None])
    batched = block_causal_mask(jnp.asarray(np.stack([ids, np.arange(6)])))
    assert batched.shape == (2, 1, 6, 6)
    np.testing.assert_array_equal(batched[1, 0], np.tril(np.ones((6, 6), bool)))

    x = jax.random.normal(jax.random.key(3), (2, 6, 16))
    attn = Attention(num_heads=2)
    params = random_params(attn, x, seed=4)
    out = attn.apply({"params": params}, x, mask=block_causal_mask(jnp.asarray(ids)))
    np.testing.assert_allclose(out, np_attention(to_np(x), to_np(params), 2, mask=expected), rtol=2e-5, atol=2e-5)


def test_combine_masks():
    assert combine_masks(None, None) is None
    causal = causal_mask(3, 3)
    assert combine_masks(None, causal) is causal
    both = combine_masks(causal, None, padding_mask(jnp.array([2, 3]), 3))
    assert both.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(both[0, 0], np.tril(np.ones((3, 3), bool)) & (np.arange(3) < 2))
    np.testing.assert_array_equal(both[1, 0], np.tril(np.ones((3, 3), bool)))


# ---- (d) RoPE ---------------------------------------------------------------------------------

def test_rope_2d_is_llamagen_table_and_rotation():
    grid, hd, cls = 3, 8, 2
    cos, sin = rope_2d(grid, hd, base=100.0, cls_token_num=cls)
    table = np_freqs_cis_2d(grid, hd, base=100.0, cls_token_num=cls)
    assert cos.shape == sin.shape == (cls + grid * grid, hd // 2) and cos.dtype == jnp.float32
    np.testing.assert_allclose(cos, table[..., 0], atol=1e-6)
    np.testing.assert_allclose(sin, table[..., 1], atol=1e-6)

    x = jax.random.normal(jax.random.key(5), (2, cls + grid * grid, 3, hd))
    rotated = apply_rope(x, (cos, sin))
    np.testing.assert_allclose(rotated, np_apply_rotary_emb(to_np(x), table), atol=1e-5)
    # LlamaGen's prefix rows are zero: the class tokens' q and k vanish.
    np.testing.assert_array_equal(rotated[:, :cls], 0.0)
    np.testing.assert_allclose(jnp.linalg.norm(rotated[:, cls:], axis=-1), jnp.linalg.norm(x[:, cls:], axis=-1),
                               rtol=1e-5)
    # Rows rotate the first half of the pairs, columns the second: (row 1, col 2) vs (row 2, col 1).
    np.testing.assert_array_equal(cos[cls + 1 * grid + 2, : hd // 4], cos[cls + 1 * grid + 1, : hd // 4])
    np.testing.assert_array_equal(cos[cls + 1 * grid + 2, hd // 4:], cos[cls + 2 * grid + 2, hd // 4:])


def test_rope_2d_identity_prefix_leaves_prefix_unrotated():
    cos, sin = rope_2d(2, 8, cls_token_num=3, zero_prefix=False)
    x = jax.random.normal(jax.random.key(6), (1, 3 + 4, 2, 8))
    rotated = apply_rope(x, (cos, sin))
    np.testing.assert_array_equal(rotated[:, :3], x[:, :3])
    np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    zero_cos, zero_sin = rope_2d(2, 8, cls_token_num=3)
    np.testing.assert_array_equal(cos[3:], zero_cos[3:])
    np.testing.assert_array_equal(sin, zero_sin)


def test_rope_2d_needs_head_dim_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d(2, 6)


def test_rope_1d_against_complex_rotation_and_relative_positions():
    hd = 8
    positions = np.array([0, 3, 5, 9, 2, 6])
    x = jax.random.normal(jax.random.key(7), (1, len(positions), 2, hd))
    rope = rope_1d(jnp.asarray(positions), hd)
    rotated = apply_rope(x, rope)
    np.testing.assert_allclose(rotated, np_rope_complex(to_np(x), positions), atol=1e-5)
    assert apply_rope(x.astype(jnp.bfloat16), rope).dtype == jnp.bfloat16

    # q at m and k at n: the logit depends on m - n only (same vectors, shifted positions).
    q, k = jax.random.normal(jax.random.key(8), (2, hd))

    def logit(m, n):
        qm = apply_rope(q[None, None, None], rope_1d(jnp.array([m]), hd))
        kn = apply_rope(k[None, None, None], rope_1d(jnp.array([n]), hd))
        return float(jnp.sum(qm * kn))

    np.testing.assert_allclose([logit(5, 2), logit(9, 6), logit(3, 0)], logit(7, 4), rtol=1e-5)
    assert abs(logit(5, 2) - logit(5, 3)) > 1e-3


# ---- (e) grouped K/V heads --------------------------------------------------------------------

def repeat_kv_params(params, heads, kv_heads, hd):
    """The full-heads qkv params that repeat each K/V head heads / kv_heads times (repeat_interleave)."""
    def expand(a):
        q, k, v = np.split(np.asarray(a), [heads * hd, (heads + kv_heads) * hd], axis=-1)
        rep = [np.repeat(t.reshape(*t.shape[:-1], kv_heads, hd), heads // kv_heads, axis=-2).reshape(*t.shape[:-1], -1)
               for t in (k, v)]
        return jnp.asarray(np.concatenate([q, *rep], axis=-1))
    return {"qkv": jax.tree.map(expand, params["qkv"]), "proj": params["proj"]}


@pytest.mark.parametrize("attn_dropout,deterministic", [(0.0, True), (1e-12, False)])
def test_grouped_kv_heads_equal_repeated_heads(attn_dropout, deterministic):
    heads, kv_heads, hd = 4, 2, 4
    x = jax.random.normal(jax.random.key(9), (2, 5, heads * hd))
    grouped = Attention(heads, attn_dropout, num_kv_heads=kv_heads)
    params = random_params(grouped, x, seed=10)
    assert params["qkv"]["kernel"].shape == (heads * hd, (heads + 2 * kv_heads) * hd)
    mask = causal_mask(5, 5)
    rngs = {"dropout": jax.random.key(0)}
    out = grouped.apply({"params": params}, x, None, deterministic, mask=mask, rngs=rngs)
    full = Attention(heads, attn_dropout).apply({"params": repeat_kv_params(params, heads, kv_heads, hd)}, x, None,
                                                deterministic, mask=mask, rngs=rngs)
    np.testing.assert_allclose(out, full, atol=1e-6)
    expected = np_attention(to_np(x), to_np(params), heads, kv_heads, mask=np.tril(np.ones((5, 5), bool)))
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


# ---- (b) the KV cache -------------------------------------------------------------------------

GRID, CLS, WIDTH, HEADS = 3, 1, 16, 2
LENGTH, MAX_LEN, PREFILL = CLS + GRID * GRID, 12, 4


def garbage_cache(batch, kv_heads, chunks=1):
    """An empty cache whose rows hold large values, so a missing mask shows."""
    cache = KVCache.init(batch, MAX_LEN, kv_heads, WIDTH // HEADS, chunks=chunks)
    noise = jnp.split(1e3 * jax.random.normal(jax.random.key(11), cache.keys().shape), chunks, axis=1)
    return cache.replace(k=tuple(n.transpose(0, 2, 3, 1) for n in noise),
                         v=tuple(-n.transpose(0, 2, 1, 3) for n in noise))


def test_cache_update_writes_at_length():
    cache = KVCache.init(2, 6, 1, 3, jnp.bfloat16)
    assert cache.keys().shape == cache.values().shape == (2, 6, 1, 3) and cache.length.dtype == jnp.int32
    assert cache.k[0].shape == (2, 1, 3, 6) and cache.v[0].shape == (2, 1, 6, 3)  # the layouts attention reads
    first = jnp.ones((2, 2, 1, 3))
    cache = cache.update(first, 2 * first).update(3 * first[:, :1], 4 * first[:, :1])
    assert int(cache.length) == 3 and cache.k[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(cache.keys()[0, :, 0, 0], [1, 1, 3, 0, 0, 0])
    np.testing.assert_array_equal(cache.values()[1, :, 0, 0], [2, 2, 4, 0, 0, 0])
    np.testing.assert_array_equal(cache.filled_mask()[0, 0, 0], [True] * 3 + [False] * 3)


def test_a_cache_in_chunks_writes_the_open_chunk_and_shows_the_chunks_up_to_it():
    cache = KVCache.init(1, 5, 1, 2, chunks=3)  # 3 chunks of 2 positions
    assert (cache.chunk_len, cache.max_len, cache.visible_len) == (2, 6, 2) and len(cache.k) == len(cache.v) == 3
    first = jnp.ones((1, 2, 1, 2))
    cache = with_open_chunk([cache.update(first, 2 * first)], 1)[0].update(3 * first[:, :1], 4 * first[:, :1])
    assert int(cache.length) == 3 and cache.open_chunk == 1 and cache.visible_len == 4
    np.testing.assert_array_equal(cache.keys()[0, :, 0, 0], [1, 1, 3, 0, 0, 0])
    np.testing.assert_array_equal(cache.values()[0, :, 0, 1], [2, 2, 4, 0, 0, 0])
    np.testing.assert_array_equal(cache.filled_mask()[0, 0, 0], [True] * 3 + [False])
    with pytest.raises(ValueError, match="takes 1 to 5 chunks, got 6"):
        KVCache.init(1, 5, 1, 2, chunks=6)


@pytest.mark.parametrize("kv_heads, chunks", [(None, 1), (1, 1), (None, 3)])
def test_cached_decoding_in_scan_equals_full_causal_forward(kv_heads, chunks):
    """One scan over the positions after the prefill, or with the cache in 3 chunks of 4 positions
    one scan per chunk, that chunk open (the samplers' way); the unfilled positions hold garbage."""
    x = jax.random.normal(jax.random.key(12), (2, LENGTH, WIDTH))
    attn = Attention(HEADS, num_kv_heads=kv_heads)
    params = random_params(attn, x, seed=13)
    cos, sin = rope_2d(GRID, WIDTH // HEADS, cls_token_num=CLS)
    full = attn.apply({"params": params}, x, mask=causal_mask(LENGTH, LENGTH), rope=(cos, sin))
    np.testing.assert_allclose(full, np_attention(to_np(x), to_np(params), HEADS, kv_heads,
                                                  mask=np.tril(np.ones((LENGTH, LENGTH), bool)),
                                                  freqs_cis=np_freqs_cis_2d(GRID, WIDTH // HEADS)),
                               rtol=2e-5, atol=2e-5)

    @jax.jit
    def decode(params, x):
        cache = garbage_cache(x.shape[0], kv_heads or HEADS, chunks)
        prefix, cache = attn.apply({"params": params}, x[:, :PREFILL], rope=(cos[:PREFILL], sin[:PREFILL]),
                                   cache=cache)
        outs = [prefix]

        def step(cache, x_t):
            rope_t = tuple(jax.lax.dynamic_slice_in_dim(t, cache.length, 1) for t in (cos, sin))
            out, cache = attn.apply({"params": params}, x_t[:, None], rope=rope_t, cache=cache)
            return cache, out[:, 0]

        for chunk, start in enumerate(range(0, LENGTH, cache.chunk_len)):
            rows = x[:, max(start, PREFILL):start + cache.chunk_len]
            if rows.shape[1]:
                cache, rest = jax.lax.scan(step, with_open_chunk(cache, chunk), rows.swapaxes(0, 1))
                outs.append(rest.swapaxes(0, 1))
        return jnp.concatenate(outs, axis=1), cache

    decoded, cache = decode(params, x)
    assert int(cache.length) == LENGTH
    np.testing.assert_allclose(decoded, full, atol=1e-5)


def test_cached_block_steps_with_a_mask_equal_block_causal_forward():
    """VAR's way: each step feeds one whole block, which attends every filled key."""
    sizes = (1, 2, 3, 4)
    x = jax.random.normal(jax.random.key(14), (2, sum(sizes), WIDTH))
    attn = Attention(HEADS)
    params = random_params(attn, x, seed=15)
    full = attn.apply({"params": params}, x, mask=block_causal_mask(jnp.repeat(jnp.arange(4), np.array(sizes))))

    @jax.jit  # one program, where op by op every operation compiles on its own
    def blockwise(params, x):
        cache, outs, start = garbage_cache(2, HEADS), [], 0
        for size in sizes:
            out, cache = attn.apply({"params": params}, x[:, start:start + size], mask=jnp.array(True), cache=cache)
            outs.append(out)
            start += size
        return jnp.concatenate(outs, axis=1)

    np.testing.assert_allclose(blockwise(params, x), full, atol=1e-5)


def test_stepping_a_cache_compiles_once():
    x = jax.random.normal(jax.random.key(16), (2, LENGTH, WIDTH))
    attn = Attention(HEADS, num_kv_heads=1)
    params = random_params(attn, x, seed=17)
    cos, sin = rope_1d(jnp.arange(MAX_LEN), WIDTH // HEADS)

    @jax.jit
    def step(params, cache, x_t):
        rope_t = tuple(jax.lax.dynamic_slice_in_dim(t, cache.length, 1) for t in (cos, sin))
        return attn.apply({"params": params}, x_t, rope=rope_t, cache=cache)

    cache, outs = KVCache.init(2, MAX_LEN, 1, WIDTH // HEADS), []
    for t in range(LENGTH):
        out, cache = step(params, cache, x[:, t:t + 1])
        outs.append(out)
    assert step._cache_size() == 1
    full = attn.apply({"params": params}, x, mask=causal_mask(LENGTH, LENGTH), rope=(cos[:LENGTH], sin[:LENGTH]))
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("kv_heads, dtype, chunks", [(4, jnp.float32, 1), (2, jnp.float32, 3), (1, jnp.bfloat16, 1)])
def test_cached_attention_is_dot_product_attention_on_the_cache(kv_heads, dtype, chunks):
    """The cache's own layouts (keys transposed, in chunks) give what jax.nn.dot_product_attention
    gives on the visible keys and values as written, masks and grouped heads included."""
    q = jax.random.normal(jax.random.key(18), (3, 3, 4, 8), dtype)  # (B, n, heads, head_dim)
    k_new = jax.random.normal(jax.random.key(19), (3, 5, kv_heads, 8), dtype)
    v_new = jax.random.normal(jax.random.key(20), (3, 5, kv_heads, 8), dtype)
    visible = 9 if chunks == 1 else 6  # the chunks filled by 5 positions: 1 of 9, or 2 of 3
    allowed = jax.random.bernoulli(jax.random.key(21), 0.7, (3, 1, 3, visible)).at[..., 0].set(True)

    @jax.jit  # one program, where op by op every operation compiles on its own
    def both(q, k_new, v_new, allowed):
        cache = KVCache.init(3, 9, kv_heads, 8, dtype, chunks)
        for start in range(0, 5, cache.chunk_len):  # each write within the open chunk
            part = slice(start, min(start + cache.chunk_len, 5))
            cache = with_open_chunk(cache, start // cache.chunk_len).update(k_new[:, part], v_new[:, part])
        assert cache.visible_len == visible
        mask = combine_masks(allowed, cache.filled_mask())
        return (cached_attention(q, cache, mask, 8 ** -0.5),
                jax.nn.dot_product_attention(q, cache.keys()[:, :visible], cache.values()[:, :visible], mask=mask))

    got, expected = both(q, k_new, v_new, allowed)
    assert got.dtype == dtype and got.shape == (3, 3, 4, 8)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                               rtol=1e-6 if dtype == jnp.float32 else 1e-2, atol=1e-6 if dtype == jnp.float32 else 1e-2)
