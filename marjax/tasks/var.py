"""VAR's task: a config -> `models.var.VAR` on a multi-scale VQ tokenizer's codes (tokenizer.kind
"msvq"), its train step and its next-scale sampler.

Training (VAR.md): cross-entropy over every scale's tokens (label smoothing `train.label_smoothing`),
the class dropped to the null class with probability `train.label_drop_prob` (VAR's cond_drop),
the teacher-forcing input from the frozen tokenizer; AdamW (0.9, 0.95) without weight decay for
1-D params and VAR's exempt names (`NO_DECAY`); lr = base_lr * batch / 256 with VAR's 'lin0'
schedule (`recipe.lin0_schedule`), grad clip 2, no EMA. VAR anneals weight decay from twd to
twde with a cosine; its d16-d24 runs keep it constant (twde = twd), which is what this recipe does.
Sampling: `sampling.next_scale.generate_var` (CFG ramping with the scale, top-k, top-p).
`sample.cfg` is VAR's own: scale k mixes (1 + t) cond - t uncond with t = cfg k / (K - 1), so 0
is no guidance (the default for this task) and VAR's FID setting is 1.5.
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
from marjax.models.var import PRESETS, VAR, init_boxed_params, init_params
from marjax.parallel.sharding import batch_sharding
from marjax.sampling.next_scale import generate_var, scale_masks
from marjax.tasks.base import Task, TaskSpec
from marjax.tasks.generator_task import generator_task
from marjax.tasks.token_batches import check_token_source, codes_of_batch
from marjax.tasks.loss_step import code_prediction_loss, make_loss_step
from marjax.tasks.recipe import matrix_decay_mask, optimizer_from_config, step_plan
from marjax.tasks.tokenizer_from_config import check_available, check_msvq_image_size, make_tokenizer

# VAR's train.py nowd_keys that name params of this model: substrings of a param path.
NO_DECAY = ("pos_start", "pos_1LC", "lvl_embed", "gamma", "beta", "ada_gss", "scale_mul")
UNUSED = ("train.mask_ratio_min", "train.mask_buckets", "train.diffusion_batch_mul", "sample.num_iter",
          "sample.num_diffusion_steps", "sample.clip_denoised", "sample.clip_range", "sample.cfg_interval",
          "sample.temperature", "sample.cfg_schedule")


def imagenet_var_config(preset: str, cfg: float = 1.5) -> ml_collections.ConfigDict:
    """VAR's README recipe for one size (`marjax.models.var.PRESETS`) on vae_ch160v4096z32 codes at
    256 px (512 px for d36-s): batch 768 (1024 for d30), lr 1e-4 (8e-5 from d24) x batch / 256, lin0
    with wpe 0.1 (d16, d20) or 0.01, warmup ep/50, wd 0.05, clip 2, no EMA; sampling with CFG `cfg`,
    top-k 900, top-p 0.96 (VAR's demo)."""
    c = base_config("var")
    fields = dict(PRESETS[preset])
    patch_nums = fields.pop("patch_nums", c.tokenizer.patch_nums)
    for key, value in fields.items():
        c.model[key] = value
    epochs = {"d16": 200.0, "d20": 250.0}.get(preset, 350.0)
    c.tokenizer.update(kind="msvq", ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, codebook_size=4096,
                       code_dim=32, patch_nums=tuple(patch_nums))
    c.data.image_size = 16 * patch_nums[-1]
    base_lr = 1e-4 if preset in ("d16", "d20") else 8e-5
    c.train.update(global_batch_size=1024 if preset == "d30" else 768, num_epochs=epochs, warmup_epochs=epochs / 50,
                   base_lr=base_lr, lr_schedule="lin0",
                   min_lr=base_lr * (0.1 if preset in ("d16", "d20") else 0.01), weight_decay=0.05, grad_clip=2.0,
                   ema_rate=0.0)
    c.sample.update(cfg=cfg, top_k=900, top_p=0.96, num_images=50_000, batch_size=64)
    return c


def model_from_config(config: ml_collections.ConfigDict) -> VAR:
    """The VAR of `config.model` over the msvq tokenizer's codebook and scales; class dropout
    `train.label_drop_prob`."""
    t = config.tokenizer
    fields = dict(config.model)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return VAR(vocab_size=t.codebook_size, code_dim=t.code_dim, patch_nums=tuple(t.patch_nums),
               num_classes=config.data.num_classes, class_dropout=config.train.label_drop_prob, **fields)


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """ConfigError for VAR settings that cannot run; with `weights`, also when the tokenizer's weights
    are not there."""
    check_fields(config, choices={"tokenizer.kind": ("msvq",), "model.dtype": ("float32", "bfloat16")},
                 at_least_one=("model.depth", "model.width"), divisible=(("model.width", "model.num_heads"),))
    check_unused(config, UNUSED, "VAR samples every scale with its logits, CFG ramping with the scale")
    check_msvq_image_size(config)
    if config.sample.cfg != 0.0 and config.train.label_drop_prob <= 0:
        raise ConfigError(f"sample.cfg={config.sample.cfg} needs the null class to have been trained: "
                          f"train.label_drop_prob > 0 (got {config.train.label_drop_prob})")
    check_token_source(config, discrete=True)
    if weights:
        check_available(config)


def var_loss(model: VAR, label_smoothing: float = 0.0):
    """loss_fn(params, batch, rng) -> (loss, {"accuracy"}) for `make_loss_step`: the mean cross-entropy
    over every scale's tokens. batch: {"targets": (B, L) int codes of all scales, "inputs": (B, L -
    p_1^2, code_dim) the teacher-forcing input, "labels": (B,) int}."""

    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["labels"], batch["inputs"], deterministic=False,
                             rngs={"dropout": rng})
        return code_prediction_loss(logits, batch["targets"], label_smoothing)

    return loss_fn


