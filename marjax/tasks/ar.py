"""The causal AR baselines' task (the MAR paper's Table 1): a config -> `models.ar.AR`, its train
step and its KV-cache sampler.

`model.head` and the tokenizer go together: "diffloss" on continuous tokens (pixels or KL latents,
encoded on the fly or from a latent cache), "softmax" on the codes of a VQ tokenizer. `model.order`
is "raster" or "random" (a fresh permutation per sample at every step and at sampling). The loss
covers every position; the recipe is MAR's (label drop for CFG, AdamW (0.9, 0.95), warmup then
constant for DiffLoss; AR_BASELINES.md gives the cross-entropy models a cosine schedule, which
`configs/ar_digits.py` sets).
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from marjax.blocks.block_stack import REMAT_POLICIES
from marjax.config.checks import check_fields, check_unused
from marjax.data.image_ops import to_uint8
from marjax.errors import ConfigError
from marjax.heads.diffusion import NUM_TRAIN_TIMESTEPS
from marjax.models.ar import AR, BLOCK_GROUPS, HEADS, ORDERS, init_boxed_params, init_params
from marjax.models.common import patchify, unpatchify
from marjax.models.masking import raster_orders, sample_orders
from marjax.parallel.sharding import batch_sharding
from marjax.sampling.causal import generate_ar
from marjax.tasks.base import Task, TaskSpec
from marjax.tasks.editing import known_first_orders, known_token_mask
from marjax.tasks.generation import check_diffloss_sampling, denoised_clip
from marjax.tasks.generator_task import generator_task
from marjax.tasks.loss_step import make_loss_step
from marjax.tasks.recipe import matrix_decay_mask, optimizer_from_config, step_plan
from marjax.tasks.token_batches import check_token_source, codes_of_batch, latents_of_batch
from marjax.tasks.tokenizer_from_config import check_available, make_tokenizer, tokenizer_spec


def model_from_config(config: ml_collections.ConfigDict) -> AR:
    """The AR module of `config.model` on the tokenizer's grid: continuous tokens of its channels
    (DiffLoss) or its codebook (softmax)."""
    spec = tokenizer_spec(config)
    fields = dict(config.model)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return AR(latent_size=config.data.image_size // spec.stride, latent_channels=spec.channels or 1,
              vocab_size=spec.codebook_size or 1, num_classes=config.data.num_classes, **fields)


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """ConfigError for AR settings that cannot run: a head that does not fit the tokenizer's tokens,
    sampler settings of the other head, sizes that do not divide; with `weights`, also when the
    tokenizer's weights are not there."""
    check_fields(config, choices={"model.order": ORDERS, "model.head": HEADS,
                                  "model.dtype": ("float32", "bfloat16"), "model.remat": tuple(REMAT_POLICIES)},
                 at_least_one=("model.patch_size", "model.depth"),
                 divisible=(("model.width", "model.num_heads"),))
    check_unused(config, ("train.mask_ratio_min", "train.mask_buckets", "sample.num_iter", "sample.more_smooth",
                          "sample.host_top_k", "train.label_smoothing"),
                 "a causal AR model predicts every token, one per step, with no mask")
    spec = tokenizer_spec(config)
    head = config.model.head
    if head == "softmax":
        if not spec.discrete:
            raise ConfigError(f"model.head='softmax' predicts VQ codes: set tokenizer.kind='vq' (got "
                              f"{config.tokenizer.kind!r}), or model.head='diffloss' for continuous tokens")
        if config.model.patch_size != 1:
            raise ConfigError(f"model.patch_size={config.model.patch_size}: a softmax head predicts one code per "
                              f"token; set model.patch_size=1")
        check_unused(config, ("train.diffusion_batch_mul", "sample.num_diffusion_steps", "sample.clip_denoised",
                              "sample.clip_range"),
                     "the softmax head samples codes from its logits")
    else:
        if spec.discrete:
            raise ConfigError(f"model.head='diffloss' needs continuous tokens: tokenizer.kind 'pixels' or 'kl' (got "
                              f"{config.tokenizer.kind!r}), or model.head='softmax' for VQ codes")
        check_unused(config, ("sample.top_k", "sample.top_p", "sample.cfg_interval"),
                     "they filter a softmax head's logits; the DiffLoss head samples with sample.temperature")
        check_diffloss_sampling(config)
    if weights:
        check_available(config)
    check_token_source(config, discrete=head == "softmax")
    unit = spec.stride * config.model.patch_size
    if config.data.image_size % unit:
        raise ConfigError(f"data.image_size={config.data.image_size} is not divisible by the tokenizer stride "
                          f"({config.tokenizer.kind}: {spec.stride}) x model.patch_size ({config.model.patch_size}) "
                          f"= {unit}")


