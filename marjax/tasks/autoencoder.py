"""The tokenizer task: train the autoencoder of `config.tokenizer` (KL, VQ or VAR's multi-scale VQ)
with its PatchGAN discriminator and, when its weight files are given, the LPIPS perceptual loss."""
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from marjax.data.image_ops import to_model_range, to_uint8
from marjax.errors import ConfigError
from marjax.parallel.sharding import (batch_sharding, logical_axes, optimizer_shardings, param_shardings, replicated,
                                      with_shardings)
from marjax.tasks.autoencoder_step import (DeadCodes, MultiScaleVQTrainState, TokenizerLoss, TokenizerTrainState,
                                           create_tokenizer_state, init_boxed_tokenizer_variables,
                                           make_tokenizer_train_step)
from marjax.tasks.base import Task, TaskSpec
from marjax.tasks.recipe import schedule_from_config, step_plan
from marjax.tasks.tokenizer_from_config import autoencoder_from_config, check_msvq_image_size
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tokenizers.kl import AutoencoderKL
from marjax.tokenizers.lpips import LPIPS, load_lpips


def check_config(config: ml_collections.ConfigDict, weights: bool = True) -> None:
    """Raises ConfigError when the tokenizer section does not describe an autoencoder to train."""
    del weights  # a tokenizer run reads no weights but the perceptual network's (checked with the shared fields)
    v = config.tokenizer
    if v.kind == "pixels":
        raise ConfigError("task='tokenizer' trains an autoencoder: set tokenizer.kind to 'kl', 'vq' or 'msvq'")
    check_msvq_image_size(config)
    dead = _dead_codes(v)
    if dead.every < 0 or dead.threshold < 0:
        raise ConfigError(f"tokenizer.dead_code_every={dead.every} and tokenizer.dead_code_threshold={dead.threshold} "
                          f"must be >= 0")
    if dead.every and v.kind != "msvq":
        raise ConfigError(f"tokenizer.dead_code_every={dead.every}: reviving dead codes is for tokenizer.kind='msvq' "
                          f"only (it reads VAR's per-scale code counts), not {v.kind!r}")


def _dead_codes(tokenizer: ml_collections.ConfigDict) -> DeadCodes:
    """The dead-code remedy of the tokenizer section (off unless tokenizer.dead_code_every > 0)."""
    return DeadCodes(every=tokenizer.dead_code_every, threshold=tokenizer.dead_code_threshold)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_records: int,
          source: Sequence[dict] | None) -> Task:
    """An autoencoder and its discriminator; the grid shows real images next to EMA reconstructions
    (none without a `source`)."""
    v, t = config.tokenizer, config.train
    model = autoencoder_from_config(config)
    disc = PatchDiscriminator(v.disc_ndf, v.disc_layers)
    schedule = schedule_from_config(config, step_plan(config, num_records))
    adam = optax.adam(schedule, t.b1, t.b2)
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), adam) if t.grad_clip else adam
    disc_tx = tx  # the same recipe for the discriminator: LlamaGen's VQ training clips both nets
    example = jnp.zeros((1, config.data.image_size, config.data.image_size, config.data.channels))
    init = functools.partial(create_tokenizer_state, model, disc, tx, disc_tx, example)
    shapes = jax.eval_shape(init, jax.random.key(0))
    shardings = _tokenizer_shardings(shapes, model, disc, tx, disc_tx, example, mesh, config.mesh)
    abstract_state = with_shardings(shapes, shardings)
    lpips, lpips_params = _lpips(v)
    loss = TokenizerLoss(reconstruction=v.reconstruction, kl_weight=v.kl_weight, codebook_weight=v.codebook_weight,
                         disc_weight=v.disc_weight, disc_start=v.disc_start,
                         perceptual_weight=v.perceptual_weight if lpips_params is not None else 0.0,
                         disc_adaptive_weight=v.disc_adaptive_weight)
    step = make_tokenizer_train_step(model, disc, tx, disc_tx, loss, t.ema_rate, lpips, _dead_codes(v), t.ema_warmup)
    count = min(t.num_grid_samples, len(source or ()))

    @jax.jit
    def reconstruct(ema_params, images, key):
        if isinstance(model, AutoencoderKL):
            return model.apply({"params": ema_params}, images, key)[0]
        return model.apply({"params": ema_params}, images)[0]

    def visualize(state, key):
        originals = np.stack([to_model_range(source[i]["image"]) for i in range(count)])
        recon = to_uint8(jax.device_get(reconstruct(state.ema_params, jnp.asarray(originals), key)))
        pairs = np.stack([to_uint8(originals), recon], axis=1).reshape((2 * count,) + recon.shape[1:])
        return pairs, np.repeat(np.arange(count, dtype=np.int32), 2)  # one row per (original, reconstruction)

    def abstract_batch(batch_size: int) -> dict:
        size = config.data.image_size
        return {"images": jax.ShapeDtypeStruct((batch_size, size, size, config.data.channels), np.float32,
                                               sharding=batch_sharding(mesh))}

    def state_from_params(params, ema_params) -> TokenizerTrainState:
        raise ConfigError("a tokenizer's converted weights are a tokenizer.checkpoint directory, not a run's state")

    return Task(name="tokenizer", abstract_state=abstract_state, shardings=shardings, init=init, step=step,
                prepare_batch=lambda batch, key: {"images": batch["images"]}, abstract_batch=abstract_batch,
                visualize=visualize if count else None, generate=None,
                generation_params=lambda state, use_ema: state.ema_params if use_ema else state.params["model"],
                state_from_params=state_from_params,
                num_params=sum(x.size for x in jax.tree.leaves(abstract_state.params["model"])), frozen=lpips_params)


