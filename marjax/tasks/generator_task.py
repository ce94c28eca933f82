"""The assembly every generating family shares: a `TrainState` of (step, params, EMA, optimizer
state) on the mesh, the training grid, and the converters' step-0 state."""
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from marjax.data.class_labels import sample_labels
from marjax.tasks.base import Task
from marjax.tasks.generation import generate_images
from marjax.tasks.train_state import TrainState, create_train_state, state_layout

InitParams = Callable[[jax.Array], Any]


def generator_task(name: str, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, init_params: InitParams,
                   init_boxed_params: InitParams, tx: optax.GradientTransformation,
                   step: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]],
                   prepare_batch: Callable[[dict, jax.Array], dict], abstract_batch: Callable[[int], dict],
                   generate: Callable[[Any, jax.Array, jax.Array], jax.Array],
                   edit: Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array] | None = None) -> Task:
    """The Task of a generator whose state is a `TrainState`.

    init_params(rng) -> params; init_boxed_params(rng) -> the same boxed with logical axis names
    (for the shardings). step(state, batch, rng) -> (state, metrics). prepare_batch, abstract_batch,
    generate and edit as `Task` states them. The training grid generates `train.num_grid_samples` images
    over the classes from the EMA params, `sample.batch_size` at a time.
    """
    abstract_state, shardings = state_layout(init_params, init_boxed_params, tx, mesh, config.mesh)
    grid_labels = sample_labels(config.train.num_grid_samples, config.data.num_classes)

    def train_step(state, batch, rng, frozen):
        del frozen  # a generator reads nothing besides its state
        return step(state, batch, rng)

    def visualize(state, key):
        return generate_images(generate, state.ema_params, grid_labels, key, config.sample.batch_size), grid_labels

    def state_from_params(params, ema_params) -> TrainState:
        return TrainState(step=np.zeros((), np.int32), params=params, ema_params=ema_params,
                          opt_state=tx.init(params))

    return Task(name=name, abstract_state=abstract_state, shardings=shardings,
                init=functools.partial(create_train_state, init_params, tx), step=train_step,
                prepare_batch=prepare_batch, abstract_batch=abstract_batch, visualize=visualize, generate=generate,
                generation_params=lambda state, use_ema: state.ema_params if use_ema else state.params,
                state_from_params=state_from_params,
                num_params=sum(x.size for x in jax.tree.leaves(abstract_state.params)), edit=edit)
