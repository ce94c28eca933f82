"""DiffLoss as one unit: its loss and its sampler are the diffusion maths around its own denoiser,
with classifier-free guidance mixing eps and taking the variance from the conditional half."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads import diffusion
from marjax.heads.diffloss import TRAIN_DIFFUSION, DiffLoss

HEAD = DiffLoss(token_dim=3, width=16, depth=2)
ROWS, STEPS = 4, 5


@pytest.fixture(scope="module")
def params():
    """Initial params perturbed, so the zero-initialised adaLN and output layers are not trivially zero."""
    p = HEAD.init(jax.random.key(0), jnp.zeros((ROWS, 3)), jnp.zeros((ROWS,), jnp.int32), jnp.zeros((ROWS, 8)))
    leaves, treedef = jax.tree.flatten(p["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_loss_is_the_training_terms_of_its_denoiser(params):
    target, noise = jax.random.normal(jax.random.key(2), (2, ROWS, 3))
    z = jax.random.normal(jax.random.key(3), (ROWS, 8))
    t = jnp.array([0, 10, 500, 999])
    terms = HEAD.apply({"params": params}, target, z, t, noise, method=DiffLoss.loss)
    x_t = diffusion.q_sample(TRAIN_DIFFUSION, target, t, noise)
    out = HEAD.apply({"params": params}, x_t, t, z)
    expected = diffusion.training_losses(TRAIN_DIFFUSION, out, target, x_t, t, noise)
    for key in ("mse", "vb", "loss"):
        np.testing.assert_allclose(terms[key], expected[key], rtol=1e-6)


@pytest.mark.parametrize("scale", [None, 1.0, 3.0])
def test_sample_is_the_reverse_process_with_cfg_on_eps(params, scale):
    z = jax.random.normal(jax.random.key(4), ((1 if scale is None else 2) * ROWS, 8))
    draws = jax.random.normal(jax.random.key(5), (STEPS + 1, ROWS, 3))
    got = HEAD.apply({"params": params}, z, lambda j: draws[j], jnp.float32(0.9),
                     None if scale is None else jnp.float32(scale), STEPS, method=DiffLoss.sample)

    def model_fn(x, t):
        if scale is None:
            return HEAD.apply({"params": params}, x, t, z)
        cond = HEAD.apply({"params": params}, x, t, z[:ROWS])
        uncond = HEAD.apply({"params": params}, x, t, z[ROWS:])
        eps = uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3])
        return jnp.concatenate([eps, cond[:, 3:]], axis=-1)

    process = diffusion.make_diffusion(str(STEPS))
    want = diffusion.p_sample_loop(process, model_fn, draws[0], lambda j: draws[j + 1], 0.9)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if scale == 3.0:  # guidance changes the tokens
        plain = HEAD.apply({"params": params}, z[:ROWS], lambda j: draws[j], jnp.float32(0.9), None, STEPS,
                           method=DiffLoss.sample)
        assert not np.allclose(got, plain, atol=1e-3)
