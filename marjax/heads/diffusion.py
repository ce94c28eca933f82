"""Gaussian diffusion of MAR's DiffLoss, as pure functions.

This restates the IDDPM code that MAR uses through DiT: a cosine noise schedule of
1000 steps, epsilon prediction, LEARNED_RANGE variance, the MSE + variational-bound
training loss, and the ancestral sampler on a respaced timestep subset.

Tables are computed on the host in float64 and cast to float32 when indexed, exactly
as the reference does (`_extract_into_tensor` indexes a float64 array, then `.float()`).
All array arguments are rows of tokens: `x` is (N, C), `t` is (N,) int.
"""
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def cosine_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule, (T,) float64, with alpha_bar(t) = cos((t+0.008)/1.008 * pi/2)^2."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str) -> list[int]:
    """The reference's `space_timesteps`: which original timesteps a respaced process keeps.

    Args:
      num_timesteps: length of the original process (1000).
      section_counts: a step count ("100"), comma-separated step counts per equal section
        ("10,15,20"), or "ddimN": the integer stride of the DDIM paper that gives exactly N steps.
    Returns:
      Sorted list of kept original timesteps. "100" gives {0, 10, 20, ..., 50, 61, ..., 989, 999};
      "ddim50" gives {0, 20, ..., 980}. ValueError for a string of another form or a count that
      does not fit.
    """
    if section_counts.startswith("ddim"):
        desired = _count(section_counts[len("ddim"):], section_counts)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"{section_counts!r}: no integer stride takes exactly {desired} of {num_timesteps} steps")
    counts = [_count(c, section_counts) for c in section_counts.split(",")]
    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start = 0
    kept: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps out of a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.add(start + round(cur))  # Python's round, as the reference: ties go to even.
            cur += stride
        start += size
    return sorted(kept)


def respaced_step_count(respacing: int | str, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """How many steps the respaced process of `respacing` (as `space_timesteps` takes it, or an
    int) has; ValueError naming a respacing that cannot be made."""
    return len(space_timesteps(num_timesteps, str(respacing)))


def _count(text: str, respacing: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"respacing {respacing!r}: {text!r} is not a positive step count (the forms are "
                         "'100', '10,15,20' and 'ddim50')")
    return int(text)


@dataclasses.dataclass(frozen=True, eq=False)
class Diffusion:
    """Float64 tables of one (possibly respaced) diffusion process, all (T,) arrays.

    `timestep_map[i]` is the original timestep (0..999) that the network receives at index i.
    """

    timestep_map: np.ndarray
    betas: np.ndarray
    log_betas: np.ndarray
    alphas_cumprod: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)


