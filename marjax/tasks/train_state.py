"""The state a generator's training carries, its layout on the mesh, and the jitted step.

Every family whose state is (step, params, EMA, optimizer state) uses `TrainState`; its
shardings follow the params' logical axis names and `config.mesh.rules`.
"""
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from marjax.parallel.sharding import (batch_sharding, logical_axes, optimizer_shardings, param_shardings,
                                      replicated, with_shardings)


@flax.struct.dataclass
class TrainState:
    """Everything a run carries between steps; a pytree, so it shards and checkpoints as one."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def create_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
    """Fresh state: `init_params(rng)`, EMA equal to them, optimizer state, step 0."""
    params = init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def ema_update(ema_params: Any, params: Any, rate: float | jax.Array) -> Any:
    """rate * ema + (1 - rate) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def ema_rate_at(rate: float, step: jax.Array, warmup: bool) -> float | jax.Array:
    """The EMA decay of the update after `step` updates: `rate`, or with `warmup` min(rate, (1 +
    step) / (10 + step)), so that a short run's EMA follows its params instead of holding the
    initial weights (rate 0.999 still weighs them 37% at step 1,000; the reference's 800-epoch
    runs never notice)."""
    if not warmup:
        return rate
    return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def state_layout(init_params: Callable[[jax.Array], Any], init_boxed_params: Callable[[jax.Array], Any],
                 tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                 mesh_config: ml_collections.ConfigDict) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings): the train state's shapes and dtypes (nothing allocated) with
    each leaf's NamedSharding attached, and the shardings alone (for `jax.jit`). Params follow
    `mesh_config.rules` by the logical names `init_boxed_params` gives them; EMA and optimizer
    moments as their params; step and counts replicated."""
    shapes = jax.eval_shape(functools.partial(create_train_state, init_params, tx), jax.random.key(0))
    names = logical_axes(lambda: init_boxed_params(jax.random.key(0)))
    params = param_shardings(names, shapes.params, mesh, mesh_config.rules, mesh_config.fsdp_min_size)
    shardings = TrainState(step=replicated(mesh), params=params, ema_params=params,
                           opt_state=optimizer_shardings(tx, shapes.opt_state, params, mesh))
    return with_shardings(shapes, shardings), shardings


def jit_train_step(step: Callable, state_shardings: Any, mesh: jax.sharding.Mesh) -> Callable:
    """`step(state, batch, rng, frozen)` compiled for `mesh`: state in and out with
    `state_shardings` (donated), the batch split over the batch axes, rng, frozen arrays and
    metrics replicated."""
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh), rep, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=0)
