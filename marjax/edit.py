"""`--mode=edit`: in-painting, out-painting and class-conditional editing of one image with a trained
or converted run (the `edit` section of the config).

The image (`edit.image`) is center-cropped and resized to `data.image_size` as the training data
are; the pixels to regenerate are a box (`edit.box`, "x0,y0,x1,y1" on that grid, x1 and y1
excluded) or a mask image (`edit.mask`, nonzero = regenerate, cropped and resized the same way),
or everything outside them with `edit.outpaint`. The family's `Task.edit` keeps the tokens of the
rest and generates the region for class `edit.label`, `edit.num_samples` times in one batch from
the key of `sample.seed` (the same seed, the same results); the `sample` section's settings apply. Writes `<workdir>/edits/step_<N>.png`, one row per result: the original,
the masked input (regenerated pixels gray), the result; and `step_<N>.npz` (original, keep, results).
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from marjax.data.image_ops import center_crop, to_model_range
from marjax.errors import ConfigError, DataError
from marjax.image_files import image_grid, write_png
from marjax.tasks.registry import check_config, restore_generator
from marjax.workdir import ensure_writable_directory


def parse_box(box: str, size: int) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' -> the four ints, checked to be a non-empty box inside a size x size image."""
    try:
        x0, y0, x1, y1 = (int(v) for v in box.split(","))
    except ValueError:
        raise ConfigError(f"edit.box={box!r}: give four integers 'x0,y0,x1,y1' (pixels of the {size}x{size} "
                          f"image, x1 and y1 excluded)") from None
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise ConfigError(f"edit.box={box!r} is not a non-empty box inside the {size}x{size} image "
                          f"(0 <= x0 < x1 <= {size}, 0 <= y0 < y1 <= {size})")
    return x0, y0, x1, y1


def check_edit_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError for an edit section that cannot run, before anything loads; FileNotFoundError
    naming a missing image."""
    e = config.edit
    if not e.image:
        raise ConfigError("--mode=edit needs edit.image, the path of the image to edit")
    if bool(e.box) == bool(e.mask):
        raise ConfigError("--mode=edit needs exactly one of edit.box ('x0,y0,x1,y1') and edit.mask (an image "
                          "whose nonzero pixels are regenerated)")
    if e.box:
        parse_box(e.box, config.data.image_size)
    if config.data.num_classes == 0 and e.label != -1:
        raise ConfigError(f"edit.label={e.label}: data.num_classes=0 is an unconditional model, which takes no "
                          f"class; leave edit.label unset")
    if config.data.num_classes and not 0 <= e.label < config.data.num_classes:
        raise ConfigError(f"edit.label={e.label}: give the class of the results, 0 .. {config.data.num_classes - 1}")
    if e.num_samples < 1:
        raise ConfigError(f"edit.num_samples={e.num_samples} must be >= 1")
    for name in ("image", "mask"):
        if e[name] and not os.path.isfile(e[name]):
            raise FileNotFoundError(f"edit.{name}: {e[name]} does not exist")


def read_image(path: str, size: int, channels: int) -> np.ndarray:
    """The image at `path`, center-cropped and resized -> (size, size, channels) uint8. DataError
    naming the file when it is not an image."""
    try:
        with Image.open(path) as image:
            return center_crop(image.convert("L" if channels == 1 else "RGB"), size)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not a readable image: {e}") from None


def keep_mask(config: ml_collections.ConfigDict) -> np.ndarray:
    """(size, size) bool, True = a pixel to keep, from the edit section's box or mask."""
    e, size = config.edit, config.data.image_size
    if e.box:
        x0, y0, x1, y1 = parse_box(e.box, size)
        regenerate = np.zeros((size, size), bool)
        regenerate[y0:y1, x0:x1] = True
    else:
        regenerate = read_image(e.mask, size, 1)[..., 0] > 127
    if e.outpaint:
        regenerate = ~regenerate
    source = (f"edit.box={e.box!r}" if e.box else f"edit.mask={e.mask}") + (" with edit.outpaint" if e.outpaint else "")
    if not regenerate.any():
        raise ConfigError(f"{source} regenerates no pixel of the {size}x{size} image: nothing would be edited")
    if regenerate.all():
        raise ConfigError(f"{source} regenerates every pixel of the {size}x{size} image: that is --mode=sample")
    return ~regenerate


def edit_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Restores checkpoint `sample.step` (default: the latest) of `workdir`, edits `edit.image` as the
    `edit` section says and writes the grid and arrays; returns the PNG's path."""
    check_config(config)
    check_edit_config(config)
    e, size = config.edit, config.data.image_size
    original = read_image(e.image, size, config.data.channels)
    keep = keep_mask(config)
    edits = os.path.join(workdir, "edits")
    ensure_writable_directory(edits, "--mode=edit writes to <workdir>/edits")
    task, params, step = restore_generator(config, workdir)
    if task.edit is None:
        raise ConfigError(f"task={config.task!r} cannot edit images")
    n = e.num_samples
    images = jnp.asarray(np.repeat(to_model_range(original)[None], n, axis=0))
    keeps = jnp.asarray(np.repeat(keep[None], n, axis=0))
    label = e.label if config.data.num_classes else 0  # an unconditional model's null class
    labels = jnp.full((n,), label, jnp.int32)
    logging.info("editing %s: %d of %d pixels regenerated (%s), %d results from step %d", e.image,
                 int((~keep).sum()), keep.size, f"class {label}" if config.data.num_classes else "unconditional", n,
                 step)
    results = np.asarray(task.edit(params, images, keeps, labels, jax.random.key(config.sample.seed)))
    masked = np.where(keep[..., None], original, 128).astype(np.uint8)
    rows = np.stack([np.repeat(original[None], n, 0), np.repeat(masked[None], n, 0), results], axis=1)
    os.makedirs(edits, exist_ok=True)
    png = os.path.join(edits, f"step_{step}.png")
    write_png(png, image_grid(rows.reshape((-1,) + original.shape), columns=3), min_side=512)
    np.savez(png[:-4] + ".npz", original=original, keep=keep, results=results, label=e.label)
    logging.info("wrote %s and %s", png, png[:-4] + ".npz")
    return png
