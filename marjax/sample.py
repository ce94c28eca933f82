"""Sampling images from a trained run: `--mode=sample`, and the grids written during training.

`sample_from_workdir` restores a checkpoint (EMA params by default), generates
`sample.num_images` images for the requested classes (balanced over all classes by default)
and writes `<workdir>/samples/step_<N>.png` (a grid, one row per class when it divides evenly)
and `step_<N>.npz` (images (N, H, W, C) uint8, labels (N,) int32).
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from marjax.data.image_ops import to_uint8
from marjax.models.mar import MAR
from marjax.sampler import generate
from marjax.tokenizers import KLTokenizer, PixelTokenizer


def sample_labels(num_images: int, num_classes: int, classes: str = "") -> np.ndarray:
    """(num_images,) int32 labels cycling over `classes` ("3,5,7") or all classes, sorted so each
    class is contiguous. Raises ValueError for a class outside [0, num_classes)."""
    chosen = np.arange(num_classes) if not classes else np.asarray(
        [int(c) for c in str(classes).split(",") if c.strip()], np.int64)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= num_classes:
        raise ValueError(f"sample.classes={classes!r} must list class ids in [0, {num_classes})")
    order = np.argsort(np.arange(num_images) % chosen.size, kind="stable")
    return chosen[np.arange(num_images) % chosen.size][order].astype(np.int32)


def generate_latents(model: MAR, params: dict, labels: jax.Array, rng: jax.Array,
                     sample_config: ml_collections.ConfigDict) -> jax.Array:
    """`generate` with the sampler settings of `sample_config` (a config's `sample` section)."""
    s = sample_config
    return generate(model, params, labels, rng, num_iter=s.num_iter, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                    temperature=s.temperature, num_diffusion_steps=s.num_diffusion_steps,
                    clip_denoised=s.clip_denoised)


def sample_images(model: MAR, params: dict, labels: np.ndarray, rng: jax.Array,
                  sample_config: ml_collections.ConfigDict,
                  tokenizer: PixelTokenizer | KLTokenizer) -> np.ndarray:
    """Generates one image per label, in batches of `sample_config.batch_size` (the last one
    padded, so one compiled sampler serves all). Returns (N, H, W, C) uint8."""
    batch_size = sample_config.batch_size
    images = []
    for start in range(0, len(labels), batch_size):
        batch = labels[start:start + batch_size]
        padded = np.pad(batch, (0, batch_size - len(batch)))
        latents = generate_latents(model, params, jnp.asarray(padded), jax.random.fold_in(rng, start), sample_config)
        images.append(to_uint8(jax.device_get(tokenizer.decode(latents)))[:len(batch)])
        logging.info("sampled %d / %d images", min(start + batch_size, len(labels)), len(labels))
    return np.concatenate(images)


def image_grid(images: np.ndarray, columns: int, border: int = 1) -> np.ndarray:
    """(N, H, W, C) -> one image of `columns` cells per row, row-major, cells separated by a
    `border`-pixel gray line; blank cells at the end."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    cells = np.full((rows * columns, h + border, w + border, c), 128, images.dtype)
    cells[:, :h, :w] = 0
    cells[:n, :h, :w] = images
    grid = cells.reshape(rows, columns, h + border, w + border, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * (h + border), columns * (w + border), c)


def grid_columns(labels: np.ndarray) -> int:
    """One row per class when every class has the same count, else about square."""
    counts = np.unique(labels, return_counts=True)[1]
    if len(set(counts.tolist())) == 1 and counts[0] <= 32:
        return int(counts[0])
    return int(np.ceil(np.sqrt(len(labels))))


def write_png(path: str, image: np.ndarray, min_side: int = 256) -> None:
    """Writes a (H, W, C) uint8 image, upscaled by an integer factor (nearest) to >= min_side."""
    factor = max(1, -(-min_side // min(image.shape[:2])))
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def write_samples(directory: str, name: str, images: np.ndarray, labels: np.ndarray) -> str:
    """Writes `<name>.png` (the grid) and `<name>.npz` (images, labels); returns the png path."""
    os.makedirs(directory, exist_ok=True)
    png = os.path.join(directory, f"{name}.png")
    write_png(png, image_grid(images, grid_columns(labels)))
    np.savez(os.path.join(directory, f"{name}.npz"), images=images, labels=labels)
    return png


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=sample`: restores checkpoint `sample.step` (default: the latest) of `workdir` and
    writes the samples of `config.sample`; returns the path of the PNG grid."""
    from marjax import config_checks
    from marjax.builders import model_from_config, restore_mar_state
    from marjax.tokenizers import make_tokenizer

    config_checks.validate(config)
    if config.task != "mar":
        raise config_checks.ConfigError("--mode=sample generates with MAR; a tokenizer run writes its "
                                        "reconstruction grids to <workdir>/samples while training")
    labels = sample_labels(config.sample.num_images, config.data.num_classes, config.sample.classes)
    tokenizer = make_tokenizer(config)
    state, step = restore_mar_state(config, workdir, config.sample.step)
    params = state.ema_params if config.sample.use_ema else state.params
    logging.info("sampling %d images from step %d (%s params)", len(labels), step,
                 "EMA" if config.sample.use_ema else "raw")
    images = sample_images(model_from_config(config), params, labels, jax.random.key(config.sample.seed),
                           config.sample, tokenizer)
    path = write_samples(os.path.join(workdir, "samples"), f"step_{step}", images, labels)
    logging.info("wrote %s and %s", path, path[:-4] + ".npz")
    return path
