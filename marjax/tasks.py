"""What the training program needs from each kind of model (`config.task`).

A `Task` bundles the state layout, initialisation, the pure train step, how a global batch
becomes the step's batch, and the images shown during training. `train.py` runs any task the
same way: MAR on images, cached latents or pixels; or a tokenizer (KL or VQ autoencoder with
its PatchGAN discriminator) on images.
"""
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from marjax.builders import (StepPlan, mar_train_step, model_from_config, optimizer_from_config, schedule_from_config,
                             state_layout)
from marjax.data.image_ops import to_model_range, to_uint8
from marjax.models.kl_vae import AutoencoderKL
from marjax.models.lpips import LPIPS, load_lpips
from marjax.models.patch_discriminator import PatchDiscriminator
from marjax.sample import sample_images, sample_labels
from marjax.sharding import logical_axes, optimizer_shardings, param_shardings, replicated, with_shardings
from marjax.tokenizer_train_step import (TokenizerLoss, TokenizerTrainState, create_tokenizer_state,
                                         init_boxed_tokenizer_variables, make_tokenizer_train_step)
from marjax.tokenizers import make_tokenizer, vae_from_config
from marjax.train_step import create_train_state


@dataclasses.dataclass(frozen=True)
class Task:
    """abstract_state: shapes with shardings attached; shardings: the NamedSharding tree;
    init(key) -> state; step(state, batch, rng, frozen) -> (state, metrics with "loss" and
    "grad_norm"); prepare_batch(global batch, key) -> the step's batch; visualize(state, key) ->
    (images (N, H, W, C) uint8, labels (N,)); num_params: parameters of the trained model;
    frozen: arrays the step reads but never updates (the perceptual network), passed as an
    argument so they are not baked into the compiled program, and not checkpointed."""

    abstract_state: Any
    shardings: Any
    init: Callable[[jax.Array], Any]
    step: Callable
    prepare_batch: Callable[[dict, jax.Array], dict]
    visualize: Callable[[Any, jax.Array], tuple[np.ndarray, np.ndarray]]
    num_params: int
    frozen: Any = None


def make_task(config: ml_collections.ConfigDict, plan: StepPlan, mesh: jax.sharding.Mesh,
              source: Sequence[dict]) -> Task:
    return (mar_task if config.task == "mar" else tokenizer_task)(config, plan, mesh, source)


def mar_task(config: ml_collections.ConfigDict, plan: StepPlan, mesh: jax.sharding.Mesh,
             source: Sequence[dict]) -> Task:
    """MAR on tokenizer latents (encoded on the fly or sampled from a latent cache)."""
    del source
    tokenizer = make_tokenizer(config)
    model = model_from_config(config)
    tx, schedule = optimizer_from_config(config, plan)
    abstract_state, shardings = state_layout(model, tx, mesh, config.mesh)
    step = mar_train_step(config, model, tx, schedule, mesh)

    def prepare_batch(batch: dict, key: jax.Array) -> dict:
        if "moments" in batch:  # a latent cache: sample the stored posterior, as encoding would
            latents = tokenizer.latents_from_moments(batch["moments"], key)
        else:
            latents = tokenizer.encode(batch["images"], key)
        return {"latents": latents, "labels": batch["labels"]}

    labels = sample_labels(config.train.num_grid_samples, config.data.num_classes)

    def visualize(state, key):
        return sample_images(model, state.ema_params, labels, key, config.sample, tokenizer), labels

    def train_step(state, batch, rng, frozen):
        del frozen  # MAR reads nothing besides its state
        return step(state, batch, rng)

    return Task(abstract_state, shardings, lambda key: create_train_state(model, tx, key), train_step,
                prepare_batch, visualize, sum(x.size for x in jax.tree.leaves(abstract_state.params)))