def weight_decay_mask(params):
    """VAR's: >= 2-D params outside `NO_DECAY` (class_emb and word_embed are decayed)."""
    return matrix_decay_mask(params, exempt=NO_DECAY)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int,
          source: Sequence[dict] | None) -> Task:
    """VAR on a frozen multi-scale VQ tokenizer; its weights load on first use."""
    del source
    tokenizer = functools.cache(lambda: make_tokenizer(config))
    model = model_from_config(config)
    t, s = config.train, config.sample
    tx, schedule = optimizer_from_config(config, step_plan(config, num_records), weight_decay_mask)
    step = make_loss_step(var_loss(model, t.label_smoothing), tx, schedule, t.ema_rate, t.ema_warmup)

    def prepare_batch(batch: dict, key: jax.Array) -> dict:
        del key
        targets = codes_of_batch(tokenizer(), batch, model.seq_len)
        bounds = np.cumsum([p * p for p in model.patch_nums])[:-1]
        codes = [c.reshape(-1, p, p) for c, p in zip(jnp.split(targets, bounds, axis=1), model.patch_nums)]
        return {"targets": targets, "inputs": tokenizer().teacher_forcing_input(codes), "labels": batch["labels"]}

    def abstract_batch(batch_size: int) -> dict:
        sharding = batch_sharding(mesh)
        return {"targets": jax.ShapeDtypeStruct((batch_size, model.seq_len), np.int32, sharding=sharding),
                "inputs": jax.ShapeDtypeStruct((batch_size, model.seq_len - model.first_len, model.code_dim),
                                               np.float32, sharding=sharding),
                "labels": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding)}

    def sample_images(params, labels: jax.Array, rng: jax.Array, **known) -> jax.Array:
        vae = tokenizer()
        _, f_hat = generate_var(model, params, vae.model, vae.params, labels, rng, cfg=s.cfg, top_k=s.top_k,
                                top_p=s.top_p, more_smooth=s.more_smooth, host_top_k=s.host_top_k, **known)
        return to_uint8(vae.decode(f_hat))

    def edit_batch(params, images: jax.Array, keep: jax.Array, labels: jax.Array, rng: jax.Array) -> jax.Array:
        """VAR's zero-shot editing: the image's codes at every scale, kept where `scale_masks` of the
        pixel mask says (the reference's per-scale masks, threshold 0.5)."""
        return sample_images(params, labels, rng, known_codes=tokenizer().encode_codes(images),
                             known_masks=scale_masks(keep, model.patch_nums))

    return generator_task("var", config, mesh, functools.partial(init_params, model),
                          functools.partial(init_boxed_params, model), tx, step, prepare_batch, abstract_batch,
                          sample_images, edit_batch)


SPEC = TaskSpec(check_config=check_config, build=build)
