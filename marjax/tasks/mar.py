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
from marjax.config.checks import check_fields, check_unused
from marjax.config.defaults import base_config
from marjax.data.image_ops import to_uint8
from marjax.errors import ConfigError
from marjax.models.mar import HEADS, PRESETS, MAR, init_boxed_params, init_params
from marjax.models.masking import mask_count_buckets
from marjax.parallel.sharding import batch_sharding
from marjax.sampling.masked import generate
from marjax.tasks.base import Task, TaskSpec
from marjax.tasks.editing import known_token_mask
from marjax.tasks.generation import check_diffloss_sampling, denoised_clip
from marjax.tasks.generator_task import generator_task
from marjax.tasks.mar_step import make_train_step, weight_decay_mask
from marjax.tasks.recipe import optimizer_from_config, step_plan
from marjax.tasks.token_batches import check_token_source, codes_of_batch, latents_of_batch
from marjax.tasks.tokenizer_from_config import check_available, make_tokenizer, tokenizer_spec


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
    """The MAR module of `config.model`, its token grid derived from the image size and tokenizer:
    continuous tokens of its channels (DiffLoss) or its codebook (softmax)."""
    spec = tokenizer_spec(config)
    fields = dict(config.model)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return MAR(latent_size=config.data.image_size // spec.stride, latent_channels=spec.channels or 1,
               vocab_size=spec.codebook_size or 1, num_classes=config.data.num_classes, **fields)


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """Raises ConfigError for MAR settings that cannot run; with `weights`, also when the
    tokenizer's weights are not there."""
    m = config.model
    check_fields(config, choices={"model.dtype": ("float32", "bfloat16"), "model.remat": tuple(REMAT_POLICIES),
                                  "model.head": HEADS},
                 at_least_one=("model.patch_size", "train.diffusion_batch_mul", "sample.num_iter"),
                 divisible=(("model.encoder_width", "model.encoder_heads"),
                            ("model.decoder_width", "model.decoder_heads")))
    if not 0.0 < config.train.mask_ratio_min <= 1.0:
        raise ConfigError(f"train.mask_ratio_min={config.train.mask_ratio_min}: the smallest masked fraction lies in "
                          f"(0, 1]")
    check_unused(config, ("sample.top_k", "sample.top_p", "sample.cfg_interval", "sample.more_smooth",
                          "sample.host_top_k", "train.label_smoothing"), "MAR samples with sample.temperature and sample.cfg")
    spec = tokenizer_spec(config)
    if m.head == "softmax":
        if not spec.discrete:
            raise ConfigError(f"model.head='softmax' predicts VQ codes: set tokenizer.kind='vq' (got "
                              f"{config.tokenizer.kind!r}), or model.head='diffloss' for continuous tokens")
        if m.patch_size != 1:
            raise ConfigError(f"model.patch_size={m.patch_size}: a softmax head predicts one code per token; set "
                              f"model.patch_size=1")
        check_unused(config, ("train.diffusion_batch_mul", "sample.num_diffusion_steps", "sample.clip_denoised",
                              "sample.clip_range"),
                     "the softmax head samples codes from its logits")
    else:
        if spec.discrete:
            raise ConfigError("MAR's DiffLoss head needs continuous tokens: tokenizer.kind must be 'pixels' or 'kl', "
                              f"got {config.tokenizer.kind!r} (or set model.head='softmax' for VQ codes)")
        check_unused(config, ("sample.choice", "sample.choice_temperature"),
                     "the DiffLoss head keeps the tokens of the random order")
        check_diffloss_sampling(config)
    if weights:
        check_available(config)
    check_token_source(config, discrete=m.head == "softmax")
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
    `sample` section); `known`: optional known_latents and known_mask. Latents (B, h, w, C), or
    codes (B, h, w) with the softmax head."""
    s = sample_config
    if model.head == "softmax":
        return generate(model, params, labels, rng, num_iter=s.num_iter, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                        temperature=s.temperature, choice=s.choice, choice_temperature=s.choice_temperature,
                        **known)
    return generate(model, params, labels, rng, num_iter=s.num_iter, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                    temperature=s.temperature, num_diffusion_steps=s.num_diffusion_steps,
                    clip_denoised=denoised_clip(s), **known)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int,
          source: Sequence[dict] | None) -> Task:
    """MAR on tokenizer latents. The tokenizer's weights load on first use (not for compiling)."""
    del source
    tokenizer = functools.cache(lambda: make_tokenizer(config))
    model = model_from_config(config)
    t = config.train
    tx, schedule = optimizer_from_config(config, step_plan(config, num_records), weight_decay_mask)
    mar_step = make_train_step(model, tx, schedule, mask_ratio_min=t.mask_ratio_min,
                               label_drop_prob=t.label_drop_prob, diffusion_batch_mul=t.diffusion_batch_mul,
                               ema_rate=t.ema_rate, ema_warmup=t.ema_warmup, mask_buckets=t.mask_buckets,
                               batch_sharding=batch_sharding(mesh))

    softmax = model.head == "softmax"

    def prepare_batch(batch: dict, key: jax.Array) -> dict:
        if softmax:
            side = model.latent_size
            codes = codes_of_batch(tokenizer(), batch, side * side)
            return {"codes": codes.reshape(-1, side, side), "labels": batch["labels"]}
        return {"latents": latents_of_batch(tokenizer(), batch, key), "labels": batch["labels"]}

    def abstract_batch(batch_size: int) -> dict:
        side, sharding = model.latent_size, batch_sharding(mesh)
        tokens = {"codes": jax.ShapeDtypeStruct((batch_size, side, side), np.int32, sharding=sharding)} if softmax \
            else {"latents": jax.ShapeDtypeStruct((batch_size, side, side, model.latent_channels), np.float32,
                                                  sharding=sharding)}
        return {**tokens, "labels": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding)}

    def images_of(tokens: jax.Array) -> jax.Array:
        return to_uint8(tokenizer().decode_codes(tokens) if softmax else tokenizer().decode(tokens))

    def generate_batch(params, labels: jax.Array, rng: jax.Array) -> jax.Array:
        return images_of(generate_latents(model, params, labels, rng, config.sample))

    def edit_batch(params, images: jax.Array, keep: jax.Array, labels: jax.Array, rng: jax.Array) -> jax.Array:
        encode_key, sample_key = jax.random.split(rng)
        known = tokenizer().encode_codes(images) if softmax else tokenizer().encode(images, encode_key)
        mask = known_token_mask(keep, tokenizer().stride * model.patch_size)
        return images_of(generate_latents(model, params, labels, sample_key, config.sample, known_latents=known,
                                          known_mask=mask.reshape(mask.shape[0], -1)))

    return generator_task("mar", config, mesh, functools.partial(init_params, model),
                          functools.partial(init_boxed_params, model), tx, mar_step, prepare_batch, abstract_batch,
                          generate_batch, edit_batch)


SPEC = TaskSpec(check_config=check_config, build=build)
