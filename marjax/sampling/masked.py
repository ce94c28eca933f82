"""Masked generation (MAR) as one compiled program; editing is the same loop from known tokens.

Outer loop (`lax.scan` over num_iter steps, counts precomputed on the host): encode the known
tokens, decode a condition z for every position, then let the model's head sample only the
tokens this step predicts, `order[masked_after : masked_before]`. Their number varies per step,
so they sit in a slab of static size; slots past the step's count are computed and discarded.
The outer loop is split into a few consecutive scans ("segments"), each with the slab size and
encoder length its own steps need, so early steps (few known tokens) and late steps (many
tokens per step) do not pay for each other.

Guidance (cfg != 1): the transformer runs on [cond; uncond] (uncond = `fake_latent`) and the
head mixes the two (`MAR.sample_tokens`). labels=None samples unconditionally (`fake_latent`
everywhere), as the reference.

Known tokens (in/out-painting): positions where `known_mask` is True hold `known_tokens` from
the start. They are placed last in each generation order, so the schedule's first steps (the
ones that predict fewest tokens) are the ones spent on them; the encoder sees them at every
step and their predictions are discarded, so they come back unchanged.

Randomness: `rng` splits into the orders and one key per outer step; the same rng gives the
same images. Orders and noise can also be given explicitly (parity tests against the reference).
"""
import functools

import jax
import jax.numpy as jnp

from marjax.models.common import patchify, unpatchify
from marjax.models.mar import MAR
from marjax.models.masking import sample_orders, sampling_schedule

# The outer loop runs as this many scans, each with static sizes fitted to its own steps.
NUM_SEGMENTS = 4


def generate(model: MAR, params: dict, labels: jax.Array | None, rng: jax.Array, *, num_iter: int = 64,
             cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
             num_diffusion_steps: int = 100, batch_size: int | None = None, clip_denoised: bool = False,
             orders: jax.Array | None = None, noise: jax.Array | None = None,
             known_latents: jax.Array | None = None, known_mask: jax.Array | None = None) -> jax.Array:
    """Samples latents with MAR.

    Args:
      model, params: the MAR module and its params (EMA params for evaluation).
      labels: (B,) int class labels, or None for unconditional samples (then give `batch_size`).
      rng: PRNG key. num_iter: outer steps. cfg: guidance scale (1.0 = none).
      cfg_schedule: "linear" or "constant". temperature: scales the diffusion noise.
      num_diffusion_steps: respaced reverse-process steps (the reference's "100").
      clip_denoised: clip the diffusion's x_0 predictions to [-1, 1] (pixel-space models; the
        reference samples latents unclipped).
      orders: optional (B, L) generation orders, replacing the ones drawn from rng.
      noise: optional (num_iter, num_diffusion_steps + 1, B, max_predicted, token_dim) standard
        normal noise replacing the draws: [k, 0] starts step k's reverse process, [k, j] is added
        at its j-th diffusion step; [k, j, b, s] belongs to the token at order[b, after_k + s].
      known_latents: optional (B, latent_size, latent_size, latent_channels) latents whose tokens
        at `known_mask` are kept; known_mask: (B, L) bool over the token grid, True = known.
    Returns:
      (B, latent_size, latent_size, latent_channels) float32 latents (NHWC).
    """
    if labels is None and batch_size is None:
        raise ValueError("unconditional sampling (labels=None) needs batch_size")
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
        if labels.ndim != 1:
            raise ValueError(f"labels must be (B,), got shape {labels.shape}")
        batch_size = labels.shape[0]
    if (known_latents is None) != (known_mask is None):
        raise ValueError("known_latents and known_mask come together")
    known = None
    if known_mask is not None:
        known_mask = jnp.asarray(known_mask, bool)
        if known_mask.shape != (batch_size, model.seq_len):
            raise ValueError(f"known_mask must be (B, L) = {(batch_size, model.seq_len)}, got {known_mask.shape}")
        known = (patchify(jnp.asarray(known_latents, jnp.float32), model.patch_size), known_mask)
    fn = _compiled_sampler(model, num_iter, num_diffusion_steps, cfg_schedule, cfg != 1.0, batch_size,
                           clip_denoised)
    return fn(params, labels, rng, jnp.float32(cfg), jnp.float32(temperature), orders, noise, known)