def make_diffusion(respacing: str | None = None,
                   num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Diffusion:
    """Builds the cosine-schedule process, respaced when `respacing` (e.g. "100") is given.

    Respacing keeps the original alpha_bar at the kept steps: beta_i = 1 - alpha_bar_i / alpha_bar_prev.
    """
    # Like the reference, the unrespaced (training) process also goes through respacing with
    # every step kept, which recomputes its betas from alpha_bar (they differ in the last ulp).
    kept = range(num_timesteps) if respacing in (None, "") else space_timesteps(num_timesteps, respacing)
    base_alphas_cumprod = np.cumprod(1.0 - cosine_betas(num_timesteps))
    new_betas, last = [], 1.0
    for i in kept:
        new_betas.append(1.0 - base_alphas_cumprod[i] / last)
        last = base_alphas_cumprod[i]
    timestep_map = np.array(kept)
    betas = np.array(new_betas, dtype=np.float64)

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return Diffusion(
        timestep_map=timestep_map.astype(np.int32),
        betas=betas,
        log_betas=np.log(betas),
        alphas_cumprod=alphas_cumprod,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
        # The first posterior variance is 0; the reference clips the log by repeating the second.
        posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


def _take(table: np.ndarray, t: jax.Array) -> jax.Array:
    """table[t] as float32, shaped (N, 1) to broadcast over token channels."""
    return jnp.asarray(table.astype(np.float32))[t][:, None]


def q_sample(d: Diffusion, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward process: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise. Shapes (N, C)."""
    return _take(d.sqrt_alphas_cumprod, t) * x_start + _take(d.sqrt_one_minus_alphas_cumprod, t) * noise


def q_posterior(d: Diffusion, x_start: jax.Array, x_t: jax.Array,
                t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean (N, C) and clipped log variance (N, 1) of q(x_{t-1} | x_t, x_0)."""
    mean = _take(d.posterior_mean_coef1, t) * x_start + _take(d.posterior_mean_coef2, t) * x_t
    return mean, _take(d.posterior_log_variance_clipped, t)


def p_mean_variance(d: Diffusion, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                    clip_denoised: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Mean and log variance of p(x_{t-1} | x_t) from the network output.

    Args:
      model_output: (N, 2C): predicted epsilon, then the LEARNED_RANGE variance values v in [-1, 1].
      x_t: (N, C). t: (N,) indices into this process.
    Returns:
      mean (N, C) and log variance (N, C); log_var = frac*log(beta) + (1-frac)*posterior_log_var_clipped,
      frac = (v+1)/2. The x_0 prediction is clipped to [-clip_denoised, clip_denoised] when it is
      > 0 (the reference samples latents unclipped; pixels have a known range, and a briefly
      trained model's high-noise x_0 predictions can run away, latents' included).
    """
    eps, var_values = jnp.split(model_output, 2, axis=-1)
    frac = (var_values + 1) / 2
    log_variance = frac * _take(d.log_betas, t) + (1 - frac) * _take(d.posterior_log_variance_clipped, t)
    pred_x_start = _take(d.sqrt_recip_alphas_cumprod, t) * x_t - _take(d.sqrt_recipm1_alphas_cumprod, t) * eps
    if clip_denoised:
        pred_x_start = jnp.clip(pred_x_start, -clip_denoised, clip_denoised)
    mean, _ = q_posterior(d, pred_x_start, x_t, t)
    return mean, log_variance


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    """The tanh approximation of the standard normal CDF that the reference uses."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """Log-likelihood of x under a Gaussian discretised into bins of width 2/255 on [-1, 1]."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus,
                     jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def training_losses(d: Diffusion, model_output: jax.Array, x_start: jax.Array, x_t: jax.Array,
                    t: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
    """Per-row loss terms of the reference's `training_losses` (loss type MSE, learned range).

    Args:
      model_output: (N, 2C) network output at (x_t, t). x_start, x_t, noise: (N, C). t: (N,).
    Returns:
      dict of (N,) arrays: "mse" (epsilon MSE, mean over C), "vb" (variational bound in bits,
      computed with the epsilon output frozen; the discretised decoder NLL where t == 0) and
      "loss" = mse + vb.
    """
    eps, var_values = jnp.split(model_output, 2, axis=-1)
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), var_values], axis=-1)
    true_mean, true_log_variance = q_posterior(d, x_start, x_t, t)
    mean, log_variance = p_mean_variance(d, frozen, x_t, t)
    kl = jnp.mean(normal_kl(true_mean, true_log_variance, mean, log_variance), axis=-1) / math.log(2.0)
    decoder_nll = -jnp.mean(
        discretized_gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_variance),
        axis=-1) / math.log(2.0)
    vb = jnp.where(t == 0, decoder_nll, kl)
    mse = jnp.mean((noise - eps) ** 2, axis=-1)
    return {"mse": mse, "vb": vb, "loss": mse + vb}


def p_sample_loop(d: Diffusion, model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                  x_T: jax.Array, noise_fn: Callable[[jax.Array], jax.Array],
                  temperature: float | jax.Array = 1.0, clip_denoised: float = 0.0) -> jax.Array:
    """Ancestral sampling from x_T down to x_0 through every step of `d`, as one `lax.scan`.

    Args:
      model_fn: (x (N, C), original timestep (1,), shared by all rows) -> network output (N, 2C).
      x_T: (N, C) starting noise.
      noise_fn: step number j (0 for the first step, at index T-1) -> (N, C) standard normal noise.
      temperature: scales the injected noise only; the last step (index 0) adds no noise.
      clip_denoised: > 0 clips each step's x_0 prediction to [-clip_denoised, clip_denoised]
        (see `p_mean_variance`).
    Returns:
      x_0, (N, C).
    """
    timestep_map = jnp.asarray(d.timestep_map)

    def step(x, j):
        index = d.num_timesteps - 1 - j
        t = jnp.full((1,), index, jnp.int32)  # shared by all rows: one time embedding, broadcast
        model_output = model_fn(x, timestep_map[t]).astype(jnp.float32)
        mean, log_variance = p_mean_variance(d, model_output, x, t, clip_denoised)
        nonzero = (index != 0).astype(x.dtype)
        x = mean + nonzero * jnp.exp(0.5 * log_variance) * noise_fn(j) * temperature
        return x, None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(d.num_timesteps))
    return x
