"""Objects a run builds from its config: the model, the step counts, the optimizer, the state
layout, the MAR train step (pure and jitted), and a MAR state restored from a workdir."""
import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from marjax.models.mar import MAR, init_boxed_params
from marjax.checkpoints import RunCheckpoints
from marjax.sharding import (batch_sharding, logical_axes, mesh_from_config, optimizer_shardings, param_shardings,
                             replicated, with_shardings)
from marjax.tokenizers import tokenizer_spec
from marjax.train_step import TrainState, create_train_state, learning_rate_schedule, make_optimizer, make_train_step


def model_from_config(config: ml_collections.ConfigDict) -> MAR:
    """The MAR module of `config.model`, its token grid derived from the image size and tokenizer."""
    spec = tokenizer_spec(config)
    fields = dict(config.model)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return MAR(latent_size=config.data.image_size // spec.stride, latent_channels=spec.channels,
               num_classes=config.data.num_classes, **fields)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How long a run trains: steps per epoch of the dataset, total and warmup steps, peak lr."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def step_plan(config: ml_collections.ConfigDict, num_records: int) -> StepPlan:
    """Epochs -> steps for a dataset of `num_records`; lr = base_lr * global_batch / 256 (reference)."""
    batch = config.train.global_batch_size
    steps_per_epoch = max(num_records // batch, 1)
    total = config.train.num_steps
    if total is None:
        total = round(config.train.num_epochs * steps_per_epoch)
    return StepPlan(steps_per_epoch=steps_per_epoch, total_steps=int(total),
                    warmup_steps=round(config.train.warmup_epochs * steps_per_epoch),
                    peak_lr=config.train.base_lr * batch / 256)


def schedule_from_config(config: ml_collections.ConfigDict, plan: StepPlan) -> optax.Schedule:
    """Warmup from 0 to the peak lr, then constant or cosine (`train.lr_schedule`)."""
    t = config.train
    return learning_rate_schedule(plan.peak_lr, plan.warmup_steps, t.lr_schedule, plan.total_steps, t.min_lr)


def optimizer_from_config(config: ml_collections.ConfigDict,
                          plan: StepPlan) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with the reference decay mask and clipping, and its learning-rate schedule."""
    t = config.train
    schedule = schedule_from_config(config, plan)
    return make_optimizer(schedule, t.weight_decay, t.b1, t.b2, t.grad_clip or None), schedule


def state_layout(model: MAR, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                 mesh_config: ml_collections.ConfigDict) -> tuple[TrainState, Any]:
    """(abstract state, shardings): the train state's shapes and dtypes (nothing allocated) with
    each leaf's NamedSharding attached, and the shardings alone (for `jax.jit`). Params follow
    `mesh_config.rules`; EMA and optimizer moments as their params; step and counts replicated."""
    shapes = jax.eval_shape(functools.partial(create_train_state, model, tx), jax.random.key(0))
    names = logical_axes(lambda: init_boxed_params(model, jax.random.key(0)))
    params = param_shardings(names, shapes.params, mesh, mesh_config.rules, mesh_config.fsdp_min_size)
    shardings = TrainState(step=replicated(mesh), params=params, ema_params=params,
                           opt_state=optimizer_shardings(tx, shapes.opt_state, params, mesh))
    return with_shardings(shapes, shardings), shardings


def mar_train_step(config: ml_collections.ConfigDict, model: MAR, tx: optax.GradientTransformation,
                   schedule: optax.Schedule, mesh: jax.sharding.Mesh) -> Callable:
    """The pure MAR step `(state, batch, rng) -> (state, metrics)` with the recipe of `config.train`,
    its DiffLoss rows split over `mesh` like the batch."""
    t = config.train
    return make_train_step(model, tx, schedule, mask_ratio_min=t.mask_ratio_min, label_drop_prob=t.label_drop_prob,
                           diffusion_batch_mul=t.diffusion_batch_mul, ema_rate=t.ema_rate,
                           mask_buckets=t.mask_buckets, batch_sharding=batch_sharding(mesh))


def jit_train_step(step: Callable, state_shardings: Any, mesh: jax.sharding.Mesh,
                   takes_frozen: bool = False) -> Callable:
    """`step` compiled for `mesh`: state in and out with `state_shardings` (donated), the batch
    split over the batch axes, rng and metrics replicated. `takes_frozen`: the step has a 4th
    argument, arrays it only reads (`Task.frozen`), replicated."""
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh), rep) + ((rep,) if takes_frozen else ()),
                   out_shardings=(state_shardings, rep), donate_argnums=0)


def restore_mar_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> tuple[TrainState, int]:
    """(state, step): the MAR train state of checkpoint `step` (default: the latest) in `workdir`,
    checked against `config` and placed on its mesh. FileNotFoundError when there is none."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir}/checkpoints does not exist: no trained or converted run there")
    model = model_from_config(config)
    tx, _ = optimizer_from_config(config, step_plan(config, config.train.global_batch_size))
    abstract_state, _ = state_layout(model, tx, mesh_from_config(config.mesh), config.mesh)
    checkpoints = RunCheckpoints(workdir, read_only=True)
    saved = list(checkpoints.manager.all_steps())
    step = checkpoints.latest_step() if step is None else step
    if step is None or step not in saved:
        raise FileNotFoundError(f"no checkpoint {'' if step is None else f'at step {step} '}in "
                                f"{checkpoints.directory} (saved steps: {saved})")
    checkpoints.check_compatible(step, abstract_state.params, config)
    state = checkpoints.restore(step, abstract_state, None)
    checkpoints.close()
    return state, step
