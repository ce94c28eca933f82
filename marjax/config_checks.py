"""Checks on a run's config, run before anything loads or compiles.

`check_overrides` catches a misspelt `--config.a.b=value` (ml-collections would fail with a
bare AttributeError); `validate` catches values that cannot work together.
"""
import difflib
import importlib.util
import os
import sys
from collections.abc import Sequence

import ml_collections

from marjax.masking import mask_count_buckets
from marjax.models.block_stack import REMAT_POLICIES
from marjax.models.layers import LAYER_AXIS
from marjax.tokenizers import check_available, tokenizer_spec

CHOICES = {
    "task": ("mar", "tokenizer"),
    "vae.kind": ("kl", "vq"),
    "vae.reconstruction": ("l1", "l2"),
    "data.source": ("tfds", "image_folder", "digits", "cached_latents"),
    "model.dtype": ("float32", "bfloat16"),
    "model.remat": tuple(REMAT_POLICIES),
    "train.lr_schedule": ("constant", "cosine"),
    "sample.cfg_schedule": ("linear", "constant"),
    "eval.feature_network": ("inception", "digits"),
}


class ConfigError(ValueError):
    """A config that cannot run; the message says which field and what would work."""


def config_items(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
    """Every leaf field as (dotted path, value): [("train.base_lr", 1e-4), ...]."""
    items = []
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            items += config_items(value, path + ".")
        else:
            items.append((path, value))
    return items


def config_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Every leaf field as a dotted path ("train.base_lr", ...)."""
    return [key for key, _ in config_items(config)]


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` the way `--config=` does: `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("marjax_run_config", path)
    if module_spec is None:
        raise ConfigError(f"--config={spec}: {path} is not a Python config file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except FileNotFoundError as e:
        raise ConfigError(f"--config={spec}: no such file {path}") from e
    return module.get_config(arg or None)


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
    """Raises ConfigError naming every `--config.<key>=` in argv whose key the config lacks."""
    valid = config_keys(config)
    unknown = []
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].partition("=")[0]
            if key not in valid:
                unknown.append(key)
    if unknown:
        lines = [f"unknown config key {key!r}" + _suggestion(key, valid) for key in unknown]
        raise ConfigError("\n".join(lines) + "\nvalid keys:\n  " + "\n  ".join(valid))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (for `app.run(flags_parser=...)`), after checking every --config.<key>
    against the config file so a misspelt key exits with the valid ones."""
    from absl import flags

    specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if specs:
        try:
            check_overrides(load_config_file(specs[-1]), argv[1:])
        except ConfigError as e:
            sys.exit(f"error: {e}")
    return flags.FLAGS(argv)


def _suggestion(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_lpips_files(vae: ml_collections.ConfigDict) -> None:
    """Both LPIPS files or neither (then training warns and goes without); a named file must exist."""
    given = {key: vae[key] for key in ("lpips_vgg16", "lpips_lin") if vae[key]}
    if vae.perceptual_weight <= 0 or not given:
        return
    if len(given) == 1:
        other = ({"lpips_vgg16", "lpips_lin"} - set(given)).pop()
        raise ConfigError(f"the LPIPS loss needs both weight files: vae.{other} is not set")
    for key, path in given.items():
        if not os.path.isfile(path):
            raise ConfigError(f"vae.{key}={path}: no such file")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for values that cannot run together (choices, sizes, intervals)."""
    values = dict(config_items(config))
    for key, choices in CHOICES.items():
        if values[key] not in choices:
            raise ConfigError(f"{key}={values[key]!r}; choose one of {list(choices)}")
    _check_lpips_files(config.vae)
    try:
        spec = tokenizer_spec(config)
        check_available(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if config.data.source == "cached_latents" and config.tokenizer.name == "pixels":
        raise ConfigError("data.source='cached_latents' holds VAE posteriors: set tokenizer.name to the "
                          "tokenizer that wrote them (e.g. 'kl16')")
    unit = spec.stride * config.model.patch_size
    if config.data.image_size % unit:
        raise ConfigError(
            f"data.image_size={config.data.image_size} is not divisible by the tokenizer stride "
            f"({config.tokenizer.name}: {spec.stride}) x model.patch_size ({config.model.patch_size}) = {unit}")
    if config.task == "mar":
        side = config.data.image_size // unit
        try:
            mask_count_buckets(side * side, config.train.mask_ratio_min, config.train.mask_buckets)
        except ValueError as e:
            raise ConfigError(f"train.{e}") from e
    for width, heads in (("encoder_width", "encoder_heads"), ("decoder_width", "decoder_heads")):
        if config.model[width] % config.model[heads]:
            raise ConfigError(f"model.{width}={config.model[width]} is not divisible by "
                              f"model.{heads}={config.model[heads]}")
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "global_batch_size"):
        if config.train[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {config.train[key]}")
    if config.sample.num_images < 1 or config.sample.batch_size < 1:
        raise ConfigError("sample.num_images and sample.batch_size must be >= 1")
    if config.eval.num_images < 10 or config.eval.batch_size < 1 or config.eval.num_reference_images < 4:
        raise ConfigError("eval.num_images must be >= 10 (the Inception Score's 10 splits), eval.batch_size >= 1 "
                          "and eval.num_reference_images >= 4 (precision/recall's 3 nearest neighbours)")
    validate_mesh(config.mesh)
    from marjax.sample import sample_labels

    try:
        sample_labels(1, config.data.num_classes, config.sample.classes)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def validate_mesh(mesh: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for mesh sizes other than -1 or >= 1, for rules that are not
    (logical name, mesh axis) pairs naming an axis of the mesh, and for a rule on the stacked
    layer axis."""
    from marjax.sharding import MESH_AXES

    for axis in MESH_AXES:
        if mesh[axis] != -1 and mesh[axis] < 1:
            raise ConfigError(f"mesh.{axis}={mesh[axis]}: use a device count >= 1, or -1 for the devices left over")
    for rule in mesh.rules:
        if len(rule) != 2 or not isinstance(rule[0], str) or rule[1] not in MESH_AXES:
            raise ConfigError(f"mesh.rules entry {rule!r}: use (logical axis name, mesh axis) with a mesh axis "
                              f"in {list(MESH_AXES)}")
        if rule[0] == LAYER_AXIS:
            # Stacked params are meant to be split like one layer, on their other dimensions: with
            # the layer axis split, every scan step would fetch its layer from other devices.
            raise ConfigError(f"mesh.rules entry {rule!r}: the stacked layer axis of model.scan_layers stays "
                              f"replicated; shard the other dimensions")
