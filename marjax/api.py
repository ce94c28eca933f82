"""The Python API: a trained or converted run in one call, then images. With this module as `marjax.api`:

  run = marjax.api.load("configs/digits.py", "/tmp/marjax-digits")
  images = run.generate([3, 3, 7], seed=0, cfg=2.0)        # (3, 8, 8, 1) uint8
  edited = run.edit(images[0], keep, label=5)              # keep: (8, 8) bool, True = keep the pixel
  latents = run.tokenizer.encode(x, rng)                   # the run's tokenizer (encode/decode, or *_codes)

Every family of the task registry serves it through its `Task` (`generate`, `edit`); `load` takes
the config as `--config` does (a file with an optional `:argument`, or a ConfigDict) and overrides
as `--config.<key>=` does (`{"tokenizer.checkpoint": "/ckpt/kl16"}`), an unknown key named. The
sampler settings of a call (`cfg=2.0`, `num_iter=32`, ...) are `sample.*` fields for that call.
"""
import copy
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from marjax.compile_cache import use_compile_cache
from marjax.config.loading import check_overrides, load_config_file
from marjax.data.class_labels import sample_labels
from marjax.data.image_ops import to_model_range
from marjax.errors import ConfigError
from marjax.parallel.sharding import mesh_from_config
from marjax.tasks.base import Task
from marjax.tasks.generation import generate_images
from marjax.tasks.registry import check_config, make_task, restore_generator
from marjax.tasks.tokenizer_from_config import make_tokenizer


@dataclasses.dataclass(frozen=True)
class Run:
    """A restored run: its config, generation params (EMA unless `sample.use_ema=False`) and step."""

    config: ml_collections.ConfigDict
    task: Task
    params: Any
    step: int

    def generate(self, classes: Sequence[int] | int, seed: int = 0, **sample: Any) -> np.ndarray:
        """classes: the class of each image, or a count balanced over the classes (an unconditional
        model's: a count); seed: the same seed, the same images; sample: `sample.*` settings for
        this call -> (N, H, W, C) uint8 images."""
        labels = self._labels(classes)
        config = self._with_sample(sample)
        return generate_images(self._task(config).generate, self.params, labels, jax.random.key(seed),
                               config.sample.batch_size)

    def edit(self, image: np.ndarray, keep: np.ndarray, label: int | None = None, num_samples: int = 4,
             seed: int = 0, **sample: Any) -> np.ndarray:
        """image (H, W, C) uint8 at data.image_size; keep (H, W) bool, True = keep the pixel; label:
        the class of the results (None for an unconditional model) -> (num_samples, H, W, C) uint8,
        the pixels not kept generated (`Task.edit`: in-painting, out-painting, class-conditional editing)."""
        config = self._with_sample(sample)
        task = self._task(config)
        if task.edit is None:
            raise ConfigError(f"task={config.task!r} cannot edit images")
        size, channels = config.data.image_size, config.data.channels
        image, keep = np.asarray(image), np.asarray(keep, bool)
        if image.shape != (size, size, channels) or keep.shape != (size, size):
            raise ValueError(f"image must be ({size}, {size}, {channels}) uint8 and keep ({size}, {size}) bool "
                             f"(data.image_size, data.channels); got {image.shape} and {keep.shape}")
        label = self._edit_label(label)
        images = jnp.asarray(np.repeat(to_model_range(image)[None], num_samples, axis=0))
        keeps = jnp.asarray(np.repeat(keep[None], num_samples, axis=0))
        return np.asarray(task.edit(self.params, images, keeps, jnp.full((num_samples,), label, jnp.int32),
                                    jax.random.key(seed)))

    @functools.cached_property
    def tokenizer(self):
        """The run's tokenizer (`marjax.tokenizers.protocol`): encode/decode, or encode_codes/decode_codes."""
        return make_tokenizer(self.config)

    def _edit_label(self, label: int | None) -> int:
        if self.config.data.num_classes == 0:
            if label is not None:
                raise ConfigError(f"label={label}: data.num_classes=0 is an unconditional model, which takes no "
                                  f"class; leave label=None")
            return 0  # the null class
        if label is None:
            raise ConfigError(f"edit needs label, the class of the results (0 .. {self.config.data.num_classes - 1})")
        return int(self._labels([label])[0])

    def _labels(self, classes: Sequence[int] | int) -> np.ndarray:
        n = self.config.data.num_classes
        if isinstance(classes, int):
            return sample_labels(classes, n)
        if n == 0:
            raise ConfigError(f"classes={classes}: data.num_classes=0 is an unconditional model; give a count of "
                              f"images instead")
        labels = np.asarray(classes, np.int32)
        if labels.ndim != 1 or not ((labels >= 0) & (labels < n)).all():
            raise ConfigError(f"classes must be a list of class ids in 0 .. {n - 1}, got {classes}")
        return labels

    def _with_sample(self, sample: dict) -> ml_collections.ConfigDict:
        if not sample:
            return self.config
        return _with_overrides(self.config, {f"sample.{k}": v for k, v in sample.items()})

    def _task(self, config: ml_collections.ConfigDict) -> Task:
        return self.task if config is self.config else _task_of(config)


def load(config: str | ml_collections.ConfigDict, workdir: str, overrides: dict[str, Any] | None = None) -> Run:
    """The run in `workdir` (its newest checkpoint, or `sample.step`), trained or converted, with the
    config file (`path[:argument]`) or ConfigDict it was made with and `overrides` ("section.field"
    -> value). ConfigError for unknown keys or impossible values, before anything loads."""
    if isinstance(config, str):
        config = load_config_file(config)
    config = _with_overrides(config, overrides or {})
    use_compile_cache(config.compile_cache.dir, config.compile_cache.enabled)
    task, params, step = restore_generator(config, workdir)
    return Run(config=config, task=task, params=params, step=step)


def _with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """A checked copy of `config` with "section.field" overrides."""
    check_overrides(config, [f"--config.{key}" for key in overrides])
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        target = config
        for part in section.split(".") if section else []:
            target = target[part]
        if isinstance(target[field], str) and isinstance(value, int):
            value = str(value)  # a step count where the field holds a respacing string ("100", "ddim50")
        try:
            target[field] = value
        except TypeError as e:
            raise ConfigError(f"{key}={value!r}: {e}") from e
    check_config(config)
    return config


def _task_of(config: ml_collections.ConfigDict) -> Task:
    """The task of a config differing from the run's in its sampler settings only (params reused)."""
    return make_task(config, mesh_from_config(config.mesh))
