"""MAR's task: a config -> the model, its train step, generation and checks.

MAR trains on continuous tokens (pixels or KL latents, encoded on the fly or sampled from a
latent cache) with the DiffLoss head, and generates with the masked sampler.
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from marjax.blocks.block_stack import REMAT_POLICIES
from marjax.config.defaults import base_config
from marjax.data.class_labels import sample_labels
from marjax.data.image_ops import to_uint8
from marjax.errors import ConfigError
from marjax.models.mar import PRESETS, MAR, init_boxed_params, init_params
from marjax.models.masking import mask_count_buckets
from marjax.parallel.sharding import batch_sharding
from marjax.sampling.masked import generate
from marjax.tasks.base import Task, TaskSpec
from marjax.tasks.generation import generate_images
from marjax.tasks.mar_step import make_train_step, weight_decay_mask
from marjax.tasks.recipe import optimizer_from_config, step_plan
from marjax.tasks.tokenizer_from_config import check_available, make_tokenizer, tokenizer_spec
from marjax.tasks.train_state import TrainState, create_train_state, state_layout


def imagenet_mar_config(preset: str, cfg: float) -> ml_collections.ConfigDict:
    """The published ImageNet-256 recipe for one MAR size (`marjax.models.mar.PRESETS`).

    KL-16 latents (16x16x16, scale 0.2325), batch 2048 at lr 1e-4 * 2048/256, 100 warmup epochs
    then constant, 800 epochs, EMA 0.9999; sampling with 256 steps and linear CFG `cfg`.
    """
    c = base_config()
    for key, value in PRESETS[preset].items():
        c.model[key] = value
    c.train.num_epochs = 800.0
    c.train.mask_buckets = 3  # minutes more compiling, ~8% less work per step for 800 epochs
    c.sample.num_iter = 256
    c.sample.cfg = cfg
    return c


def model_from_config(config: ml_collections.ConfigDict) -> MAR:
    """The MAR module of `config.model`, its token grid derived from the image size and tokenizer."""
    spec = tokenizer_spec(config)
    fields = dict(config.model)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return MAR(latent_size=config.data.image_size // spec.stride, latent_channels=spec.channels,
               num_classes=config.data.num_classes, **fields)


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """Raises ConfigError for MAR settings that cannot run; with `weights`, also when the
    tokenizer's weights are not there."""
    m = config.model
    for key, value in (("model.patch_size", m.patch_size), ("train.diffusion_batch_mul", config.train.diffusion_batch_mul),
                       ("sample.num_iter", config.sample.num_iter),
                       ("sample.num_diffusion_steps", config.sample.num_diffusion_steps)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if not 0.0 < config.train.mask_ratio_min <= 1.0:
        raise ConfigError(f"train.mask_ratio_min={config.train.mask_ratio_min}: the smallest masked fraction lies in "
                          f"(0, 1]")
    for key, choices in (("dtype", ("float32", "bfloat16")), ("remat", tuple(REMAT_POLICIES))):
        if m[key] not in choices:
            raise ConfigError(f"model.{key}={m[key]!r}; choose one of {list(choices)}")
    for width, heads in (("encoder_width", "encoder_heads"), ("decoder_width", "decoder_heads")):
        if m[width] % m[heads]:
            raise ConfigError(f"model.{width}={m[width]} is not divisible by model.{heads}={m[heads]}")
    spec = tokenizer_spec(config)
    if spec.discrete:
        raise ConfigError("MAR's DiffLoss head needs continuous tokens: tokenizer.kind must be 'pixels' or 'kl', "
                          f"got {config.tokenizer.kind!r}")
    if weights:
        check_available(config)
    if config.data.source == "cached_latents" and config.tokenizer.kind != "kl":
        raise ConfigError("data.source='cached_latents' holds KL posteriors: set tokenizer.kind='kl' and "
                          "tokenizer.checkpoint to the tokenizer that wrote them")
    unit = spec.stride * m.patch_size
    if config.data.image_size % unit:
        raise ConfigError(f"data.image_size={config.data.image_size} is not divisible by the tokenizer stride "
                          f"({config.tokenizer.kind}: {spec.stride}) x model.patch_size ({m.patch_size}) = {unit}")
    side = config.data.image_size // unit
    try:
        mask_count_buckets(side * side, config.train.mask_ratio_min, config.train.mask_buckets)
    except ValueError as e:
        raise ConfigError(f"train.{e}") from e


def generate_latents(model: MAR, params: dict, labels: jax.Array, rng: jax.Array,
                     sample_config: ml_collections.ConfigDict, **known) -> jax.Array:
    """`sampling.masked.generate` with the sampler settings of `sample_config` (a config's
    `sample` section); `known`: optional known_latents and known_mask."""
    s = sample_config
    return generate(model, params, labels, rng, num_iter=s.num_iter, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                    temperature=s.temperature, num_diffusion_steps=s.num_diffusion_steps,
                    clip_denoised=s.clip_denoised, **known)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int,
          source: Sequence[dict] | None) -> Task:
    """MAR on tokenizer latents. The tokenizer's weights load on first use (not for compiling)."""
    del source
    tokenizer = functools.cache(lambda: make_tokenizer(config))
    model = model_from_config(config)
    t = config.train
    tx, schedule = optimizer_from_config(config, step_plan(config, num_records), weight_decay_mask)
    init = functools.partial(create_train_state, functools.partial(init_params, model), tx)
    abstract_state, shardings = state_layout(functools.partial(init_params, model),
                                             functools.partial(init_boxed_params, model), tx, mesh, config.mesh)
    mar_step = make_train_step(model, tx, schedule, mask_ratio_min=t.mask_ratio_min,
                               label_drop_prob=t.label_drop_prob, diffusion_batch_mul=t.diffusion_batch_mul,
                               ema_rate=t.ema_rate, mask_buckets=t.mask_buckets, batch_sharding=batch_sharding(mesh))

    def train_step(state, batch, rng, frozen):
        del frozen  # MAR reads nothing besides its state
        return mar_step(state, batch, rng)

    def prepare_batch(batch: dict, key: jax.Array) -> dict:
        if "moments" in batch:  # a latent cache: sample the stored posterior, as encoding would
            latents = tokenizer().latents_from_moments(batch["moments"], key)
        else:
            latents = tokenizer().encode(batch["images"], key)
        return {"latents": latents, "labels": batch["labels"]}

    def abstract_batch(batch_size: int) -> dict:
        side, sharding = model.latent_size, batch_sharding(mesh)
        return {"latents": jax.ShapeDtypeStruct((batch_size, side, side, model.latent_channels), np.float32,
                                                sharding=sharding),
                "labels": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding)}

    def generate_batch(params, labels: jax.Array, rng: jax.Array) -> jax.Array:
        return to_uint8(tokenizer().decode(generate_latents(model, params, labels, rng, config.sample)))

    grid_labels = sample_labels(t.num_grid_samples, config.data.num_classes)

    def visualize(state, key):
        return generate_images(generate_batch, state.ema_params, grid_labels, key, config.sample.batch_size), \
            grid_labels

    def state_from_params(params, ema_params) -> TrainState:
        return TrainState(step=np.zeros((), np.int32), params=params, ema_params=ema_params,
                          opt_state=tx.init(params))

    return Task(name="mar", abstract_state=abstract_state, shardings=shardings, init=init, step=train_step,
                prepare_batch=prepare_batch, abstract_batch=abstract_batch, visualize=visualize,
                generate=generate_batch, generation_params=lambda state, use_ema: state.ema_params if use_ema
                else state.params, state_from_params=state_from_params,
                num_params=sum(x.size for x in jax.tree.leaves(abstract_state.params)))


SPEC = TaskSpec(check_config=check_config, build=build)
