"""The Llama block's parts against NumPy statements: RMSNorm, LlamaGen's SwiGLU width, SwiGLU, drop path."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.blocks.dropout import DropPath
from marjax.blocks.llama import RMSNorm, SwiGLU, swiglu_hidden


def test_rms_norm_in_fp32_and_cast_back():
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 16))
    norm = RMSNorm(eps=1e-5)
    params = {"scale": 1.0 + jax.random.normal(jax.random.key(1), (16,))}
    xs = np.asarray(x, np.float64)
    expected = xs / np.sqrt(np.mean(xs ** 2, axis=-1, keepdims=True) + 1e-5) * np.asarray(params["scale"])
    np.testing.assert_allclose(norm.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)
    assert norm.apply({"params": params}, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    np.testing.assert_array_equal(nn.unbox(norm.init(jax.random.key(2), x))["params"]["scale"], np.ones(16))


@pytest.mark.parametrize("width, multiple_of, multiplier, hidden", [
    (768, 256, None, 2048), (1024, 256, None, 2816), (1280, 256, None, 3584), (1536, 256, None, 4096),
    (2560, 256, None, 6912), (3200, 256, None, 8704), (64, 32, None, 192), (64, 32, 1.3, 224)])
def test_swiglu_hidden_is_llamagens(width, multiple_of, multiplier, hidden):
    """LlamaGen's GPT-B, L, XL, XXL, XXXL and 3B widths, the tiny config, and int(1.3 * 170) = 221 -> 224."""
    assert swiglu_hidden(width, multiple_of, multiplier) == hidden


def test_swiglu():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    ffn = SwiGLU(hidden=32)
    params = jax.tree.map(lambda v: 10 * v, nn.unbox(ffn.init(jax.random.key(1), x)["params"]))
    w1, w2, w3 = (np.asarray(params[name]["kernel"], np.float64) for name in ("w1", "w2", "w3"))
    assert "bias" not in params["w1"]
    xs = np.asarray(x, np.float64)
    gate = xs @ w1
    expected = (gate / (1 + np.exp(-gate)) * (xs @ w3)) @ w2
    np.testing.assert_allclose(ffn.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-5)


def test_drop_path_drops_whole_samples_at_the_rate():
    x = jnp.ones((4000, 3, 5))
    out = np.asarray(DropPath(0.25).apply({}, x, False, rngs={"dropout": jax.random.key(0)}))
    per_sample = out.reshape(4000, -1)
    dropped = (per_sample == 0).all(axis=1)
    assert np.all(dropped | (per_sample == np.float32(1 / np.float32(0.75))).all(axis=1))
    assert abs(dropped.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000), dropped.mean()
    np.testing.assert_array_equal(DropPath(0.25).apply({}, x, True), x)
    np.testing.assert_array_equal(DropPath(0.0).apply({}, x, False), x)
