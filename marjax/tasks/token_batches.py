"""A training batch of images (or cached posteriors or codes) -> the tokens a generator trains on."""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from marjax.errors import ConfigError, DataError


def latents_of_batch(tokenizer, batch: dict, key: jax.Array) -> jax.Array:
    """Continuous tokens (B, h, w, C) of a batch: sampled from the stored KL posterior of a latent
    cache (`batch["moments"]`), as encoding would, or encoded from `batch["images"]` (B, H, W, C)
    in [-1, 1]. tokenizer: a ContinuousTokenizer (`marjax.tokenizers.protocol`); key: posterior sampling."""
    if "moments" in batch:
        return tokenizer.latents_from_moments(batch["moments"], key)
    return tokenizer.encode(batch["images"], key)


def flat_codes(codes: jax.Array | Sequence[jax.Array]) -> jax.Array:
    """A tokenizer's codes, (B, h, w) or one (B, p_k, p_k) per scale -> (B, L) int32, the scales one
    after another (a code cache's layout)."""
    if isinstance(codes, jax.Array):
        codes = [codes]
    return jnp.concatenate([c.reshape(c.shape[0], -1) for c in codes], axis=1).astype(jnp.int32)


def codes_of_batch(tokenizer, batch: dict, num_tokens: int) -> jax.Array:
    """Discrete tokens (B, L) of a batch: a code cache's (`batch["codes"]`) or `flat_codes` of
    encoding `batch["images"]` (B, H, W, C) in [-1, 1]. tokenizer: a DiscreteTokenizer (or the
    multi-scale one); num_tokens: the L the model takes, checked against the cache's."""
    if "codes" not in batch:
        return flat_codes(tokenizer.encode_codes(batch["images"]))
    if batch["codes"].shape[1] != num_tokens:
        raise DataError(f"the code cache (data.path) holds {batch['codes'].shape[1]} codes per image; this model "
                        f"takes {num_tokens}: the cache was written by another tokenizer or image size")
    return batch["codes"]


def check_token_source(config: ml_collections.ConfigDict, discrete: bool) -> None:
    """ConfigError when `data.source` is a cache of the other kind of token: cached_latents holds KL
    posteriors (continuous tokens of tokenizer.kind 'kl'), cached_codes VQ codes (discrete)."""
    source, kind = config.data.source, config.tokenizer.kind
    if source == "cached_latents" and (discrete or kind != "kl"):
        raise ConfigError(f"data.source='cached_latents' holds KL posteriors: it serves a DiffLoss head with "
                          f"tokenizer.kind='kl' (this run: tokenizer.kind={kind!r}, "
                          f"{'discrete' if discrete else 'continuous'} tokens)")
    if source == "cached_codes" and not discrete:
        raise ConfigError("data.source='cached_codes' holds VQ codes: it serves a softmax head (VQ-GPT, VAR, "
                          f"model.head='softmax') on the VQ tokenizer that wrote them (tokenizer.kind={kind!r})")
