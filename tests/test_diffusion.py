"""The diffusion tables and maths against closed forms, and respacing against the reference's sets."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads import diffusion


def alpha_bar(t):
    return np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2


def test_cosine_betas_closed_form():
    betas = diffusion.cosine_betas(1000)
    i = np.arange(1000)
    expected = np.minimum(1 - alpha_bar((i + 1) / 1000) / alpha_bar(i / 1000), 0.999)
    assert betas.dtype == np.float64
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert betas[-1] == 0.999 and betas[0] < 1e-4


def test_respaced_timesteps_are_the_reference_set():
    kept = diffusion.space_timesteps(1000, "100")
    assert len(kept) == 100
    assert kept[:7] == [0, 10, 20, 30, 40, 50, 61]
    assert kept[-2:] == [989, 999]
    # Stride 999/99 accumulated with Python's round.
    cur, expected = 0.0, []
    for _ in range(100):
        expected.append(round(cur))
        cur += 999 / 99
    assert kept == expected
    assert len(diffusion.space_timesteps(1000, "50")) == 50


def test_every_respacing_form_keeps_the_reference_timesteps():
    """Step counts, sections and "ddimN" against the sets the reference's space_timesteps returned
    (fixture written by LTH14/mar's diffusion/respace.py)."""
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "mar_respacing_reference.json")) as f:
        reference = json.load(f)["kept"]
    assert {"10,15,20", "ddim50", "ddim7"} <= set(reference)
    for respacing, kept in reference.items():
        assert diffusion.space_timesteps(1000, respacing) == kept, respacing


@pytest.mark.parametrize("respacing, message", [("ddim", "not a positive step count"), ("fast", "the forms are"),
                                                ("10,,5", "''"), ("0", "'0'"), ("2000", "section of 1000"),
                                                ("ddim999", "no integer stride")])
def test_a_respacing_that_cannot_be_made_is_named(respacing, message):
    with pytest.raises(ValueError, match=message):
        diffusion.space_timesteps(1000, respacing)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    base = diffusion.make_diffusion()
    spaced = diffusion.make_diffusion("100")
    kept = np.array(diffusion.space_timesteps(1000, "100"))
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-10)
    np.testing.assert_array_equal(base.timestep_map, np.arange(1000))


def _rows(n=6, c=3, seed=0):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.normal(size=(n, c)), jnp.float32), jnp.asarray(r.normal(size=(n, c)), jnp.float32))


def test_true_epsilon_gives_posterior_mean_and_zero_loss_away_from_t0():
    d = diffusion.make_diffusion()
    x0, noise = _rows()
    t = jnp.array([1, 5, 100, 500, 998, 999])
    x_t = diffusion.q_sample(d, x0, t, noise)
    # Variance value -1 selects the clipped posterior log variance; +1 selects log beta.
    out = jnp.concatenate([noise, -jnp.ones_like(noise)], axis=-1)
    mean, log_var = diffusion.p_mean_variance(d, out, x_t, t)
    true_mean, true_log_var = diffusion.q_posterior(d, x0, x_t, t)
    np.testing.assert_allclose(mean, true_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_var, jnp.broadcast_to(true_log_var, log_var.shape), rtol=1e-6)
    _, log_var_hi = diffusion.p_mean_variance(d, jnp.concatenate([noise, jnp.ones_like(noise)], -1), x_t, t)
    np.testing.assert_allclose(log_var_hi[:, 0], np.log(d.betas[np.asarray(t)]).astype(np.float32), rtol=1e-6)
    terms = diffusion.training_losses(d, out, x0, x_t, t, noise)
    np.testing.assert_allclose(terms["mse"], 0.0, atol=1e-10)
    np.testing.assert_allclose(terms["vb"], 0.0, atol=2e-3)
    # A wrong epsilon is penalised by both terms.
    wrong = diffusion.training_losses(d, out.at[:, :3].add(0.5), x0, x_t, t, noise)
    np.testing.assert_allclose(wrong["mse"], 0.25, rtol=1e-5)
    assert (wrong["vb"] > 0).all()  # frozen for gradients only: the value still counts


def test_vb_term_does_not_backpropagate_into_epsilon():
    d = diffusion.make_diffusion()
    x0, noise = _rows()
    t = jnp.array([0, 3, 10, 200, 700, 999])
    x_t = diffusion.q_sample(d, x0, t, noise)
    out = jnp.concatenate([noise + 0.3, 0.2 * jnp.ones_like(noise)], axis=-1)
    grad = jax.grad(lambda o: diffusion.training_losses(d, o, x0, x_t, t, noise)["vb"].sum())(out)
    assert (grad[:, :3] == 0).all() and (jnp.abs(grad[:, 3:]) > 0).all()


