"""A training batch of images (or cached posteriors) -> the tokens a generator trains on."""
import jax


def latents_of_batch(tokenizer, batch: dict, key: jax.Array) -> jax.Array:
    """Continuous tokens (B, h, w, C) of a batch: sampled from the stored KL posterior of a latent
    cache (`batch["moments"]`), as encoding would, or encoded from `batch["images"]` (B, H, W, C)
    in [-1, 1]. tokenizer: a ContinuousTokenizer (`marjax.tokenizers.protocol`); key: posterior sampling."""
    if "moments" in batch:
        return tokenizer.latents_from_moments(batch["moments"], key)
    return tokenizer.encode(batch["images"], key)
