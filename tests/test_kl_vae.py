"""The KL-VAE: the kl16 preset's size, and parity with the reference LDM VAE code.

The fixture holds a small random-weight model in the reference's state-dict layout (float16-
exact weights), inputs, and the reference's moments and decoder output (LTH14/mar models/vae.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.tokenizers.kl import KL_PRESETS, AutoencoderKL, Posterior, init_vae_params
from marjax.tokenizers.kl_torch_layout import torch_key_to_path
from tests.vae_reference import TINY_VAE as TINY
from tests.vae_reference import load_reference, reference_params


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def params(reference):
    return reference_params(reference)


def test_kl16_has_the_reference_parameter_count():
    shapes = jax.eval_shape(lambda: init_vae_params(AutoencoderKL(**KL_PRESETS["kl16"]), jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 66_456_019


def test_torch_keys_map_onto_module_paths():
    assert torch_key_to_path("encoder.down.4.attn.0.q.weight") == ("encoder", "down_4_attn_0", "q", "kernel")
    assert torch_key_to_path("decoder.up.3.upsample.conv.bias") == ("decoder", "up_3_upsample", "conv", "bias")
    assert torch_key_to_path("encoder.mid.block_1.norm1.weight") == ("encoder", "mid_block_1", "norm1", "scale")
    assert torch_key_to_path("encoder.down.0.block.1.nin_shortcut.weight") == (
        "encoder", "down_0_block_1", "nin_shortcut", "kernel")


def test_encoder_moments_match_the_reference(reference, params):
    moments = TINY.apply({"params": params}, jnp.asarray(reference["images"]), method=AutoencoderKL.moments)
    assert moments.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(moments, reference["moments"], rtol=1e-4, atol=1e-4)


def test_decoder_matches_the_reference(reference, params):
    decoded = TINY.apply({"params": params}, jnp.asarray(reference["latents"]), method=AutoencoderKL.decode)
    assert decoded.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(decoded, reference["decoded"], rtol=1e-4, atol=1e-4)


def test_posterior_clamps_logvar_and_samples_around_the_mean():
    moments = jnp.concatenate([jnp.full((1, 2, 2, 3), 0.5), jnp.array([-50.0, 0.0, 40.0]) * jnp.ones((1, 2, 2, 3))], -1)
    posterior = Posterior.from_moments(moments)
    np.testing.assert_array_equal(posterior.logvar[0, 0, 0], [-30.0, 0.0, 20.0])
    samples = jnp.stack([posterior.sample(jax.random.key(i)) for i in range(200)])
    np.testing.assert_allclose(samples[..., 0], 0.5, atol=1e-5)  # std e^-15
    assert 0.8 < float(jnp.std(samples[..., 1])) < 1.2
    np.testing.assert_allclose(posterior.kl(), 0.5 * 4 * ((0.25 + np.exp(-30) - 1 + 30) + 0.25 + (0.25 + np.exp(20) - 1 - 20)),
                               rtol=1e-5)
