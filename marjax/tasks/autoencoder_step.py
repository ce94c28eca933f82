"""The tokenizer train step: autoencoder (KL, VQ or multi-scale VQ) and PatchGAN discriminator, one pure function.

`train_step(state, batch, rng, lpips_params) -> (state, metrics)`, batch {"images": (B, H, W, C)
in [-1, 1]}; `lpips_params` are the frozen perceptual network's (None without the perceptual loss).
Losses as LDM / taming-transformers (`LPIPSWithDiscriminator`, `VQLPIPSWithDiscriminator`):
- reconstruction |x - x'| (or squared) + perceptual_weight LPIPS(x, x') at every pixel; for KL,
  nll = rec / e^logvar + logvar with one learned scalar logvar, summed per image; + kl_weight
  KL(q || N(0, I)) per image; for VQ, the mean reconstruction + codebook_weight (codebook + 0.25
  commitment); for the multi-scale VQ (VAR's), the mean reconstruction + codebook_weight x its
  vq_loss (mean over scales of 0.25 commitment + codebook of the cumulative f_hat).
- generator adversarial loss -mean D(x'), weighted by the adaptive weight
  clip(|grad nll| / (|grad g| + 1e-4), 0, 1e4) x disc_weight, the gradients taken w.r.t. the
  decoder's last conv kernel (or by disc_weight alone, LlamaGen's VQ recipe, without
  `disc_adaptive_weight`); active from `disc_start` on, as is the discriminator (the adaptive
  weight is 0 before: not computed).
- discriminator hinge loss 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x'))).
BatchNorm statistics of the discriminator are updated by its own step only. EMA of the
autoencoder params every step.
Multi-scale VQ: the state keeps VAR's per-scale code counts (`msvq.update_hit_ema`); metrics
usage_s<k> (VAR's usage of scale k, a fraction), perplexity_s<k> (of scale k's codes in the batch),
codebook_usage and perplexity (all scales' codes), dead_codes. With `DeadCodes.every` > 0, every
that many steps the codes counted below a threshold are re-initialised from the batch's residuals
(`msvq.revive_dead_codes`) in params and EMA alike; metric revived: how many (0 on other steps).
"""
import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from marjax.tasks.train_state import ema_rate_at, ema_update
from marjax.tokenizers.code_usage import code_statistics
from marjax.tokenizers.discriminator import PatchDiscriminator
from marjax.tokenizers.kl import AutoencoderKL
from marjax.tokenizers.lpips import LPIPS
from marjax.tokenizers.msvq import dead_codes, revive_dead_codes, update_hit_ema, usage_percent
from marjax.tokenizers.msvq_vae import VQVAE
from marjax.tokenizers.vq import VQModel

Metrics = dict[str, jax.Array]
Autoencoder = AutoencoderKL | VQModel | VQVAE


@dataclasses.dataclass(frozen=True)
class TokenizerLoss:
    reconstruction: str = "l1"   # "l1" | "l2"
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 50_001
    perceptual_weight: float = 0.0
    disc_adaptive_weight: bool = True  # False: the generator's adversarial weight is disc_weight alone


@dataclasses.dataclass(frozen=True)
class DeadCodes:
    """The multi-scale VQ's remedy for dead codes: every `every` steps (0: never) the codes whose
    running count, summed over the scales, is below `threshold` x a uniform share of a step's
    positions are re-initialised (`msvq.revive_dead_codes`)."""

    every: int = 0
    threshold: float = 0.03


@flax.struct.dataclass
class TokenizerTrainState:
    step: jax.Array
    params: Any           # {"model": autoencoder params, "logvar": () for KL}
    ema_params: Any       # EMA of params["model"]
    opt_state: Any
    disc_params: Any
    disc_stats: Any       # discriminator BatchNorm statistics
    disc_opt_state: Any


@flax.struct.dataclass
class MultiScaleVQTrainState(TokenizerTrainState):
    """The multi-scale VQ's state (a subclass, so KL and VQ checkpoints keep their layout)."""

    code_hits: Any        # (K, V) running code counts per scale (VAR's ema_vocab_hit_SV)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(nll_grad: jax.Array, g_grad: jax.Array, disc_weight: float) -> jax.Array:
    """clip(|grad nll| / (|grad g| + 1e-4), 0, 1e4) * disc_weight, with no gradient through it."""
    weight = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, 1e4) * disc_weight)


