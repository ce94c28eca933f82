"""Codebook usage and perplexity of a batch of codes, and LlamaGen's rolling usage window
(the window against the reference's own buffer: test_llamagen_vq_parity.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.tokenizers.code_usage import USAGE_WINDOW, code_statistics, init_usage_window, update_usage_window


@pytest.mark.parametrize("codes, usage, perplexity", [
    ([0, 0, 1, 1], 0.5, 2.0),  # two codes, equally often
    ([3, 3, 3, 3], 0.25, 1.0),  # one code takes everything
    ([0, 1, 2, 3], 1.0, 4.0),  # the whole codebook, uniformly
    ([0, 0, 0, 1], 0.5, np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))),
])
def test_usage_and_perplexity_of_a_batch(codes, usage, perplexity):
    stats = code_statistics(jnp.array(codes).reshape(2, 2), 4)
    np.testing.assert_allclose(stats["codebook_usage"], usage)
    np.testing.assert_allclose(stats["perplexity"], perplexity, rtol=1e-6)


def test_window_keeps_the_latest_codes_in_order():
    window = init_usage_window(6)
    assert window.shape == (6,) and window.dtype == jnp.int32 and init_usage_window().shape == (USAGE_WINDOW,)
    window = update_usage_window(window, jnp.array([[5, 6], [7, 8]]))  # row-major
    np.testing.assert_array_equal(window, [0, 0, 5, 6, 7, 8])
    window = jax.jit(update_usage_window)(window, jnp.array([1, 2, 3]))
    np.testing.assert_array_equal(window, [6, 7, 8, 1, 2, 3])


def test_window_usage_counts_the_starting_zeros_until_pushed_out():
    """LlamaGen's buffer starts at zeros, so code 0 counts as used until the window has turned over."""
    window = update_usage_window(init_usage_window(4), jnp.array([2, 3]))
    np.testing.assert_allclose(code_statistics(window, 8)["codebook_usage"], 3 / 8)
    window = update_usage_window(window, jnp.array([2, 5]))
    np.testing.assert_allclose(code_statistics(window, 8)["codebook_usage"], 3 / 8)  # {2, 3, 5}
