"""The tokenizer train step: autoencoder (KL or VQ) and PatchGAN discriminator, one pure function.

`train_step(state, batch, rng, lpips_params) -> (state, metrics)`, batch {"images": (B, H, W, C)
in [-1, 1]}; `lpips_params` are the frozen perceptual network's (None without the perceptual loss).
Losses as LDM / taming-transformers (`LPIPSWithDiscriminator`, `VQLPIPSWithDiscriminator`):
- reconstruction |x - x'| (or squared) + perceptual_weight LPIPS(x, x') at every pixel; for KL,
  nll = rec / e^logvar + logvar with one learned scalar logvar, summed per image; + kl_weight
  KL(q || N(0, I)) per image; for VQ, the mean reconstruction + codebook_weight (codebook + 0.25
  commitment).
- generator adversarial loss -mean D(x'), weighted by the adaptive weight
  clip(|grad nll| / (|grad g| + 1e-4), 0, 1e4) x disc_weight, the gradients taken w.r.t. the
  decoder's last conv kernel; active from `disc_start` on, as is the discriminator.
- discriminator hinge loss 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x'))).
BatchNorm statistics of the discriminator are updated by its own step only. EMA of the
autoencoder params every step.
"""
import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from marjax.tokenizers.kl import AutoencoderKL
from marjax.tokenizers.lpips import LPIPS
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tokenizers.vq import VQModel

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TokenizerLoss:
    reconstruction: str = "l1"   # "l1" | "l2"
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 50_001
    perceptual_weight: float = 0.0


@flax.struct.dataclass
class TokenizerTrainState:
    step: jax.Array
    params: Any           # {"model": autoencoder params, "logvar": () for KL}
    ema_params: Any       # EMA of params["model"]
    opt_state: Any
    disc_params: Any
    disc_stats: Any       # discriminator BatchNorm statistics
    disc_opt_state: Any


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(nll_grad: jax.Array, g_grad: jax.Array, disc_weight: float) -> jax.Array:
    """clip(|grad nll| / (|grad g| + 1e-4), 0, 1e4) * disc_weight, with no gradient through it."""
    weight = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, 1e4) * disc_weight)


def init_boxed_tokenizer_variables(model: AutoencoderKL | VQModel, disc: PatchDiscriminator, images: jax.Array,
                                   rng: jax.Array) -> tuple[dict, dict]:
    """(params {"model", "logvar" for KL}, discriminator variables {"params", "batch_stats"}) for
    inputs shaped like `images`, each param boxed with its logical axis names."""
    model_key, disc_key, sample_key = jax.random.split(rng, 3)
    args = (images, sample_key) if isinstance(model, AutoencoderKL) else (images,)
    params = {"model": model.init(model_key, *args)["params"]}
    if isinstance(model, AutoencoderKL):
        params["logvar"] = jnp.zeros((), jnp.float32)
    return params, disc.init(disc_key, images, train=False)


def create_tokenizer_state(model: AutoencoderKL | VQModel, disc: PatchDiscriminator, tx: optax.GradientTransformation,
                           disc_tx: optax.GradientTransformation, images: jax.Array,
                           rng: jax.Array) -> TokenizerTrainState:
    """Fresh state for inputs shaped like `images` (B, H, W, C)."""
    params, disc_vars = nn.unbox(init_boxed_tokenizer_variables(model, disc, images, rng))
    return TokenizerTrainState(step=jnp.zeros((), jnp.int32), params=params,
                               ema_params=jax.tree.map(jnp.copy, params["model"]), opt_state=tx.init(params),
                               disc_params=disc_vars["params"], disc_stats=disc_vars["batch_stats"],
                               disc_opt_state=disc_tx.init(disc_vars["params"]))