def init_boxed_tokenizer_variables(model: Autoencoder, disc: PatchDiscriminator, images: jax.Array,
                                   rng: jax.Array) -> tuple[dict, dict]:
    """(params {"model", "logvar" for KL}, discriminator variables {"params", "batch_stats"}) for
    inputs shaped like `images`, each param boxed with its logical axis names."""
    model_key, disc_key, sample_key = jax.random.split(rng, 3)
    args = (images, sample_key) if isinstance(model, AutoencoderKL) else (images,)
    params = {"model": model.init(model_key, *args)["params"]}
    if isinstance(model, AutoencoderKL):
        params["logvar"] = jnp.zeros((), jnp.float32)
    return params, disc.init(disc_key, images, train=False)


def create_tokenizer_state(model: Autoencoder, disc: PatchDiscriminator, tx: optax.GradientTransformation,
                           disc_tx: optax.GradientTransformation, images: jax.Array,
                           rng: jax.Array) -> TokenizerTrainState:
    """Fresh state for inputs shaped like `images` (B, H, W, C)."""
    params, disc_vars = nn.unbox(init_boxed_tokenizer_variables(model, disc, images, rng))
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params["model"]),
                  opt_state=tx.init(params), disc_params=disc_vars["params"], disc_stats=disc_vars["batch_stats"],
                  disc_opt_state=disc_tx.init(disc_vars["params"]))
    if isinstance(model, VQVAE):
        return MultiScaleVQTrainState(**fields, code_hits=jnp.zeros((len(model.patch_nums), model.codebook_size)))
    return TokenizerTrainState(**fields)


def _replace(tree: dict, path: tuple[str, ...], value: jax.Array) -> dict:
    """`tree` (nested dicts) with the leaf at `path` replaced by `value`."""
    flat = flax.traverse_util.flatten_dict(tree)
    return flax.traverse_util.unflatten_dict({**flat, path: value})


