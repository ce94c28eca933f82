"""One tokenizer protocol: pixels, KL and VQ behind it, and a tokenizer run's workdir (KL or VQ)
loaded as a tokenizer through the config's tokenizer section."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_vae
from marjax.checkpoints import RunCheckpoints
from marjax.errors import ConfigError
from marjax.parallel.sharding import make_mesh
from marjax.tasks.registry import make_task
from marjax.tasks.tokenizer_from_config import make_tokenizer, tokenizer_spec
from marjax.tokenizers.pixels import PixelTokenizer
from marjax.tokenizers.protocol import ContinuousTokenizer, DiscreteTokenizer


def test_pixels_are_the_identity():
    tokenizer = PixelTokenizer(channels=1)
    images = jnp.linspace(-1, 1, 16).reshape(1, 4, 4, 1)
    assert isinstance(tokenizer, ContinuousTokenizer) and not isinstance(tokenizer, DiscreteTokenizer)
    np.testing.assert_array_equal(tokenizer.decode(tokenizer.encode(images, jax.random.key(0))), images)


def test_a_vq_tokenizer_run_serves_as_a_discrete_tokenizer(tmp_path):
    """(A KL run as a continuous tokenizer: tests/test_tokenizer_train_step.py, through the CLI.)"""
    config = digits_vae.get_config("vq")
    config.tokenizer.update(ch_mult=(1,), num_res_blocks=1, disc_ndf=8, disc_layers=1)
    task = make_task(config, make_mesh(devices=jax.devices()[:1]))
    state = jax.jit(task.init)(jax.random.key(0))
    checkpoints = RunCheckpoints(str(tmp_path))
    checkpoints.save(1, state, None, config)
    checkpoints.close()

    config.tokenizer.checkpoint = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no such directory"):
        make_tokenizer(config)
    config.tokenizer.checkpoint = str(tmp_path)
    tokenizer = make_tokenizer(config)
    spec = tokenizer_spec(config)
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1), minval=-1, maxval=1)
    assert isinstance(tokenizer, DiscreteTokenizer) and spec.discrete
    codes = tokenizer.encode_codes(images)
    assert codes.shape == (2, 16 // spec.stride, 16 // spec.stride) and codes.dtype == jnp.int32
    assert int(codes.max()) < spec.codebook_size == tokenizer.codebook_size
    # codes -> images is the EMA autoencoder's own reconstruction.
    recon = tokenizer.model.apply({"params": state.ema_params}, images)[0]
    np.testing.assert_allclose(tokenizer.decode_codes(codes), recon, rtol=1e-5, atol=1e-5)