def make_tokenizer_train_step(model: AutoencoderKL | VQModel, disc: PatchDiscriminator,
                              tx: optax.GradientTransformation, disc_tx: optax.GradientTransformation,
                              loss: TokenizerLoss, ema_rate: float = 0.999, lpips: LPIPS = LPIPS()) -> Callable[
                                  [TokenizerTrainState, dict, jax.Array, dict | None], tuple[TokenizerTrainState, Metrics]]:
    """Builds the pure step; see the module docstring for the losses."""
    is_kl = isinstance(model, AutoencoderKL)
    use_lpips = loss.perceptual_weight > 0

    def reconstruct(model_params, images, rng):
        """-> (reconstruction, regulariser loss (scalar), extra metrics)."""
        if is_kl:
            recon, posterior = model.apply({"params": model_params}, images, rng)
            kl = jnp.mean(posterior.kl())
            return recon, loss.kl_weight * kl, {"kl": kl}
        recon, _, stats = model.apply({"params": model_params}, images)
        vq = stats["codebook_loss"] + stats["commitment_loss"]
        return recon, loss.codebook_weight * vq, stats

    def train_step(state: TokenizerTrainState, batch: dict, rng: jax.Array,
                   lpips_params: dict | None = None) -> tuple[TokenizerTrainState, Metrics]:
        if use_lpips == (lpips_params is None):
            raise ValueError(f"perceptual_weight={loss.perceptual_weight} needs lpips_params, and only then")
        images = batch["images"]
        sample_key = jax.random.fold_in(rng, state.step)
        disc_on = (state.step >= loss.disc_start).astype(jnp.float32)
        disc_vars = {"params": state.disc_params, "batch_stats": state.disc_stats}

        def generator_terms(params):
            recon, regulariser, extra = reconstruct(params["model"], images, sample_key)
            diff = jnp.abs(images - recon) if loss.reconstruction == "l1" else (images - recon) ** 2
            rec = diff
            if use_lpips:
                perceptual = lpips.apply({"params": lpips_params}, images, recon)
                rec = diff + loss.perceptual_weight * perceptual[:, None, None, None]
                extra = {**extra, "p_loss": jnp.mean(perceptual)}
            if is_kl:
                nll = jnp.sum(rec / jnp.exp(params["logvar"]) + params["logvar"]) / images.shape[0]
            else:
                nll = jnp.mean(rec)
            logits_fake, _ = disc.apply(disc_vars, recon, train=True, mutable=["batch_stats"])
            return nll, -jnp.mean(logits_fake), regulariser, recon, {**extra, "rec_loss": jnp.mean(diff)}

        def last_layer_grads(params):
            """Gradients of nll and of the generator loss w.r.t. the last decoder kernel: one
            forward pass, two pullbacks."""
            kernel = params["model"]["decoder"]["conv_out"]["kernel"]

            def nll_and_g(k):
                swapped = flax.traverse_util.unflatten_dict(
                    {**flax.traverse_util.flatten_dict(params), ("model", "decoder", "conv_out", "kernel"): k})
                return generator_terms(swapped)[:2]

            (nll, g_loss), pullback = jax.vjp(nll_and_g, kernel)
            one, zero = jnp.ones_like(nll), jnp.zeros_like(g_loss)
            return pullback((one, zero))[0], pullback((zero, one))[0]

        d_weight = adaptive_weight(*last_layer_grads(state.params), loss.disc_weight)

        def generator_loss(params):
            nll, g_loss, regulariser, recon, extra = generator_terms(params)
            total = nll + regulariser + d_weight * disc_on * g_loss
            return total, (recon, {**extra, "nll": nll, "g_loss": g_loss, "loss": total})

        (_, (recon, metrics)), grads = jax.value_and_grad(generator_loss, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = jax.tree.map(lambda e, p: ema_rate * e + (1 - ema_rate) * p, state.ema_params, params["model"])

        fake = jax.lax.stop_gradient(recon)

        def discriminator_loss(disc_params):
            logits_real, updated = disc.apply({"params": disc_params, "batch_stats": state.disc_stats}, images,
                                              train=True, mutable=["batch_stats"])
            logits_fake, updated = disc.apply({"params": disc_params, **updated}, fake, train=True,
                                              mutable=["batch_stats"])
            d_loss = disc_on * hinge_d_loss(logits_real, logits_fake)
            return d_loss, (updated["batch_stats"], jnp.mean(logits_real), jnp.mean(logits_fake))

        (d_loss, (disc_stats, real_mean, fake_mean)), disc_grads = jax.value_and_grad(
            discriminator_loss, has_aux=True)(state.disc_params)
        disc_updates, disc_opt_state = disc_tx.update(disc_grads, state.disc_opt_state, state.disc_params)
        disc_params = optax.apply_updates(state.disc_params, disc_updates)
        metrics = {**metrics, "d_weight": d_weight, "d_loss": d_loss, "logits_real": real_mean,
                   "logits_fake": fake_mean, "grad_norm": optax.tree.norm(grads)}
        new_state = TokenizerTrainState(state.step + 1, params, ema_params, opt_state, disc_params, disc_stats,
                                        disc_opt_state)
        return new_state, metrics

    return train_step