def _tokenizer_shardings(shapes: TokenizerTrainState, model: nn.Module, disc: PatchDiscriminator,
                         tx: optax.GradientTransformation, disc_tx: optax.GradientTransformation, example: jax.Array,
                         mesh: jax.sharding.Mesh, mesh_config: ml_collections.ConfigDict) -> TokenizerTrainState:
    """The tokenizer state's shardings: params by their logical names and `mesh_config.rules`, EMA
    and optimizer moments as their params, BatchNorm statistics and counts replicated."""
    names, disc_names = logical_axes(lambda: init_boxed_tokenizer_variables(model, disc, example, jax.random.key(0)))
    rules, min_size = mesh_config.rules, mesh_config.fsdp_min_size
    params = param_shardings(names, shapes.params, mesh, rules, min_size)
    disc_params = param_shardings(disc_names["params"], shapes.disc_params, mesh, rules, min_size)
    shardings = shapes.replace(
        step=replicated(mesh), params=params, ema_params=params["model"],
        opt_state=optimizer_shardings(tx, shapes.opt_state, params, mesh), disc_params=disc_params,
        disc_stats=jax.tree.map(lambda _: replicated(mesh), shapes.disc_stats),
        disc_opt_state=optimizer_shardings(disc_tx, shapes.disc_opt_state, disc_params, mesh))
    if isinstance(shardings, MultiScaleVQTrainState):
        shardings = shardings.replace(code_hits=replicated(mesh))
    return shardings


def _lpips(tokenizer: ml_collections.ConfigDict) -> tuple[LPIPS, dict | None]:
    """The perceptual network and its params when `tokenizer.perceptual_weight` > 0 and its files are
    given; no params otherwise (with a warning when the weight asks for LPIPS but no file is given)."""
    if tokenizer.perceptual_weight <= 0:
        return LPIPS(), None
    if not tokenizer.lpips_vgg16 and not tokenizer.lpips_lin:
        logging.warning("tokenizer.perceptual_weight=%g but no LPIPS weight files are given (tokenizer.lpips_vgg16: "
                        "vgg16-397923af.pth, tokenizer.lpips_lin: the lpips package's vgg.pth): training WITHOUT the "
                        "perceptual loss", tokenizer.perceptual_weight)
        return LPIPS(), None
    lpips, params = load_lpips(tokenizer.lpips_vgg16, tokenizer.lpips_lin)
    logging.info("perceptual loss: LPIPS (VGG blocks %s) from %s and %s, weight %g", lpips.blocks,
                 tokenizer.lpips_vgg16, tokenizer.lpips_lin, tokenizer.perceptual_weight)
    return lpips, params


SPEC = TaskSpec(check_config=check_config, build=build)
