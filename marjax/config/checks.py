"""Checks of the fields every task shares, run before anything loads or compiles.

Each family adds its own (`Task.check_config` in `marjax.tasks`); `marjax.tasks.registry.
check_config` runs both.
"""
import math
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections

from marjax.config.defaults import base_config
from marjax.config.loading import config_items
from marjax.data.class_labels import sample_labels
from marjax.errors import ConfigError
from marjax.parallel.sharding import BATCH_AXES, validate_mesh

CHOICES = {
    "tokenizer.kind": ("pixels", "kl", "vq", "msvq"),
    "tokenizer.reconstruction": ("l1", "l2"),
    "data.source": ("tfds", "image_folder", "digits", "cached_latents", "cached_codes"),
    "train.lr_schedule": ("constant", "cosine", "lin0"),
    "sample.cfg_schedule": ("linear", "constant"),
    "sample.choice": ("order", "confidence"),
    "eval.feature_network": ("inception", "digits"),
}


def _check_lpips_files(tokenizer: ml_collections.ConfigDict) -> None:
    """Both LPIPS files or neither (then training warns and goes without); a named file must exist."""
    given = {key: tokenizer[key] for key in ("lpips_vgg16", "lpips_lin") if tokenizer[key]}
    if tokenizer.perceptual_weight <= 0 or not given:
        return
    if len(given) == 1:
        other = ({"lpips_vgg16", "lpips_lin"} - set(given)).pop()
        raise ConfigError(f"the LPIPS loss needs both weight files: tokenizer.{other} is not set")
    for key, path in given.items():
        if not os.path.isfile(path):
            raise ConfigError(f"tokenizer.{key}={path}: no such file")


def validate_shared(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for shared values that cannot run together (choices, counts, the mesh)."""
    values = dict(config_items(config))
    for key, choices in CHOICES.items():
        if values[key] not in choices:
            raise ConfigError(f"{key}={values[key]!r}; choose one of {list(choices)}")
    _check_lpips_files(config.tokenizer)
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "global_batch_size"):
        if config.train[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {config.train[key]}")
    if config.train.num_steps is not None and config.train.num_steps < 1:
        raise ConfigError(f"train.num_steps must be >= 1 (or None to count train.num_epochs), got {config.train.num_steps}")
    if config.train.num_steps is None and not config.train.num_epochs > 0:
        raise ConfigError(f"train.num_epochs must be > 0, got {config.train.num_epochs}")
    for key in ("seed", "sample.seed"):
        if values[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {values[key]}")
    if config.data.channels not in (1, 3):
        raise ConfigError(f"data.channels={config.data.channels}: images have 1 (grey) or 3 (RGB) channels")
    if config.data.image_size < 1:
        raise ConfigError(f"data.image_size must be >= 1, got {config.data.image_size}")
    if config.data.num_classes < 0:
        raise ConfigError(f"data.num_classes must be >= 1, or 0 for an unconditional model; got "
                          f"{config.data.num_classes}")
    if config.data.num_classes == 0:
        check_unused(config, ("sample.cfg",), "data.num_classes=0 is an unconditional model: there are no "
                     "classes to guide towards")
    if config.sample.num_images < 1 or config.sample.batch_size < 1:
        raise ConfigError("sample.num_images and sample.batch_size must be >= 1")
    if config.eval.num_images < 10 or config.eval.batch_size < 1 or config.eval.num_reference_images < 4:
        raise ConfigError("eval.num_images must be >= 10 (the Inception Score's 10 splits), eval.batch_size >= 1 "
                          "and eval.num_reference_images >= 4 (precision/recall's 3 nearest neighbours)")
    validate_mesh(config.mesh)
    try:
        sample_labels(1, config.data.num_classes, config.sample.classes)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def check_batch_split(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """ConfigError when train.global_batch_size does not split evenly over `mesh`'s batch axes."""
    shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES)
    if config.train.global_batch_size % shards:
        sizes = " x ".join(str(mesh.shape[axis]) for axis in BATCH_AXES)
        raise ConfigError(f"train.global_batch_size={config.train.global_batch_size} is not divisible by the mesh's "
                          f"{shards} batch shards (mesh.{' x mesh.'.join(BATCH_AXES)} = {sizes})")


def check_fields(config: ml_collections.ConfigDict, choices: Mapping[str, Sequence] = (),
                 at_least_one: Sequence[str] = (), divisible: Sequence[tuple[str, str]] = ()) -> None:
    """ConfigError for the first field (dotted path) outside its `choices`, below 1 (`at_least_one`),
    or a (numerator, denominator) pair of `divisible` that does not divide."""
    values = dict(config_items(config))
    for key, allowed in dict(choices).items():
        if values[key] not in allowed:
            raise ConfigError(f"{key}={values[key]!r}; choose one of {list(allowed)}")
    for key in at_least_one:
        if values[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {values[key]}")
    for numerator, denominator in divisible:
        if values[numerator] % values[denominator]:
            raise ConfigError(f"{numerator}={values[numerator]} is not divisible by {denominator}={values[denominator]}")


def check_unused(config: ml_collections.ConfigDict, keys: Sequence[str], why: str) -> None:
    """ConfigError naming the fields of `keys` (dotted paths) set away from their default for
    `config.task`: they would have no effect, and a silently ignored setting misleads. `why` says
    what the task uses instead."""
    defaults = dict(config_items(base_config(config.task)))
    values = dict(config_items(config))
    changed = [key for key in keys if values[key] != defaults[key]]
    if changed:
        raise ConfigError(f"{', '.join(f'{key}={values[key]!r}' for key in changed)} has no effect on "
                          f"task={config.task!r} ({why}); leave {'it' if len(changed) == 1 else 'them'} at the "
                          f"default: {', '.join(f'{key}={defaults[key]!r}' for key in changed)}")