def test_decoder_nll_at_t0_is_a_discretised_gaussian_in_bits():
    d = diffusion.make_diffusion()
    x0 = jnp.array([[0.0, 0.5, -1.0, 1.0]])
    t = jnp.array([0])
    out = jnp.zeros((1, 8))
    x_t = diffusion.q_sample(d, x0, t, jnp.zeros_like(x0))
    terms = diffusion.training_losses(d, out, x0, x_t, t, jnp.zeros_like(x0))
    mean, log_var = diffusion.p_mean_variance(d, out, x_t, t)
    sd = np.exp(0.5 * np.asarray(log_var))[0]
    cdf = lambda v: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))  # noqa: E731
    m, x = np.asarray(mean)[0], np.asarray(x0)[0]
    probs = cdf((x - m + 1 / 255) / sd) - cdf((x - m - 1 / 255) / sd)
    probs[2] = cdf((x[2] - m[2] + 1 / 255) / sd[2])  # x < -0.999: the whole left tail
    probs[3] = 1 - cdf((x[3] - m[3] - 1 / 255) / sd[3])  # x > 0.999: the whole right tail
    expected = -np.mean(np.log(probs)) / np.log(2)
    np.testing.assert_allclose(terms["vb"][0], expected, rtol=1e-4)


def test_reverse_process_with_an_oracle_recovers_the_data_point():
    d = diffusion.make_diffusion("10")
    x0 = jnp.array([[0.3, -0.7], [1.2, 0.1]])
    abar = jnp.asarray(np.concatenate([d.alphas_cumprod]).astype(np.float32))
    index_of = {int(v): i for i, v in enumerate(d.timestep_map)}
    lookup = jnp.array([index_of.get(v, 0) for v in range(1000)])

    def oracle(x, t_model):  # the exact epsilon for a point mass at x0, posterior variance
        a = abar[lookup[t_model]][:, None]
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return jnp.concatenate([eps, -jnp.ones_like(eps)], axis=-1)

    key = jax.random.key(0)
    x = diffusion.p_sample_loop(d, oracle, jax.random.normal(key, x0.shape),
                                lambda j: jax.random.normal(jax.random.fold_in(key, j), x0.shape), 1.0)
    np.testing.assert_allclose(x, x0, atol=1e-4)


def test_clip_denoised_clips_the_x0_prediction_only_when_asked():
    d = diffusion.make_diffusion()
    x0, noise = _rows()
    t = jnp.array([1, 5, 100, 500, 998, 999])
    x_t = diffusion.q_sample(d, 3.0 * x0, t, noise)  # an x_0 far outside [-1, 1]
    out = jnp.concatenate([noise, -jnp.ones_like(noise)], axis=-1)
    unclipped, _ = diffusion.p_mean_variance(d, out, x_t, t)
    want_unclipped, _ = diffusion.q_posterior(d, 3.0 * x0, x_t, t)
    np.testing.assert_allclose(unclipped, want_unclipped, rtol=1e-3, atol=1e-3)
    for bound in (0.5, 1.0):
        clipped, _ = diffusion.p_mean_variance(d, out, x_t, t, clip_denoised=bound)
        want_clipped, _ = diffusion.q_posterior(d, jnp.clip(3.0 * x0, -bound, bound), x_t, t)
        np.testing.assert_allclose(clipped, want_clipped, rtol=1e-3, atol=1e-3)
        assert np.abs(np.asarray(clipped - unclipped)).max() > 0.1


def test_a_saturating_epsilon_runs_away_unclipped_and_stays_in_the_bound_clipped():
    """The latent path's speckle (BENCHMARKS.md "Sample quality beyond the 8x8 digits"): a network
    whose epsilon cannot follow inputs beyond its training range (here the true epsilon of data at
    0, saturating at +-2, as a briefly trained MLP's) under-predicts it for the rare large x_T;
    the cosine schedule multiplies that error by up to sqrt(alpha_bar_{t-1} / alpha_bar_t) ~ 300
    at the first step, and each larger x is predicted worse: unclipped, samples run away (the
    digits' latents: std ~1,300 for data of std 1); clipping x_0 keeps them in the bound."""
    d = diffusion.make_diffusion("100")
    abar = jnp.asarray(d.alphas_cumprod.astype(np.float32))
    index_of = jnp.zeros(1000, jnp.int32).at[jnp.asarray(d.timestep_map)].set(jnp.arange(d.num_timesteps))

    def saturating(x, t_model):
        eps = 2.0 * jnp.tanh(x / jnp.sqrt(1 - abar[index_of[t_model]][:, None]) / 2.0)
        return jnp.concatenate([eps, jnp.zeros_like(eps)], axis=-1)

    key = jax.random.key(0)
    x_T = jax.random.normal(key, (256, 4))
    noise = lambda j: jax.random.normal(jax.random.fold_in(key, j), x_T.shape)
    unclipped = diffusion.p_sample_loop(d, saturating, x_T, noise)
    clipped = diffusion.p_sample_loop(d, saturating, x_T, noise, clip_denoised=5.0)
    assert float(jnp.std(unclipped)) > 100 and float(jnp.abs(clipped).max()) <= 5.0