@functools.lru_cache(maxsize=32)
def _compiled_sampler(model: MAR, num_iter: int, num_diffusion_steps: int, cfg_schedule: str,
                      guided: bool, batch_size: int, clip_denoised: bool, num_segments: int = NUM_SEGMENTS):
    """One jitted sampler per static setting; cfg and temperature are traced (no recompile)."""
    schedule = sampling_schedule(model.seq_len, num_iter)
    seq_len, token_dim, max_slab = model.seq_len, model.token_dim, schedule.max_predicted
    schedule.cfg_scales(1.0, cfg_schedule)  # fail on an unknown schedule before tracing

    def run(params, labels, rng, cfg, temperature, orders, noise, known):
        b = batch_size
        variables = {"params": params}
        orders_key, steps_key = jax.random.split(rng)
        if orders is None:
            orders = sample_orders(orders_key, b, seq_len)
        tokens = jnp.zeros((b, seq_len, token_dim), jnp.float32)
        known_mask = jnp.zeros((b, seq_len), bool)
        if known is not None:
            known_tokens, known_mask = known
            tokens = jnp.where(known_mask[:, :, None], known_tokens, tokens)
            # A stable sort moves the known positions to the end of each order, keeping the rest in order.
            orders = jnp.take_along_axis(orders, jnp.argsort(jnp.take_along_axis(known_mask, orders, axis=1),
                                                             axis=1, stable=True), axis=1)
        rank = jnp.argsort(orders, axis=1)
        # Padding lets a slab of up to `max_slab` entries start anywhere in 0..L without clamping.
        padded_orders = jnp.concatenate([orders, jnp.zeros((b, max_slab), orders.dtype)], axis=1)
        if labels is None:
            labels, drop = jnp.zeros((b,), jnp.int32), jnp.ones((b,), bool)
        else:
            drop = jnp.zeros((b,), bool)
        if guided:
            labels = jnp.concatenate([labels, labels])
            drop = jnp.concatenate([drop, jnp.ones((b,), bool)])
        copies = 2 if guided else 1
        rows = jnp.arange(b)[:, None]

        def make_outer_step(slab: int, max_known: int):
            """Step k of a segment whose steps predict <= slab tokens and know <= max_known tokens."""

            def outer_step(tokens, xs):
                k, before, after, scale = xs
                mask = (rank < before) & ~known_mask
                z = model.apply(variables, jnp.tile(tokens, (copies, 1, 1)), jnp.tile(mask, (copies, 1)),
                                labels, drop, max_known, method=MAR.condition)
                positions = jax.lax.dynamic_slice_in_dim(padded_orders, after, slab, axis=1)  # (B, slab)
                z = jnp.take_along_axis(z, jnp.tile(positions, (copies, 1))[:, :, None], axis=1)
                z = z.reshape(copies * b * slab, -1)

                step_key = jax.random.fold_in(steps_key, k)

                def draw(j):  # j = 0: the starting noise; j >= 1: the noise of diffusion step j
                    if noise is not None:
                        return noise[k, j, :, :slab].reshape(b * slab, token_dim)
                    return jax.random.normal(jax.random.fold_in(step_key, j), (b * slab, token_dim))

                sampled = model.apply(variables, z, draw, temperature, scale if guided else None,
                                      num_diffusion_steps, clip_denoised, method=MAR.sample_tokens)
                slab_known = jnp.take_along_axis(known_mask, positions, axis=1)
                valid = (jnp.arange(slab)[None, :] < (before - after)) & ~slab_known
                target = jnp.where(valid, positions, seq_len)  # out of range: dropped by the scatter
                tokens = tokens.at[rows, target].set(sampled.reshape(b, slab, token_dim), mode="drop")
                return tokens, None

            return outer_step

        xs = (jnp.arange(num_iter), jnp.asarray(schedule.masked_before), jnp.asarray(schedule.masked_after),
              schedule.cfg_scales(cfg, cfg_schedule))
        for start, stop, slab, max_known in schedule.segments(num_segments):
            # Known tokens can outnumber the schedule's: then the encoder has a slot for every token.
            max_known = seq_len if known is not None else max_known
            tokens, _ = jax.lax.scan(make_outer_step(slab, max_known), tokens,
                                     jax.tree.map(lambda a: a[start:stop], xs))
        return unpatchify(tokens, model.patch_size, model.grid)

    return jax.jit(run)
