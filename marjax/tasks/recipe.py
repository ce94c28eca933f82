"""The training recipe a config states, shared by every family: step counts, the learning-rate
schedule and the optimizer."""
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax.numpy as jnp
import ml_collections
import optax


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


def learning_rate_schedule(base_lr: float, warmup_steps: int, kind: str = "constant",
                           total_steps: int | None = None, min_lr: float = 0.0) -> optax.Schedule:
    """lr(step): linear warmup from 0 over `warmup_steps`, then "constant" or "cosine" down to min_lr."""
    warmup = optax.linear_schedule(0.0, base_lr, max(warmup_steps, 1))
    if kind == "constant":
        after = optax.constant_schedule(base_lr)
    elif kind == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(f"a cosine schedule needs total_steps > warmup_steps ({warmup_steps}), "
                             f"got {total_steps}")
        after = optax.cosine_decay_schedule(base_lr, total_steps - warmup_steps, alpha=min_lr / base_lr)
    else:
        raise ValueError(f"unknown lr schedule {kind!r}; use 'constant' or 'cosine'")
    return optax.join_schedules([warmup, after], [warmup_steps])


def lin0_schedule(peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float,
                  start_ratio: float = 0.005, flat_fraction: float = 0.05) -> optax.Schedule:
    """VAR's 'lin0' (utils/lr_control.py lr_wd_annealing): lr(step) rises linearly from start_ratio x
    peak to the peak over `warmup_steps`, stays flat for the first 5% of the rest, then falls linearly
    to `end_lr` (VAR's wpe x peak) at step total_steps - 1."""
    end = end_lr / peak_lr
    rest = max(total_steps - 1 - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = start_ratio + (1.0 - start_ratio) * step / max(warmup_steps, 1)
        passed = (step - warmup_steps) / rest
        decay = jnp.where(passed < flat_fraction, 1.0, end + (1.0 - end) * (1.0 - passed) / (1.0 - flat_fraction))
        return peak_lr * jnp.where(step < warmup_steps, warm, decay)

    return schedule


def schedule_from_config(config: ml_collections.ConfigDict, plan: StepPlan) -> optax.Schedule:
    """The lr schedule of `train.lr_schedule`: warmup from 0 to the peak lr then constant or cosine,
    or VAR's lin0 (`lin0_schedule`, ending at train.min_lr)."""
    t = config.train
    if t.lr_schedule == "lin0":
        return lin0_schedule(plan.peak_lr, plan.warmup_steps, plan.total_steps, t.min_lr)
    return learning_rate_schedule(plan.peak_lr, plan.warmup_steps, t.lr_schedule, plan.total_steps, t.min_lr)


def matrix_decay_mask(params: Any, stacked_groups: Sequence[str] = (), exempt: Sequence[str] = ()) -> Any:
    """True where AdamW decays: params of >= 2 dimensions (embeddings included) none of whose path
    names contains a string of `exempt`. Params under a top-level name of `stacked_groups` (blocks
    stacked by `scan_layers`) count one layer's dimensions, so a stacked LayerNorm scale (depth, D)
    is not decayed either."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {path: (leaf.ndim - (path[0] in stacked_groups) >= 2 and not any(k in name for k in exempt for name in path))
         for path, leaf in flat.items()})


def make_optimizer(schedule: optax.Schedule, decay_mask: Callable[[Any], Any], weight_decay: float = 0.02,
                   b1: float = 0.9, b2: float = 0.95, grad_clip: float | None = 3.0) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW, decaying the params where `decay_mask(params)` is True."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip else adamw


def optimizer_from_config(config: ml_collections.ConfigDict, plan: StepPlan, decay_mask: Callable[[Any], Any]
                          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW of `config.train` with the family's decay mask and clipping, and its learning-rate schedule."""
    t = config.train
    schedule = schedule_from_config(config, plan)
    return make_optimizer(schedule, decay_mask, t.weight_decay, t.b1, t.b2, t.grad_clip or None), schedule
