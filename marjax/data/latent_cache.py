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
`process_index::process_count` of the source to its own ArrayRecord shard.
"""
import glob
import os
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from array_record.python import array_record_module
from flax import serialization

from marjax.data.image_ops import to_model_range
from marjax.errors import DataError

SHARD_PATTERN = "latents-{index:05d}-of-{count:05d}.array_record"


class CachedLatentSource:
    """Records of a latent cache: {"moments", "moments_flip": (h, w, 2c) float32, "label": int32}."""

    def __init__(self, directory: str):
        paths = sorted(glob.glob(os.path.join(directory, "latents-*-of-*.array_record")))
        if not paths:
            raise DataError(f"data.path={directory!r} holds no latent cache shards (latents-*-of-*.array_record); "
                            f"write them with `python -m marjax.cache_tokens --config=... --output={directory}`")
        counts = {int(p.rsplit("-of-", 1)[1].split(".")[0]) for p in paths}
        if len(counts) != 1 or len(paths) != counts.pop():
            raise DataError(f"data.path={directory!r} holds an incomplete latent cache: {len(paths)} shards "
                            f"of {[os.path.basename(p) for p in paths]}")
        self.source = grain.sources.ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return serialization.msgpack_restore(self.source[index])


def write_latent_cache(source, moments_fn: Callable[[jax.Array], jax.Array], output: str, batch_size: int,
                       process_index: int = 0, process_count: int = 1) -> str:
    """Encodes records `process_index::process_count` of `source` (and their flips) into one shard.

    moments_fn: (B, H, W, C) images in [-1, 1] -> (B, h, w, 2c) posterior moments (mean || logvar),
    e.g. a KL tokenizer's `moments`. Returns the shard's path. Records keep the source's order within the shard.
    """
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, SHARD_PATTERN.format(index=process_index, count=process_count))
    indices = list(range(process_index, len(source), process_count))
    writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
    for start in range(0, len(indices), batch_size):
        records = [source[i] for i in indices[start:start + batch_size]]
        images = np.stack([to_model_range(r["image"]) for r in records])
        padded = np.concatenate([images, np.zeros((batch_size - len(images),) + images.shape[1:], images.dtype)])
        moments = np.asarray(moments_fn(jnp.asarray(padded)))
        moments_flip = np.asarray(moments_fn(jnp.asarray(padded[:, :, ::-1])))
        for j, record in enumerate(records):
            writer.write(serialization.msgpack_serialize({
                "moments": moments[j], "moments_flip": moments_flip[j], "label": np.int32(record["label"])}))
        logging.info("cached %d / %d records", min(start + batch_size, len(indices)), len(indices))
    writer.close()
    os.replace(path + ".tmp", path)  # a shard appears only when complete
    return path
