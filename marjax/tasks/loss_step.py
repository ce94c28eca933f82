"""A train step around a loss function: gradients, the optimizer, EMA and the shared metrics.

For the families whose step is one differentiable loss of (params, batch, rng) (the causal AR
baselines, VQ-GPT, VAR); MAR's step has its own (`mar_step`: one branch per mask-count bucket).
"""
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from marjax.heads.softmax import token_cross_entropy
from marjax.tasks.train_state import TrainState, ema_rate_at, ema_update

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]


def make_loss_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                   ema_rate: float, ema_warmup: bool = False
                   ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Builds `train_step(state, batch, rng) -> (state, metrics)`.

    loss_fn(params, batch, rng) -> (scalar loss, extra scalar metrics); rng is `fold_in(rng,
    state.step)`, so every step draws afresh. metrics: the extras, loss, grad_norm, lr, param_norm.
    The EMA decays at `ema_rate_at(ema_rate, step, ema_warmup)`.
    """

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(rng, state.step)
        (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**extra, "loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                   "param_norm": optax.tree.norm(params)}
        ema_params = ema_update(state.ema_params, params, ema_rate_at(ema_rate, state.step, ema_warmup))
        return TrainState(state.step + 1, params, ema_params, opt_state), metrics

    return train_step


def code_prediction_loss(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
                         ) -> tuple[jax.Array, Metrics]:
    """The mean cross-entropy of logits (B, N, V) against codes (B, N) int, and {"accuracy"}: the
    fraction of positions whose most likely code is the target (a training-health signal)."""
    loss = jnp.mean(token_cross_entropy(logits, targets, label_smoothing))
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == targets)}
