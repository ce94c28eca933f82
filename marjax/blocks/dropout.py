"""Dropout whose mask comes from a counter-based integer hash instead of one threefry draw per element.

JAX's default PRNG (threefry) costs about 10 ns per 32-bit word on a CPU core. The tiny-cpu
train step draws 27M dropout decisions, which took 0.25 s of its 1.3 s. Here one threefry draw
per call gives a 32-bit seed, and each element's bits are murmur3's 32-bit finaliser (a
bijection with full avalanche) of its row index mixed with the seed, then of that plus its
column index: a dozen integer operations per element. The hash depends only on the element's
position, so the mask is the same however the array is sharded.

An element is kept when the top 24 bits of its hash fall below round((1 - rate) * 2^24), the
resolution of a float32 uniform, and kept elements are scaled by 1 / (1 - rate), as torch's
nn.Dropout does. `DropPath` draws one such decision per sample (stochastic depth).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser on uint32 values."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hashed_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Pseudo-random uint32 of `shape` from a uint32 scalar `seed`: fmix32(fmix32(row ^ seed) + column),
    where row is the flat index over all but the last axis and column the last axis' index."""
    # Built from iotas in the array's own shape (no reshape), so a sharded array's shards are
    # computed where they live.
    lead = tuple(shape[:-1]) + (1,)
    row = jnp.zeros(lead, jnp.uint32)
    for dim in range(len(shape) - 1):
        row = row * jnp.uint32(shape[dim]) + jax.lax.broadcasted_iota(jnp.uint32, lead, dim)
    column = jax.lax.broadcasted_iota(jnp.uint32, (1,) * (len(shape) - 1) + (shape[-1],), len(shape) - 1)
    return _fmix32(_fmix32(row ^ seed) + column)


def dropout_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """bool `shape`, True (keep) with probability 1 - rate (to 2^-24)."""
    seed = jax.random.bits(rng, (), jnp.uint32)
    threshold = jnp.uint32(round((1.0 - rate) * 2 ** 24))
    return (hashed_bits(seed, shape) >> 8) < threshold


class Dropout(nn.Module):
    """Zeroes each element with probability `rate` and scales the rest by 1 / (1 - rate); the
    identity when `deterministic` or rate is 0. Draws from the "dropout" rng collection."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = dropout_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: zeroes whole samples with probability `rate` and scales
    the rest by 1 / (1 - rate), as timm's DropPath (LlamaGen's `utils/drop_path.py`). x: (B, ...) ->
    the same; the identity when `deterministic` or rate is 0. Draws from the "dropout" rng collection."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = dropout_mask(self.make_rng("dropout"), self.rate, x.shape[:1])
        keep = keep.reshape(x.shape[:1] + (1,) * (x.ndim - 1))
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))
