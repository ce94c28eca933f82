"""How a codebook is used, for logging while a VQ tokenizer trains.

`code_statistics`: on a batch of codes, the fraction of the codebook hit and the perplexity exp(H)
of the code histogram (taming's perplexity; 1 when one code takes everything, codebook_size when
all are equally used). `update_usage_window`: LlamaGen's `codebook_used` buffer, a window holding
the last USAGE_WINDOW codes seen in training (zeros at the start, so code 0 counts as used until
they are pushed out); `code_statistics(window, codebook_size)["codebook_usage"]` is then LlamaGen's
`codebook_usage` (distinct codes in the window / codebook_size).
"""
import jax
import jax.numpy as jnp

USAGE_WINDOW = 65536  # LlamaGen's codebook_used length


def code_statistics(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
    """indices: int codes of any shape -> {"codebook_usage": fraction of the codes hit at least once,
    "perplexity": exp of the entropy of the code histogram}, both scalars."""
    counts = jnp.bincount(indices.reshape(-1), length=codebook_size)
    probs = counts / indices.size
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return {"codebook_usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


def init_usage_window(length: int = USAGE_WINDOW) -> jax.Array:
    """(length,) int32 zeros, as LlamaGen's buffer starts."""
    return jnp.zeros((length,), jnp.int32)


def update_usage_window(window: jax.Array, indices: jax.Array) -> jax.Array:
    """window (N,) int32, indices (...) -> the window shifted left by indices.size with the flattened
    indices (row-major) at its end (N >= indices.size; static shapes, so it runs inside a step)."""
    flat = indices.reshape(-1).astype(window.dtype)
    return jnp.concatenate([window[flat.size:], flat])
