"""The ViT block against an independent NumPy statement of the reference (timm 0.9.12 Block)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from marjax.blocks.transformer import Block


def np_layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def np_linear(x, p):
    return x @ p["kernel"] + p["bias"]


def np_block(x, p, heads, kv_len=None):
    b, n, d = x.shape
    hd = d // heads
    h = np_layer_norm(x, p["norm1"])
    qkv = np_linear(h, p["attn"]["qkv"]).reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
    logits = q @ k.transpose(0, 1, 3, 2) * hd ** -0.5
    if kv_len is not None:
        logits = np.where(np.arange(n)[None, None, None, :] < np.asarray(kv_len)[:, None, None, None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    a = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + np_linear(a, p["attn"]["proj"])
    h = np_linear(np_layer_norm(x, p["norm2"]), p["mlp"]["fc1"])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return x + np_linear(h, p["mlp"]["fc2"])


def random_params(block, x, seed=0):
    params = nn.unbox(block.init(jax.random.key(seed), x)["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [v + 0.2 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def test_block_matches_numpy_reference():
    block = Block(num_heads=4, attn_dropout=0.1, proj_dropout=0.1)
    x = jax.random.normal(jax.random.key(2), (2, 7, 32))
    params = random_params(block, x)
    out = block.apply({"params": params}, x)  # deterministic: no dropout
    expected = np_block(np.asarray(x, np.float64), jax.tree.map(lambda v: np.asarray(v, np.float64), params), 4)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_key_lengths_mask_padding_and_both_attention_paths_agree():
    block = Block(num_heads=2, attn_dropout=0.5, proj_dropout=0.0)
    x = jax.random.normal(jax.random.key(3), (2, 6, 16))
    params = random_params(block, x, seed=4)
    lengths = jnp.array([4, 6])
    fused = block.apply({"params": params}, x, lengths)
    np_params = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    np.testing.assert_allclose(fused, np_block(np.asarray(x, np.float64), np_params, 2, lengths), rtol=2e-5, atol=2e-5)
    # Garbage in the padded rows changes nothing in the valid rows.
    noisy = x.at[0, 4:].set(100.0)
    np.testing.assert_allclose(block.apply({"params": params}, noisy, lengths)[0, :4], fused[0, :4], atol=1e-5)
    # The explicit-softmax path (used while training with attention dropout) equals the fused call
    # when its dropout rate is zero.
    explicit = Block(num_heads=2, attn_dropout=1e-12, proj_dropout=0.0)
    out = explicit.apply({"params": params}, x, lengths, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(out, fused, rtol=1e-5, atol=1e-5)


def test_dropout_is_active_only_when_not_deterministic():
    block = Block(num_heads=2, attn_dropout=0.1, proj_dropout=0.1)
    x = jax.random.normal(jax.random.key(5), (2, 5, 16))
    params = random_params(block, x)
    det = block.apply({"params": params}, x)
    a = block.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    b = block.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a, det) and not np.allclose(a, b)
