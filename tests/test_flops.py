"""The analytic FLOP counts against the matmuls a traced MAR really contains, and the training
mask distribution they average over against draws from the train step's own sampler."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.models import mar_flops as flops
from marjax.models.masking import sample_num_masked
from marjax.models.mar import MAR, init_params, mar_preset

TINY = MAR(latent_size=4, latent_channels=8, encoder_width=64, encoder_depth=2, encoder_heads=4,
           decoder_width=32, decoder_depth=3, decoder_heads=2, buffer_size=4, num_classes=5,
           diffloss_depth=2, diffloss_width=48)


def traced_matmul_flops(fn, *args) -> int:
    """2 x multiply-adds of every dot_general in `fn`'s jaxpr (scan bodies times their length)."""

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs_shape = eqn.invars[0].aval.shape
                total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in contract)
            repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
            for value in eqn.params.values():
                if isinstance(value, jax.extend.core.ClosedJaxpr):
                    total += repeat * count(value.jaxpr)
                elif isinstance(value, jax.extend.core.Jaxpr):
                    total += repeat * count(value)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda key: init_params(TINY, key))(jax.random.key(0))


def test_condition_flops_equal_the_traced_encoder_and_decoder(params):
    batch, known = 3, 5
    tokens = jnp.zeros((batch, TINY.seq_len, TINY.token_dim))
    mask = jnp.arange(TINY.seq_len)[None].repeat(batch, 0) >= known  # exactly `known` known tokens each
    labels, drop = jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool)

    def condition(p):
        return TINY.apply({"params": p}, tokens, mask, labels, drop, known, method=MAR.condition)

    assert traced_matmul_flops(condition, params) == batch * flops.condition_flops(TINY, known)


def test_diffloss_flops_equal_the_traced_mlp(params):
    rows = 7
    x, t, z = jnp.zeros((rows, TINY.token_dim)), jnp.zeros((rows,), jnp.int32), jnp.zeros((rows, 32))
    traced = traced_matmul_flops(lambda p: TINY.apply({"params": p}, x, t, z, method=MAR.denoise), params)
    assert traced == rows * flops.diffloss_flops_per_row(TINY.token_dim, 32, 48, 2)


@pytest.mark.parametrize("num_masked_max", [None, 13])
def test_training_forward_is_condition_plus_the_mlp_on_every_copied_row(params, num_masked_max):
    """The reference's count, less what marjax skips: cond_embed runs once per token, not once per
    copy, and with `num_masked_max` the MLP runs on that many positions per sample, not all L."""
    batch, known, mul = 2, 3, 4
    rows = batch * TINY.seq_len * mul
    mask = jnp.arange(TINY.seq_len)[None].repeat(batch, 0) >= known

    def loss(p):
        return TINY.apply({"params": p}, jnp.zeros((batch, TINY.seq_len, TINY.token_dim)), jnp.zeros((batch,), jnp.int32),
                          mask, jnp.zeros((batch,), bool), jnp.zeros((rows,), jnp.int32),
                          jnp.zeros((rows, TINY.token_dim)), known, num_masked_max)[0]

    positions = TINY.seq_len if num_masked_max is None else num_masked_max
    per_row = flops.diffloss_flops_per_row(TINY.token_dim, 32, 48, 2)
    cond_embed_per_copy = 2 * 32 * 48
    assert traced_matmul_flops(loss, params) == batch * (flops.condition_flops(TINY, known)
                                                        + positions * (mul * per_row - (mul - 1) * cond_embed_per_copy))


def test_known_token_distribution_matches_the_train_steps_mask_sampler():
    seq_len = 16
    probs = flops.known_token_probabilities(seq_len)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(probs[seq_len - math.ceil(0.7 * seq_len) + 1:] == 0)
    draws = jax.vmap(lambda k: sample_num_masked(k, seq_len))(jax.random.split(jax.random.key(0), 200_000))
    empirical = np.bincount(seq_len - np.asarray(draws), minlength=seq_len + 1) / draws.shape[0]
    np.testing.assert_allclose(empirical, probs, atol=3e-3)


def test_sampling_counts_each_steps_known_tokens_and_predicted_rows():
    model = TINY
    per_row = flops.diffloss_flops_per_row(model.token_dim, 32, 48, 2)
    # One step: the encoder sees only the buffer, the MLP every token at each diffusion step.
    assert flops.sample_flops_per_image(model, 1, 10, 1.0) == flops.condition_flops(model, 0) + 16 * 10 * per_row
    # Two steps over 16 tokens: floor(16 cos(pi/4)) = 11 stay masked, so 5 then 11 are predicted.
    two = flops.condition_flops(model, 0) + flops.condition_flops(model, 5) + 16 * 10 * per_row
    assert flops.sample_flops_per_image(model, 2, 10, 1.0) == two
    assert flops.sample_flops_per_image(model, 2, 10, 3.0) == 2 * two


def test_mar_large_at_the_published_throughput_is_the_published_mfu():
    """143 img/s per H100 (989 TFLOP/s bf16) is "roughly 10-17% of peak" in the reference notes."""
    mfu = flops.train_flops_per_image(mar_preset("mar_large")) * 143 / 989e12
    assert 0.10 < mfu < 0.17
