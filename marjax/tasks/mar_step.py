"""MAR's train step: random orders and masks, the masked diffusion loss, AdamW, EMA.

`train_step(state, batch, rng) -> (state, metrics)` is a pure function of static shapes: the
number of masked tokens (ceil(L r), r ~ truncated normal on [0.7, 1]) is drawn inside the
step, and the encoder takes a static number of known-token slots with padding masked out of
attention, so one compilation serves every step. With `mask_buckets` > 1 the known-token
count's range is cut into that many buckets (`masking.mask_count_buckets`), each with its own
static encoder slots and DiffLoss positions, and `lax.switch` runs the one that fits: less
padding, the same loss, still one compilation. The step's rng is `fold_in(rng, state.step)`.

Recipe (the reference's): AdamW betas (0.9, 0.95), weight decay on >= 2-D params outside the
DiffLoss MLP (`weight_decay_mask`), global-norm clipping, lr warmup from 0 then constant or
cosine (`marjax.tasks.recipe`), EMA of the params updated every step from step 0.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from marjax.heads.diffusion import NUM_TRAIN_TIMESTEPS
from marjax.models.common import patchify
from marjax.models.mar import BLOCK_GROUPS, MAR
from marjax.models.masking import bucket_index, mask_count_buckets, mask_from_orders, sample_num_masked, sample_orders
from marjax.tasks.recipe import matrix_decay_mask
from marjax.tasks.train_state import TrainState, ema_rate_at, ema_update

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def weight_decay_mask(params: Any) -> Any:
    """True where AdamW decays: >= 2-D params outside the DiffLoss MLP (embeddings included);
    biases, LayerNorm params and every DiffLoss param are not decayed, as in the reference."""
    return matrix_decay_mask(params, BLOCK_GROUPS, exempt=("diffloss",))


def make_train_step(model: MAR, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    mask_ratio_min: float = 0.7, label_drop_prob: float = 0.1,
                    diffusion_batch_mul: int = 4, ema_rate: float = 0.9999, ema_warmup: bool = False,
                    mask_buckets: int = 1, batch_sharding: jax.sharding.Sharding | None = None,
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Builds `train_step(state, batch, rng) -> (state, metrics)`.

    batch: {"latents": (B, H, W, C) float in model space (scaled VAE latents, or pixels in
    [-1, 1] for a pixel-space model), "labels": (B,) int}; with the softmax head {"codes": (B, h, w)
    or (B, L) int VQ codes, "labels"} instead (the cross-entropy on the masked codes).
    metrics: loss, grad_norm, lr, param_norm, mask_ratio (scalars). The EMA decays at
    `ema_rate_at(ema_rate, step, ema_warmup)`.
    """
    seq_len, token_dim = model.seq_len, model.token_dim
    buckets = mask_count_buckets(seq_len, mask_ratio_min, mask_buckets)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(rng, state.step)
        order_key, ratio_key, drop_key, t_key, noise_key, dropout_key = jax.random.split(rng, 6)
        if model.head == "softmax":
            tokens = batch["codes"].reshape(batch["codes"].shape[0], seq_len)
        else:
            tokens = patchify(batch["latents"].astype(jnp.float32), model.patch_size)
        b = tokens.shape[0]
        orders = sample_orders(order_key, b, seq_len)
        num_masked = sample_num_masked(ratio_key, seq_len, mask_ratio_min)
        mask = mask_from_orders(orders, num_masked)
        drop_label = jax.random.bernoulli(drop_key, label_drop_prob, (b,))
        t = noise = None
        if model.head == "diffloss":
            rows = b * seq_len * diffusion_batch_mul
            t = jax.random.randint(t_key, (rows,), 0, NUM_TRAIN_TIMESTEPS)
            noise = jax.random.normal(noise_key, (rows, token_dim))

        def bucket_loss(params, num_keep_max: int, num_masked_max: int):
            loss, _ = model.apply({"params": params}, tokens, batch["labels"], mask, drop_label, t, noise,
                                  num_keep_max, num_masked_max, deterministic=False,
                                  batch_sharding=batch_sharding, rngs={"dropout": dropout_key})
            return loss

        # Each bucket differentiates its own loss: differentiating through the switch instead
        # would make every branch return the residuals of all branches. With one bucket,
        # `switch` calls it directly.
        branches = [jax.value_and_grad(functools.partial(bucket_loss, num_keep_max=k, num_masked_max=m))
                    for k, m in buckets]
        loss, grads = jax.lax.switch(bucket_index(num_masked, buckets), branches, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = ema_update(state.ema_params, params, ema_rate_at(ema_rate, state.step, ema_warmup))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                   "param_norm": optax.tree.norm(params), "mask_ratio": num_masked / seq_len}
        return TrainState(state.step + 1, params, ema_params, opt_state), metrics

    return train_step
