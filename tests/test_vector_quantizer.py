"""Nearest-code lookup, losses and straight-through gradients (code statistics: test_code_usage.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marjax.tokenizers.vector_quantizer import VectorQuantizer

CODES = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])


def quantize(z, l2_normalize):
    vq = VectorQuantizer(codebook_size=4, code_dim=2, l2_normalize=l2_normalize)
    return vq.apply({"params": {"codebook": CODES}}, z)


def test_nearest_code_and_losses_without_normalisation():
    z = jnp.array([[0.9, 0.2], [0.1, -1.5], [-3.0, 0.1]])
    z_q, indices, stats = quantize(z, False)
    np.testing.assert_array_equal(indices, [0, 3, 2])
    np.testing.assert_allclose(z_q, CODES[jnp.array([0, 3, 2])], atol=1e-6)
    mse = float(jnp.mean((CODES[jnp.array([0, 3, 2])] - z) ** 2))
    np.testing.assert_allclose(stats["codebook_loss"], mse, rtol=1e-6)
    np.testing.assert_allclose(stats["commitment_loss"], 0.25 * mse, rtol=1e-6)


def test_l2_normalisation_changes_the_nearest_code():
    z = jnp.array([[0.1, -0.5]])  # raw: closest to (1, 0); by direction: (0, -2)
    _, raw, _ = quantize(z, False)
    _, normalised, _ = quantize(z, True)
    assert int(raw[0]) == 0 and int(normalised[0]) == 3


def test_gradients_pass_straight_through_and_split_between_losses():
    z = jnp.array([[0.9, 0.2], [0.1, -1.5]])
    vq = VectorQuantizer(codebook_size=4, code_dim=2, l2_normalize=False)
    grad_z = jax.grad(lambda z: jnp.sum(vq.apply({"params": {"codebook": CODES}}, z)[0] * 3.0))(z)
    np.testing.assert_allclose(grad_z, 3.0 * jnp.ones_like(z))

    def loss(params, z):
        _, _, stats = vq.apply({"params": params}, z)
        return stats["codebook_loss"], stats["commitment_loss"]

    g_codebook = jax.grad(lambda p: loss(p, z)[0])({"codebook": CODES})["codebook"]
    g_commit_codes = jax.grad(lambda p: loss(p, z)[1])({"codebook": CODES})["codebook"]
    g_commit_z = jax.grad(lambda z: loss({"codebook": CODES}, z)[1])(z)
    assert np.abs(g_codebook).sum() > 0 and np.abs(g_commit_codes).sum() == 0
    np.testing.assert_allclose(g_commit_z, 0.25 * 2 * (z - CODES[jnp.array([0, 3])]) / z.size, rtol=1e-6)


def test_vq_model_shapes_and_code_round_trip():
    from marjax.tokenizers.vq import VQModel

    model = VQModel(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=32,
                    codebook_size=64, code_dim=4, resolution=16, image_channels=1)
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)
    params = nn.unbox(model.init(jax.random.key(1), images)["params"])
    recon, codes, stats = model.apply({"params": params}, images)
    assert recon.shape == images.shape and codes.shape == (2, 8, 8) and codes.dtype == jnp.int32
    assert set(stats) == {"codebook_loss", "commitment_loss", "codebook_usage", "perplexity"}
    quantized, _, _ = model.apply({"params": params}, images, method=VQModel.encode)
    np.testing.assert_allclose(model.apply({"params": params}, codes, method=VQModel.decode_codes),
                               model.apply({"params": params}, quantized, method=VQModel.decode), atol=1e-5)
