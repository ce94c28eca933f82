"""VQ-GPT's task (LlamaGen's c2i recipe): a config -> `models.gpt.GPT` on a VQ tokenizer's codes,
its train step and its KV-cache sampler.

Training (VQGPT.md): cross-entropy on every code of the raster sequence, the class token dropped
to the null class with probability `train.label_drop_prob` (LlamaGen's class_dropout_prob), AdamW
(0.9, 0.95) with weight decay on >= 2-D params only (embeddings included), LlamaGen's constant lr
(not scaled by batch: `imagenet_gpt_config` sets base_lr so that base_lr * batch / 256 is its lr),
grad clip 1.0, EMA optional (`train.ema_rate` 0 keeps the EMA equal to the params).
Sampling: LlamaGen's order (CFG on logits with `sample.cfg_interval`, temperature, top-k, top-p).
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from marjax.config.checks import check_fields, check_unused
from marjax.config.defaults import base_config
from marjax.data.image_ops import to_uint8
from marjax.errors import ConfigError
from marjax.models.gpt import GPT, PRESETS, init_boxed_params, init_params
from marjax.parallel.sharding import batch_sharding
from marjax.sampling.causal import generate_codes
from marjax.tasks.base import Task, TaskSpec
from marjax.tasks.editing import known_token_mask
from marjax.tasks.generator_task import generator_task
from marjax.tasks.token_batches import check_token_source, codes_of_batch
from marjax.tasks.loss_step import code_prediction_loss, make_loss_step
from marjax.tasks.recipe import matrix_decay_mask, optimizer_from_config, step_plan
from marjax.tasks.tokenizer_from_config import check_available, make_tokenizer, tokenizer_spec

# Fields of the MAR family's recipe that a GPT run does not read.
UNUSED = ("train.mask_ratio_min", "train.mask_buckets", "train.diffusion_batch_mul", "sample.num_iter",
          "sample.num_diffusion_steps", "sample.clip_denoised", "sample.clip_range", "sample.more_smooth",
          "sample.host_top_k")


def imagenet_gpt_config(preset: str, cfg: float = 2.0) -> ml_collections.ConfigDict:
    """LlamaGen's c2i recipe for one GPT size (`marjax.models.gpt.PRESETS`) on ImageNet-256 VQ-16 codes:
    batch 256 at a constant lr 1e-4, 300 epochs, wd 0.05, clip 1.0, no EMA; sampling with CFG `cfg`
    (LlamaGen's README: 2.0 for GPT-B/L, 1.75 for the larger ones), top-k 0, top-p 1.0, temperature 1.0."""
    c = base_config("gpt")
    for key, value in PRESETS[preset].items():
        c.model[key] = value
    c.tokenizer.update(kind="vq", attn_resolutions=(16,), resolution=256, decoder_attn_levels=(4,))
    c.train.update(global_batch_size=256, num_epochs=300.0, warmup_epochs=0.0, base_lr=1e-4, weight_decay=0.05,
                   grad_clip=1.0, ema_rate=0.0)
    c.sample.update(cfg=cfg, cfg_schedule="constant", num_images=50_000, batch_size=64)
    return c


def model_from_config(config: ml_collections.ConfigDict) -> GPT:
    """The GPT of `config.model` over the tokenizer's codebook and grid; class dropout
    `train.label_drop_prob`."""
    spec = tokenizer_spec(config)
    fields = dict(config.model)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return GPT(vocab_size=spec.codebook_size, grid_size=config.data.image_size // spec.stride,
               num_classes=config.data.num_classes, class_dropout=config.train.label_drop_prob, **fields)


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """ConfigError for GPT settings that cannot run; with `weights`, also when the VQ tokenizer's
    weights are not there."""
    check_fields(config, choices={"tokenizer.kind": ("vq",), "model.dtype": ("float32", "bfloat16")},
                 at_least_one=("model.depth", "model.width"), divisible=(("model.width", "model.num_heads"),))
    check_unused(config, UNUSED, "VQ-GPT predicts the next code of a raster sequence with a softmax head")
    m = config.model
    if m.num_kv_heads is not None and (m.num_kv_heads < 1 or m.num_heads % m.num_kv_heads):
        raise ConfigError(f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads}")
    if (m.width // m.num_heads) % 4:
        raise ConfigError(f"model.width / model.num_heads = {m.width // m.num_heads}: 2-D RoPE needs a head dim "
                          f"divisible by 4")
    if config.sample.cfg != 1.0 and config.train.label_drop_prob <= 0:
        raise ConfigError(f"sample.cfg={config.sample.cfg} needs the null class, which train.label_drop_prob > 0 "
                          f"adds (got {config.train.label_drop_prob})")
    stride = tokenizer_spec(config).stride
    if config.data.image_size % stride:
        raise ConfigError(f"data.image_size={config.data.image_size} is not divisible by the VQ tokenizer's "
                          f"stride {stride}")
    check_token_source(config, discrete=True)
    if weights:
        check_available(config)


def gpt_loss(model: GPT, label_smoothing: float = 0.0):
    """loss_fn(params, batch, rng) -> (loss, {"accuracy"}) for `make_loss_step`: the mean cross-entropy
    over every code; the class drop and the dropouts draw from rng. batch: {"codes": (B, N) int in
    raster order, "labels": (B,) int}."""

    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["codes"], batch["labels"], deterministic=False,
                             rngs={"dropout": rng})
        return code_prediction_loss(logits, batch["codes"], label_smoothing)

    return loss_fn


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int,
          source: Sequence[dict] | None) -> Task:
    """VQ-GPT on its tokenizer's codes; the tokenizer's weights load on first use."""
    del source
    tokenizer = functools.cache(lambda: make_tokenizer(config))
    model = model_from_config(config)
    t, s = config.train, config.sample
    tx, schedule = optimizer_from_config(config, step_plan(config, num_records), matrix_decay_mask)
    step = make_loss_step(gpt_loss(model, t.label_smoothing), tx, schedule, t.ema_rate, t.ema_warmup)

    def prepare_batch(batch: dict, key: jax.Array) -> dict:
        del key
        return {"codes": codes_of_batch(tokenizer(), batch, model.seq_len), "labels": batch["labels"]}

    def abstract_batch(batch_size: int) -> dict:
        sharding = batch_sharding(mesh)
        return {"codes": jax.ShapeDtypeStruct((batch_size, model.seq_len), np.int32, sharding=sharding),
                "labels": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding)}

    def sample_images(params, labels: jax.Array, rng: jax.Array, **known) -> jax.Array:
        codes = generate_codes(model, params, labels, rng, cfg=s.cfg, cfg_schedule=s.cfg_schedule,
                               cfg_interval=s.cfg_interval, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                               **known)
        return to_uint8(tokenizer().decode_codes(codes.reshape(-1, model.grid_size, model.grid_size)))

    def edit_batch(params, images: jax.Array, keep: jax.Array, labels: jax.Array, rng: jax.Array) -> jax.Array:
        """Raster order: each known code is fed at its grid position, so a code generated before a known
        one does not see it (LlamaGen has no editing; this is what a raster model can do)."""
        codes = prepare_batch({"images": images, "labels": labels}, rng)["codes"]
        known = known_token_mask(keep, tokenizer().stride).reshape(codes.shape)
        return sample_images(params, labels, rng, known_codes=codes, known_mask=known)

    return generator_task("gpt", config, mesh, functools.partial(init_params, model),
                          functools.partial(init_boxed_params, model), tx, step, prepare_batch, abstract_batch,
                          sample_images, edit_batch)


SPEC = TaskSpec(check_config=check_config, build=build)
