"""The masked sampler: one compiled program, deterministic, DiffLoss only on each step's tokens, known
tokens kept."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.sampling import masked as sampler
from marjax.models.masking import sampling_schedule
from marjax.heads.diffloss import DiffLoss

SETTINGS = dict(num_iter=4, num_diffusion_steps=5)
NO_CHOICE = jnp.float32(0.0)  # the softmax head's choice temperature, unread by a DiffLoss model


def test_same_rng_same_images_and_rng_matters(tiny_model, tiny_params):
    labels = jnp.array([1, 2, 3])
    a = sampler.generate(tiny_model, tiny_params, labels, jax.random.key(0), cfg=2.0, **SETTINGS)
    b = sampler.generate(tiny_model, tiny_params, labels, jax.random.key(0), cfg=2.0, **SETTINGS)
    c = sampler.generate(tiny_model, tiny_params, labels, jax.random.key(1), cfg=2.0, **SETTINGS)
    assert a.shape == (3, 8, 8, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.isfinite(a).all() and (a != 0).all()  # every token was written


def test_guidance_at_scale_one_equals_the_unguided_path(tiny_model, tiny_params):
    """With s = 1 the guided path must reduce to the cond half: eps and variance from cond."""
    labels = jnp.array([4, 5])
    plain = sampler.generate(tiny_model, tiny_params, labels, jax.random.key(2), cfg=1.0, **SETTINGS)
    guided_fn = sampler._compiled_sampler(tiny_model, 4, 5, "linear", True, 2, False)
    guided = guided_fn(tiny_params, labels, jax.random.key(2), jnp.float32(1.0), jnp.float32(1.0), None, None, None,
                       NO_CHOICE)
    # An untrained denoiser makes the chain explode (values ~1e4), amplifying float32 noise from
    # the different batch shapes; any wrong combination is off by far more than 1e-3.
    np.testing.assert_allclose(guided, plain, rtol=1e-3, atol=1e-3)
    stronger = guided_fn(tiny_params, labels, jax.random.key(2), jnp.float32(3.0), jnp.float32(1.0), None, None, None,
                         NO_CHOICE)
    assert not np.allclose(stronger, plain, rtol=1e-2)


def test_unconditional_sampling(tiny_model, tiny_params):
    out = sampler.generate(tiny_model, tiny_params, None, jax.random.key(3), batch_size=2, cfg=1.5, **SETTINGS)
    assert out.shape == (2, 8, 8, 4) and np.isfinite(out).all()
    cond = sampler.generate(tiny_model, tiny_params, jnp.array([1, 1]), jax.random.key(3), cfg=1.5, **SETTINGS)
    assert not np.allclose(out, cond)
    with pytest.raises(ValueError, match="batch_size"):
        sampler.generate(tiny_model, tiny_params, None, jax.random.key(3))


def test_diffloss_runs_on_the_predicted_slab_only_and_compiles_once(tiny_model, tiny_params, monkeypatch):
    rows = []
    original = DiffLoss.sample

    def recording(self, z, *args):
        rows.append(z.shape[0])
        return original(self, z, *args)

    monkeypatch.setattr(DiffLoss, "sample", recording)
    sampler._compiled_sampler.cache_clear()
    labels = jnp.array([0, 1, 2])
    for cfg, temperature in [(2.0, 1.0), (3.5, 0.9), (1.7, 1.1)]:
        sampler.generate(tiny_model, tiny_params, labels, jax.random.key(0), cfg=cfg, temperature=temperature,
                         **SETTINGS)
    segments = sampling_schedule(tiny_model.seq_len, 4).segments(sampler.NUM_SEGMENTS)
    assert max(slab for _, _, slab, _ in segments) < tiny_model.seq_len
    # Traced once per segment: cfg and temperature changes do not recompile.
    assert rows == [2 * 3 * slab for _, _, slab, _ in segments]
    sampler._compiled_sampler.cache_clear()


def test_segments_fit_their_steps_and_change_nothing(tiny_model, tiny_params):
    schedule = sampling_schedule(64, 16)
    segments = schedule.segments(4)
    assert [(a, b) for a, b, _, _ in segments] == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert segments[0][3] < segments[-1][3] and segments[0][2] < segments[-1][2]
    assert max(s for _, _, s, _ in segments) == schedule.max_predicted
    # Given the same noise, one scan and four segments sample the same tokens.
    labels = jnp.array([3, 4])
    slab = sampling_schedule(tiny_model.seq_len, 4).max_predicted
    noise = jax.random.normal(jax.random.key(9), (4, 6, 2, slab, tiny_model.token_dim))
    outs = [sampler._compiled_sampler(tiny_model, 4, 5, "linear", True, 2, False, n)(
        tiny_params, labels, jax.random.key(0), jnp.float32(2.0), jnp.float32(1.0), None, noise, None, NO_CHOICE)
        for n in (1, 4)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-3, atol=1e-3)


def test_known_tokens_come_back_unchanged(tiny_model, tiny_params):
    """In-painting, with guidance: the left half of the token grid is given; it is returned exactly,
    the rest generated."""
    cfg = 2.0
    labels = jnp.array([1, 7])
    known = jax.random.normal(jax.random.key(4), (2, 8, 8, 4))
    grid = tiny_model.grid
    known_mask = jnp.broadcast_to((jnp.arange(grid[1]) < grid[1] // 2)[None, :], grid).reshape(1, -1)
    known_mask = jnp.concatenate([known_mask, jnp.zeros_like(known_mask)])  # the second sample knows nothing
    out = sampler.generate(tiny_model, tiny_params, labels, jax.random.key(0), cfg=cfg, known_latents=known,
                           known_mask=known_mask, **SETTINGS)
    np.testing.assert_array_equal(out[0, :, :4], known[0, :, :4])
    assert not np.allclose(out[0, :, 4:], known[0, :, 4:]) and np.isfinite(out).all()
    assert not np.allclose(out[1], known[1])
    free = sampler.generate(tiny_model, tiny_params, labels, jax.random.key(0), cfg=cfg, **SETTINGS)
    assert not np.allclose(out[0, :, 4:], free[0, :, 4:])  # the generated half sees the known half
    with pytest.raises(ValueError, match="come together"):
        sampler.generate(tiny_model, tiny_params, labels, jax.random.key(0), known_mask=known_mask, **SETTINGS)
