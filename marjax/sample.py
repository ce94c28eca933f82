"""`--mode=sample`: images from a trained or converted run.

`sample_from_workdir` restores a checkpoint (EMA params by default), generates
`sample.num_images` images for the requested classes (balanced over all classes by default)
through the task's `generate`, and writes `<workdir>/samples/step_<N>.png` (a grid, one row per
class when it divides evenly) and `step_<N>.npz` (images (N, H, W, C) uint8, labels (N,) int32).
"""
import os

import jax
import ml_collections
from absl import logging

from marjax.data.class_labels import sample_labels
from marjax.errors import ConfigError
from marjax.image_files import write_samples
from marjax.tasks.generation import generate_images
from marjax.tasks.registry import check_config, restore_state


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Restores checkpoint `sample.step` (default: the latest) of `workdir` and writes the samples
    of `config.sample`; returns the path of the PNG grid."""
    check_config(config)
    labels = sample_labels(config.sample.num_images, config.data.num_classes, config.sample.classes)
    task, state, step = restore_state(config, workdir, config.sample.step)
    if task.generate is None:
        raise ConfigError(f"task={config.task!r} does not generate; a tokenizer run writes its reconstruction "
                          f"grids to <workdir>/samples while training")
    params = task.generation_params(state, config.sample.use_ema)
    logging.info("sampling %d images from step %d (%s params)", len(labels), step,
                 "EMA" if config.sample.use_ema else "raw")
    images = generate_images(task.generate, params, labels, jax.random.key(config.sample.seed),
                             config.sample.batch_size)
    path = write_samples(os.path.join(workdir, "samples"), f"step_{step}", images, labels)
    logging.info("wrote %s and %s", path, path[:-4] + ".npz")
    return path
