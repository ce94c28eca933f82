"""Shared tiny model settings for the tests (CPU, seconds to compile), and one persistent
compilation cache for the whole session."""
import atexit
import functools
import os
import shutil
import tempfile

# Programs that one test, or one of the programs it starts, compiled are loaded by the others:
# JAX's persistent compilation cache in a folder that lives as long as the session. Set before
# JAX loads, and inherited by subprocesses. Compile-count tests still see every lowering (JAX logs
# "Compiling ..." before it looks in the cache).
# pytest-xdist's workers inherit the folder from the process that made it, which removes it.
if "MARJAX_TESTS_JAX_CACHE" not in os.environ:
    os.environ["MARJAX_TESTS_JAX_CACHE"] = tempfile.mkdtemp(prefix="marjax-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["MARJAX_TESTS_JAX_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["MARJAX_TESTS_JAX_CACHE"]

import jax  # noqa: E402
import pytest  # noqa: E402

from marjax.models.mar import MAR, init_params  # noqa: E402
from marjax.tasks.mar_step import weight_decay_mask  # noqa: E402
from marjax.tasks.recipe import make_optimizer  # noqa: E402
from marjax.tasks.train_state import create_train_state  # noqa: E402

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


def mar_optimizer(schedule, **kwargs):
    """AdamW with MAR's weight-decay mask (`make_optimizer`'s other arguments in kwargs)."""
    return make_optimizer(schedule, weight_decay_mask, **kwargs)


def mar_state(model: MAR, tx, rng: jax.Array):
    """A fresh TrainState of `model`."""
    return create_train_state(functools.partial(init_params, model), tx, rng)