def ar_loss(model: AR, diffusion_batch_mul: int, label_drop_prob: float,
            batch_sharding: jax.sharding.Sharding | None = None):
    """loss_fn(params, batch, rng) -> (loss, {}) for `make_loss_step`: the orders (raster, or random
    per sample), the dropped labels, and the DiffLoss head's timesteps and noise drawn from rng.

    batch: {"tokens": (B, N, token_dim) float (DiffLoss) or (B, N) int codes (softmax), in grid
    order; "labels": (B,) int}.
    """

    def loss_fn(params, batch, rng):
        order_key, drop_key, t_key, noise_key, dropout_key = jax.random.split(rng, 5)
        tokens = batch["tokens"]
        b, n = tokens.shape[:2]
        orders = sample_orders(order_key, b, n) if model.order == "random" else raster_orders(b, n)
        drop_label = jax.random.bernoulli(drop_key, label_drop_prob, (b,))
        t = noise = None
        if model.head == "diffloss":
            rows = b * n * diffusion_batch_mul
            t = jax.random.randint(t_key, (rows,), 0, NUM_TRAIN_TIMESTEPS)
            noise = jax.random.normal(noise_key, (rows, model.token_dim))
        loss, _ = model.apply({"params": params}, tokens, batch["labels"], orders, drop_label, t, noise,
                              deterministic=False, batch_sharding=batch_sharding, rngs={"dropout": dropout_key})
        return loss, {}

    return loss_fn


def weight_decay_mask(params):
    """MAR's: >= 2-D params outside the DiffLoss MLP."""
    return matrix_decay_mask(params, BLOCK_GROUPS, exempt=("diffloss",))


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int,
          source: Sequence[dict] | None) -> Task:
    """The AR baseline on its tokenizer's tokens; the tokenizer's weights load on first use."""
    del source
    tokenizer = functools.cache(lambda: make_tokenizer(config))
    model = model_from_config(config)
    t, s = config.train, config.sample
    softmax = model.head == "softmax"
    tx, schedule = optimizer_from_config(config, step_plan(config, num_records), weight_decay_mask)
    step = make_loss_step(ar_loss(model, t.diffusion_batch_mul, t.label_drop_prob, batch_sharding(mesh)), tx,
                          schedule, t.ema_rate, t.ema_warmup)

    def prepare_batch(batch: dict, key: jax.Array) -> dict:
        if softmax:
            return {"tokens": codes_of_batch(tokenizer(), batch, model.seq_len), "labels": batch["labels"]}
        return {"tokens": patchify(latents_of_batch(tokenizer(), batch, key), model.patch_size),
                "labels": batch["labels"]}

    def abstract_batch(batch_size: int) -> dict:
        sharding = batch_sharding(mesh)
        shape, dtype = ((batch_size, model.seq_len), np.int32) if softmax else \
            ((batch_size, model.seq_len, model.token_dim), np.float32)
        return {"tokens": jax.ShapeDtypeStruct(shape, dtype, sharding=sharding),
                "labels": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding)}

    head_settings = dict(top_k=s.top_k, top_p=s.top_p, cfg_interval=s.cfg_interval) if softmax else \
        dict(num_diffusion_steps=s.num_diffusion_steps, clip_denoised=denoised_clip(s))

    def images_of(tokens: jax.Array) -> jax.Array:
        if softmax:
            return to_uint8(tokenizer().decode_codes(tokens.reshape((-1,) + model.grid)))
        return to_uint8(tokenizer().decode(unpatchify(tokens, model.patch_size, model.grid)))

    def sample_tokens(params, labels: jax.Array, rng: jax.Array, **known) -> jax.Array:
        return generate_ar(model, params, labels, rng, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                           temperature=s.temperature, **head_settings, **known)

    def generate_batch(params, labels: jax.Array, rng: jax.Array) -> jax.Array:
        return images_of(sample_tokens(params, labels, rng))

    def edit_batch(params, images: jax.Array, keep: jax.Array, labels: jax.Array, rng: jax.Array) -> jax.Array:
        """A random-order model generates the unknown tokens after all the known ones; a raster model
        can only feed each known token at its grid position (`generate_ar`)."""
        encode_key, order_key, sample_key = jax.random.split(rng, 3)
        tokens = prepare_batch({"images": images, "labels": labels}, encode_key)["tokens"]
        known = known_token_mask(keep, tokenizer().stride * model.patch_size).reshape(tokens.shape[:2])
        orders = known_first_orders(order_key, known) if model.order == "random" else None
        return images_of(sample_tokens(params, labels, sample_key, orders=orders, known_tokens=tokens,
                                       known_mask=known))

    return generator_task("ar", config, mesh, functools.partial(init_params, model),
                          functools.partial(init_boxed_params, model), tx, step, prepare_batch, abstract_batch,
                          generate_batch, edit_batch)


SPEC = TaskSpec(check_config=check_config, build=build)
