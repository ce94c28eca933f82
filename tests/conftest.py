"""Shared tiny model settings for the tests (CPU, seconds to compile)."""
import jax
import pytest

from marjax.models.mar import MAR, init_params

TINY = dict(latent_size=8, latent_channels=4, patch_size=2, encoder_width=32, encoder_depth=1,
            encoder_heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2, num_classes=10,
            buffer_size=4, diffloss_depth=1, diffloss_width=32)


@pytest.fixture(scope="session")
def tiny_model() -> MAR:
    return MAR(**TINY)


@pytest.fixture(scope="session")
def tiny_params(tiny_model):
    """Initial params with every leaf perturbed, so zero-initialised layers are not trivially zero."""
    params = init_params(tiny_model, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
