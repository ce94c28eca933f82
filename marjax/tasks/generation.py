"""Generating many images with a task's `generate`, batch by batch, on the host's side; the check
of the DiffLoss heads' respacing setting."""
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from marjax.errors import ConfigError, DegenerateSamples
from marjax.heads.diffusion import respaced_step_count


def check_diffloss_sampling(config: ml_collections.ConfigDict) -> None:
    """ConfigError unless sample.num_diffusion_steps is a respacing the reference accepts and
    sample.clip_range is positive."""
    try:
        respaced_step_count(config.sample.num_diffusion_steps)
    except ValueError as e:
        raise ConfigError(f"sample.num_diffusion_steps={config.sample.num_diffusion_steps!r}: {e}") from e
    if not config.sample.clip_range > 0:
        raise ConfigError(f"sample.clip_range={config.sample.clip_range}: the x_0 predictions' bound must be > 0")


def denoised_clip(sample_config: ml_collections.ConfigDict) -> float:
    """The DiffLoss samplers' `clip_denoised` of a config's `sample` section: sample.clip_range
    with sample.clip_denoised, else 0 (no clipping)."""
    return float(sample_config.clip_range) if sample_config.clip_denoised else 0.0


def require_varied(images: jax.Array | np.ndarray, source: str) -> None:
    """DegenerateSamples naming `source` (the checkpoint) when every image of `images` (B, H, W, C)
    is one flat colour: the params are zero or saturate, and writing or scoring them would hide it.
    Host (numpy) images are checked by numpy, which spares a start-up four small programs."""
    xp = np if isinstance(images, np.ndarray) else jnp  # jnp for global arrays, which may span hosts
    flat = xp.all(xp.max(images, axis=(1, 2)) == xp.min(images, axis=(1, 2)))
    if bool(flat):
        raise DegenerateSamples(f"every image generated from {source} is one flat colour: its params are "
                                f"untrained, zero or saturated; nothing was written")


def abstract_generate_arguments(abstract_params: Any, batch_size: int) -> tuple:
    """What `generate_images` passes to `generate` for each batch, as ShapeDtypeStructs: (params,
    labels (batch_size,) int32, a key), the labels and key on the default device as jnp.asarray
    and jax.random.fold_in leave them. For loading the program before the params are restored."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return (abstract_params, jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=device),
            jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype, sharding=device))


def generate_images(generate: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any, labels: np.ndarray,
                    rng: jax.Array, batch_size: int, source: str | None = None) -> np.ndarray:
    """One image per label, in batches of `batch_size` (the last one padded, so one compiled
    program serves all; batch i draws from `fold_in(rng, first index of batch i)`).

    Args:
      generate: (params, labels (B,) int32, rng) -> (B, H, W, C) uint8, a task's `generate`.
      labels: (N,) int class labels.
      source: where `params` come from; when given, a first batch of only flat colours is an error
        (`require_varied`).
    Returns:
      (N, H, W, C) uint8 images on the host.
    """
    images = []
    for start in range(0, len(labels), batch_size):
        batch = labels[start:start + batch_size]
        padded = np.pad(batch, (0, batch_size - len(batch)))
        out = generate(params, jnp.asarray(padded, jnp.int32), jax.random.fold_in(rng, start))
        images.append(np.asarray(jax.device_get(out))[:len(batch)])
        if start == 0 and source is not None:
            require_varied(images[0], source)
        logging.info("generated %d / %d images", min(start + batch_size, len(labels)), len(labels))
    return np.concatenate(images)
