"""`heads.top_k` on the host (numpy, on a one-device CPU) returns exactly what `jax.lax.top_k` does:
values and indices, ties at and above the k-th value in ascending index order, -inf entries; and
`kth_largest`, the sort-free k-th value the top-k filter of the softmax head uses, equals its last value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marjax.heads.top_k import host_top_k, kth_largest, top_k


@pytest.mark.parametrize("shape, k", [((5, 7), 3), ((2, 3, 50), 10), ((4, 16), 16), ((3, 8), 1), ((64, 512), 100)])
def test_top_k_equals_lax_top_k_with_ties_and_infinities(shape, k):
    rng = np.random.default_rng(k)
    x = rng.integers(-3, 3, shape).astype(np.float32) if shape[-1] < 100 else \
        rng.standard_normal(shape).astype(np.float16).astype(np.float32)  # float16 values: ties in most rows
    x[0, ..., :2] = -np.inf
    expected = jax.lax.top_k(jnp.asarray(x), k)
    for got in (jax.jit(lambda v: top_k(v, k, on_host=True))(jnp.asarray(x)), host_top_k(x, k)):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert np.asarray(got[1]).dtype == np.int32


def test_on_host_the_program_calls_back_instead_of_sorting():
    assert jax.default_backend() == "cpu" and jax.device_count() == 1
    host = jax.jit(lambda v: top_k(v, 2, on_host=True)).lower(jnp.zeros((3, 8))).as_text()
    assert "callback" in host and "top_k" not in host
    assert "top_k" in jax.jit(lambda v: top_k(v, 2)).lower(jnp.zeros((3, 8))).as_text()


def test_the_host_top_k_takes_float32_only():
    with pytest.raises(ValueError, match="the host top-k takes float32, got bfloat16"):
        top_k(jnp.zeros((2, 8), jnp.bfloat16), 2, on_host=True)


@pytest.mark.parametrize("k", [0, 9])
def test_k_outside_the_axis_is_refused(k):
    with pytest.raises(ValueError, match=f"k={k} must lie in"):
        top_k(jnp.zeros((2, 8)), k)


def test_the_host_top_k_is_refused_across_several_devices(monkeypatch):
    """There the callback would gather every shard onto one device."""
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    with pytest.raises(ValueError, match="serves a one-device CPU; this is 8 cpu device"):
        top_k(jnp.zeros((2, 8)), 2, on_host=True)


@pytest.mark.parametrize("shape, k", [((5, 7), 3), ((2, 3, 50), 10), ((4, 16), 16), ((3, 8), 1), ((16, 1024), 100)])
def test_kth_largest_equals_the_last_of_lax_top_k(shape, k):
    rng = np.random.default_rng(k)
    x = rng.integers(-3, 3, shape).astype(np.float32) if shape[-1] < 100 else \
        rng.standard_normal(shape).astype(np.float16).astype(np.float32)  # ties in most rows
    x[0, ..., :2] = -np.inf
    x[-1, ..., :3] = np.inf
    x[1, ..., ::2] = -0.0  # signed zeros tie with 0.0 as floats
    expected = jax.lax.top_k(jnp.asarray(x), k)[0][..., -1:]
    got = jax.jit(lambda v: kth_largest(v, k))(jnp.asarray(x))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == jnp.float32


def test_kth_largest_of_distinct_values_is_the_kth():
    x = jnp.asarray(np.random.default_rng(0).permutation(1000).astype(np.float32) - 500.25)
    assert [float(kth_largest(x, k)[0]) for k in (1, 2, 500, 1000)] == [498.75, 497.75, -0.25, -500.25]


def test_kth_largest_refuses_bad_k_and_dtype():
    with pytest.raises(ValueError, match="k=9 must lie in"):
        kth_largest(jnp.zeros((2, 8)), 9)
    with pytest.raises(ValueError, match="takes float32, got bfloat16"):
        kth_largest(jnp.zeros((2, 8), jnp.bfloat16), 2)
