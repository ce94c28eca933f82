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
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from marjax.data.image_ops import to_model_range
from marjax.data.token_cache import CachedTokenSource, write_token_cache

PREFIX = "latents"


class CachedLatentSource(CachedTokenSource):
    """Records of a latent cache: {"moments", "moments_flip": (h, w, 2c) float32, "label": int32}."""

    def __init__(self, directory: str):
        super().__init__(directory, PREFIX, "latent")


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
