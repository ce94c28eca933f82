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

from marjax.data.class_labels import reported_labels, sample_labels
from marjax.image_files import write_samples
from marjax.stored_programs import StoredProgram
from marjax.tasks.generation import abstract_generate_arguments, generate_images
from marjax.tasks.registry import check_config, generating_task, restore_generator
from marjax.workdir import ensure_writable_directory


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Restores checkpoint `sample.step` (default: the latest) of `workdir` and writes the samples
    of `config.sample`; returns the path of the PNG grid."""
    check_config(config)
    samples = os.path.join(workdir, "samples")
    ensure_writable_directory(samples, "--mode=sample writes to <workdir>/samples")
    labels = sample_labels(config.sample.num_images, config.data.num_classes, config.sample.classes)
    task = generating_task(config)
    generate = StoredProgram("generate", jax.jit(task.generate), config)
    abstract_params = task.generation_params(task.abstract_state, config.sample.use_ema)
    generate.preload(*abstract_generate_arguments(abstract_params, config.sample.batch_size))  # while restoring
    task, params, step = restore_generator(config, workdir, task=task)
    logging.info("sampling %d images from step %d (%s params)", len(labels), step,
                 "EMA" if config.sample.use_ema else "raw")
    images = generate_images(generate, params, labels, jax.random.key(config.sample.seed),
                             config.sample.batch_size, f"checkpoint {step} in {workdir}/checkpoints")
    path = write_samples(samples, f"step_{step}", images, reported_labels(labels, config.data.num_classes))
    logging.info("wrote %s and %s", path, path[:-4] + ".npz")
    return path
