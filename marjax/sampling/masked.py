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

The softmax head (the MAR paper's CrossEnt column, MaskGIT-like) samples codes from its logits:
CFG on the logits with the same schedule, then / temperature and a categorical draw. Which tokens a
step keeps: by the random order, as the DiffLoss model (`choice="order"`), or MaskGIT's
`choice="confidence"`: every masked position is sampled and the step keeps the ones of highest
log p + choice_temperature (1 - (k + 1) / num_iter) Gumbel noise (maskgit libml/parallel_decode.py).
"""
import functools

import jax
import jax.numpy as jnp

from marjax.heads.softmax import cfg_logits, sample_logits
from marjax.models.common import patchify, unpatchify
from marjax.models.mar import MAR
from marjax.models.masking import sample_orders, sampling_schedule

# The outer loop runs as this many scans, each with static sizes fitted to its own steps.
NUM_SEGMENTS = 4


def generate(model: MAR, params: dict, labels: jax.Array | None, rng: jax.Array, *, num_iter: int = 64,
             cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
             num_diffusion_steps: int | str = 100, batch_size: int | None = None, clip_denoised: float = 0.0,
             orders: jax.Array | None = None, noise: jax.Array | None = None,
             known_latents: jax.Array | None = None, known_mask: jax.Array | None = None,
             choice: str = "order", choice_temperature: float = 4.5) -> jax.Array:
    """Samples latents with MAR.

    Args:
      model, params: the MAR module and its params (EMA params for evaluation).
      labels: (B,) int class labels, or None for unconditional samples (then give `batch_size`).
      rng: PRNG key. num_iter: outer steps. cfg: guidance scale (1.0 = none).
      cfg_schedule: "linear" or "constant". temperature: scales the diffusion noise.
      num_diffusion_steps: the reverse process's respacing: a step count, or the reference's
        strings ("100", "ddim50", "10,15,20"; `diffusion.space_timesteps`).
      clip_denoised: > 0 clips the diffusion's x_0 predictions to [-clip_denoised, clip_denoised]
        (1 for pixels; the reference samples latents unclipped).
      orders: optional (B, L) generation orders, replacing the ones drawn from rng.
      noise: optional (num_iter, steps + 1, B, max_predicted, token_dim) (steps: the respaced count) standard
        normal noise replacing the draws: [k, 0] starts step k's reverse process, [k, j] is added
        at its j-th diffusion step; [k, j, b, s] belongs to the token at order[b, after_k + s].
      known_latents: optional (B, latent_size, latent_size, latent_channels) latents whose tokens
        at `known_mask` are kept; known_mask: (B, L) bool over the token grid, True = known. With the
        softmax head: (B, latent_size, latent_size) int codes.
      choice, choice_temperature: the softmax head's choice of the tokens a step keeps ("order" or
        "confidence", see the module docstring).
    Returns:
      (B, latent_size, latent_size, latent_channels) float32 latents (NHWC); with the softmax head
      (B, latent_size, latent_size) int32 codes.
    """
    softmax = model.head == "softmax"
    if choice not in ("order", "confidence") or (choice == "confidence" and not softmax):
        raise ValueError(f"choice={choice!r}: 'order', or 'confidence' for the softmax head")
    if softmax and (noise is not None or clip_denoised):
        raise ValueError("noise and clip_denoised belong to the DiffLoss head; this MAR has a softmax head")
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
        known_tokens = jnp.asarray(known_latents, jnp.int32).reshape(batch_size, -1) if softmax else \
            patchify(jnp.asarray(known_latents, jnp.float32), model.patch_size)
        known = (known_tokens, known_mask)
    fn = _compiled_sampler(model, num_iter, 0 if softmax else str(num_diffusion_steps), cfg_schedule, cfg != 1.0,
                           batch_size, float(clip_denoised), choice)
    return fn(params, labels, rng, jnp.float32(cfg), jnp.float32(temperature), orders, noise, known,
              jnp.float32(choice_temperature))


@functools.lru_cache(maxsize=32)
def _compiled_sampler(model: MAR, num_iter: int, num_diffusion_steps: int | str, cfg_schedule: str,
                      guided: bool, batch_size: int, clip_denoised: float, choice: str = "order",
                      num_segments: int = NUM_SEGMENTS):
    """One jitted sampler per static setting; cfg and the temperatures are traced (no recompile)."""
    schedule = sampling_schedule(model.seq_len, num_iter)
    seq_len, token_dim, max_slab = model.seq_len, model.token_dim, schedule.max_predicted
    schedule.cfg_scales(1.0, cfg_schedule)  # fail on an unknown schedule before tracing
    softmax = model.head == "softmax"
    token_shape = () if softmax else (token_dim,)
    if choice == "confidence":
        max_slab = seq_len  # every masked position is sampled; the step keeps the most confident

    def sample_slab(variables, z, step_key, scale, temperature, noise_at):
        """(copies*B*slab, D) conditions -> (B*slab, *token_shape) tokens and, for the softmax head,
        (B*slab,) log p of each sampled code."""
        if not softmax:
            tokens = model.apply(variables, z, noise_at, temperature, scale if guided else None,
                                 num_diffusion_steps, clip_denoised, method=MAR.sample_tokens)
            return tokens, None
        logits = model.apply(variables, z, method=MAR.logits)
        if guided:
            logits = cfg_logits(*jnp.split(logits, 2), scale)
        codes = sample_logits(step_key, logits, temperature)
        log_probs = jax.nn.log_softmax(logits / jnp.maximum(temperature, 1e-5), axis=-1)
        return codes, jnp.take_along_axis(log_probs, codes[:, None], axis=-1)[:, 0]

    def run(params, labels, rng, cfg, temperature, orders, noise, known, choice_temperature):
        b = batch_size
        variables = {"params": params}
        orders_key, steps_key = jax.random.split(rng)
        if orders is None:
            orders = sample_orders(orders_key, b, seq_len)
        tokens = jnp.zeros((b, seq_len) + token_shape, jnp.int32 if softmax else jnp.float32)
        known_mask = jnp.zeros((b, seq_len), bool)
        if known is not None:
            known_tokens, known_mask = known
            tokens = jnp.where(known_mask.reshape(known_mask.shape + (1,) * len(token_shape)), known_tokens, tokens)
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

        def condition(tokens, mask, max_known):
            return model.apply(variables, jnp.tile(tokens, (copies,) + (1,) * (tokens.ndim - 1)),
                               jnp.tile(mask, (copies, 1)), labels, drop, max_known, method=MAR.condition)

        def make_outer_step(slab: int, max_known: int):
            """Step k of a segment whose steps predict <= slab tokens and know <= max_known tokens."""

            def outer_step(tokens, xs):
                k, before, after, scale = xs
                mask = (rank < before) & ~known_mask
                z = condition(tokens, mask, max_known)
                positions = jax.lax.dynamic_slice_in_dim(padded_orders, after, slab, axis=1)  # (B, slab)
                z = jnp.take_along_axis(z, jnp.tile(positions, (copies, 1))[:, :, None], axis=1)
                z = z.reshape(copies * b * slab, -1)

                step_key = jax.random.fold_in(steps_key, k)

                def draw(j):  # j = 0: the starting noise; j >= 1: the noise of diffusion step j
                    if noise is not None:
                        return noise[k, j, :, :slab].reshape(b * slab, token_dim)
                    return jax.random.normal(jax.random.fold_in(step_key, j), (b * slab, token_dim))

                sampled, _ = sample_slab(variables, z, step_key, scale, temperature, draw)
                slab_known = jnp.take_along_axis(known_mask, positions, axis=1)
                valid = (jnp.arange(slab)[None, :] < (before - after)) & ~slab_known
                target = jnp.where(valid, positions, seq_len)  # out of range: dropped by the scatter
                tokens = tokens.at[rows, target].set(sampled.reshape((b, slab) + token_shape), mode="drop")
                return tokens, None

            return outer_step

        def make_confidence_step():
            """Step k keeping the before - after most confident of the masked positions (softmax head)."""

            def confidence_step(carry, xs):
                tokens, unknown = carry
                k, before, after, scale = xs
                z = condition(tokens, unknown, seq_len).reshape(copies * b * seq_len, -1)
                step_key, gumbel_key = jax.random.split(jax.random.fold_in(steps_key, k))
                codes, log_p = sample_slab(variables, z, step_key, scale, temperature, None)
                anneal = choice_temperature * (1.0 - (k + 1) / num_iter)
                confidence = log_p.reshape(b, seq_len) + anneal * jax.random.gumbel(gumbel_key, (b, seq_len))
                confidence = jnp.where(unknown, confidence, -jnp.inf)
                # The (before - after)-th highest confidence; the known tokens' -inf sort last.
                cut = jnp.take(jnp.sort(confidence, axis=1)[:, ::-1], before - after - 1, axis=1)[:, None]
                keep = unknown & (confidence >= cut)
                return (jnp.where(keep, codes.reshape(b, seq_len), tokens), unknown & ~keep), None

            return confidence_step

        xs = (jnp.arange(num_iter), jnp.asarray(schedule.masked_before), jnp.asarray(schedule.masked_after),
              schedule.cfg_scales(cfg, cfg_schedule))
        unknown = ~known_mask
        for start, stop, slab, max_known in schedule.segments(num_segments):
            # Known tokens can outnumber the schedule's: then the encoder has a slot for every token.
            max_known = seq_len if known is not None else max_known
            segment = jax.tree.map(lambda a: a[start:stop], xs)
            if choice == "confidence":
                # Ties in confidence could keep more tokens than the schedule's count, so the
                # encoder has a slot for every token. Known tokens are unmasked from the start.
                (tokens, unknown), _ = jax.lax.scan(make_confidence_step(), (tokens, unknown), segment)
            else:
                tokens, _ = jax.lax.scan(make_outer_step(slab, max_known), tokens, segment)
        if softmax:
            return tokens.reshape((b,) + model.grid)
        return unpatchify(tokens, model.patch_size, model.grid)

    return jax.jit(run)