def tokenizer_task(config: ml_collections.ConfigDict, plan: StepPlan, mesh: jax.sharding.Mesh,
                   source: Sequence[dict]) -> Task:
    """An autoencoder and its discriminator; the grid shows real images next to EMA reconstructions."""
    v, t = config.vae, config.train
    model = vae_from_config(config)
    disc = PatchDiscriminator(v.disc_ndf, v.disc_layers)
    schedule = schedule_from_config(config, plan)
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(schedule, t.b1, t.b2)) if t.grad_clip \
        else optax.adam(schedule, t.b1, t.b2)
    disc_tx = optax.adam(schedule, t.b1, t.b2)
    example = jnp.zeros((1, config.data.image_size, config.data.image_size, config.data.channels))
    init = functools.partial(create_tokenizer_state, model, disc, tx, disc_tx, example)
    shapes = jax.eval_shape(init, jax.random.key(0))
    shardings = _tokenizer_shardings(shapes, model, disc, tx, disc_tx, example, mesh, config.mesh)
    abstract_state = with_shardings(shapes, shardings)
    lpips, lpips_params = _lpips(v)
    loss = TokenizerLoss(reconstruction=v.reconstruction, kl_weight=v.kl_weight, codebook_weight=v.codebook_weight,
                         disc_weight=v.disc_weight, disc_start=v.disc_start,
                         perceptual_weight=v.perceptual_weight if lpips_params is not None else 0.0)
    step = make_tokenizer_train_step(model, disc, tx, disc_tx, loss, t.ema_rate, lpips)
    count = min(t.num_grid_samples, len(source))
    originals = np.stack([to_model_range(source[i]["image"]) for i in range(count)])

    @jax.jit
    def reconstruct(ema_params, images, key):
        if isinstance(model, AutoencoderKL):
            return model.apply({"params": ema_params}, images, key)[0]
        return model.apply({"params": ema_params}, images)[0]

    def visualize(state, key):
        recon = to_uint8(jax.device_get(reconstruct(state.ema_params, jnp.asarray(originals), key)))
        pairs = np.stack([to_uint8(originals), recon], axis=1).reshape((2 * count,) + recon.shape[1:])
        return pairs, np.repeat(np.arange(count, dtype=np.int32), 2)  # one row per (original, reconstruction)

    return Task(abstract_state, shardings, init, step, lambda batch, key: {"images": batch["images"]}, visualize,
                sum(x.size for x in jax.tree.leaves(abstract_state.params["model"])), lpips_params)


def _tokenizer_shardings(shapes: TokenizerTrainState, model: nn.Module, disc: PatchDiscriminator,
                         tx: optax.GradientTransformation, disc_tx: optax.GradientTransformation, example: jax.Array,
                         mesh: jax.sharding.Mesh, mesh_config: ml_collections.ConfigDict) -> TokenizerTrainState:
    """The tokenizer state's shardings: params by their logical names and `mesh_config.rules`, EMA
    and optimizer moments as their params, BatchNorm statistics and counts replicated."""
    names, disc_names = logical_axes(lambda: init_boxed_tokenizer_variables(model, disc, example, jax.random.key(0)))
    rules, min_size = mesh_config.rules, mesh_config.fsdp_min_size
    params = param_shardings(names, shapes.params, mesh, rules, min_size)
    disc_params = param_shardings(disc_names["params"], shapes.disc_params, mesh, rules, min_size)
    return TokenizerTrainState(
        step=replicated(mesh), params=params, ema_params=params["model"],
        opt_state=optimizer_shardings(tx, shapes.opt_state, params, mesh), disc_params=disc_params,
        disc_stats=jax.tree.map(lambda _: replicated(mesh), shapes.disc_stats),
        disc_opt_state=optimizer_shardings(disc_tx, shapes.disc_opt_state, disc_params, mesh))


def _lpips(vae: ml_collections.ConfigDict) -> tuple[LPIPS, dict | None]:
    """The perceptual network and its params when `vae.perceptual_weight` > 0 and its files are
    given; no params otherwise (with a warning when the weight asks for LPIPS but no file is given)."""
    if vae.perceptual_weight <= 0:
        return LPIPS(), None
    if not vae.lpips_vgg16 and not vae.lpips_lin:
        logging.warning("vae.perceptual_weight=%g but no LPIPS weight files are given (vae.lpips_vgg16: "
                        "vgg16-397923af.pth, vae.lpips_lin: the lpips package's vgg.pth): training WITHOUT the "
                        "perceptual loss", vae.perceptual_weight)
        return LPIPS(), None
    lpips, params = load_lpips(vae.lpips_vgg16, vae.lpips_lin)
    logging.info("perceptual loss: LPIPS (VGG blocks %s) from %s and %s, weight %g", lpips.blocks, vae.lpips_vgg16,
                 vae.lpips_lin, vae.perceptual_weight)
    return lpips, params
