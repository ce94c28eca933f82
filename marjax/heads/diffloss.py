"""DiffLoss: the per-token diffusion head of MAR, one unit that owns its diffusion both ways.

The denoiser is the reference's SimpleMLPAdaLN (`marjax.heads.diffloss_mlp`); `DiffLoss` adds
the training loss given (target, condition z, timesteps, noise) and the reverse process given
(z, noise, temperature, guidance), as LTH14/mar `models/diffloss.py` does with `forward` and
`sample`. A model calls it as a submodule; the samplers never see eps, variances or timesteps.

Training uses the cosine process of 1,000 steps (`TRAIN_DIFFUSION`); sampling a respaced one
(`num_diffusion_steps`, the reference's "100"). Randomness comes in as arguments so tests can
inject it.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp

from marjax.heads import diffusion
from marjax.heads.diffloss_mlp import SimpleMLPAdaLN

TRAIN_DIFFUSION = diffusion.make_diffusion()


class DiffLoss(SimpleMLPAdaLN):
    """The denoiser (`__call__`: x (N, C), original timesteps t (N,) or (1,), z (N / k, D) ->
    (N, 2C)) with its loss and its sampler."""

    def loss(self, target: jax.Array, z: jax.Array, t: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
        """Per-row training terms of the reference's `training_losses`.

        Args:
          target: (N, C) clean tokens. z: (N / k, D) conditions, each row for k consecutive rows of
            target (the diffusion_batch_mul copies of a token). t: (N,) timesteps in 0..999.
          noise: (N, C) standard normal.
        Returns:
          {"mse", "vb", "loss"}: (N,) float32 each (see `diffusion.training_losses`).
        """
        x_t = diffusion.q_sample(TRAIN_DIFFUSION, target, t, noise)
        out = self(x_t, t, z).astype(jnp.float32)
        return diffusion.training_losses(TRAIN_DIFFUSION, out, target, x_t, t, noise)

    def sample(self, z: jax.Array, noise_fn: Callable[[int | jax.Array], jax.Array], temperature: jax.Array,
               cfg_scale: jax.Array | None, num_diffusion_steps: int | str, clip_denoised: float = 0.0) -> jax.Array:
        """Tokens from the respaced reverse process, one `lax.scan` over its steps.

        Args:
          z: (N, D) conditions, or (2N, D) = [cond; uncond] with guidance.
          noise_fn: j -> (N, C) standard normal noise: j = 0 starts the process, j >= 1 is added at
            its j-th step.
          temperature: scales the injected noise. cfg_scale: the guidance scale (traced), or None
            for no guidance: eps = uncond + s (cond - uncond), the variance from the cond half.
          num_diffusion_steps: the respacing (a step count, "ddim50", "10,15,20"). clip_denoised: > 0
            clips x_0 predictions to [-clip_denoised, clip_denoised].
        Returns:
          (N, C) float32 tokens.
        """
        process = diffusion.make_diffusion(str(num_diffusion_steps))
        # A pure apply of this module's own params, so the denoiser can run inside `lax.scan`.
        denoiser, params = self.clone(parent=None), self.variables["params"]
        guided = cfg_scale is not None

        def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
            out = denoiser.apply({"params": params}, jnp.tile(x, (2, 1)) if guided else x, t, z)
            out = out.astype(jnp.float32)
            if not guided:
                return out
            cond, uncond = jnp.split(out, 2)
            eps_cond, var_cond = jnp.split(cond, 2, axis=-1)
            eps_uncond, _ = jnp.split(uncond, 2, axis=-1)
            return jnp.concatenate([eps_uncond + cfg_scale * (eps_cond - eps_uncond), var_cond], axis=-1)

        return diffusion.p_sample_loop(process, model_fn, noise_fn(0), lambda j: noise_fn(j + 1), temperature,
                                       clip_denoised)
