"""Exact top-k over the last axis, the same values and indices as `jax.lax.top_k`, optionally on the
host, which is faster on CPUs.

XLA's CPU top_k sorts every row: at VAR's sampling sizes (k = 900 of 4,096 codes over 10,880 rows
per batch of 16) it takes 2.0 s, most of the sampler's time, where torch.topk selects in a
fraction of it (BENCHMARKS.md "Sampling against the reference code"). `top_k(..., on_host=True)`
therefore runs on the host with numpy, through a callback: a partition finds each row's k-th
largest value, the k candidates are sorted, and the rows are split over threads. Its price: JAX
does not keep programs with host callbacks in the persistent compilation cache, so a program using
it compiles in every process. It serves a one-device CPU only (elsewhere the callback would move
the logits to the host, or gather every shard onto one device). Both paths return the k largest,
descending, ties in ascending index order.

Where only the k-th largest value is needed (the top-k filter of a softmax head), `kth_largest`
finds it on the device without sorting, on every backend.
"""
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

_THREADS = max(1, os.cpu_count() or 1)
_POOL = ThreadPoolExecutor(_THREADS)  # numpy's partition and sort release the GIL


def top_k(x: jax.Array, k: int, on_host: bool = False) -> tuple[jax.Array, jax.Array]:
    """x (..., V), k (static, 1 <= k <= V) -> (values (..., k) of x's dtype, descending; indices
    (..., k) int32), as `jax.lax.top_k`. Works inside `jax.jit`. on_host (static): by numpy on the
    host; float32 x on a one-device CPU backend only, else ValueError."""
    k = int(k)
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"top_k: k={k} must lie in [1, {x.shape[-1]}]")
    if not on_host:
        return jax.lax.top_k(x, k)
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        raise ValueError(f"the host top-k serves a one-device CPU; this is {jax.device_count()} "
                         f"{jax.default_backend()} device(s): leave sample.host_top_k=False")
    if x.dtype != jnp.float32:
        raise ValueError(f"the host top-k takes float32, got {x.dtype}")
    shapes = (jax.ShapeDtypeStruct(x.shape[:-1] + (k,), x.dtype), jax.ShapeDtypeStruct(x.shape[:-1] + (k,), jnp.int32))
    return jax.pure_callback(functools.partial(host_top_k, k=k), shapes, x)


def kth_largest(x: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row, exactly `jax.lax.top_k(x, k)[0][..., -1:]`, without sorting:
    x (..., V) float32, k (static, 1 <= k <= V) -> (..., 1) float32. Works inside `jax.jit`.

    A radix select: the floats map to unsigned 32-bit keys of the same order, and the k-th largest
    key is built from its top bit down, keeping each bit when at least k keys reach the prefix so far.
    That is 32 passes of a compare and a count over the row, where XLA's CPU top_k sorts every row:
    at VQ-GPT's sampling sizes (k = 100 of 1,024) it is several times faster (BENCHMARKS.md).
    """
    k = int(k)
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"kth_largest: k={k} must lie in [1, {x.shape[-1]}]")
    if x.dtype != jnp.float32:
        raise ValueError(f"kth_largest takes float32, got {x.dtype}")
    keys = jax.lax.bitcast_convert_type(  # int32 order -> uint32 order: flip the sign bit
        _ordered_int32(jax.lax.bitcast_convert_type(x, jnp.int32)) ^ jnp.int32(-2**31), jnp.uint32)

    def keep_bit_if_k_reach(i: jax.Array, kth: jax.Array) -> jax.Array:
        candidate = kth | jnp.left_shift(jnp.uint32(1), (31 - i).astype(jnp.uint32))
        reached = jnp.sum(keys >= candidate, axis=-1, keepdims=True, dtype=jnp.int32)
        return jnp.where(reached >= k, candidate, kth)

    # A loop, not 32 unrolled passes: unrolled, XLA fused the chain of short rows (V = 8) into
    # consumers and duplicated it, and compiling took minutes.
    kth = jax.lax.fori_loop(0, 32, keep_bit_if_k_reach, jnp.zeros(x.shape[:-1] + (1,), jnp.uint32))
    ordered = jax.lax.bitcast_convert_type(kth ^ jnp.uint32(2**31), jnp.int32)
    return jax.lax.bitcast_convert_type(_ordered_int32(ordered), jnp.float32)


def host_top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy version of `top_k`: x (..., V) float32 -> (values (..., k), indices (..., k) int32)."""
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1])
    chunks = [c for c in np.array_split(np.arange(len(rows)), _THREADS) if len(c)]
    parts = list(_POOL.map(lambda c: _rows_top_k(rows[c[0]:c[-1] + 1], k), chunks))
    values = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), x.dtype)
    indices = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int32)
    return values.reshape(x.shape[:-1] + (k,)), indices.reshape(x.shape[:-1] + (k,))


def _rows_top_k(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """rows (R, V) float32 -> their top k (R, k) values and int32 indices."""
    width = rows.shape[-1]
    kth = np.partition(rows, width - k, axis=-1)[:, width - k:width - k + 1]
    keep = rows >= kth
    counts = keep.sum(axis=-1)
    for r in np.flatnonzero(counts > k):  # more than k reach the k-th value: keep its lowest indices
        tied = np.flatnonzero(rows[r] == kth[r, 0])
        keep[r, tied[k - (counts[r] - len(tied)):]] = False
    # Ascending within each row; flat positions minus the row offsets (one array, not nonzero's two).
    offsets = np.arange(len(rows), dtype=np.int64)[:, None] * width
    indices = (np.flatnonzero(keep).reshape(len(rows), k) - offsets).astype(np.int32)
    values = np.take_along_axis(rows, indices, axis=-1)
    # One sort of 64-bit keys orders by value, descending, then by index: the high half maps the
    # float's bits to an int32 of the same order, negated (~); the low half is the index.
    ordered_bits = _ordered_int32(values.view(np.int32))
    keys = np.sort((~ordered_bits).astype(np.int64) << 32 | indices.astype(np.int64), axis=-1)
    values = _ordered_int32(~(keys >> 32).astype(np.int32)).view(np.float32)
    return values, (keys & 0xFFFFFFFF).astype(np.int32)


def _ordered_int32(bits: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """float32 bits (as int32, numpy or jax) <-> int32 of the same order (its own inverse): negative
    floats' magnitude bits are flipped."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)
