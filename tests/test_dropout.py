"""The hashed dropout: its rate, scale and determinism, and masks without structure across rows,
columns or calls."""
import jax
import jax.numpy as jnp
import numpy as np

from marjax.blocks.dropout import Dropout, dropout_mask

SHAPE = (16, 80, 256)  # 327,680 decisions: the drop fraction's standard error is 5e-4 at rate 0.1


def apply(rate: float, x: jax.Array, seed: int, deterministic: bool = False) -> jax.Array:
    return Dropout(rate).apply({}, x, deterministic, rngs={"dropout": jax.random.key(seed)})


def test_drops_at_the_rate_and_scales_what_it_keeps():
    for rate in (0.1, 0.5):
        out = np.asarray(apply(rate, jnp.ones(SHAPE), seed=0))
        dropped = out == 0
        assert abs(dropped.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / out.size), (rate, dropped.mean())
        np.testing.assert_array_equal(out[~dropped], np.float32(1 / np.float32(1 - rate)))


def test_identity_when_deterministic_or_rate_zero():
    x = jax.random.normal(jax.random.key(1), SHAPE)
    np.testing.assert_array_equal(apply(0.1, x, 0, deterministic=True), x)
    np.testing.assert_array_equal(apply(0.0, x, 0), x)


def test_the_same_key_gives_the_same_mask_and_another_key_an_independent_one():
    a, b, c = (np.asarray(dropout_mask(jax.random.key(s), 0.5, SHAPE)) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    agreement = (a == c).mean()  # independent fair masks agree half the time
    assert abs(agreement - 0.5) < 0.005, agreement


def test_every_row_and_column_drops_at_the_rate_without_neighbour_correlation():
    keep = np.asarray(dropout_mask(jax.random.key(5), 0.5, SHAPE), np.float64).reshape(-1, SHAPE[-1])
    # Per column over 1,280 rows and per row over 256 columns: a mask repeated across rows or
    # columns would put these fractions at 0 or 1.
    assert np.abs(keep.mean(axis=0) - 0.5).max() < 5 * np.sqrt(0.25 / keep.shape[0])
    assert np.abs(keep.mean(axis=1) - 0.5).max() < 5.5 * np.sqrt(0.25 / keep.shape[1])
    centred = keep - 0.5
    for shifted_a, shifted_b in ((centred[:, 1:], centred[:, :-1]), (centred[1:], centred[:-1])):
        correlation = (shifted_a * shifted_b).mean() / 0.25
        assert abs(correlation) < 0.01, correlation
