"""Generation orders (random, raster), training masks and the sampler's cosine mask schedule.

Training: one mask ratio per batch r ~ truncated normal (loc 1, scale 0.25, on [min_ratio, 1]),
num_masked = ceil(L r), and mask = True at the first num_masked entries of each sample's order.

Sampling: the per-step counts depend only on (L, num_iter), so they are computed once on the
host in float64 exactly as the reference does, and fed to the compiled sampler as constants.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def sample_orders(rng: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
    """One uniformly random permutation of 0..L-1 per sample: (B, L) int32."""
    keys = jax.random.split(rng, batch_size)
    return jax.vmap(lambda k: jax.random.permutation(k, seq_len))(keys).astype(jnp.int32)


def raster_orders(batch_size: int, seq_len: int) -> jax.Array:
    """The row-major order 0..L-1 for every sample: (B, L) int32."""
    return jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch_size, seq_len))


def sample_num_masked(rng: jax.Array, seq_len: int, min_ratio: float = 0.7) -> jax.Array:
    """ceil(L r) with r ~ N(1, 0.25^2) truncated to [min_ratio, 1]: a scalar int32 in [ceil(L min_ratio), L]."""
    ratio = 1.0 + 0.25 * jax.random.truncated_normal(rng, (min_ratio - 1.0) / 0.25, 0.0)
    return jnp.clip(jnp.ceil(seq_len * ratio), math.ceil(seq_len * min_ratio), seq_len).astype(jnp.int32)


def max_unmasked(seq_len: int, min_ratio: float) -> int:
    """The most tokens a training mask leaves known: L - ceil(L * min_ratio) (76 of 256 at 0.7)."""
    return seq_len - math.ceil(seq_len * min_ratio)


def mask_count_buckets(seq_len: int, min_ratio: float, count: int) -> list[tuple[int, int]]:
    """Static shapes for `count` ranges of a training mask's known-token count.

    The known count L - num_masked is one of the integers 0..max_unmasked; they are cut into
    `count` consecutive ranges of near-equal size. Returns (num_keep_max, num_masked_max) per
    range, in increasing known count: the encoder's known-token slots and the DiffLoss positions
    a mask in that range needs. E.g. L = 64, min_ratio 0.7, count 3: [(5, 64), (12, 58), (19, 51)].
    """
    keep_max = max_unmasked(seq_len, min_ratio)
    if not 1 <= count <= keep_max + 1:
        raise ValueError(f"mask_buckets must be in [1, {keep_max + 1}] for {seq_len} tokens at "
                         f"mask_ratio_min {min_ratio}, got {count}")
    keeps = [(keep_max + 1) * (i + 1) // count - 1 for i in range(count)]
    # At least one encoder slot, so that no array is empty when no token is known.
    return [(max(keep, 1), seq_len - (keeps[i - 1] + 1 if i else 0)) for i, keep in enumerate(keeps)]


def bucket_index(num_masked: jax.Array, buckets: list[tuple[int, int]]) -> jax.Array:
    """The index into `mask_count_buckets` of a mask with `num_masked` (scalar) masked tokens."""
    # The buckets' masked-count bounds decrease; each after the first starts below the one before.
    masked_bounds = jnp.asarray([masked for _, masked in buckets[1:]], jnp.int32)
    return jnp.sum(num_masked <= masked_bounds).astype(jnp.int32)


def mask_from_orders(orders: jax.Array, num_masked: jax.Array) -> jax.Array:
    """(B, L) bool, True at orders[b, :num_masked]. `num_masked` is a scalar or (B,)."""
    rank = jnp.argsort(orders, axis=1)  # rank[b, p] = where position p falls in the order
    return rank < jnp.reshape(num_masked, (-1, 1))


@dataclasses.dataclass(frozen=True)
class SamplingSchedule:
    """Host-side plan of `num_iter` sampling steps over L tokens; arrays are (num_iter,).

    Step k predicts order[masked_after[k] : masked_before[k]]. `cfg_mask_len[k]` is the
    (clamped) mask length the reference's linear CFG schedule reads: at the last step it is
    still >= 1 although every remaining token is predicted.
    """

    seq_len: int
    masked_before: np.ndarray
    masked_after: np.ndarray
    cfg_mask_len: np.ndarray

    @property
    def num_predicted(self) -> np.ndarray:
        return self.masked_before - self.masked_after

    @property
    def max_predicted(self) -> int:
        """Static size of the per-step token slab the DiffLoss MLP runs on."""
        return int(self.num_predicted.max())

    @property
    def max_known(self) -> int:
        """Static bound on the known tokens the encoder sees at any step."""
        return int(self.seq_len - self.masked_before.min())

    def segments(self, count: int) -> list[tuple[int, int, int, int]]:
        """Splits the steps into `count` consecutive runs of near-equal length.

        Returns (start, stop, max_predicted, max_known) per run: the static slab size and
        encoder bound that the steps start..stop-1 need.
        """
        count = min(count, len(self.masked_before))
        bounds = np.linspace(0, len(self.masked_before), count + 1).round().astype(int)
        return [(int(a), int(b), int(self.num_predicted[a:b].max()), int(self.seq_len - self.masked_before[a:b].min()))
                for a, b in zip(bounds[:-1], bounds[1:])]

    def cfg_scales(self, cfg: float | jax.Array, kind: str) -> jax.Array:
        """(num_iter,) guidance scales: "linear" 1 + (cfg-1)(L - mask_len)/L (Muse) or "constant" cfg."""
        if kind == "linear":
            frac = (self.seq_len - self.cfg_mask_len) / self.seq_len
            return 1.0 + (cfg - 1.0) * jnp.asarray(frac, jnp.float32)
        if kind == "constant":
            return jnp.full((len(self.cfg_mask_len),), cfg, jnp.float32)
        raise ValueError(f"unknown cfg schedule {kind!r}; use 'linear' or 'constant'")


def sampling_schedule(seq_len: int, num_iter: int) -> SamplingSchedule:
    """The reference's cosine schedule: mask_len = floor(L cos(pi/2 (k+1)/num_iter)), clamped to
    [1, remaining - 1]; the last step predicts everything that remains."""
    if not 1 <= num_iter <= seq_len:
        raise ValueError(f"num_iter must be in [1, {seq_len}] for {seq_len} tokens, got {num_iter}")
    before, after, cfg_len = [], [], []
    remaining = seq_len
    for k in range(num_iter):
        mask_len = float(np.floor(seq_len * np.cos(math.pi / 2.0 * (k + 1) / num_iter)))
        mask_len = int(max(1.0, min(remaining - 1.0, mask_len)))
        nxt = 0 if k == num_iter - 1 else mask_len
        before.append(remaining)
        after.append(nxt)
        cfg_len.append(mask_len)
        remaining = nxt
    return SamplingSchedule(seq_len, np.array(before), np.array(after), np.array(cfg_len))