def make_tokenizer_train_step(model: Autoencoder, disc: PatchDiscriminator, tx: optax.GradientTransformation,
                              disc_tx: optax.GradientTransformation, loss: TokenizerLoss, ema_rate: float = 0.999,
                              lpips: LPIPS = LPIPS(), dead: DeadCodes = DeadCodes(),
                              ema_warmup: bool = False) -> Callable[
                                  [TokenizerTrainState, dict, jax.Array, dict | None],
                                  tuple[TokenizerTrainState, Metrics]]:
    """Builds the pure step; see the module docstring for the losses and the code bookkeeping."""
    is_kl, is_msvq = isinstance(model, AutoencoderKL), isinstance(model, VQVAE)
    use_lpips = loss.perceptual_weight > 0

    def reconstruct(model_params, images, rng):
        """-> (reconstruction, regulariser loss (scalar), extra metrics, the multi-scale VQ's codes per
        scale, hits (K, V) and residuals (B, L, C) ({} for the others))."""
        if is_kl:
            recon, posterior = model.apply({"params": model_params}, images, rng)
            kl = jnp.mean(posterior.kl())
            return recon, loss.kl_weight * kl, {"kl": kl}, {}
        if is_msvq:
            recon, codes, stats = model.apply({"params": model_params}, images)
            return (recon, loss.codebook_weight * stats["vq_loss"], {"vq_loss": stats["vq_loss"]},
                    {"codes": codes, "hits": stats["hits"], "residuals": stats["residuals"]})
        recon, _, stats = model.apply({"params": model_params}, images)
        vq = stats["codebook_loss"] + stats["commitment_loss"]
        return recon, loss.codebook_weight * vq, stats, {}

    def track_codes(step, code_hits, params, ema_params, quantized, key):
        """Multi-scale VQ: the running code counts after this step, usage and perplexity per scale
        and overall, and on every `dead.every`-th step the dead codes revived in params and EMA.
        -> (params, ema_params, code_hits, metrics)."""
        codes, size = quantized["codes"], model.codebook_size
        batch = codes[0].shape[0]
        positions = jnp.array([batch * p * p for p in model.patch_nums], jnp.float32)
        code_hits = update_hit_ema(code_hits, quantized["hits"], step)
        usage = usage_percent(code_hits, batch * model.patch_nums[-1] ** 2) / 100.0
        metrics = {**code_statistics(jnp.concatenate([c.reshape(-1) for c in codes]), size),
                   "dead_codes": jnp.sum(dead_codes(code_hits, positions, dead.threshold))}
        for k, c in enumerate(codes):
            metrics[f"usage_s{k}"] = usage[k]  # VAR's usage (codes counted >= 0.08 of a share), as a fraction
            metrics[f"perplexity_s{k}"] = code_statistics(c, size)["perplexity"]
        if not dead.every:
            return params, ema_params, code_hits, metrics
        residuals = quantized["residuals"].reshape(-1, model.code_dim)

        def revive(operands):
            codebook, ema_codebook, hits = operands
            new, hits, revived = revive_dead_codes(codebook, hits, residuals, positions, dead.threshold, key)
            return new, jnp.where(revived[:, None], new, ema_codebook), hits, jnp.sum(revived)

        codebook, ema_codebook, code_hits, revived = jax.lax.cond(
            (step + 1) % dead.every == 0, revive, lambda operands: (*operands, jnp.zeros((), jnp.int32)),
            (params["model"]["quantizer"]["codebook"], ema_params["quantizer"]["codebook"], code_hits))
        params = _replace(params, ("model", "quantizer", "codebook"), codebook)
        ema_params = _replace(ema_params, ("quantizer", "codebook"), ema_codebook)
        return params, ema_params, code_hits, {**metrics, "revived": revived}

    def train_step(state: TokenizerTrainState, batch: dict, rng: jax.Array,
                   lpips_params: dict | None = None) -> tuple[TokenizerTrainState, Metrics]:
        if use_lpips == (lpips_params is None):
            raise ValueError(f"perceptual_weight={loss.perceptual_weight} needs lpips_params, and only then")
        images = batch["images"]
        # KL samples its posterior with it, the multi-scale VQ its revived codes' residuals.
        sample_key = jax.random.fold_in(rng, state.step)
        disc_on = (state.step >= loss.disc_start).astype(jnp.float32)
        disc_vars = {"params": state.disc_params, "batch_stats": state.disc_stats}

        def generator_terms(params):
            recon, regulariser, extra, quantized = reconstruct(params["model"], images, sample_key)
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
            return nll, -jnp.mean(logits_fake), regulariser, recon, {**extra, "rec_loss": jnp.mean(diff)}, quantized

        def last_layer_grads(params):
            """Gradients of nll and of the generator loss w.r.t. the last decoder kernel: one
            forward pass, two pullbacks."""
            path = ("model", "decoder", "conv_out", "kernel")
            (nll, g_loss), pullback = jax.vjp(lambda k: generator_terms(_replace(params, path, k))[:2],
                                              params["model"]["decoder"]["conv_out"]["kernel"])
            one, zero = jnp.ones_like(nll), jnp.zeros_like(g_loss)
            return pullback((one, zero))[0], pullback((zero, one))[0]

        if loss.disc_adaptive_weight:
            # Computed only once the discriminator is on: it costs one more forward pass.
            d_weight = jax.lax.cond(state.step >= loss.disc_start,
                                    lambda p: adaptive_weight(*last_layer_grads(p), loss.disc_weight),
                                    lambda p: jnp.zeros((), jnp.float32), state.params)
        else:
            d_weight = jnp.asarray(loss.disc_weight, jnp.float32)

        def generator_loss(params):
            nll, g_loss, regulariser, recon, extra, quantized = generator_terms(params)
            total = nll + regulariser + d_weight * disc_on * g_loss
            return total, (recon, {**extra, "nll": nll, "g_loss": g_loss, "loss": total}, quantized)

        (_, (recon, metrics, quantized)), grads = jax.value_and_grad(generator_loss, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = ema_update(state.ema_params, params["model"], ema_rate_at(ema_rate, state.step, ema_warmup))
        if is_msvq:
            params, ema_params, code_hits, code_metrics = track_codes(state.step, state.code_hits, params, ema_params,
                                                                      quantized, sample_key)
            state, metrics = state.replace(code_hits=code_hits), {**metrics, **code_metrics}

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
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                                  disc_params=disc_params, disc_stats=disc_stats, disc_opt_state=disc_opt_state)
        return new_state, metrics

    return train_step
