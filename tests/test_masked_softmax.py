"""MAR with the softmax head (the MAR paper's CrossEnt column): its masked sampler keeps tokens by
the random order or by confidence, in one compiled program, with guidance and known codes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads.softmax import SoftmaxHead
from marjax.models.mar import MAR, init_params
from marjax.sampling import masked as sampler

VOCAB = 12


@pytest.fixture(scope="module")
def model_and_params():
    model = MAR(latent_size=4, latent_channels=1, patch_size=1, encoder_width=32, encoder_depth=1, encoder_heads=2,
                decoder_width=32, decoder_depth=1, decoder_heads=2, num_classes=10, buffer_size=2, head="softmax",
                vocab_size=VOCAB)
    params = init_params(model, jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    # Perturbed well away from init, so the logits differ by class and position.
    return model, jax.tree.map(lambda p: p + 0.5 * jax.random.normal(next(keys), p.shape), params)


@pytest.mark.parametrize("choice", ["order", "confidence"])
def test_same_rng_same_codes_and_rng_matters(model_and_params, choice):
    model, params = model_and_params
    labels = jnp.array([1, 2, 3])
    a, b, c = (sampler.generate(model, params, labels, jax.random.key(k), num_iter=4, cfg=2.0, choice=choice)
               for k in (0, 0, 1))
    assert a.shape == (3, 4, 4) and a.dtype == jnp.int32
    assert int(a.min()) >= 0 and int(a.max()) < VOCAB
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_guidance_at_scale_one_equals_the_unguided_path(model_and_params):
    model, params = model_and_params
    labels = jnp.array([4, 5])
    plain = sampler.generate(model, params, labels, jax.random.key(2), num_iter=4, cfg=1.0)
    guided_fn = sampler._compiled_sampler(model, 4, 0, "linear", True, 2, False)
    args = (None, None, None, jnp.float32(4.5))
    guided = guided_fn(params, labels, jax.random.key(2), jnp.float32(1.0), jnp.float32(1.0), *args)
    np.testing.assert_array_equal(guided, plain)
    stronger = guided_fn(params, labels, jax.random.key(2), jnp.float32(8.0), jnp.float32(1.0), *args)
    assert not np.array_equal(stronger, plain)


@pytest.mark.parametrize("choice", ["order", "confidence"])
def test_known_codes_come_back_and_the_rest_is_generated(model_and_params, choice):
    model, params = model_and_params
    known = jax.random.randint(jax.random.key(3), (2, 4, 4), 0, VOCAB)
    known_mask = jnp.broadcast_to(jnp.arange(4)[None, :] < 2, (4, 4)).reshape(1, -1).repeat(2, axis=0)
    out = sampler.generate(model, params, jnp.array([1, 7]), jax.random.key(0), num_iter=4, cfg=2.0,
                           known_latents=known, known_mask=known_mask, choice=choice)
    np.testing.assert_array_equal(out[:, :, :2], known[:, :, :2])
    assert not np.array_equal(out[:, :, 2:], known[:, :, 2:])


def test_temperature_and_cfg_changes_do_not_recompile(model_and_params, monkeypatch):
    model, params = model_and_params
    traces = []
    original = SoftmaxHead.__call__

    def counting(self, x):
        traces.append(x.shape)
        return original(self, x)

    monkeypatch.setattr(SoftmaxHead, "__call__", counting)
    sampler._compiled_sampler.cache_clear()
    for cfg, temperature in [(2.0, 1.0), (3.0, 0.5)]:
        sampler.generate(model, params, jnp.array([1, 2]), jax.random.key(0), num_iter=4, cfg=cfg,
                         temperature=temperature, choice="confidence")
    assert len(traces) == min(4, sampler.NUM_SEGMENTS)  # one trace per segment, in the first call only
    sampler._compiled_sampler.cache_clear()


def test_choice_by_confidence_needs_the_softmax_head(tiny_model, tiny_params):
    with pytest.raises(ValueError, match="'confidence' for the softmax head"):
        sampler.generate(tiny_model, tiny_params, jnp.array([1]), jax.random.key(0), num_iter=2, choice="confidence")
