"""VAR's next-scale generation (FoundationVision/VAR `models/var.py` autoregressive_infer_cfg) as one
compiled program.

The first scale is `VAR.prefill` of the class token; each later scale is one `VAR.decode` of its
whole token map p_k x p_k, the model's static KV caches carried across scales. The K scales are
unrolled with their static sizes in one `jax.jit` program per static setting (batch, guided or not,
top_k, top-p on or off without top-k, more_smooth); the guidance scale and top_p are traced.

At scale k (0-based, ratio r = k / (K - 1)), as the reference:
  guidance: the model's batch is [labels; null class], t = cfg r, logits = (1 + t) cond - t uncond
    (the first scale, r = 0, is thus unguided). This is VAR's scale, not LlamaGen's: cfg = 1 still
    guides every later scale (t = r); cfg = 0 is no guidance and runs no unconditional half.
  filtering (VAR's sample_with_top_k_top_p_): top-k keeps the k largest logits; top-p drops those
    whose cumulative probability in ascending order is <= 1 - top_p, never the largest. No
    temperature. Only the candidates are sorted (`heads.top_k`, k of V; all V for top-p alone) and the
    draw is one uniform per token through their CDF (`draw`, from keys[k]): sorting or drawing over
    the whole vocabulary dominates the sampler's time on CPUs.
  more_smooth (VAR's visual option): f_hat takes softmax((filtered logits (1 + r) + Gumbel noise) /
    tau) @ codebook, tau = max(0.27 (1 - 0.95 r), 0.005), the noise from fold_in(keys[k], 1)
    (`smooth_weights`); the returned codes are still the drawn ones.
  next input: `MultiScaleQuantizer.next_scale_input` adds the scale's embeddings to f_hat and gives
    the next scale's input (the area-resized f_hat), fed to both halves.

Zero-shot editing (VAR's demo_zero_shot_edit.ipynb): after scale k is drawn, the known positions'
embeddings are the known codes' (`scale_masks` gives the reference's per-scale masks), so f_hat and
every later scale build on them; the returned codes hold the known codes there. Without known codes
the masks are all False: editing and plain sampling are the same program.

Randomness: scale k draws from keys[k], split from `rng` or given. The same keys give the same codes.
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from marjax.heads.top_k import top_k
from marjax.models.var import VAR, init_caches
from marjax.tokenizers.msvq_vae import VQVAE
from marjax.tokenizers.resampling import area_resize, bilinear_resize


def candidate_count(top_k: int, top_p: float, vocab_size: int) -> int:
    """How many of the largest logits VAR's filters need, sorted: top_k (clipped to V) when on, else V
    for top-p alone, else 0 (no filter: nothing is sorted)."""
    if top_k > 0:
        return min(int(top_k), vocab_size)
    return vocab_size if 0.0 < top_p < 1.0 else 0


def top_p_threshold(top_p: float) -> np.float32:
    """The threshold of VAR's top_p: 1 - top_p in float64, then float32, as the reference compares it;
    -1 (off) unless 0 < top_p < 1 (VAR's own default 0.0 is off, and 1.0 removes nothing)."""
    return np.float32(1.0 - top_p if 0.0 < top_p < 1.0 else -1.0)


def filtered_candidates(logits: jax.Array, count: int, threshold: ArrayLike,
                        host_top_k: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """VAR's sample_with_top_k_top_p_ without the draw, on the candidates only.

    logits (..., V); count (static, `candidate_count`); threshold (`top_p_threshold`, may be traced) ->
    (values (..., n) float32, the removed ones -inf; indices (..., n) int32 into V, or None when count
    is 0 and the values are the logits themselves). count > 0: the n = count largest logits, descending
    (top-k; ties at the k-th value keep the lower indices, where torch keeps them all). Top-p then
    removes the candidates whose cumulative softmax probability in ascending order is <= threshold,
    never the largest; the softmax is over the candidates, which is the reference's softmax over the
    top-k-filtered logits. host_top_k (static): the candidates by `heads.top_k.top_k(on_host=True)`.
    """
    logits = logits.astype(jnp.float32)
    if count == 0:
        return logits, None
    values, indices = top_k(logits, count, on_host=host_top_k)
    from_below = jnp.cumsum(jax.nn.softmax(values[..., ::-1], axis=-1), axis=-1)[..., ::-1]
    remove = (from_below <= threshold).at[..., 0].set(False)
    return jnp.where(remove, -jnp.inf, values), indices


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 0.0) -> jax.Array:
    """VAR's filters on logits (..., V) -> (..., V) float32 with the removed entries -inf (what
    sample_with_top_k_top_p_ leaves in its logits). top_k, top_p: as `generate_var`'s."""
    values, indices = filtered_candidates(logits, candidate_count(top_k, top_p, logits.shape[-1]),
                                          top_p_threshold(top_p))
    return values if indices is None else _scatter(jnp.full(logits.shape, -jnp.inf), indices, values)


def _scatter(target: jax.Array, indices: jax.Array, values: jax.Array) -> jax.Array:
    """target (..., V) with values (..., n) at indices (..., n) of its last axis."""
    return jnp.put_along_axis(target, indices, values, axis=-1, inplace=False)


def draw(key: jax.Array, values: jax.Array) -> jax.Array:
    """One categorical draw per row from softmax(values (..., n)) -> (...) int32 positions in [0, n), by
    the inverse CDF of one uniform per row (as torch.multinomial; a Gumbel per entry costs n draws)."""
    cumulative = jnp.cumsum(jax.nn.softmax(values, axis=-1), axis=-1)
    u = jax.random.uniform(key, values.shape[:-1] + (1,)) * cumulative[..., -1:]
    # The first position past u; u rounded up to the total finds none and takes 0, the largest candidate.
    return jnp.argmax(cumulative > u, axis=-1).astype(jnp.int32)


def smooth_weights(key: jax.Array, values: jax.Array, ratio: float) -> jax.Array:
    """VAR's more_smooth mix at scale ratio r = k / (K - 1): filtered candidate values (..., n) ->
    softmax((values (1 + r) + Gumbel noise) / tau) (..., n), tau = max(0.27 (1 - 0.95 r), 0.005)."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    return jax.nn.softmax((values * (1 + ratio) + jax.random.gumbel(key, values.shape)) / tau, axis=-1)


def scale_masks(mask: ArrayLike, patch_nums: Sequence[int]) -> list[jax.Array]:
    """The known positions per scale, as VAR's zero-shot editing demo makes them from its edit mask.

    mask (B, H, W) float or bool, 1 = keep (known), on the last scale's token grid (H = W =
    patch_nums[-1], the demo's) or on any finer grid such as the pixels, which is first area-resized
    to the token grid (the known fraction of each token) -> per scale k a (B, p_k, p_k) bool:
    bilinear-resize (torch's, align_corners False) > 0.5; scales of p_k^2 <= 3 tokens are all known.
    """
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {mask.shape}")
    return _scale_masks(mask, tuple(patch_nums))


@functools.partial(jax.jit, static_argnums=1)
def _scale_masks(mask: jax.Array, patch_nums: tuple[int, ...]) -> list[jax.Array]:
    mask = mask[..., None]
    if mask.shape[1:3] != (patch_nums[-1],) * 2:
        mask = area_resize(mask, patch_nums[-1])
    return [jnp.full(mask.shape[:1] + (p, p), p * p <= 3) | (bilinear_resize(mask, p)[..., 0] > 0.5)
            for p in patch_nums]


def generate_var(model: VAR, params: dict, vqvae: VQVAE, vae_params: dict, labels: ArrayLike, rng: jax.Array, *,
                 cfg: float = 0.0, top_k: int = 0, top_p: float = 1.0, more_smooth: bool = False,
                 host_top_k: bool = False,
                 keys: jax.Array | None = None, known_codes: Sequence[ArrayLike] | None = None,
                 known_masks: Sequence[ArrayLike] | None = None) -> tuple[list[jax.Array], jax.Array]:
    """Samples VAR's codes scale by scale.

    Args:
      model, params: the VAR and its params.
      vqvae, vae_params: the VQVAE and its params (only its quantizer's are used); its codebook,
        code width and scales must be the VAR's.
      labels: (B,) int class labels; num_classes is the null class (VAR's in/outpainting label).
      rng: PRNG key, split into `keys` when those are not given.
      cfg: VAR's guidance: scale k uses t = cfg k / (K - 1); 0 = none (1 still guides; see above;
        the paper's FID setting is 1.5 with top_k 900, top_p 0.96).
      top_k (0 = off), top_p (off when <= 0 or >= 1; VAR's own default 0.0 is off too): `filter_logits`.
      more_smooth: VAR's Gumbel-softmax mix of codebook rows for f_hat (visuals; not for FID).
      host_top_k: top-k by numpy on the host (`heads.top_k`): the same codes, faster on a one-device
        CPU, but the program is not kept in the persistent compilation cache.
      keys: optional (K,) PRNG keys; scale k draws from keys[k].
      known_codes, known_masks: optional lists over the scales of (B, p_k, p_k) int codes (the
        tokenizer's codes of the image to edit, `VQVAE.codes`) and bool masks (True = known;
        `scale_masks`); together or not at all.
    Returns:
      (codes per scale, each (B, p_k, p_k) int32; f_hat (B, p_K, p_K, code_dim) float32 for `decode_images`).
    """
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (B,), got shape {labels.shape}")
    _check_pair(model, vqvae)
    num_scales = len(model.patch_nums)
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k}")
    if keys is None:
        keys = jax.random.split(rng, num_scales)
    elif keys.shape != (num_scales,):
        raise ValueError(f"keys must be (K,) = ({num_scales},) PRNG keys, got shape {keys.shape}")
    known_codes, known_masks = _known(known_codes, known_masks, labels.shape[0], model.patch_nums)
    # The weights (1 + t, t) of each scale in float64, then float32: the reference's Python-float
    # arithmetic applied to float32 tensors.
    ratios = np.arange(num_scales) / (num_scales - 1)
    weights = np.stack([1.0 + cfg * ratios, cfg * ratios], axis=1).astype(np.float32)
    program = _program(model, vqvae, labels.shape[0], cfg != 0.0, candidate_count(top_k, top_p, model.vocab_size),
                       bool(more_smooth), bool(host_top_k))
    return program(params, vae_params["quantizer"], labels, keys, weights, top_p_threshold(top_p), known_codes,
                   known_masks)


@functools.lru_cache(maxsize=32)
def _program(model: VAR, vqvae: VQVAE, batch: int, guided: bool, count: int, more_smooth: bool, host_top_k: bool):
    """One jitted sampler per static setting (count: `candidate_count`); keys, guidance weights, top_p
    and known codes are traced."""
    num_scales = len(model.patch_nums)

    def run(params, quantizer_params, labels, keys, weights, threshold, known_codes, known_masks):
        variables = {"params": params}

        def quantizer(method: str, *args):  # the VQVAE's quantizer, with only its params
            return vqvae.apply({"params": {"quantizer": quantizer_params}}, *args,
                               method=lambda module, *a: getattr(module.quantizer, method)(*a))

        copies = 2 if guided else 1
        if guided:
            labels = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])
        logits, caches = model.apply(variables, labels, init_caches(model, copies * batch, model.dtype),
                                     method=VAR.prefill)
        f_hat = jnp.zeros((batch, model.patch_nums[-1], model.patch_nums[-1], model.code_dim), jnp.float32)
        codebook = vqvae.apply({"params": {"quantizer": quantizer_params}},
                               method=lambda module: module.quantizer.codebook) if more_smooth else None
        codes = []
        for k, p in enumerate(model.patch_nums):
            if guided:
                cond, uncond = jnp.split(logits, 2)
                logits = weights[k, 0] * cond - weights[k, 1] * uncond
            values, indices = filtered_candidates(logits, count, threshold, host_top_k)
            drawn = draw(keys[k], values)
            if indices is not None:
                drawn = jnp.take_along_axis(indices, drawn[..., None], axis=-1)[..., 0]
            codes.append(jnp.where(known_masks[k], known_codes[k], drawn.reshape(batch, p, p)))
            if more_smooth:
                mix = smooth_weights(jax.random.fold_in(keys[k], 1), values, k / (num_scales - 1))
                if indices is not None:
                    mix = _scatter(jnp.zeros(logits.shape), indices, mix)
                h = jnp.where(known_masks[k][..., None], quantizer("embed", known_codes[k]),
                              (mix @ codebook).reshape(batch, p, p, model.code_dim))
            else:
                h = quantizer("embed", codes[k])
            f_hat, inputs = quantizer("next_scale_input", f_hat, h, k)
            if k + 1 < num_scales:
                logits, caches = model.apply(variables, labels, jnp.tile(inputs, (copies, 1, 1)), k + 1, caches,
                                             method=VAR.decode)
        return codes, f_hat

    return jax.jit(run)


def decode_images(vqvae: VQVAE, vae_params: dict, f_hat: jax.Array) -> jax.Array:
    """f_hat (B, h, w, code_dim) from `generate_var` -> images (B, H, W, C) in [-1, 1] (VAR's
    fhat_to_img; its sampler returns them mapped to [0, 1])."""
    return _decoder(vqvae)(vae_params, f_hat)


@functools.lru_cache(maxsize=8)
def _decoder(vqvae: VQVAE):
    return jax.jit(lambda vae_params, f_hat: vqvae.apply({"params": vae_params}, f_hat, method=VQVAE.decode))


def _check_pair(model: VAR, vqvae: VQVAE) -> None:
    mine = (model.vocab_size, model.code_dim, tuple(model.patch_nums))
    theirs = (vqvae.codebook_size, vqvae.code_dim, tuple(vqvae.patch_nums))
    if mine != theirs:
        raise ValueError(f"the VAR's (vocab_size, code_dim, patch_nums) {mine} are not the VQVAE's {theirs}")


def _known(codes: Sequence[ArrayLike] | None, masks: Sequence[ArrayLike] | None, batch: int,
           patch_nums: Sequence[int]) -> tuple[list[jax.Array], list[jax.Array]]:
    """Known codes and masks per scale, checked; zeros and all-False masks when nothing is known."""
    shapes = [(batch, p, p) for p in patch_nums]
    if (codes is None) != (masks is None):
        raise ValueError("known_codes and known_masks come together")
    if codes is None:
        return [jnp.zeros(s, jnp.int32) for s in shapes], [jnp.zeros(s, bool) for s in shapes]
    codes = [jnp.asarray(c, jnp.int32) for c in codes]
    masks = [jnp.asarray(m, bool) for m in masks]
    if [c.shape for c in codes] != shapes or [m.shape for m in masks] != shapes:
        raise ValueError(f"known_codes and known_masks must be one (B, p_k, p_k) array per scale, {shapes}; got "
                         f"{[c.shape for c in codes]} and {[m.shape for m in masks]}")
    return codes, masks

