"""The softmax head for discrete tokens (VQ codes): logits, cross-entropy, CFG on logits, top-k/top-p, sampling.

Sampling follows LlamaGen's `autoregressive/models/generate.py` and is kept apart from the model:
CFG first (`cfg_logits`), then `sample_logits` = logits / max(temperature, 1e-5), top-k, top-p, categorical.
Every function works inside `jax.jit`; only `top_k` (a shape) and `greedy` must be static.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from marjax.blocks.layers import Dtype, dense
from marjax.heads.top_k import kth_largest

MIN_TEMPERATURE = 1e-5  # LlamaGen divides by max(temperature, 1e-5)


class SoftmaxHead(nn.Module):
    """Linear from the transformer width to `vocab_size` logits: x (..., D) -> (..., vocab_size) float32.

    `dtype` is the matmul dtype (params stay float32); the logits are cast to float32 as in LlamaGen.
    The default zero kernel and no bias are LlamaGen's output layer; VAR's head has a bias and a
    0.02-scaled truncated-normal kernel, so both are fields. Params carry logical axes ("embed", "codes").
    """

    vocab_size: int
    dtype: Dtype = jnp.float32
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        logits = dense(self.vocab_size, "output", self.dtype, self.use_bias, self.kernel_init,
                       axes=("embed", "codes"))(x)
        return logits.astype(jnp.float32)


def token_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-position cross-entropy -log softmax(logits)[target] in float32: logits (..., V), targets (...) int
    -> (...). An out-of-range (or negative) target gives NaN rather than a silently wrong loss.

    label_smoothing s: torch's CrossEntropyLoss(label_smoothing=s), the target (1 - s) one-hot + s / V
    uniform, i.e. (1 - s) nll + s mean_v(-log p_v)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1, mode="fill",
                                 wrap_negative_indices=False)
    nll = -picked[..., 0]
    if label_smoothing == 0.0:
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean token cross-entropy over the positions where `mask` is True (all positions when None).

    logits (..., V), targets (...) int, mask (...) bool or None -> float32 scalar. An all-False mask
    gives 0 (the sum over no positions divided by max(count, 1)). Per-position values:
    `token_cross_entropy`.
    """
    per_position = token_cross_entropy(logits, targets)
    if mask is None:
        return jnp.mean(per_position)
    weights = jnp.broadcast_to(mask, per_position.shape).astype(jnp.float32)
    # where, not multiply: a NaN at a masked-out position must not reach the loss.
    total = jnp.sum(jnp.where(weights > 0, per_position, 0.0))
    return total / jnp.maximum(jnp.sum(weights), 1.0)


def cfg_logits(cond_logits: jax.Array, uncond_logits: jax.Array, scale: ArrayLike,
               token_index: ArrayLike | None = None, cfg_interval: ArrayLike = -1) -> jax.Array:
    """Classifier-free guidance on logits, LlamaGen's order: uncond + (cond - uncond) * scale.

    cond_logits, uncond_logits (..., V) -> (..., V) float32. `scale` may be traced. VAR's
    (1 + t) * cond - t * uncond is this with scale = 1 + t.

    LlamaGen's `cfg_interval` (default -1 = always guided): the prefill token (index 0) is always
    guided; decode step i (token index i + 1) returns cond_logits unchanged once i > cfg_interval. So,
    with `token_index` (0-based index of the token being sampled, may be traced), the output is
    cond_logits where cfg_interval > -1 and token_index > cfg_interval + 1. LlamaGen only guides when
    scale > 1 (otherwise it runs no unconditional batch); callers choose that before calling.
    """
    cond = cond_logits.astype(jnp.float32)
    uncond = uncond_logits.astype(jnp.float32)
    guided = uncond + (cond - uncond) * scale
    if token_index is None:
        if isinstance(cfg_interval, int) and cfg_interval > -1:
            raise ValueError(f"cfg_interval={cfg_interval} needs token_index")
        return guided
    unguided = jnp.logical_and(jnp.asarray(cfg_interval) > -1, jnp.asarray(token_index) > cfg_interval + 1)
    return jnp.where(unguided, cond, guided)


def _is_static_off(top_p: ArrayLike) -> bool:
    return isinstance(top_p, (int, float)) and top_p >= 1.0


def top_k_top_p_filter(logits: jax.Array, top_k: int = 0, top_p: ArrayLike = 1.0) -> jax.Array:
    """LlamaGen's (Hugging Face's) `top_k_top_p_filtering` with min_tokens_to_keep = 1: logits (..., V)
    -> (..., V) float32 with the filtered entries set to -inf.

    top_k (static Python int, 0 = off): removes logits strictly below the k-th largest, so tokens tied
    with the k-th value are all kept (more than k survive on ties, as in LlamaGen); k is clipped to [1, V].
    top_p (float or traced scalar, >= 1.0 = off): sorts descending (ties in index order), removes the
    tokens whose cumulative softmax probability exceeds top_p, shifted right by one so the first token
    above the threshold stays; the largest logit always stays. A traced top_p always costs the sort.

    -inf (not the finite minimum) gives the filtered tokens exactly zero probability, as in LlamaGen;
    `jax.nn.softmax` and `jax.random.categorical` handle it since one entry always stays finite. Do not
    feed filtered logits to a loss or to `cfg_logits` (-inf - -inf is NaN): guide first, then filter.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    top_k = int(top_k)  # a shape: must be static
    if top_k > 0:
        kth = kth_largest(logits, min(top_k, vocab))
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if _is_static_off(top_p):
        return logits

    flat = logits.reshape(-1, vocab)
    order = jnp.argsort(flat, axis=-1, descending=True, stable=True)
    sorted_logits = jnp.take_along_axis(flat, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    above = cumulative > top_p
    # Shift right: a token is removed when the tokens before it already exceed top_p.
    remove_sorted = jnp.concatenate([jnp.zeros_like(above[:, :1]), above[:, :-1]], axis=-1)
    # top_p = 1.0 means off (LlamaGen's `if top_p < 1.0`); float32 cumsums can pass 1.0 by rounding.
    remove_sorted = jnp.logical_and(remove_sorted, jnp.asarray(top_p) < 1.0)
    rows = jnp.arange(flat.shape[0])[:, None]
    remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, flat).reshape(logits.shape)


def sample_logits(rng: jax.Array, logits: jax.Array, temperature: ArrayLike = 1.0, top_k: int = 0,
                  top_p: ArrayLike = 1.0, greedy: bool = False) -> jax.Array:
    """One token per row as LlamaGen's `sample`: logits (..., V), usually (B, V) -> (...) int32.

    logits / max(temperature, 1e-5), then `top_k_top_p_filter`, then a categorical draw. Temperature 0
    is thus near-greedy but still random on near-ties; `greedy=True` (static, LlamaGen's
    sample_logits=False) returns the argmax without using `rng` (the filter never removes the argmax).
    `temperature` and `top_p` may be traced; `top_k` and `greedy` are static.
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / jnp.maximum(jnp.asarray(temperature, jnp.float32), MIN_TEMPERATURE)
    if top_k > 0 or not _is_static_off(top_p):
        logits = top_k_top_p_filter(logits, top_k, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
