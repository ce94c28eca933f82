"""The Python API on a tiny MAR run written in-process: load in one call, generate and edit uint8
images (the same seed, the same images), sampler settings per call, the run's tokenizer, errors."""
import jax
import numpy as np
import pytest

from marjax import api
from marjax.checkpoints import RunCheckpoints
from marjax.data.digits import DigitsSource
from marjax.errors import ConfigError
from marjax.parallel.sharding import make_mesh
from marjax.tasks.registry import make_task
from tests.tiny_configs import TINY_CONFIGS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny MAR's step-0 checkpoint (perturbed so samples are not flat), loaded through the API."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = TINY_CONFIGS["mar"](workdir)
    task = make_task(config, make_mesh(devices=jax.devices()[:1]))
    state = jax.jit(task.init)(jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.ema_params))))
    noisy = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), state.ema_params)
    checkpoints = RunCheckpoints(workdir)
    checkpoints.save(0, state.replace(ema_params=noisy), None, config)
    checkpoints.wait()
    checkpoints.close()
    return api.load(config, workdir, {"sample.num_iter": 2})


def test_generate_gives_uint8_images_of_the_classes_asked_for(run):
    images = run.generate([3, 3, 7], seed=0)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, run.generate([3, 3, 7], seed=0))
    assert not np.array_equal(images, run.generate([3, 3, 7], seed=1))
    assert run.generate(10).shape == (10, 8, 8, 1)


def test_sampler_settings_apply_to_one_call(run):
    plain, guided = run.generate([1, 2], seed=0), run.generate([1, 2], seed=0, cfg=3.0)
    assert not np.array_equal(plain, guided)
    np.testing.assert_array_equal(plain, run.generate([1, 2], seed=0))
    with pytest.raises(ConfigError, match="unknown config key 'sample.cfgg'"):
        run.generate([1], cfgg=2.0)


def test_edit_keeps_the_kept_pixels(run):
    digit = DigitsSource(8)[0]["image"]
    keep = np.zeros((8, 8), bool)
    keep[:4] = True
    results = run.edit(digit, keep, label=3, num_samples=2)
    assert results.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(results[:, :4], np.broadcast_to(digit[:4], (2, 4, 8, 1)))
    with pytest.raises(ValueError, match="image must be"):
        run.edit(digit[:4], keep, label=3)


def test_the_runs_tokenizer_round_trips_pixels(run):
    images = DigitsSource(8)[0]["image"][None].astype(np.float32) / 127.5 - 1
    latents = run.tokenizer.encode(images, jax.random.key(0))
    np.testing.assert_allclose(run.tokenizer.decode(latents), images, atol=1e-6)


def test_bad_classes_and_keys_are_named(run, tmp_path):
    with pytest.raises(ConfigError, match="classes must be"):
        run.generate([10])
    with pytest.raises(ConfigError, match="unknown config key 'sample.nope'"):
        api.load(run.config, str(tmp_path), {"sample.nope": 1})
    with pytest.raises(FileNotFoundError, match="checkpoints does not exist"):
        api.load(run.config, str(tmp_path))
