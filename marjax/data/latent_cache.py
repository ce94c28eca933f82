"""Latent caching: encode a dataset once, then train MAR on the cached posteriors.

  python -m marjax.cache_tokens --config=configs/mar_large.py --output=/data/latents_kl16 \
      --config.tokenizer.checkpoint=/ckpt/kl16
  python -m marjax.main --config=configs/mar_large.py --workdir=/ckpt/mar_large \
      --config.data.source=cached_latents --config.data.path=/data/latents_kl16 \
      --config.tokenizer.checkpoint=/ckpt/kl16

As the reference: every (center-cropped) image and its horizontal flip are encoded, and the
posterior moments (mean || logvar) of both are stored. Training picks one of the two per
record and step (when `data.random_flip`) and samples the posterior on device, so it sees the
same distribution of latents as encoding on the fly. Each process writes the records
`process_index::process_count` of the source to its own ArrayRecord shard (`token_cache`).
"""
import math
from collections.abc import Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from marjax.data.image_ops import to_model_range
from marjax.data.token_cache import CachedTokenSource, write_token_cache

PREFIX = "latents"


class CachedLatentSource(CachedTokenSource):
    """Records of a latent cache: {"moments", "moments_flip": (h, w, 2c) float32, "label": int32}."""

    def __init__(self, directory: str, num_classes: int = 0):
        super().__init__(directory, PREFIX, "latent", num_classes)


def write_latent_cache(source: Sequence[dict], moments_fn: Callable[[jax.Array], jax.Array], output: str,
                       batch_size: int, process_index: int = 0, process_count: int = 1) -> str:
    """Encodes records `process_index::process_count` of `source` (and their flips) into one shard.

    moments_fn: (B, H, W, C) images in [-1, 1] -> (B, h, w, 2c) posterior moments (mean || logvar),
    e.g. a KL tokenizer's `moments`. Returns the shard's path.
    """
    def encode(images: np.ndarray) -> list[dict]:
        x = to_model_range(images)
        moments, moments_flip = (np.asarray(moments_fn(jnp.asarray(v))) for v in (x, x[:, :, ::-1]))
        return [{"moments": m, "moments_flip": f} for m, f in zip(moments, moments_flip)]

    return write_token_cache(source, encode, output, PREFIX, batch_size, process_index, process_count)


def latent_statistics(shard: str, max_records: int = 2_000) -> dict[str, float]:
    """The spread of the unscaled latents in one cache shard, for choosing `tokenizer.scale`.

    Reads up to `max_records` evenly spaced records of `shard` (a path written by
    `write_latent_cache`) and returns {"records": how many were read, "std": the std of posterior
    samples over all positions and channels, sqrt(var(mean) + E[exp(logvar)]), "max_abs_mean": the
    largest |posterior mean|}. MAR expects latents of std about 1, so `tokenizer.scale` = 1 / std.
    """
    records = grain.sources.ArrayRecordDataSource([shard])
    picked = np.unique(np.linspace(0, len(records) - 1, min(max_records, len(records))).astype(int))
    moments = np.stack([serialization.msgpack_restore(records[int(i)])["moments"] for i in picked])
    mean, logvar = np.split(moments.astype(np.float64), 2, axis=-1)
    variance = mean.var() + np.exp(np.clip(logvar, -30.0, 20.0)).mean()
    return {"records": len(picked), "std": float(np.sqrt(variance)), "max_abs_mean": float(np.abs(mean).max())}


def scale_advice(stats: dict[str, float], scale: float) -> str:
    """What to set for MAR on a latent cache, from `latent_statistics` of its shard and the config's
    `tokenizer.scale`: the scale that gives latents of std 1, and an x_0 clip range a little above
    the largest scaled latent, for a DiffLoss trained briefly (README "The latent path on the digits")."""
    fitted = 1.0 / stats["std"]
    clip = math.ceil(stats["max_abs_mean"] * fitted) + 1
    return (f"latents of {stats['records']} records: std {stats['std']:.4g}, largest |mean| "
            f"{stats['max_abs_mean']:.4g}; tokenizer.scale={scale:g} scales them to std {stats['std'] * scale:.3g}. "
            f"MAR expects std 1: --config.tokenizer.scale={fitted:.4g}, and for a short run "
            f"--config.sample.clip_denoised=True --config.sample.clip_range={clip}")
