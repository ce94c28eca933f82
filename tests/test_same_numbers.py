"""The layered layout changed no number: 12 train steps of the tiny MAR (dropout, two mask
buckets, diffusion_batch_mul 2) give the losses, params and EMA that the commit before it gave
(`fixtures/mar_tiny_12_steps_before_layout.npz`, written by that commit's code on this CPU)."""
import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from marjax.models.mar import MAR, init_params
from marjax.tasks.mar_step import make_train_step, weight_decay_mask
from marjax.tasks.recipe import learning_rate_schedule, make_optimizer
from marjax.tasks.train_state import create_train_state
from tests.conftest import TINY

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mar_tiny_12_steps_before_layout.npz")


def test_twelve_steps_reproduce_the_commit_before_the_layout():
    model = MAR(**TINY)
    schedule = learning_rate_schedule(1e-3, 4)
    tx = make_optimizer(schedule, weight_decay_mask)
    state = create_train_state(functools.partial(init_params, model), tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, schedule, ema_rate=0.9, diffusion_batch_mul=2, mask_buckets=2))
    batch = {"latents": jax.random.normal(jax.random.key(1), (8, 8, 8, 4)), "labels": jnp.arange(8) % 10}
    losses = []
    for _ in range(12):
        state, metrics = step(state, batch, jax.random.key(2))
        losses.append(float(metrics["loss"]))
    want = np.load(FIXTURE)
    # Bit for bit on the CPU that wrote the fixture; another CPU's XLA may round differently.
    np.testing.assert_allclose(losses, want["losses"], rtol=1e-5, atol=0)
    for prefix, tree in (("params/", state.params), ("ema/", state.ema_params)):
        flat = {prefix + "/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}
        assert sorted(flat) == sorted(k for k in want.files if k.startswith(prefix))
        for key, value in flat.items():
            np.testing.assert_allclose(value, want[key], rtol=1e-5, atol=1e-6, err_msg=key)
